"""Your own two modalities: dataset files, networks chosen by shape, every model on every kind, classifiers cached by
the tables' content, evaluation with and without labels, and the mistakes a dataset file can hold."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from meme import cli as meme_cli
from meme.models import TrainConfig
from meme.data import get_dataset
from meme.data.dataset_file import read_dataset_file
from meme.errors import MemeError
from meme.models import MODELS
from meme.nets import PublishedMNISTModality, PublishedSVHNModality
from meme.nets.shaped import (ImageModality, PublishedImageModality, PublishedTokensModality, PublishedVectorModality,
                              VectorModality, check_image_shape, conv_widths, image_stages)
from meme.train import Trainer

N_TRAIN, N_TEST, VOCAB, T = 96, 40, 13, 6


def _labels(n, seed):
    return np.random.default_rng(seed).integers(0, 3, n)


def _image_rows(y, shape, seed):
    """uint8 images whose brightness depends on the label (learnable, not trivial)."""
    rng = np.random.default_rng(seed)
    base = (y[:, None, None, None] * 80 + 20).astype(np.int64)
    return np.clip(base + rng.integers(-20, 20, (len(y), *shape)), 0, 255).astype(np.uint8)


def _tables(d, kinds=("image", "vector"), labels=True):
    """Train/test tables of two modalities of the given kinds, written in different formats: images as a nested
    fixed-size-list Parquet table written by pyarrow directly, vectors as .npy, tokens as .npz."""
    out = {}
    for i, kind in enumerate(kinds):
        name = f"m{i}_{kind}"
        for split, n, seed in (("train", N_TRAIN, 0), ("test", N_TEST, 1)):
            y = _labels(n, seed)
            if kind == "image":
                x = _image_rows(y, (1, 8, 12), seed + 10 * i)
                arr = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 12)
                arr = pa.FixedSizeListArray.from_arrays(arr, 8)
                arr = pa.FixedSizeListArray.from_arrays(arr, 1)
                cols = {"pixels": arr, **({"label": pa.array(y)} if labels else {})}
                path = d / f"{name}_{split}.parquet"
                pq.write_table(pa.table(cols), path)
                out[(name, split)] = (path, "pixels")
            elif kind == "vector":
                x = (np.random.default_rng(seed + 10 * i).normal(size=(n, 5)) + 3 * y[:, None]).astype(np.float64)
                path = d / f"{name}_{split}.npy"
                np.save(path, x)
                out[(name, split)] = (path, None)
            else:
                x = np.random.default_rng(seed + 10 * i).integers(1, VOCAB - 3, (n, T))
                x[:, 0] = y + VOCAB - 3
                x[:, -2:] = 0  # padding
                path = d / f"{name}_{split}.npz"
                np.savez(path, ids=x, **({"label": y} if labels else {}))
                out[(name, split)] = (path, "ids")
    return out


def _dataset_file(d, kinds=("image", "vector"), labels=True, extra="", fname="data.yaml"):
    tables = _tables(d, kinds, labels)
    lines = ["labels: label" if labels else "", extra, "modalities:"]
    for i, kind in enumerate(kinds):
        name = f"m{i}_{kind}"
        (tr, col), (te, _) = tables[(name, "train")], tables[(name, "test")]
        lines.append(f"  - name: {name}\n    train: {tr.name}\n    test: {te.name}" + (f"\n    column: {col}" if col else ""))
    path = d / fname
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ shape rules
def test_image_stages_and_widths_by_hand():
    assert image_stages(32, 32) == (3, 4, 4)      # SVHN: 32 -> 16 -> 8 -> 4
    assert image_stages(28, 28) == (2, 7, 7)      # MNIST: 28 -> 14 -> 7
    assert image_stages(64, 48) == (3, 8, 6)      # stops once a side would fall below 8
    assert image_stages(8, 12) == (1, 4, 6)
    assert image_stages(30, 30) == (1, 15, 15)    # odd: no further halving
    assert conv_widths(3) == [32, 64, 128] and conv_widths(5) == [32, 64, 128, 256, 256]
    assert check_image_shape((28, 28)) == (1, 28, 28)


@pytest.mark.parametrize("shape, words", [
    ((32, 32, 3), ["channels-last", "nearest supported: (3, 32, 32)"]),
    ((3, 27, 27), ["nearest supported: (3, 28, 28)"]),
    ((3, 4, 4), ["nearest supported: (3, 8, 8)"]),
    ((100, 32, 32), ["nearest supported: (64, 32, 32)"]),
    ((1, 1, 28, 28), ["images are (C, H, W) or (H, W)", "nearest supported: (1, 28, 28)"]),
])
def test_unsupported_image_shapes_name_the_nearest(shape, words):
    with pytest.raises(MemeError) as e:
        check_image_shape(shape)
    for w in words:
        assert w in str(e.value), str(e.value)


def _shapes(module):
    return [tuple(v.shape) for v in module.state_dict().values()]


def test_published_image_builder_on_32x32x3_is_the_published_svhn_network():
    """Sized from (3, 32, 32), the image builder gives the published SVHN encoder and decoder, layer for layer."""
    built, svhn = PublishedImageModality(20, shape=(3, 32, 32)), PublishedSVHNModality(20)
    assert _shapes(built.enc) + _shapes(built.enc_last) == _shapes(svhn.enc)
    assert _shapes(built.dec) == _shapes(svhn.dec)
    assert (built.sigma_rule, built.default_sigma_floor) == (svhn.sigma_rule, svhn.default_sigma_floor)
    svhn.load_state_dict({k: v for k, v in zip(svhn.state_dict(), built.state_dict().values())})
    x = torch.rand(4, 3, 32, 32)
    z = torch.randn(4, 20)
    built.eval(), svhn.eval()
    for a, b in zip(built.encode(x), svhn.encode(x)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(built.decode(z), svhn.decode(z))


def test_published_vector_builder_on_784_is_the_published_mnist_mlp():
    built, mnist = PublishedVectorModality(16, shape=(784,)), PublishedMNISTModality(16)
    assert _shapes(built) == _shapes(mnist)
    mnist.load_state_dict({k: v for k, v in zip(mnist.state_dict(), built.state_dict().values())})
    x = torch.rand(5, 784)
    for a, b in zip(built.encode(x), mnist.encode(x.view(5, 1, 28, 28))):
        torch.testing.assert_close(a, b)
    z = torch.randn(5, 16)
    # the vector decoder's output is the identity, the MNIST decoder's a sigmoid of the same pre-activation
    torch.testing.assert_close(torch.sigmoid(built.decode(z)), mnist.decode(z).view(5, 784))


def test_appendix_k_builders_and_likelihoods_by_hand():
    img = ImageModality(8, shape=(1, 28, 28))
    assert _shapes(img.enc) == [(32, 1, 4, 4), (32,), (64, 32, 4, 4), (64,)]
    assert _shapes(img.enc_mu) == [(8, 64, 7, 7), (8,)]
    vec = VectorModality(8, shape=(5,), likelihood="gaussian", scale=0.5)
    x, mean = torch.tensor([[1.0, 2, 3, 4, 5]]), torch.tensor([[1.5, 2, 2, 4, 5]])
    want = sum(-0.5 * (d / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi) for d in (-0.5, 0, 1, 0, 0))
    assert float(vec.log_likelihood(x, mean)) == pytest.approx(want, rel=1e-6)
    lap = VectorModality(8, shape=(5,), scale=2.0)
    assert float(lap.log_likelihood(x, mean)) == pytest.approx(-(0.5 + 1) / 2 - 5 * np.log(4.0), rel=1e-6)


def test_tokens_ignore_padding_and_take_probability_rows():
    tok = PublishedTokensModality(8, shape=(4,), vocab=5, pad=0)
    ids = torch.tensor([[3, 1, 0, 0]])
    logits = torch.randn(1, 4, 5)
    lp = torch.log_softmax(logits, -1)
    assert float(tok.log_likelihood(ids, logits)) == pytest.approx(float(lp[0, 0, 3] + lp[0, 1, 1]), rel=1e-6)
    a = tok.encode(ids)[0]
    b = tok.encode(tok.pseudo_input(ids))[0]  # one-hot rows encode exactly as their ids
    torch.testing.assert_close(a, b)
    assert float(tok.embedding.weight[0].detach().abs().sum()) == 0.0   # the padding id embeds to zero


# ------------------------------------------------------------ every kind, every model
@pytest.mark.parametrize("kinds", [("image", "vector"), ("tokens", "image"), ("vector", "tokens")])
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_trains_a_step_on_every_kind(tmp_path, kinds, model):
    path = _dataset_file(tmp_path, kinds)
    names = get_dataset(str(path)).names
    cfg = TrainConfig(dataset=str(path), model=model, epochs=1, batch_size=32, latent_dim=8, n_pseudo=7,
                      supervision=0.5, observed=names[1], device="cpu", K=3)
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    metrics = trainer.run_epoch()
    assert np.isfinite(metrics["loss"])
    changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter moved"
    kinds_built = [m.kind for m in trainer.model.mods]
    assert kinds_built == list(kinds)
    if model == "meme":
        assert metrics["loss_paired"] and metrics["loss_t"]  # the unpaired rest keeps names[1] only


def test_nets_family_applies_to_the_shape_builders(tmp_path):
    path = _dataset_file(tmp_path)
    for nets, cls in (("published", PublishedImageModality), ("appendix_k", ImageModality)):
        cfg = TrainConfig(dataset=str(path), nets=nets, latent_dim=8)
        mods = get_dataset(cfg.dataset).build_modalities(cfg, None)
        assert type(mods[0]) is cls and mods[0].name == "m0_image"


def test_dataset_file_latent_dim_and_network_overrides(tmp_path):
    path = _dataset_file(tmp_path, extra="latent_dim: 12")
    text = path.read_text().replace("    column: pixels", "    column: pixels\n    networks: {channels: 8}") \
        + "    networks: {hidden: [20, 10], likelihood: gaussian, scale: 0.25}\n"
    path.write_text(text)
    cfg = TrainConfig(dataset=str(path))
    img, vec = get_dataset(cfg.dataset).build_modalities(cfg, None)
    assert img.latent_dim == vec.latent_dim == 12
    assert _shapes(img.enc)[0] == (8, 1, 4, 4)
    assert [m.out_features for m in vec.enc_hidden if isinstance(m, torch.nn.Linear)] == [20, 10]
    assert (vec.likelihood, vec.llik_scale) == ("gaussian", 0.25)
    assert get_dataset(cfg.replace(latent_dim=5).dataset) and \
        get_dataset(cfg.dataset).build_modalities(cfg.replace(latent_dim=5), None)[0].latent_dim == 5


def test_tables_written_by_pyarrow_directly_round_trip(tmp_path):
    path = _dataset_file(tmp_path, ("image", "tokens"))
    ds = read_dataset_file(path)
    train = ds.load("train")
    y = _labels(N_TRAIN, 0)
    np.testing.assert_array_equal(train.tables[0].numpy(), _image_rows(y, (1, 8, 12), 0))
    np.testing.assert_array_equal(train.labels.numpy(), y)
    assert train.tables[1].dtype == torch.int64 and ds.resolved()[1].vocab == VOCAB
    assert [r.kind for r in ds.resolved()] == ["image", "tokens"]


def test_relative_paths_are_recorded_absolute(tmp_path, monkeypatch):
    path = _dataset_file(tmp_path)
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(dataset="data.yaml")
    assert cfg.dataset == str(path.resolve())


# ------------------------------------------------------------ classifiers and evaluation
def test_classifiers_are_cached_by_the_tables_content(tmp_path, monkeypatch):
    from meme.eval.table_classifiers import table_classifiers

    path = _dataset_file(tmp_path)
    cache = tmp_path / "cache"
    first = table_classifiers(read_dataset_file(path), directory=cache)
    files = sorted(p.name for p in cache.glob("*.pt"))
    assert len(files) == 2
    assert all(r["test_accuracy"] > 0.9 for _, r in first.values()), {k: r["test_accuracy"] for k, (_, r) in first.items()}
    stamps = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = table_classifiers(read_dataset_file(path), directory=cache)
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps          # reused, not retrained
    for name in first:
        for a, b in zip(first[name][0].state_dict().values(), again[name][0].state_dict().values()):
            assert torch.equal(a, b)
    x = np.load(tmp_path / "m1_vector_train.npy")
    x[0, 0] += 1.0                                                               # one value changes
    np.save(tmp_path / "m1_vector_train.npy", x)
    table_classifiers(read_dataset_file(path), directory=cache)
    now = sorted(p.name for p in cache.glob("*.pt"))
    assert len(now) == 3 and [n for n in now if n.startswith("data-m0")] == [n for n in files if n.startswith("data-m0")]


def test_evaluation_on_user_data_with_labels(tmp_path):
    path = _dataset_file(tmp_path)
    cfg = TrainConfig(dataset=str(path), epochs=1, batch_size=32, latent_dim=8, device="cpu")
    trainer = Trainer(cfg)
    trainer.run_epoch()
    metrics, files = trainer.evaluator(out_dir=tmp_path / "eval", figures=True)
    for k in ("coherence_m0_image_to_m1_vector", "coherence_m1_vector_to_m0_image", "latent_acc_m0_image",
              "latent_acc_m1_vector", "w2_class_diag_mean", "classifier_acc_m0_image", "classifier_acc_m1_vector"):
        assert 0 <= metrics[k] < 100, k
    assert metrics["classifier_acc_m0_image"] > 0.9
    assert {f.name for f in files} >= {"tsne.png", "w2_histogram.png", "class_matrix.png"}


def test_evaluation_without_labels_skips_label_metrics_with_one_line(tmp_path, caplog):
    path = _dataset_file(tmp_path, labels=False)
    cfg = TrainConfig(dataset=str(path), epochs=1, batch_size=32, latent_dim=8, device="cpu")
    trainer = Trainer(cfg)
    trainer.run_epoch()
    with caplog.at_level(logging.INFO):
        metrics, _ = trainer.evaluator()
    assert not any(k.startswith(("coherence", "latent_acc", "classifier_acc", "w2_class")) for k in metrics)
    assert np.isfinite(metrics["w2_gap"]) and np.isfinite(metrics["elbo_test"])
    lines = [r.getMessage() for r in caplog.records if "no labels" in r.getMessage()]
    assert len(lines) == 1 and "coherence, latent accuracy and the class matrix are skipped" in lines[0]


def test_meme_train_and_eval_on_a_dataset_file(tmp_path, capsys):
    path = _dataset_file(tmp_path, ("image", "tokens"))
    out = tmp_path / "run"
    assert meme_cli.main(["train", "--dataset", str(path), "--epochs", "1", "--batch-size", "32", "--latent-dim", "8",
                          "--supervision", "0.5", "--observed", "m0_image", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dataset"] == str(path.resolve())
    assert meme_cli.main(["eval", "--checkpoint", str(out), "--quiet", "--n-tsne", "0"]) == 0
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert "coherence_m1_tokens_to_m0_image" in metrics and "latent_acc_m1_tokens" in metrics


def test_a_study_takes_a_dataset_file(tmp_path):
    from orchestration.study import parse_study

    path = _dataset_file(tmp_path)
    study = parse_study(f"description: own data\nmetric: coherence_cross_mean\nmode: max\nepochs: 1\n"
                        f"base: {{dataset: {path}, latent_dim: 8}}\ngrid: {{observed: [m0_image, split]}}\n", "own")
    assert study.base_config()["dataset"] == str(path.resolve())
    assert study.num_trials() == 2
    with pytest.raises(MemeError, match="unknown observed 'mnist'.*m0_image, m1_vector, split"):
        parse_study(f"description: x\nmetric: loss\nmode: min\nepochs: 1\nbase: {{dataset: {path}, observed: mnist}}\n", "x")


# ------------------------------------------------------------ mistakes in dataset files
def _case(d, name):
    """A dataset file with one mistake; returns its path."""
    path = _dataset_file(d, ("image", "tokens") if name in ("vocab", "tokenlik") else ("image", "vector"))
    text = path.read_text()
    if name == "rows":
        np.save(d / "m1_vector_train.npy", np.zeros((N_TRAIN - 1, 5)))
    elif name == "labels":
        t = pq.read_table(d / "m0_image_train.parquet")
        y = t.column("label").to_numpy().copy()
        y[7] = (y[7] + 1) % 3
        np.savez(d / "lab.npz", x=np.zeros((N_TRAIN, 5), np.float32), label=_labels(N_TRAIN, 0))
        pq.write_table(t.set_column(1, "label", pa.array(y)), d / "m0_image_train.parquet")
        text = text.replace("m1_vector_train.npy", "lab.npz")
    elif name == "column":
        text = text.replace("column: pixels", "column: image")
    elif name == "shape":
        np.save(d / "m1_vector_train.npy", np.zeros((N_TRAIN, 2, 3, 4, 5)))
        text = text + "    kind: image\n"
    elif name == "nonnumeric":
        pq.write_table(pa.table({"pixels": pa.array(["a"] * N_TRAIN), "label": pa.array(_labels(N_TRAIN, 0))}),
                       d / "m0_image_train.parquet")
    elif name == "vocab":
        text = text + "    vocab: 5\n"
    elif name == "key":
        text = text.replace("labels: label", "labels: label\nlabel_column: y")
    elif name == "missing":
        text = text.replace("m1_vector_test.npy", "nowhere.npy")
    elif name == "format":
        (d / "table.csv").write_text("1,2\n")
        text = text.replace("m1_vector_test.npy", "table.csv")
    elif name == "netkey":   # channels on a modality whose rows are vectors (kind inferred)
        text = text + "    networks: {channels: 16}\n"
    elif name == "tokenlik":
        text = text + "    networks: {likelihood: gaussian}\n"
    elif name == "notparquet":
        (d / "m1_vector_test.parquet").write_bytes(b"not a parquet file at all")
        text = text.replace("m1_vector_test.npy", "m1_vector_test.parquet")
    path.write_text(text)
    return path


BAD_FILES = [
    ("rows", ["m0_image_train.parquet has 96 rows but", "m1_vector_train.npy has 95", "equal row counts"]),
    ("labels", ["m0_image_train.parquet and", "lab.npz disagree on labels column 'label' at row 7"]),
    ("column", ["m0_image_train.parquet has no column 'image'", "columns: pixels, label"]),
    ("shape", ["m1_vector_train.npy", "(2, 3, 4, 5)", "nearest supported: (3, 8, 8)"]),
    ("nonnumeric", ["m0_image_train.parquet: column 'pixels'", "string", "numeric"]),
    ("vocab", ["m1_tokens_train.npz: column 'ids': row 0 holds token id", "outside the vocabulary 0..4",
               "raise vocab: to at least 13"]),
    ("key", ["data.yaml: label_column: unknown key; valid keys: name, modalities, labels, latent_dim"]),
    ("missing", ["data.yaml: modalities[1].test:", "nowhere.npy does not exist"]),
    ("format", ["modalities[1].test:", "table.csv is not a Parquet or NumPy table; valid: .parquet, .pq, .npy, .npz"]),
    ("notparquet", ["m1_vector_test.parquet is not a readable Parquet file"]),
    ("netkey", ["data.yaml: modalities[1].networks.channels: does not apply to vector rows ('m1_vector'); "
                "valid for vector: hidden, likelihood, scale"]),
    ("tokenlik", ["data.yaml: modalities[1].networks.likelihood: does not apply to tokens rows ('m1_tokens'); "
                  "valid for tokens: hidden"]),
]


@pytest.mark.parametrize("name, words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_dataset_files_get_one_line_and_write_nothing(tmp_path, capsys, name, words):
    path = _case(tmp_path, name)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    code = meme_cli.main(["train", "--dataset", str(path), "--epochs", "1", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("meme: error: ") and "Traceback" not in err, err
    for w in words:
        assert w in line, line
    assert not (tmp_path / "run").exists()
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before


def test_mnist_views_write_a_dataset_file_and_study_from_real_mnist(real_mnist_dir, tmp_path, capsys):
    from meme.data.views import write_mnist_views
    from orchestration.study import load_study

    out = tmp_path / "mydata"
    write_mnist_views(real_mnist_dir, out, download=False)
    ds = read_dataset_file(out / "data.yaml")
    assert [(r.kind, r.shape) for r in ds.resolved()] == [("image", (1, 14, 28)), ("vector", (392,))]
    train = ds.load("train")
    assert len(train) == 60000 and train.tables[1].dtype == torch.uint8
    study = load_study(out / "study.yaml")
    assert study.num_trials() == 4 and study.base_config()["dataset"] == str(out / "data.yaml")
    before = (out / "data.yaml").stat().st_mtime_ns
    assert meme_cli.main(["data", "mnist-views", "--data-dir", str(real_mnist_dir), "--no-download",
                          "--out", str(out)]) == 2
    assert "top_train.parquet exists; give another --out (nothing is overwritten)" in capsys.readouterr().err
    assert (out / "data.yaml").stat().st_mtime_ns == before


def test_a_trainer_finds_its_classifiers_once(tmp_path, monkeypatch):
    """Evaluating every epoch does not hash, load or train the classifiers again each time."""
    import meme.eval.evaluator as evaluator

    path = _dataset_file(tmp_path)
    calls = []
    real = evaluator.run_classifiers
    monkeypatch.setattr(evaluator, "run_classifiers", lambda *a, **k: calls.append(1) or real(*a, **k))
    trainer = Trainer(TrainConfig(dataset=str(path), epochs=2, eval_every=1, batch_size=32, latent_dim=8, device="cpu"))
    history = list(trainer.epochs(lambda final: trainer.evaluator()[0]))
    assert len(history) == 2 and all("classifier_acc_m0_image" in m for m in history)
    assert calls == [1]
