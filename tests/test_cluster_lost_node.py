"""A node lost mid-study: on the real two-raylet cluster (head 127.0.0.2, worker 127.0.0.3, one CPU each),
a two-trial study is submitted through submit.py; once a trial has reported an epoch on the worker, every
process of that node is killed at once (SIGKILL, as when a machine goes away). The study must still
complete: the lost trial is restarted from its last checkpoint on the node that is left, every trial ends
with all of its epochs, each epoch is logged once in MLflow, and no trial is counted twice."""
from __future__ import annotations

import pytest
from test_cluster_support import (epochs_logged, mlflow_children, only_run, study_args, tiny_study, trial_results,
                                  two_node_cluster, wait_until)

EPOCHS = 12
STUDY = tiny_study("Two MEME trials for the lost-node test.", "seed: [0, 1]", epochs=EPOCHS, max_train_pairs=512)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, synth_dir):
    with two_node_cluster(tmp_path_factory.mktemp("lost"), synth_dir, STUDY, "lost_node") as c:
        yield c


def _status(cluster, job_id: str) -> str:
    return cluster.submit("--status", job_id).stdout.split(":")[0].strip()


def test_a_study_survives_losing_a_node(cluster, tmp_path):
    storage = tmp_path / "studies"
    r = cluster.submit(*study_args(cluster, storage, "--shared-storage", "--experiment", "lost-node"), "--no-wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()

    def a_trial_on_the_worker():
        for state in storage.glob("*/meme_study.json"):
            for name, rs in trial_results(state.parent).items():
                if rs and rs[-1].get("node_ip") == "127.0.0.3" and rs[-1]["epoch"] < EPOCHS:
                    return name, rs[-1]["epoch"]
        return None

    lost_trial, _ = wait_until(a_trial_on_the_worker, 300, "an epoch of a trial on the second node")
    killed = cluster.kill_node("127.0.0.3")
    assert killed
    status = wait_until(lambda: (s := _status(cluster, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s, 900,
                        "the study's end")
    logs = cluster.submit("--logs", job_id).stdout
    assert status == "SUCCEEDED", logs[-4000:] + cluster.logs()
    assert "2 trials in" in logs and "2 done" in logs, logs[-3000:]   # the summary counts each trial once

    run_dir, state = only_run(storage)
    results = trial_results(run_dir)
    assert len(results) == 2
    for name, rs in results.items():
        epochs = [res["epoch"] for res in rs]
        assert epochs[-1] == EPOCHS and sorted(set(epochs)) == list(range(1, EPOCHS + 1)), (name, epochs)
    # it began on the lost node and finished on the one that was left (a report already on its way to the
    # driver when the node died can still land after the kill, so the switch is not pinned to one epoch)
    nodes = [res["node_ip"] for res in results[lost_trial]]
    assert nodes[0] == "127.0.0.3" and nodes[-1] == "127.0.0.2", nodes
    at_epoch = max(res["epoch"] for res in results[lost_trial] if res["node_ip"] == "127.0.0.3")
    assert at_epoch < EPOCHS
    children = mlflow_children(cluster.tracking_uri, state)
    assert len(children) == 2, "one child run per trial, none added by the restart"
    for child in children:
        assert child.info.status == "FINISHED"
        assert epochs_logged(cluster.tracking_uri, child.info.run_id) == list(range(1, EPOCHS + 1))
    print(f"lost node: trial {lost_trial} was on 127.0.0.3 at epoch {at_epoch}; {len(killed)} processes killed; "
          f"it finished on 127.0.0.2")
