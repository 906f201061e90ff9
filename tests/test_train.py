"""The trainer: learning, determinism, bit-identical resume, checkpoints, and the CLI's errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from meme.cli import main
from meme.models import TrainConfig
from meme.errors import MemeError
from meme.train import Trainer, load_checkpoint, train


def small(synth_dir, **kw) -> TrainConfig:
    base = dict(data_dir=str(synth_dir), download=False, max_train_pairs=256, max_test_pairs=64, batch_size=64,
                latent_dim=8, K=3, n_pseudo=8, epochs=2, supervision=0.5, observed="split", precision="fp32",
                device="cpu")
    return TrainConfig(**{**base, **kw})


def test_loss_decreases_and_metrics_are_reported(synth_dir):
    cfg = small(synth_dir, epochs=4, max_train_pairs=512, lr=1e-3)
    history = list(train(cfg, out_dir=None, progress=False))
    assert [m["epoch"] for m in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    m = history[0]
    for key in ("recon_mnist", "recon_svhn", "kl_mnist", "log_q_svhn_given_mnist", "w_mnist_given_svhn",
                "recon_mnist_only", "recon_svhn_only", "loss_paired", "loss_s", "loss_t", "pairs_per_s"):
        assert key in m, key
    # the overall loss is the example-weighted mean of the per-kind losses (256 paired, 128 + 128 unpaired)
    assert m["loss"] == pytest.approx((256 * m["loss_paired"] + 128 * m["loss_s"] + 128 * m["loss_t"]) / 512, rel=1e-5)


def test_same_seed_same_run_and_resume_is_bit_identical(synth_dir, tmp_path):
    cfg = small(synth_dir)
    straight = list(train(cfg, tmp_path / "a", progress=False))
    again = list(train(cfg, tmp_path / "b", progress=False))
    strip = lambda h: [{k: v for k, v in m.items() if "per_s" not in k and "time" not in k} for m in h]  # noqa: E731
    assert strip(straight) == strip(again)
    # a run of 1 epoch is evaluated after it, the 2-epoch run after epoch 2 only: compare the training metrics
    train_only = lambda h: [{k: v for k, v in m.items() if not k.startswith("eval_")} for m in strip(h)]  # noqa: E731

    first = list(train(cfg.replace(epochs=1), tmp_path / "c", progress=False))
    resumed = list(train(cfg, tmp_path / "c", progress=False))  # epochs extended: continues from epoch 1
    assert [m["epoch"] for m in first + resumed] == [1, 2]
    assert train_only(first + resumed) == train_only(straight)
    assert "eval_w2_gap" in first[0] and "eval_w2_gap" not in straight[0]
    sa, sc = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "c")
    assert sa["epoch"] == sc["epoch"] == 2
    for k, v in sa["model"].items():
        assert torch.equal(v, sc["model"][k]), k
    lines = (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_checkpoint_loads_with_weights_only_and_refuses_other_models(synth_dir, tmp_path):
    cfg = small(synth_dir, epochs=1)
    list(train(cfg, tmp_path, progress=False))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["model_name"] == "meme" and state["modalities"] == ["mnist", "svhn"]
    trainer = Trainer(cfg)
    trainer.load(tmp_path)
    assert trainer.epoch == 1
    state["model_name"] = "mvae"
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(MemeError, match="holds a 'mvae' model, expected 'meme'"):
        trainer.load(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MemeError, match="corrupt"):
        trainer.load(tmp_path / "broken.pt")
    with pytest.raises(MemeError, match="different config"):
        list(train(cfg.replace(latent_dim=4), tmp_path, progress=False))


def test_pseudo_samples_start_from_real_training_rows(synth_dir):
    cfg = small(synth_dir, n_pseudo=5)
    tr = Trainer(cfg)
    rows = tr.train_data.tables[1].float() / 255  # every SVHN row, as the model sees it
    for u in tr.model.pseudo[1].detach():
        assert (rows - u).abs().flatten(1).max(1).values.min() == 0


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "cifar"], "unknown dataset 'cifar'; valid: mnist_svhn"),
    (["--supervision", "1.5"], "supervision fraction f=1.5 is outside (0, 1]"),
    (["--supervision", "0"], "supervision fraction f=0.0 is outside (0, 1]"),
    (["--observed", "both"], "unknown observed 'both' for dataset mnist_svhn; valid: mnist, svhn, split"),
    (["--n-pseudo", "0"], "n_pseudo=0 must be a positive integer"),
    (["--n-pseudo", "-3"], "n_pseudo=-3 must be a positive integer"),
    (["--model", "vae"], "unknown model 'vae'"),
])
def test_cli_bad_values_are_one_line_errors(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, "train", "--out", str(tmp_path / "x"), *argv)
    assert code == 2
    assert err.startswith("meme: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()  # nothing was written


def test_cli_unknown_config_key_and_corrupt_data(capsys, tmp_path, synth_dir):
    (tmp_path / "cfg.json").write_text(json.dumps({"latent_dim": 8, "learning_rate": 0.1}))
    code, err = run_cli(capsys, "train", "--out", str(tmp_path / "x"), "--config", str(tmp_path / "cfg.json"))
    assert code == 2 and "unknown config key(s) 'learning_rate'; valid keys: model, dataset" in err
    import shutil

    broken = tmp_path / "data"
    shutil.copytree(synth_dir, broken)
    path = broken / "SVHN" / "train_32x32.mat"
    path.write_bytes(path.read_bytes()[:1000])
    code, err = run_cli(capsys, "train", "--out", str(tmp_path / "y"), "--data-dir", str(broken), "--no-download")
    assert code == 2 and "train_32x32.mat is corrupt or truncated" in err and "\n" not in err


def test_cli_trains_and_writes_the_run(capsys, tmp_path, synth_dir):
    out = tmp_path / "run"
    code = main(["train", "--out", str(out), "--data-dir", str(synth_dir), "--no-download", "--epochs", "1",
                 "--max-train-pairs", "128", "--latent-dim", "8", "--K", "2", "--n-pseudo", "4", "--quiet",
                 "--supervision", "0.25", "--observed", "mnist", "--precision", "fp32"])
    assert code == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["supervision"] == 0.25 and cfg["observed"] == "mnist" and cfg["K"] == 2
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["n_paired"] == 32 and meta["n_s_only"] == 96 and meta["n_t_only"] == 0
    assert json.loads((out / "metrics.json").read_text())["epoch"] == 1
    assert (out / "checkpoint.pt").exists()


def test_non_finite_loss_stops_the_run_with_a_reason(synth_dir):
    from meme.data import PairedData
    from meme.train import NonFiniteLoss

    g = torch.Generator().manual_seed(0)
    xs, xt = torch.rand(64, 1, 28, 28, generator=g), torch.rand(64, 3, 32, 32, generator=g)
    xt[5, 0, 0, 0] = float("nan")  # one corrupt pixel, past the loaders (from_arrays and dataset files refuse it)
    rows = torch.arange(64)
    data = PairedData(("mnist", "svhn"), (xs, xt), (rows, rows), torch.arange(64) % 10)
    tr = Trainer(small(synth_dir, supervision=1.0), train_data=data, test_data=data)
    with pytest.raises(NonFiniteLoss, match="non-finite .*loss.* at epoch 1 of meme"):
        tr.run_epoch()


def test_eval_every_adds_evaluation_metrics_and_final_figures(synth_dir, tmp_path):
    import shutil

    data = shutil.copytree(synth_dir, tmp_path / "data", ignore=shutil.ignore_patterns("classifiers"))
    cfg = small(data, epochs=2, eval_every=1, max_test_pairs=40)
    history = list(train(cfg, tmp_path, progress=False))
    for m in history:
        assert 0.0 <= m["eval_latent_acc_mnist"] <= 1.0 and "eval_w2_gap" in m
        assert m["eval_n_test_pairs"] == 40
    # no digit classifiers in this data dir: coherence is absent rather than made up
    assert not any(k.startswith("eval_coherence") for k in history[-1])
    assert (tmp_path / "eval" / "metrics.json").exists()
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.png"))  # the final figures
    # the trainer's evaluation is the suite's: same checkpoint, same seed, same numbers
    tr = Trainer(cfg)
    tr.load(tmp_path)
    again, _ = tr.evaluator()
    assert again["latent_acc_mnist"] == history[-1]["eval_latent_acc_mnist"]
    assert again["w2_gap"] == pytest.approx(history[-1]["eval_w2_gap"], rel=1e-6)


# ------------------------------------------------------------------ one loop for meme train and trials
def test_the_last_epoch_is_evaluated_even_with_eval_every_0(synth_dir, tmp_path):
    """eval_every means one thing everywhere: every N epochs and always after the last (0: the last only)."""
    cfg = small(synth_dir, epochs=2, eval_every=0)
    history = list(train(cfg, tmp_path / "run", progress=False))
    assert not any(k.startswith("eval_") for k in history[0])
    assert "eval_w2_gap" in history[1] and (tmp_path / "run" / "eval" / "metrics.json").exists()


def test_a_resumed_run_logs_each_epoch_once_with_sparse_checkpoints(synth_dir, tmp_path):
    """Epochs run after the last checkpoint are run again on resume, and logged once, not twice."""
    out = tmp_path / "run"
    cfg = small(synth_dir, epochs=4, checkpoint_every=2)
    for m in train(cfg, out, progress=False):   # the process dies after epoch 3 (checkpoint: epoch 2)
        if m["epoch"] == 3:
            break
    assert [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    list(train(cfg, out, progress=False))
    epochs = [json.loads(ln)["epoch"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]
    straight = list(train(cfg, tmp_path / "straight", progress=False))
    resumed = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss"] for m in resumed] == [m["loss"] for m in straight]


def test_a_trial_and_meme_train_run_the_same_loop(synth_dir, tmp_path):
    from orchestration.trainable import LocalSession, TrialSettings, run_trial

    cfg = small(synth_dir, epochs=3, eval_every=2, num_threads=1)   # a trial computes on its one CPU
    cli = list(train(cfg, tmp_path / "run", progress=False))
    session = LocalSession("t")
    run_trial(cfg.to_dict(), TrialSettings(study="loop", eval={"max_test_pairs": 64}), session)
    assert [m["loss"] for m in session.reports] == [m["loss"] for m in cli]
    assert ["w2_gap" in m for m in session.reports] == ["eval_w2_gap" in m for m in cli] == [False, True, True]


def test_torch_has_the_probes_that_name_native_bf16():
    # the probes must exist in the installed torch, or ``auto`` silently reads every CPU as "no native bf16"
    # (get_cpu_capability() names only "AVX2" / "AVX512", never bf16: a check on its strings never held)
    from meme.device import BF16_PROBES

    assert all(callable(getattr(torch.cpu, probe, None)) for probe in BF16_PROBES)


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, "fp32"), (True, False, "bf16"),
                                                        (False, True, "bf16"), (True, True, "bf16")])
def test_auto_precision_on_a_cpu_is_bf16_where_it_has_bf16_instructions(monkeypatch, avx512_bf16, amx, expected):
    from meme.device import resolve_precision

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"


def test_auto_precision_is_fp32_on_a_torch_without_the_probes(monkeypatch):
    from meme.device import resolve_precision

    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"


def test_off_a_terminal_no_bar_writes_a_line_per_batch(capsys):
    """A log (stderr not a terminal, as under pytest) gets no per-batch bar lines: neither a classifier's
    training nor an epoch's batches."""
    import sys

    from meme.eval.classifiers import fit_classifier
    from meme.progress import bar

    assert not sys.stderr.isatty()
    x, y = torch.rand(600, 6), torch.randint(0, 3, (600,))
    fit_classifier(lambda: torch.nn.Sequential(torch.nn.Linear(6, 3)), x, y, epochs=2, batch_size=32, progress=True,
                   desc="classifier demo")
    assert "classifier demo" not in capsys.readouterr().err
    assert bar(range(3), progress=True, fine=True).disable and not bar(range(3), progress=True).disable
    assert bar(range(3), progress=False).disable


def test_a_classifier_with_early_stopping_stops_at_the_plateau_and_learns():
    """Separable classes: held-out accuracy stops gaining after a few checks, and training ends patience checks
    and an anneal later, far short of the epochs allowed."""
    from meme.eval.classifiers import CHECK_EVERY, EarlyStop, accuracy, fit_classifier

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (20000,), generator=g)
    x = torch.nn.functional.one_hot(y, 4).float() * 3 + 0.3 * torch.randn(20000, 4, generator=g)
    steps = []
    net = torch.nn.Linear(4, 4)
    net.register_forward_hook(lambda m, i, o: steps.append(1) if m.training else None)
    rule = EarlyStop(patience=2, anneal=30)
    clf, _ = fit_classifier(lambda: net, x, y, epochs=20, batch_size=64, progress=False, early_stop=rule)
    full = 20 * -(-(20000 - 2000) // 64)
    assert len(steps) <= 10 * CHECK_EVERY + rule.anneal < full / 10   # measured: 380 steps of the 5,640 allowed
    assert accuracy(clf, x, y) > 0.99


def test_a_run_trained_on_a_gpu_is_rebuilt_on_a_machine_without_one(synth_dir, tmp_path, monkeypatch):
    """meme eval of a run whose config says cuda, where no GPU is visible: the size checks read the CPU's memory."""
    from meme.runs import load_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    list(train(small(synth_dir, epochs=1), tmp_path, progress=False))
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["config"]["device"] = "cuda"
    torch.save(state, tmp_path / "checkpoint.pt")
    model, cfg, _, _ = load_run(tmp_path)
    assert cfg.device == "cuda" and model.names == ("mnist", "svhn")


_HELD = """
import os, torch
from meme.device import tune_allocator
print(tune_allocator())
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
x = torch.ones(100 * 2**20 // 4)   # 100 MiB: above glibc's largest mmap threshold (32 MiB) by default
before = rss()
del x
print(before - rss() > 50 * 2**20)   # whether freeing it handed the pages back
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("setting, applied, handed_back", [("tuned", "True", "False"), ("default", "False", "True")])
def test_the_allocator_keeps_freed_tensor_memory_unless_told_not_to(setting, applied, handed_back):
    """``tune_allocator``: a freed 100 MiB tensor stays in the process (its pages need no fault and zeroing when the
    next step allocates them again); ``MEME_MALLOC=default`` keeps glibc's behaviour, which hands them back."""
    out = subprocess.run([sys.executable, "-c", _HELD], capture_output=True, text=True, check=True,
                         env={**os.environ, "MEME_MALLOC": setting}).stdout.split()
    assert out == [applied, handed_back]
