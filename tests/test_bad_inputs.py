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
    from meme.config import TrainConfig
    from meme.data import PairedData
    from meme.data.paired import write_array_table

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
        (lambda: TrainConfig(nets="mlp"), ["unknown nets 'mlp'; valid: published, appendix_k"]),
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
