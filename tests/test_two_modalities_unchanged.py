"""Two-modality runs give the numbers they gave before the data model took any number of modalities, and a run
written before then loads, evaluates to its numbers and resumes.

``tests/fixtures/two_modalities.json`` was written by this file's ``--write`` on the code before that change:
for every model (and each MMVAE estimator), one seeded epoch on generated MNIST-SVHN at f = 1/2 ("split",
so paired, s-only and t-only batches all occur) and f = 1/4 observing SVHN only, then the evaluation. It holds
every training and evaluation metric and the sum and absolute sum of every trained weight. A run now must
match all of them to 1e-6 (relative), which it can only do with the same batches, the same noise, the same
loss terms and the same gradients.

The runs happen in a child process with the CPU kernels pinned (``PORTABLE``: torch's AVX2 kernels, MKL's
conditional numerical reproducibility, no oneDNN), because the default kernels sum in an order that depends on
the processor: an Intel Xeon and an AMD EPYC train the SVHN convolutions apart by 1e-4 in one epoch, with the
same code. Pinned, the numbers depend on the code alone.

    python tests/test_two_modalities_unchanged.py --write   # only on purpose: it redefines "before"
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parent / "fixtures" / "two_modalities.json"
CASES = {
    "meme": {"model": "meme"},
    "mvae": {"model": "mvae"},
    "mmvae_elbo": {"model": "mmvae"},
    "mmvae_dreg": {"model": "mmvae", "mmvae_estimator": "dreg", "mmvae_samples": 3},
    "mopoe": {"model": "mopoe"},
    "mmjsd": {"model": "mmjsd"},
}
SCHEMES = {"split": {"supervision": 0.5, "observed": "split"}, "svhn_only": {"supervision": 0.25, "observed": "svhn"}}
PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1"}
EVAL = {"max_test_pairs": 64, "n_latent_train": 128, "n_joint": 64, "likelihood_k": 4, "n_tsne": 0, "n_grid": 4,
        "grid_samples": 1, "elbo": True}


def fingerprints(synth_dir) -> dict[str, dict]:
    """Every case's ``fingerprint``, computed in a child process with the kernels pinned (``PORTABLE``)."""
    out = subprocess.run([sys.executable, __file__, "--fingerprints", str(synth_dir)], capture_output=True, text=True,
                         env={**os.environ, **PORTABLE}, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.splitlines()[-1])


def fingerprint(synth_dir, case: str, scheme: str) -> dict:
    import torch

    torch.backends.mkldnn.enabled = False   # convolutions by im2col and MKL's GEMM, reproducible under MKL_CBWR

    from meme.models import TrainConfig
    from meme.eval.classifiers import build_classifier
    from meme.eval.config import EvalConfig
    from meme.train import Trainer

    cfg = TrainConfig(data_dir=str(synth_dir), download=False, max_train_pairs=256, max_test_pairs=64, batch_size=64,
                      latent_dim=8, K=3, n_pseudo=8, epochs=1, precision="fp32", device="cpu", num_threads=1,
                      **CASES[case], **SCHEMES[scheme])
    threads = torch.get_num_threads()
    try:
        tr = Trainer(cfg)
        metrics = tr.run_epoch()
    finally:
        torch.set_num_threads(threads)
    torch.manual_seed(123)   # judges with seeded random weights: the arithmetic of every metric, not its level
    judges = {n: build_classifier(n).eval() for n in ("mnist", "svhn")}
    torch.set_num_threads(1)
    try:
        tr.evaluator.classifiers = judges
        metrics.update({f"eval_{k}": v for k, v in tr.evaluator(EvalConfig(**EVAL, seed=0))[0].items()})
    finally:
        torch.set_num_threads(threads)
    out = {k: float(v) for k, v in metrics.items()
           if isinstance(v, (int, float)) and not isinstance(v, bool) and "per_s" not in k and "time" not in k
           and not k.endswith("_s")}
    for name, p in tr.model.state_dict().items():
        if p.is_floating_point():
            out[f"weights:{name}:sum"] = float(p.double().sum())
            out[f"weights:{name}:abs"] = float(p.double().abs().sum())
    return out


@pytest.fixture(scope="module")
def now(synth_dir) -> dict[str, dict]:
    return fingerprints(synth_dir)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("case", CASES)
def test_a_two_modality_run_gives_the_numbers_it_gave_before(now, case, scheme):
    before = json.loads(FIXTURE.read_text())[f"{case}/{scheme}"]
    now = now[f"{case}/{scheme}"]
    assert set(before) <= set(now), f"metrics gone: {sorted(set(before) - set(now))}"   # new ones may join
    off = {k: (now[k], v) for k, v in before.items()
           if not math.isclose(now[k], v, rel_tol=1e-6, abs_tol=1e-6)}
    assert not off, f"{len(off)} of {len(before)} numbers moved: {dict(list(off.items())[:8])}"


RUN = Path(__file__).parent / "fixtures" / "run_two_modalities"


def test_a_run_written_before_m_modalities_evaluates_to_its_numbers_and_resumes(tmp_path, capsys):
    """``fixtures/run_two_modalities``: a MEME run on a two-modality dataset file, trained 2 epochs and evaluated by
    the code before M modalities (its checkpoint as that code wrote it). It loads, evaluates to the same metrics
    and resumes for a third epoch."""
    import shutil

    import torch

    from meme.cli import main

    shutil.copytree(RUN, tmp_path / "fx")
    data, run = tmp_path / "fx" / "data" / "data.yaml", tmp_path / "fx" / "run"
    # the run recorded where its dataset file was; it is here now (the one change to the stored files)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["modalities"] == ["a", "b"] and state["epoch"] == 2
    state["config"]["dataset"] = str(data)
    torch.save(state, run / "checkpoint.pt")
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "dataset": str(data)}, indent=2) + "\n")

    assert main(["eval", "--checkpoint", str(run), "--out", str(tmp_path / "eval"), "--no-figures", "--quiet",
                 "--seed", "0"]) == 0
    now = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    before = json.loads((RUN / "eval_metrics.json").read_text())
    assert set(before) <= set(now)
    assert {k: v for k, v in before.items() if not math.isclose(now[k], v, rel_tol=1e-6, abs_tol=1e-6)} == {}

    assert main(["train", "--dataset", str(data), "--epochs", "3", "--batch-size", "32", "--supervision", "0.5",
                 "--num-threads", "1", "--out", str(run), "--quiet"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3] and torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 3
    capsys.readouterr()


if __name__ == "__main__" and sys.argv[1:2] == ["--fingerprints"]:   # the child process of ``fingerprints``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps({f"{c}/{s}": fingerprint(Path(sys.argv[2]), c, s) for c in CASES for s in SCHEMES}))

if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from meme.data.synthetic import write_synthetic_mnist_svhn

    with tempfile.TemporaryDirectory() as d:
        table = fingerprints(write_synthetic_mnist_svhn(Path(d), n_train=600, n_test=200, seed=0))
    FIXTURE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}: {len(table)} runs, {sum(map(len, table.values()))} numbers")
