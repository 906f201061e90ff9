"""User mistakes across the commands and the Python API: each gets exit status 2 (or a MemeError) and one line
that names the bad value and what is valid, before any long work starts, and nothing is written."""
from __future__ import annotations

import numpy as np
import pytest

from meme import cli as meme_cli
from meme.errors import MemeError
from orchestration import report, submit, sweep

MAINS = {"meme": meme_cli.main, "sweep.py": sweep.main, "report.py": report.main, "submit.py": submit.main}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths the cases name: a plain file, a random-bytes checkpoint, a data dir with broken MNIST files, a study
    with a misspelt metric, an empty folder."""
    d = tmp_path_factory.mktemp("bad")
    (d / "afile").write_text("keep me\n")
    (d / "rand.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    for name, blob in (("truncated", None), ("magic", None)):
        raw = d / name / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for split in ("train", "t10k"):
            images = bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(5 * 784)
            labels = bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big") + bytes(5)
            if name == "truncated":
                images = images[:-100]
            else:
                images = bytes([0x1F, 0x8B, 8, 0]) + images[4:]   # a gzip magic: the .gz file saved under the raw name
            (raw / f"{split}-images-idx3-ubyte").write_bytes(images)
            (raw / f"{split}-labels-idx1-ubyte").write_bytes(labels)
    (d / "empty").mkdir()
    (d / "typo.yaml").write_text("description: x\nmetric: coherance_cross_mean\nmode: max\nepochs: 1\n")
    return d


def _sub(argv, d):
    return [a.format(d=d) for a in argv]


CLI_CASES = [
    # meme train / eval / data / features
    ("meme", ["train", "--out", "{d}/afile", "--epochs", "1"], ["--out", "afile is a file"]),
    ("meme", ["eval", "--checkpoint", "{d}/nowhere", "--out", "{d}/afile"], ["--out", "afile is a file"]),
    ("meme", ["data", "synthetic", "--n-train", "0", "--data-dir", "{d}/new0"], ["--n-train 0", "at least 10"]),
    ("meme", ["data", "synthetic", "--n-train", "-5", "--data-dir", "{d}/new1"], ["--n-train -5", "at least 10"]),
    ("meme", ["data", "synthetic", "--n-test", "3", "--data-dir", "{d}/new2"], ["--n-test 3"]),
    ("meme", ["data", "synthetic", "--data-dir", "{d}/afile"], ["--data-dir", "afile is a file"]),
    ("meme", ["data", "download", "--n-train", "50", "--data-dir", "{d}/new3"], ["--n-train applies to svhn-standin"]),
    ("meme", ["features", "info", "--out", "/does/not/exist"], ["--out /does/not/exist does not exist"]),
    ("meme", ["data", "mnist-views", "--data-dir", "{d}/empty", "--no-download"], ["--out goes with mnist-views"]),
    ("meme", ["data", "mnist-views", "--data-dir", "{d}/empty", "--no-download", "--out", "{d}/afile"],
     ["--out", "afile is a file"]),
    ("meme", ["data", "mnist-views", "--data-dir", "{d}/empty", "--no-download", "--out", "{d}/r"],
     ["MNIST file", "is missing"]),
    ("meme", ["train", "--out", "{d}/r", "--dataset", "{d}/nodata.yaml"], ["no dataset file", "nodata.yaml"]),
    ("meme", ["train", "--out", "{d}/r", "--nets", "appendix-k"], ["unknown nets 'appendix-k'", "published, appendix_k"]),
    ("meme", ["train", "--out", "{d}/r", "--model", "vae"], ["unknown model 'vae'", "meme"]),
    ("meme", ["train", "--out", "{d}/r", "--supervision", "0"], ["supervision"]),
    ("meme", ["train", "--out", "{d}/r", "--observed", "text"], ["unknown observed 'text'", "mnist, svhn, split"]),
    ("meme", ["train", "--out", "{d}/r", "--lr", "0"], ["lr=0.0 must be > 0"]),
    ("meme", ["train", "--out", "{d}/r", "--device", "tpu"], ["unknown device 'tpu'", "cuda:N"]),
    ("meme", ["train", "--out", "{d}/r", "--precision", "fp16"], ["unknown precision 'fp16'", "bf16"]),
    ("meme", ["train", "--out", "{d}/r", "--sigma-floor", "-1"], ["sigma_floor=-1.0 must be >= 0"]),
    ("meme", ["train", "--out", "{d}/r", "--batch-size", "0"], ["batch_size=0 must be a positive integer"]),
    ("meme", ["train", "--out", "{d}/r", "--config", "{d}/missing.json"], ["cannot read config", "missing.json"]),
    ("meme", ["train", "--out", "{d}/r", "--data-dir", "{d}/empty", "--no-download", "--epochs", "1"],
     ["MNIST file", "is missing"]),
    ("meme", ["train", "--out", "{d}/r", "--data-dir", "{d}/truncated", "--no-download", "--epochs", "1"],
     ["train-images-idx3-ubyte has", "truncated"]),
    ("meme", ["train", "--out", "{d}/r", "--data-dir", "{d}/magic", "--no-download", "--epochs", "1"],
     ["train-images-idx3-ubyte is not an unsigned-byte IDX file", "1f8b0800"]),
    ("meme", ["eval", "--checkpoint", "{d}/nowhere"], ["no checkpoint at"]),
    ("meme", ["eval", "--checkpoint", "{d}/rand.pt"], ["rand.pt is corrupt or not a MEME checkpoint", "weights_only=True"]),
    ("meme", ["eval"], ["needs --checkpoint"]),
    ("meme", ["eval", "--checkpoint", "{d}/rand.pt", "--model", "MVAE"], ["unknown model 'MVAE'", "meme, mvae, mmvae"]),
    # sweep.py
    ("sweep.py", ["--study", "nope"], ["unknown study 'nope'", "smoke"]),
    ("sweep.py", ["--study", "{d}/typo.yaml", "--dry-run"], ["unknown metric 'coherance_cross_mean'",
                                                            "did you mean 'coherence_cross_mean'"]),
    ("sweep.py", ["--study", "smoke", "--dry-run", "--gpus-per-trial", "1.5"], ["--gpus-per-trial: 1.5 GPUs"]),
    ("sweep.py", ["--study", "smoke", "--dry-run", "--epochs", "0"], ["--epochs=0 must be >= 1"]),
    ("sweep.py", ["--study", "smoke", "--dry-run", "--cpus-per-trial", "0"], ["--cpus-per-trial=0.0 must be > 0"]),
    ("sweep.py", ["--study", "smoke", "--restart-errored"], ["go with --resume"]),
    ("sweep.py", ["--study", "smoke", "--storage", "{d}/afile"], ["--storage", "afile is a file"]),
    ("sweep.py", ["--study", "smoke", "--data-dir", "{d}/sw", "--storage", "{d}/store", "--tracking-uri",
                  "sqlite:///{d}/sw.db", "--address", "127.0.0.1:1"], ["cannot reach Ray at 127.0.0.1:1"]),
    ("sweep.py", ["--study", "smoke", "--data-dir", "{d}/sw", "--storage", "{d}/store", "--tracking-uri",
                  "http://127.0.0.1:9"], ["cannot reach the MLflow tracking server http://127.0.0.1:9"]),
    # report.py
    ("report.py", ["--study", "smokee", "--tracking-uri", "sqlite:///{d}/r.db"], ["unknown study 'smokee'", "smoke"]),
    ("report.py", ["--study", "smoke", "--tracking-uri", "http://127.0.0.1:9"], ["cannot reach the MLflow tracking server"]),
    ("report.py", ["--study", "smoke", "--tracking-uri", "sqlite:///{d}/r.db"], ["no MLflow experiment 'smoke'"]),
    # submit.py (nothing is sent: the address answers nowhere)
    ("submit.py", ["--address", "http://127.0.0.1:9", "--study", "smokee", "--storage", "s3://b/x", "--tracking-uri",
                   "http://mlflow:5000"], ["unknown study 'smokee'", "smoke"]),
    ("submit.py", ["--address", "http://127.0.0.1:9", "--study", "smoke", "--tracking-uri", "http://m:5000"],
     ["needs --storage"]),
    ("submit.py", ["--address", "http://127.0.0.1:9", "--study", "smoke", "--storage", "rel/path", "--tracking-uri",
                   "http://m:5000"], ["'rel/path' is a relative path"]),
    ("submit.py", ["--address", "http://127.0.0.1:9", "--study", "smoke", "--storage", "s3://b/x"],
     ["needs --tracking-uri http://HOST:5000"]),
]


@pytest.mark.parametrize("prog, argv, words", CLI_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CLI_CASES)])
def test_bad_command_line_input(files, capsys, prog, argv, words):
    before = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file()}
    code = MAINS[prog](_sub(argv, files))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith(f"{prog}: error: "), err
    for w in words:
        assert w in line, line
    assert "Traceback" not in err and "Re-running" not in err
    assert {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file() and p in before} == before  # nothing overwritten
    assert not any((files / n).exists() for n in ("new0", "new1", "new2", "new3", "r"))          # nothing created


# ------------------------------------------------------------------ Python API
def _parquet(path, values, labels=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"x": values}
    if labels is not None:
        cols["label"] = labels
    pq.write_table(pa.table(cols), path)
    return path


def _api_cases(d):
    from meme.models import TrainConfig
    from meme.data import PairedData
    from meme.data.paired import write_array_table
    from meme.train import Trainer

    x3 = np.zeros((3, 4), np.float32)
    a10 = write_array_table(d / "a10.parquet", np.zeros((10, 2)), np.arange(10))
    a6 = write_array_table(d / "a6.parquet", np.zeros((6, 2)), np.arange(6))
    b10 = write_array_table(d / "b10.parquet", np.zeros((10, 2)), np.arange(10)[::-1].copy())
    s2 = _parquet(d / "s2.parquet", ["u", "v"])
    return [
        (lambda: PairedData.from_arrays("a", x3, "b", x3, np.array(list("abc"))), ["integer class ids", "'a'"]),
        (lambda: PairedData.from_arrays("a", x3, "b", x3, np.array([np.nan, 1.7, -3.2])), ["row 0 holds nan"]),
        (lambda: PairedData.from_arrays("a", x3, "b", x3, np.array([0.0, 1.5, 2.0])), ["row 1 holds 1.5"]),
        (lambda: PairedData.from_arrays("a", x3, "b", x3, np.arange(2)), ["labels of shape (2,) for 3 rows"]),
        (lambda: PairedData.from_arrays("a", x3, "b", x3[:2]), ["a has 3 rows but b has 2"]),
        (lambda: PairedData.from_arrays("a", np.array(["q", "r"]), "b", x3[:2]), ["a: values must be numeric"]),
        (lambda: PairedData.from_parquet(a10, a6), ["has 10 rows but", "a6.parquet has 6"]),
        (lambda: PairedData.from_parquet(a10, b10), ["disagree on 'label' at row 0"]),
        (lambda: PairedData.from_parquet(s2, s2), ["column 'x' holds string values", "must be numeric"]),
        (lambda: PairedData.from_parquet(a10, a10, column="pixels"), ["has no column 'pixels'", "columns: x, label"]),
        (lambda: PairedData.from_parquet(d / "none.parquet", a10), ["none.parquet does not exist"]),
        (lambda: write_array_table(d / "w.parquet", np.zeros((10, 2)), np.arange(7)), ["labels of shape (7,) for 10 rows"]),
        (lambda: write_array_table(d / "w.parquet", np.array(["a", "b"])), ["values must be numeric"]),
        # the family against the dataset's modalities: checked where the run is built, before any data is read
        (lambda: Trainer(TrainConfig(nets="mlp", device="cpu", data_dir=str(d / "empty"))),
         ["unknown nets 'mlp'; valid: published, appendix_k"]),
        (lambda: TrainConfig.from_dict({"lrate": 1}), ["unknown config key(s) 'lrate'", "valid keys"]),
    ]


API_IDS = [f"api-{i}" for i in range(15)]


@pytest.mark.parametrize("i", range(15), ids=API_IDS)
def test_bad_python_api_input(tmp_path, i):
    call, words = _api_cases(tmp_path)[i]
    with pytest.raises(MemeError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    assert not (tmp_path / "w.parquet").exists()


def test_enough_cases():
    assert len(CLI_CASES) + len(API_IDS) >= 40


# ------------------------------------------------------- data that must not be lost or overwritten
def _md5s(root):
    import hashlib

    return {p: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _one_error_line(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith("meme: error: "), err
    return line


def test_generators_never_write_over_files_they_did_not_make(tmp_path, capsys):
    d = tmp_path / "data"
    (d / "SVHN").mkdir(parents=True)
    (d / "SVHN" / "train_32x32.mat").write_bytes(b"the user's real SVHN")
    (d / "SVHN" / "test_32x32.mat").write_bytes(b"the user's real SVHN test")
    before = _md5s(d)
    for what in ("svhn-standin", "synthetic"):
        line = _one_error_line(capsys, meme_cli.main(["data", what, "--data-dir", str(d), "--n-train", "20", "--n-test", "20"]))
        assert f"train_32x32.mat exists and was not written by `meme data {what}`" in line and "--force" in line, line
        assert _md5s(d) == before
    # --force replaces them; what a generator wrote, it may write again without --force
    assert meme_cli.main(["data", "svhn-standin", "--data-dir", str(d), "--n-train", "20", "--n-test", "20", "--force"]) == 0
    after = _md5s(d)
    assert after[d / "SVHN" / "train_32x32.mat"] != before[d / "SVHN" / "train_32x32.mat"]
    assert meme_cli.main(["data", "svhn-standin", "--data-dir", str(d), "--n-train", "20", "--n-test", "20"]) == 0
    capsys.readouterr()
    # a real MNIST beside a generated SVHN: synthetic refuses, naming the MNIST file, and writes nothing
    raw = d / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"real MNIST")
    before = _md5s(d)
    line = _one_error_line(capsys, meme_cli.main(["data", "synthetic", "--data-dir", str(d)]))
    assert "train-images-idx3-ubyte exists and was not written by `meme data synthetic`" in line, line
    assert _md5s(d) == before
    line = _one_error_line(capsys, meme_cli.main(["data", "download", "--data-dir", str(d), "--force"]))
    assert "--force applies to svhn-standin, synthetic and polymnist, not to download" in line


def test_eval_into_the_run_folder_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"weights")
    (run / "metrics.json").write_text('{"loss": 1.0}\n')
    before = _md5s(run)
    line = _one_error_line(capsys, meme_cli.main(["eval", "--checkpoint", str(run), "--out", str(run)]))
    assert f"--out {run} is a training run's folder" in line and "metrics.json would be overwritten" in line
    assert _md5s(run) == before


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys, synth_dir):
    from filelock import FileLock

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with FileLock(out / ".lock"):
        (out / ".lock.pid").write_text("4242\n")
        before = _md5s(out)
        line = _one_error_line(capsys, meme_cli.main(["train", "--out", str(out), "--data-dir", str(synth_dir),
                                                      "--no-download", "--epochs", "1", "--max-train-pairs", "64"]))
        assert f"{out} is in use by another run (PID 4242)" in line, line
        assert _md5s(out) == before


def test_a_full_disk_during_the_evaluation_keeps_the_epoch_and_leaves_no_half_evaluation(tmp_path, capsys, synth_dir,
                                                                                         monkeypatch):
    import errno

    from meme.eval.evaluator import Evaluator

    out = tmp_path / "run"

    def full_disk(self, eval_cfg=None, out_dir=None, figures=False, progress=False):
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "half.png").write_bytes(b"\x89PNG trunc")
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "latents.png"))

    monkeypatch.setattr(Evaluator, "__call__", full_disk)
    argv = ["train", "--out", str(out), "--data-dir", str(synth_dir), "--no-download", "--epochs", "1",
            "--max-train-pairs", "64", "--batch-size", "32", "--K", "2", "--n-pseudo", "4", "--latent-dim", "4"]
    line = _one_error_line(capsys, meme_cli.main(argv))
    assert "disk full writing" in line and "latents.png" in line and "the last checkpoint" in line, line
    import torch

    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1     # the epoch's training is kept
    assert not (out / "eval").exists() and not list(out.glob(".eval*"))          # no half-written evaluation
    assert not (out / ".lock.pid").exists()                                       # the lock is released


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_table_with_nan_or_inf_is_refused_when_loaded(tmp_path, capsys, bad):
    from meme.data.paired import write_array_table

    x = np.random.default_rng(0).random((40, 6)).astype(np.float32)
    x[17, 3] = bad
    write_array_table(tmp_path / "a_train.parquet", x, np.arange(40) % 4)
    write_array_table(tmp_path / "a_test.parquet", x[:10], np.arange(10) % 4)
    np.save(tmp_path / "b_train.npy", np.zeros((40, 3), np.float32))
    np.save(tmp_path / "b_test.npy", np.zeros((10, 3), np.float32))
    (tmp_path / "data.yaml").write_text("labels: label\nmodalities:\n  - {name: a, train: a_train.parquet, test: a_test.parquet}\n"
                                        "  - {name: b, train: b_train.npy, test: b_test.npy}\n")
    before = _md5s(tmp_path)
    line = _one_error_line(capsys, meme_cli.main(["train", "--dataset", str(tmp_path / "data.yaml"), "--out",
                                                  str(tmp_path / "run"), "--epochs", "1"]))
    assert f"a_train.parquet: column 'x': row 17 holds {bad}; values must be finite" in line, line
    assert _md5s(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_judging_classifier_at_chance_is_not_cached_and_is_reported(tmp_path, monkeypatch, caplog):
    import torch

    from meme.data.dataset_file import read_dataset_file
    from meme.eval.table_classifiers import at_chance, table_classifiers

    labels = torch.tensor([0, 0, 0, 1])   # the most frequent class is 3/4 of the rows
    assert at_chance(0.76, labels, 2) and at_chance(0.5, labels, 2) and not at_chance(0.80, labels, 2)
    assert at_chance(0.11, torch.arange(10), 10) and not at_chance(0.13, torch.arange(10), 10)
    rng = np.random.default_rng(0)
    for split, n in (("train", 400), ("test", 200)):   # labels unrelated to the rows: nothing to learn
        np.savez(tmp_path / f"{split}.npz", x=rng.random((n, 5)).astype(np.float32), y=rng.random((n, 5)).astype(np.float32),
                 label=rng.integers(0, 4, n))
    (tmp_path / "data.yaml").write_text("labels: label\nmodalities:\n  - {name: a, train: train.npz, test: test.npz, column: x}\n"
                                        "  - {name: b, train: train.npz, test: test.npz, column: y}\n")
    cache = tmp_path / "cache"
    out = table_classifiers(read_dataset_file(tmp_path / "data.yaml"), directory=cache)
    assert set(out) == {"a", "b"} and all(rec.get("warning") for _, rec in out.values())
    assert not cache.exists() or not list(cache.iterdir())                      # nothing cached
    assert "at chance" in caplog.text


@pytest.mark.parametrize("extra, words", [
    (["--latent-dim", "1000000000"], ["latent_dim=1000000000 (its layers) needs about", "GiB"]),
    (["--K", "1000000000"], ["K=1000000000 at batch_size=128 (per batch) needs about", "GiB"]),
    (["--n-pseudo", "100000", "--max-train-pairs", "256", "--supervision", "1"],
     ["n_pseudo=100000 is more than the 256 training rows that observe 'mnist'", "at most 256"]),
    (["--max-train-pairs", "1"], ["has 1 training example (max_train_pairs=1)", "at least 2"]),
    (["--batch-size", "1"], ["batch_size=1 must be at least 2"]),
    (["--seed", "-1"], ["seed=-1 must be >= 0"]),
], ids=["latent", "K", "n_pseudo", "one-pair", "batch-1", "seed"])
def test_sizes_that_cannot_work_are_refused_before_training(synth_dir, tmp_path, capsys, extra, words):
    before = _md5s(synth_dir)
    line = _one_error_line(capsys, meme_cli.main(["train", "--out", str(tmp_path / "run"), "--data-dir", str(synth_dir),
                                                  "--no-download", "--epochs", "1", *extra]))
    for w in words:
        assert w in line, line
    assert not (tmp_path / "run").exists() and _md5s(synth_dir) == before


@pytest.mark.parametrize("what", ["label", "token"])
def test_a_label_or_token_id_too_large_to_fit_is_refused_when_loaded(tmp_path, capsys, what):
    rows = np.zeros((20, 4), np.float32)
    labels = np.arange(20) % 3
    tokens = np.ones((20, 5), np.int64)
    if what == "label":
        labels[7] = 10**12
    else:
        tokens[7, 2] = 2**40
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=rows, t=tokens, label=labels)
    (tmp_path / "data.yaml").write_text("labels: label\nmodalities:\n  - {name: a, train: train.npz, test: test.npz}\n"
                                        "  - {name: b, train: train.npz, test: test.npz, column: t}\n")
    before = _md5s(tmp_path)
    line = _one_error_line(capsys, meme_cli.main(["train", "--dataset", str(tmp_path / "data.yaml"), "--out",
                                                  str(tmp_path / "run"), "--epochs", "1"]))
    assert (f"label {10**12}" if what == "label" else f"token id {2**40}") in line and "needs about" in line, line
    assert _md5s(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_last_batch_of_one_is_left_out_only_where_batchnorm_would_see_it():
    from meme.data import PairedData
    from meme.data.batch import BatchLoader
    from meme.data.observation import make_observation

    data = PairedData.from_arrays("a", np.zeros((9, 2), np.float32), "b", np.zeros((9, 2), np.float32))
    obs = make_observation(9, 1.0, "split", data.names, False, 0)
    sizes = lambda bn: sorted(len(p) for p, _ in BatchLoader(data, obs, 4, seed=0, batchnorm=bn).plan(1))  # noqa: E731
    assert sizes((False, False)) == [1, 4, 4]        # no BatchNorm: the epoch as before
    assert sizes((False, True)) == [4, 4]            # a batch of one would reach BatchNorm: left out


@pytest.mark.parametrize("prog, argv, words", [
    ("sweep.py", ["--study", "{d}/binary.yaml", "--dry-run"], ["binary.yaml: it is not UTF-8 text"]),
    ("meme", ["train", "--dataset", "{d}/loop1.yaml", "--out", "{d}/r"], ["dataset file", "loop1.yaml: its links do not lead"]),
    ("meme", ["train", "--out", "/proc/meme-out", "--epochs", "1"], ["--out /proc/meme-out: /proc takes no new folders"]),
    ("meme", ["eval", "--checkpoint", "{d}/r", "--out", "/sys/meme-out"], ["--out /sys/meme-out: /sys takes no new folders"]),
    ("report.py", ["--study", "smoke", "--tracking-uri", "sqlite:///{d}/notdb.db", "--no-log"],
     ["notdb.db is not an SQLite database"]),
    ("report.py", ["--study", "smoke", "--tracking-uri", "mysql://u:p@localhost/db", "--no-log"],
     ["the mysql driver is not installed; pip install mysqlclient"]),
    ("submit.py", ["--address", "http://[::1:8265", "--study", "smoke", "--storage", "s3://b/x", "--tracking-uri",
                   "http://m:5000"], ["--address 'http://[::1:8265' is not a valid URL", "http://[::1]:8265"]),
], ids=["binary-study", "link-loop", "proc", "sys", "not-a-db", "mysql-driver", "ipv6"])
def test_unreadable_files_and_unwritable_paths_are_one_line(tmp_path, capsys, prog, argv, words):
    import os

    (tmp_path / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    os.symlink(tmp_path / "loop2.yaml", tmp_path / "loop1.yaml")
    os.symlink(tmp_path / "loop1.yaml", tmp_path / "loop2.yaml")
    (tmp_path / "notdb.db").write_text("not a database\n")
    before = _md5s(tmp_path)
    code = MAINS[prog](_sub(argv, tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith(f"{prog}: error: "), err
    for w in words:
        assert w in line, line
    assert _md5s(tmp_path) == before and not (tmp_path / "r").exists()


def test_a_huge_grid_is_refused_from_its_size_before_any_point_is_built(tmp_path, capsys, monkeypatch):
    from orchestration import study as study_mod

    study = tmp_path / "big.yaml"
    study.write_text("description: x\ngrid:\n  seed: %s\n  data_seed: %s\n  K: %s\nmetric: loss\nmode: min\nepochs: 1\n"
                     % (list(range(1000)), list(range(1000)), list(range(1, 1001))))
    monkeypatch.setattr(study_mod, "grid_points", lambda grid: pytest.fail("the points were built"))
    assert sweep.main(["--study", str(study), "--dry-run"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "grid: expands to 1,000,000,000 trials; at most 10,000" in line, line


def test_a_search_over_one_value_is_refused_and_the_dry_run_names_searched_keys_as_drawn(tmp_path, capsys):
    head = "description: x\nbase: {model: mvae}\nsearcher: {name: optuna, seed: 0, num_samples: 4}\nmetric: loss\nmode: min\nepochs: 1\n"
    (tmp_path / "one.yaml").write_text(head + "search: {K: {choice: [3]}}\n")
    assert sweep.main(["--study", str(tmp_path / "one.yaml"), "--dry-run"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "search.K.choice: [3] is one value, so there is nothing to search" in line and "set K: 3 in base" in line
    (tmp_path / "two.yaml").write_text(head + "search: {K: {choice: [3, 5]}}\n")
    assert sweep.main(["--study", str(tmp_path / "two.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "mvae-f1-split-K?-s0" in out and "K10" not in out, out


def test_python_api_mistakes_are_one_line(tmp_path):
    from meme.models import TrainConfig
    from meme.data import PairedData
    from meme.data.paired import write_array_table
    from meme.train import Trainer

    x = np.zeros((4, 2), np.float32)
    nan_rows = x.copy()
    nan_rows[2, 1] = np.nan
    good = PairedData.from_arrays("x", np.zeros((20, 1, 28, 28), np.float32), "y", np.zeros((20, 3, 32, 32), np.float32))
    cases = [
        (lambda: PairedData.from_arrays("a", [[1.0, 2.0], [3.0]], "b", x[:2]), "a: rows of different shapes (a ragged array)"),
        (lambda: PairedData.from_arrays("a", x, "a", x), "two modalities named 'a'"),
        (lambda: PairedData.from_arrays("a", nan_rows, "b", x), "a: row 2 holds nan; values must be finite"),
        (lambda: write_array_table(tmp_path / "z.parquet", np.zeros((0, 3))), "z.parquet: the array has 0 rows"),
        (lambda: Trainer(TrainConfig(epochs=1, device="cpu"), train_data=good, test_data=good),
         "the data's modalities (x, y) are not dataset 'mnist_svhn''s (mnist, svhn)"),
    ]
    for call, words in cases:
        with pytest.raises(MemeError) as e:
            call()
        assert words in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "z.parquet").exists()


@pytest.mark.parametrize("extra, words", [
    (["--gpus-per-trial", "0.5"], ["--gpus-per-trial 0.5 but this machine has no CUDA GPU"]),
    (["--address", "127.0.0.1:9"], ["127.0.0.1:9"]),
], ids=["gpu-on-cpu", "dead-ray"])
def test_a_study_that_cannot_run_is_refused_before_any_data_is_generated(tmp_path, capsys, monkeypatch, extra, words):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.chdir(tmp_path)
    code = sweep.main(["--study", "smoke", "--data-dir", str(tmp_path / "data"), "--storage", str(tmp_path / "runs"),
                       *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err, err
    line = err.splitlines()[-1]
    for w in words:
        assert w in line, line
    assert not (tmp_path / "data").exists()   # the smoke study's synthetic data was not generated
