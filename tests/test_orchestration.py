"""End to end on local Ray with tiny generated data: the smoke study, its MLflow runs and report; Optuna +
ASHA stopping weak trials; a failing trial among finishing ones; SIGINT of the driver and --resume."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from meme.models import TrainConfig
from orchestration import report, sweep, tracking

REPO = Path(__file__).resolve().parents[1]
# tiny trials on the smoke study's generated data (its folder, and the classifiers trained there, are shared)
TINY = """\
synthetic_data: {n_train: 600, n_test: 200, seed: 0}
resources: {cpu: 1}
eval: {max_test_pairs: 64, n_latent_train: 64, n_joint: 0, likelihood_k: 0, n_tsne: 0, n_grid: 4,
       grid_samples: 1, elbo: false}
"""
TINY_BASE = "model: meme, max_train_pairs: 64, latent_dim: 4, batch_size: 32, K: 2, n_pseudo: 4, supervision: 0.5"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Data, MLflow database and Ray results of this module's studies."""
    root = tmp_path_factory.mktemp("orch")
    return {"root": root, "data": root / "data", "uri": f"sqlite:///{root / 'mlflow.db'}", "storage": root / "ray"}


def sweep_args(work, *args) -> list[str]:
    return [*args, "--data-dir", str(work["data"]), "--tracking-uri", work["uri"], "--storage", str(work["storage"]),
            "--quiet"]


def run_sweep(work, *args) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = sweep.main(sweep_args(work, *args))
    return rc, out.getvalue()


def write_study(work, name: str, text: str) -> str:
    path = work["root"] / f"{name}.yaml"
    path.write_text(text + TINY)
    return str(path)


def study_runs(work, experiment: str):
    """(parent runs, child runs) of an experiment."""
    c = tracking.client_for(work["uri"])
    exp = c.get_experiment_by_name(experiment)
    runs = c.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if tracking.PARENT_TAG not in r.data.tags]
    return parents, [r for r in runs if tracking.PARENT_TAG in r.data.tags]


def epochs_logged(work, run) -> list[int]:
    c = tracking.client_for(work["uri"])
    return sorted(m.step for m in c.get_metric_history(run.info.run_id, "epoch"))


@pytest.fixture(scope="module")
def smoke(work, ray_session):
    rc, out = run_sweep(work, "--study", "smoke")
    return rc, out


def test_smoke_study_completes_with_one_parent_and_one_child_per_trial(work, smoke):
    rc, out = smoke
    assert rc == 0, out
    assert "smoke: 4 trials in" in out and "4 done" in out
    parents, children = study_runs(work, "smoke")
    assert len(parents) == 1 and len(children) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    tags = parent.data.tags
    assert tags[tracking.TAG_STUDY] == "smoke" and tags["meme.version.ray"] and tags["meme.git_commit"]
    c = tracking.client_for(work["uri"])
    assert "study.yaml" in {a.path for a in c.list_artifacts(parent.info.run_id)}
    names = sorted(r.info.run_name for r in children)
    assert names == ["meme-f0.25-mnist-s0", "meme-f0.25-split-s0", "meme-f1-mnist-s0", "meme-f1-split-s0"]
    assert len({r.data.tags[tracking.TAG_TRIAL_KEY] for r in children}) == 4
    for r in children:
        assert r.info.status == "FINISHED" and r.data.tags[tracking.PARENT_TAG] == parent.info.run_id
        assert set(TrainConfig.keys()) <= set(r.data.params)
        assert r.data.params["max_train_pairs"] == "256" and r.data.params["epochs"] == "2"
        assert epochs_logged(work, r) == [1, 2]
        assert {"loss", "coherence_mnist_to_svhn", "latent_acc_svhn", "w2_gap", "coherence_cross_mean"} <= set(r.data.metrics)
        assert 0.0 <= r.data.metrics["coherence_mnist_to_svhn"] <= 1.0
        figs = {a.path for a in c.list_artifacts(r.info.run_id, "eval")}
        assert {"eval/cross_mnist_to_svhn.png", "eval/class_matrix.png", "eval/tsne.png"} <= figs


def test_report_regenerates_the_figures_from_mlflow(work, smoke):
    out = work["root"] / "report"
    assert report.main(["--study", "smoke", "--tracking-uri", work["uri"], "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["coherence_vs_supervision.png", "summary.csv", "summary.md"]
    md = (out / "summary.md").read_text()
    assert md.count("| meme |") == 4 and "(1) |" in md
    (parent,), children = study_runs(work, "smoke")
    by_name = {r.info.run_name: r for r in children}
    cell = f"{by_name['meme-f0.25-split-s0'].data.metrics['coherence_mnist_to_svhn']:.4f} ± 0.0000 (1)"
    assert f"| meme | split | 1/4 | {cell} |" in md
    logged = {a.path for a in tracking.client_for(work["uri"]).list_artifacts(parent.info.run_id, "report")}
    assert logged == {"report/coherence_vs_supervision.png", "report/summary.csv", "report/summary.md"}


def test_optuna_and_asha_stop_weak_trials_early(work, ray_session):
    path = write_study(work, "asha", f"""\
description: Optuna + ASHA over the learning rate
base: {{{TINY_BASE}}}
search:
  lr: {{loguniform: [1.0e-6, 1.0e-2]}}
searcher: {{name: optuna, seed: 0, num_samples: 4}}
scheduler: {{name: asha, grace_period: 1, reduction_factor: 2}}
metric: loss
mode: min
epochs: 3
""")
    rc, out = run_sweep(work, "--study", path, "--max-concurrent", "1")
    assert rc == 0, out
    _, children = study_runs(work, "asha")
    assert len(children) == 4
    lrs = [float(r.data.params["lr"]) for r in children]
    assert all(1e-6 <= lr <= 1e-2 for lr in lrs) and len(set(lrs)) == 4
    trained = {r.info.run_name: epochs_logged(work, r)[-1] for r in children}
    stopped = [r for r in children if r.data.tags[tracking.TAG_STOPPED_EARLY] == "true"]
    assert stopped and all(trained[r.info.run_name] < 3 for r in stopped), trained
    assert max(trained.values()) == 3
    assert all(r.info.status == "FINISHED" for r in children)
    assert "stopped early" in out


def test_a_failing_trial_is_marked_failed_and_the_others_complete(work, ray_session):
    path = write_study(work, "failing", f"""\
description: one trial diverges (lr 1e30 gives a non-finite loss)
base: {{{TINY_BASE}}}
grid:
  lr: [5.0e-4, 1.0e+30]
metric: loss
mode: min
epochs: 1
""")
    rc, out = run_sweep(work, "--study", path, "--max-failures", "1")
    assert rc == 1, out
    assert "1 done, 1 FAILED" in out and "NonFiniteLoss: non-finite loss" in out
    _, children = study_runs(work, "failing")
    by_lr = {float(r.data.params["lr"]): r for r in children}
    assert sorted(by_lr) == [5e-4, 1e30]
    good, bad = by_lr[5e-4], by_lr[1e30]
    assert good.info.status == "FINISHED" and "w2_gap" in good.data.metrics
    assert bad.info.status == "FAILED"
    assert bad.data.tags[tracking.TAG_FAILURE].startswith("NonFiniteLoss: non-finite loss")
    assert bad.data.tags[tracking.TAG_RESTARTS] == "1"   # retried once by Tune, failing at once (not retrained)
    assert epochs_logged(work, bad) == []


def test_sigint_then_resume_finishes_the_study_without_duplicate_runs(work, ray_session):
    path = write_study(work, "resumable", f"""\
description: two trials, interrupted and resumed
base: {{{TINY_BASE}}}
grid:
  seed: [0, 1]
metric: loss
mode: min
epochs: 2
""")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # its own local Ray, apart from the test session's
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(REPO / "orchestration" / "sweep.py"),
           *sweep_args(work, "--study", path, "--max-concurrent", "1", "--num-cpus", "1")]
    proc = subprocess.Popen(cmd, cwd=work["root"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not list(work["storage"].glob("resumable-*/*/checkpoint_*")):   # a trial has checkpointed
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out + err
    assert "interrupted; the state is saved" in err and "--resume resumable-" in err
    parents, children = study_runs(work, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "KILLED"
    assert len(children) < 2 or any(epochs_logged(work, r) != [1, 2] for r in children)   # cut short

    rc, out = run_sweep(work, "--study", path, "--resume")   # in this process's Ray: another Ray instance
    assert rc == 0, out
    parents, children = study_runs(work, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.info.run_name for r in children) == ["meme-f0.5-split-s0", "meme-f0.5-split-s1"]
    for r in children:
        assert r.info.status == "FINISHED"
        assert epochs_logged(work, r) == [1, 2]   # every epoch exactly once, across the interruption
