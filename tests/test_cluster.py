"""Cluster submission: orchestration/submit.py against a real two-node Ray cluster on this machine.

The cluster is two `ray start --block` raylets (head on 127.0.0.2, worker on 127.0.0.3: loopback only,
free ports, their own temp dir) and an `mlflow server` over HTTP on 127.0.0.1; everything is stopped by
the PIDs this module started. A two-trial study goes through submit.py as a Ray job: its MLflow runs
are read back over HTTP and its trials must have run on both nodes (one CPU each). A study stopped
through submit.py (SIGTERM to its driver) saves its state, and a resubmitted ``--resume`` completes it
with nothing lost or duplicated. A third raylet whose view of the storage directory is a private tmpfs
(a node without the shared disk) makes the study refuse the path.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest
from test_cluster_support import (ROOT, SUBMIT, epochs_logged, free_ports, mlflow_children, only_run, study_args,
                                  tiny_study, trial_results, two_node_cluster, wait_until)

from meme.errors import MemeError
from orchestration import submit


# ------------------------------------------------------------------ submit.py without a cluster
@pytest.mark.parametrize("address", ["127.0.0.1:6379", "ray://127.0.0.1:10001", "http://", "auto"])
def test_address_must_be_the_jobs_api(address):
    with pytest.raises(MemeError, match=r"not a Ray Jobs API address; use the dashboard's http://HOST:8265"):
        submit.check_address(address)


def test_unreachable_cluster_is_one_line_and_exit_2():
    port = free_ports(1)[0]  # nothing listens there
    r = subprocess.run([*SUBMIT, "--address", f"http://127.0.0.1:{port}", "--list"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.startswith(f"submit.py: error: cannot reach the Ray Jobs API at http://127.0.0.1:{port}")
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("extra,message", [
    ([], "no --study given"),
    (["--study", "smoke"], "a study on a cluster needs --storage"),
    (["--study", "smoke", "--storage", "runs/x"], "'runs/x' is a relative path"),
    (["--study", "smoke", "--storage", "s3://b/p"], "needs --tracking-uri http://HOST:5000"),
    (["--study", "smoke", "--storage", "/mnt/x", "--tracking-uri", "sqlite:///m.db"], "not sqlite:///m.db"),
])
def test_submission_refuses_missing_or_relative_storage_before_contacting_the_cluster(extra, message, capsys):
    assert submit.main(["--address", "http://127.0.0.1:1", *extra]) == 2
    assert message in capsys.readouterr().err


def test_env_values_come_from_the_shell_or_the_command_line(caplog):
    env = submit.parse_env(["MLFLOW_TRACKING_URI", "MEME_X=1=2", "AWS_SECRET_ACCESS_KEY"],
                           environ={"MLFLOW_TRACKING_URI": "http://m:5000", "AWS_SECRET_ACCESS_KEY": "s"})
    assert env == {"MLFLOW_TRACKING_URI": "http://m:5000", "MEME_X": "1=2", "AWS_SECRET_ACCESS_KEY": "s"}
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["--env AWS_SECRET_ACCESS_KEY"]
    with pytest.raises(MemeError, match="NOPE is not set in this shell"):
        submit.parse_env(["NOPE"], environ={})
    with pytest.raises(MemeError, match="expected NAME or NAME=VALUE"):
        submit.parse_env(["1X=2"], environ={})


def test_runtime_env_packages_the_repository_without_local_state(tmp_path):
    env = submit.build_runtime_env(ROOT, {"A": "1"}, {"env_vars": {"B": "2"}, "pip": ["x"], "excludes": ["data"]},
                                   stop_grace_s=45)
    assert env["working_dir"] == str(ROOT) and env["pip"] == ["x"]
    assert env["env_vars"] == {"RAY_JOB_STOP_WAIT_TIME_S": "45", "B": "2", "A": "1"}
    assert {".git", ".venv", "runs", "mlruns", "*.db", "docker/.env", "data"} <= set(env["excludes"])
    with pytest.raises(MemeError, match="does not hold orchestration/sweep.py"):
        submit.build_runtime_env(tmp_path, {})


def test_entrypoint_passes_the_study_arguments_through_quoted():
    args = ["--study", "smoke", "--storage", "/mnt/my studies", "--resume"]
    assert submit.sweep_entrypoint(args) == ("python orchestration/sweep.py --address auto --study smoke "
                                             "--storage '/mnt/my studies' --resume")
    opts = submit.study_options(args + ["--max-failures", "2"])
    assert (opts.study, opts.storage, opts.resume, opts.tracking_uri) == ("smoke", "/mnt/my studies", "", None)
    submit.check_study_args(opts)  # a resumed study keeps the tracking URI it was started with
    assert submit.is_uri("s3://b/p") and submit.is_uri("gs://b") and not submit.is_uri("/mnt/x")
    assert not submit.is_uri("file:///mnt/x") and submit.local_path("file:///mnt/x") == "/mnt/x"


# ------------------------------------------------------------------ a real two-node cluster
#: two trials of one CPU each on a cluster of two one-CPU nodes: one trial per node
STUDY = tiny_study("Two tiny MEME trials for the cluster tests.", "seed: [0, 1]", epochs=2, max_train_pairs=128)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, synth_dir):
    with two_node_cluster(tmp_path_factory.mktemp("cluster"), synth_dir, STUDY, "cluster_pair") as c:
        yield c


def test_two_raylets_on_loopback(cluster):
    nodes = cluster.nodes_at_start
    assert sorted(n["node_ip"] for n in nodes) == ["127.0.0.2", "127.0.0.3"]
    assert sorted(n["is_head_node"] for n in nodes) == [False, True]


def test_study_submitted_to_the_cluster_runs_on_both_nodes_and_tracks_to_the_mlflow_server(cluster, tmp_path):
    storage = tmp_path / "studies"
    r = cluster.submit(*study_args(cluster, storage, "--shared-storage", "--experiment", "cluster-pair"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:] + cluster.logs()
    job_id = r.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert "2 trials in" in r.stdout and "2 done" in r.stdout  # the study's own summary, followed live
    status = cluster.submit("--status", job_id)
    assert status.stdout.startswith("SUCCEEDED")

    run_dir, state = only_run(storage)
    results = trial_results(run_dir)
    assert len(results) == 2 and all([res["epoch"] for res in rs] == [1, 2] for rs in results.values())
    ip_to_node = {n["node_ip"]: n["node_id"] for n in cluster.nodes_at_start}
    trial_nodes = {ip_to_node[rs[0]["node_ip"]] for rs in results.values()}
    assert trial_nodes == set(ip_to_node.values()), "one trial on each node"

    children = mlflow_children(cluster.tracking_uri, state)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert epochs_logged(cluster.tracking_uri, child.info.run_id) == [1, 2]
        assert child.data.params["seed"] in ("0", "1")
    # the job packaged the repository: the driver ran sweep.py from the job's working directory
    logs = cluster.submit("--logs", job_id).stdout
    assert "Running entrypoint for job" in logs and "sweep.py --address auto" in logs


def test_stopped_study_saves_its_state_and_a_resubmitted_resume_completes_it(cluster, tmp_path):
    storage = tmp_path / "studies"
    # enough epochs that the stop lands mid-study: at 4 the two trials (about 1.5 s an epoch) could finish before
    # the --stop command had started up, and the study then ran to its end
    epochs = 20
    args = study_args(cluster, storage, "--shared-storage", "--experiment", "cluster-resume", "--epochs", str(epochs))
    r = cluster.submit(*args, "--no-wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    wait_until(lambda: any(trial_results(p.parent) for p in storage.glob("*/meme_study.json")), 240,
               "a trial's first epoch")
    stopped = cluster.submit("--stop", job_id)
    assert stopped.returncode == 0 and f"job {job_id}: STOPPED" in stopped.stderr, stopped.stderr
    logs = cluster.submit("--logs", job_id).stdout
    assert "interrupted; the state is saved" in logs, logs[-3000:]
    run_dir, state = only_run(storage)
    before = trial_results(run_dir)
    assert sum(len(rs) for rs in before.values()) < 2 * epochs, "the study was stopped before it finished"

    r = cluster.submit("--study", str(cluster.study), "--storage", str(storage), "--shared-storage", "--quiet",
                       "--resume")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"resuming {run_dir}" in r.stdout
    after = trial_results(run_dir)
    for trial, rs in after.items():
        # Ray's own result.json is at-least-once: a stop that lands after an epoch's report but before Ray has
        # recorded its checkpoint replays that one epoch from the checkpoint before it, so that epoch, and only
        # it (the last one reported before the stop), may appear twice there; MLflow below logs each epoch once
        stopped_at = max((res["epoch"] for res in before.get(trial, [])), default=None)
        reported = [res["epoch"] for res in rs]
        assert reported == sorted(reported) and sorted(set(reported)) == list(range(1, epochs + 1)), (trial, reported)
        assert all(reported.count(e) == 1 or (e == stopped_at and reported.count(e) == 2) for e in reported), \
            (trial, reported)
    children = mlflow_children(cluster.tracking_uri, state)
    assert len(children) == 2
    for child in children:
        assert child.info.status == "FINISHED"
        assert epochs_logged(cluster.tracking_uri, child.info.run_id) == list(range(1, epochs + 1))


def test_a_local_path_on_a_multi_node_cluster_is_refused(cluster, tmp_path):
    if not shutil.which("unshare") or subprocess.run(["unshare", "--mount", "true"]).returncode:
        pytest.skip("no mount namespaces here (unshare) to give a node a disk of its own")
    storage = tmp_path / "studies"
    storage.mkdir()
    cluster.add_worker("127.0.0.4", hide=storage)  # this node sees an empty private tmpfs at `storage`
    wait_until(lambda: [n for n in cluster.nodes() if n["node_ip"] == "127.0.0.4"], 120, "the third node")

    r = cluster.submit(*study_args(cluster, storage))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert f"3 Ray nodes are alive but --storage {storage} is a local path that the other nodes may not see" in err
    assert err.startswith("submit.py: error: job raysubmit_") and "s3://" in err

    r = cluster.submit(*study_args(cluster, storage, "--shared-storage"))  # declared shared, but it is not
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert f"--storage {storage} is not visible from node(s) 127.0.0.4" in err
    assert not list(storage.glob("*/meme_study.json")), "no study started"
