"""``benchmarks/claims_device.py``: a study's trials without Ray and MLflow (the lent GPU machine has neither),
planned here, run as processes, reported by ``report.py --runs``; a second run goes on where the first stopped."""
from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

from orchestration import report

ROOT = Path(__file__).resolve().parents[1]
STUDY = """\
description: two models, two seeds
base: {dataset: mnist_svhn, observed: split, max_train_pairs: 200, max_test_pairs: 100, latent_dim: 8}
grid:
  - model: [meme, mvae]
    seed: [0, 1]
metric: coherence_cross_mean
mode: max
epochs: 1
eval: {likelihood_k: 0, n_joint: 0, n_latent_train: 200, n_tsne: 0, elbo: false}
report:
  claims:
    - {name: meme_beats_mvae, text: MEME beats MVAE, a: {where: {model: meme}, metric: coherence_cross_mean},
       b: {where: {model: mvae}, metric: coherence_cross_mean}}
"""


def test_plan_run_resume_and_report(tmp_path, synth_dir, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))   # importable by name: the trial processes unpickle it
    tool = importlib.import_module("claims_device")
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)            # the classifiers are trained into this copy
    (tmp_path / "s.yaml").write_text(STUDY)
    plan = tool.plan(str(tmp_path / "s.yaml"), str(tmp_path / "plan.json"))
    spec = json.loads(plan.read_text())
    assert [t["name"] for t in spec["trials"]] == ["meme-f1-split-s0", "meme-f1-split-s1", "mvae-f1-split-s0",
                                                   "mvae-f1-split-s1"]
    assert spec["eval"]["likelihood_k"] == 0 and spec["trials"][3]["config"]["max_train_pairs"] == 200

    runs = tmp_path / "runs"
    # a budget spent at once: the first trials start, none after; the next run goes on and skips the finished
    assert tool.run(str(plan), str(data), str(runs), 2, 0.0, "cpu", False) == 0
    assert "0 of 4 trials finished, 0 failed, 4 not started" in capsys.readouterr().out
    assert tool.run(str(plan), str(data), str(runs), 2, float("inf"), "cpu", False) == 0
    assert "4 of 4 trials finished" in capsys.readouterr().out
    assert not list(runs.rglob("checkpoint.pt"))
    assert tool.run(str(plan), str(data), str(runs), 2, float("inf"), "cpu", False) == 0
    assert "0 trials to run (4 finished before)" in capsys.readouterr().out

    records, skipped = report.load_run_dirs(runs)
    assert len(records) == 4 and skipped == []
    for r in records:
        cross = (r.metrics["coherence_mnist_to_svhn"] + r.metrics["coherence_svhn_to_mnist"]) / 2
        assert r.metrics["coherence_cross_mean"] == cross and r.config["data_dir"] == str(data.resolve())
    files, _ = report.report_runs(str(tmp_path / "s.yaml"), str(runs))
    assert (runs / "report" / "claims.md") in files
    assert "| **MEME beats MVAE** |" in (runs / "report" / "claims.md").read_text()
