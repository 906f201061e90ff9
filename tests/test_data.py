"""Data: real-format loaders, pairing, partial observation, typed interleaved batches, generic tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meme.data import BatchLoader, PairedData, make_observation
from meme.data.mnist_svhn import cached_pairing, load_mnist, load_mnist_svhn, load_svhn, pair_by_label
from meme.data.paired import read_array_table, write_array_table
from meme.data.synthetic import write_idx, write_svhn_mat
from meme.errors import MemeError

NAMES = ("mnist", "svhn")


# ---------------------------------------------------------------- pairing
def test_pairing_labels_agree_and_counts():
    g = torch.Generator().manual_seed(0)
    la, lb = torch.randint(0, 10, (500,), generator=g), torch.randint(0, 10, (700,), generator=g)
    for pairings in (1, 3):
        ia, ib = pair_by_label(la, lb, pairings, seed=1)
        assert torch.equal(la[ia], lb[ib])
        expected = pairings * sum(min(int((la == d).sum()), int((lb == d).sum())) for d in range(10))
        assert ia.numel() == expected
        # within one matching, each index is used at most once
        if pairings == 1:
            assert ia.unique().numel() == ia.numel() and ib.unique().numel() == ib.numel()
    a1, b1 = pair_by_label(la, lb, 2, seed=5)
    a2, b2 = pair_by_label(la, lb, 2, seed=5)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    a3, _ = pair_by_label(la, lb, 2, seed=6)
    assert not torch.equal(a1, a3)
    with pytest.raises(MemeError, match="pairings=0"):
        pair_by_label(la, lb, 0)


def test_pairing_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MEME_CACHE_DIR", str(tmp_path))
    la, lb = torch.arange(50) % 10, torch.arange(60) % 10
    a, b = cached_pairing(la, lb, 2, 0, "t")
    files = list((tmp_path / "pairings").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0]) as z:
        assert np.array_equal(z["a"], a.numpy()) and np.array_equal(z["b"], b.numpy())
    a2, b2 = cached_pairing(la, lb, 2, 0, "t")
    assert torch.equal(a, a2) and torch.equal(b, b2)


# ---------------------------------------------------------- observation
@pytest.mark.parametrize("f", [1.0, 0.5, 0.25, 0.125, 0.0625])
@pytest.mark.parametrize("observed", ["mnist", "svhn", "split"])
def test_observation_counts_match_f_and_scheme(f, observed):
    n = 1000
    obs = make_observation(n, f, observed, NAMES, seed=3)
    n_paired = round(f * n)
    assert obs.paired.numel() == n_paired
    rest = n - n_paired
    s, t = obs.s_only.numel(), obs.t_only.numel()
    expected = {"mnist": (rest, 0), "svhn": (0, rest), "split": ((rest + 1) // 2, rest // 2)}[observed]
    assert (s, t) == expected
    everything = torch.cat([obs.paired, obs.s_only, obs.t_only])
    assert torch.equal(everything.sort().values, torch.arange(n))  # disjoint and covering
    only = make_observation(n, f, observed, NAMES, paired_only=True, seed=3)
    assert torch.equal(only.paired, obs.paired) and only.s_only.numel() == only.t_only.numel() == 0


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_observation_rejects_bad_f(bad):
    with pytest.raises(MemeError, match="outside \\(0, 1\\]"):
        make_observation(100, bad, "split", NAMES)


def test_observation_rejects_unknown_scheme():
    with pytest.raises(MemeError, match="unknown observed 'cub'; valid: mnist, svhn, split"):
        make_observation(100, 0.5, "cub", NAMES)


# ---------------------------------------------------------------- batches
def _toy(n=300):
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    xt = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return PairedData.from_arrays("mnist", xs, "svhn", xt, torch.arange(n) % 10)


def test_split_batches_never_show_both_modalities_of_unpaired_examples():
    data = _toy()
    obs = make_observation(len(data), 0.25, "split", NAMES, seed=0)
    loader = BatchLoader(data, obs, batch_size=32, seed=0)
    seen = {"paired": [], "s": [], "t": []}
    kinds = []
    for pairs, observed in loader.plan(epoch=1):
        kind = {(True, True): "paired", (True, False): "s", (False, True): "t"}[observed]
        seen[kind].append(pairs)
        kinds.append(kind)
    sets = {k: set(torch.cat(v).tolist()) for k, v in seen.items()}
    assert sets["paired"] == set(obs.paired.tolist())
    assert sets["s"] == set(obs.s_only.tolist()) and sets["t"] == set(obs.t_only.tolist())
    assert not (sets["s"] & sets["t"]) and not (sets["paired"] & (sets["s"] | sets["t"]))
    # interleaved: the epoch is not all paired batches first
    first_unpaired = next(i for i, k in enumerate(kinds) if k != "paired")
    assert any(k == "paired" for k in kinds[first_unpaired:])
    # the batches themselves carry only the observed tensors, converted to float in [0, 1]
    for batch in loader.epoch(1):
        assert (batch.x[0] is not None) == batch.observed[0] and (batch.x[1] is not None) == batch.observed[1]
        for x in batch.x:
            if x is not None:
                assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_batch_values_come_from_the_right_rows():
    data = _toy(50)
    obs = make_observation(len(data), 1.0, "split", NAMES)
    for batch, (pairs, _) in zip(BatchLoader(data, obs, 16, seed=2).epoch(3), BatchLoader(data, obs, 16, seed=2).plan(3)):
        assert torch.equal(batch.x[0], data.tables[0][pairs].float() / 255)
        assert torch.equal(batch.x[1], data.tables[1][pairs].float() / 255)
        assert torch.equal(batch.labels, data.labels[pairs])


def test_loader_order_depends_only_on_seed_and_epoch():
    data = _toy(100)
    obs = make_observation(len(data), 0.5, "mnist", NAMES)
    a, b = BatchLoader(data, obs, 16, seed=1), BatchLoader(data, obs, 16, seed=1)
    pa, pb = a.plan(4), b.plan(4)
    assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(pa, pb))
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a.plan(4), a.plan(5)))


# ---------------------------------------------------------- file formats
def test_svhn_loader_reads_official_mat_layout(tmp_path):
    g = np.random.default_rng(0)
    images = g.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 9, 0, 5])
    write_svhn_mat(tmp_path / "SVHN" / "train_32x32.mat", images, labels)
    import scipy.io

    raw = scipy.io.loadmat(str(tmp_path / "SVHN" / "train_32x32.mat"))
    assert raw["X"].shape == (32, 32, 3, 7) and raw["y"].shape == (7, 1)
    assert raw["y"][0, 0] == 10  # digit 0 is stored as 10
    assert raw["X"][4, 7, 2, 3] == images[3, 2, 4, 7]
    x, y = load_svhn(tmp_path, "train", download=False)
    assert torch.equal(y, torch.tensor(labels))
    assert torch.equal(x, torch.from_numpy(images))


def test_mnist_loader_reads_idx_files(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte", images.astype(np.uint8))
    write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.array([7, 2, 1], dtype=np.uint8))
    x, y = load_mnist(tmp_path, "test", download=False)
    assert x.shape == (3, 28, 28) and torch.equal(y, torch.tensor([7, 2, 1]))
    assert torch.equal(x, torch.from_numpy(images.astype(np.uint8)))


def test_real_mnist(real_mnist_dir):
    x, y = load_mnist(real_mnist_dir, "train", download=False)
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST training labels
    xt, yt = load_mnist(real_mnist_dir, "test", download=False)
    assert xt.shape == (10000, 28, 28) and yt[:3].tolist() == [7, 2, 1]


def test_paired_mnist_svhn_from_generated_files(synth_dir):
    data = load_mnist_svhn(synth_dir, "train", pairings=2, seed=0, download=False)
    _, ym = load_mnist(synth_dir, "train", download=False)
    _, ys = load_svhn(synth_dir, "train", download=False)
    assert torch.equal(ym[data.index[0]], ys[data.index[1]])
    assert torch.equal(data.labels, ym[data.index[0]])
    assert data.tables[0].dtype == torch.uint8 and data.tables[1].shape[1:] == (3, 32, 32)


def test_missing_and_corrupt_files_give_clear_errors(tmp_path):
    with pytest.raises(MemeError, match=r"SVHN file .*train_32x32.mat is missing"):
        load_svhn(tmp_path, "train", download=False)
    with pytest.raises(MemeError, match=r"MNIST file .*train-images-idx3-ubyte is missing"):
        load_mnist(tmp_path, "train", download=False)
    (tmp_path / "SVHN").mkdir()
    (tmp_path / "SVHN" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" * 3)
    with pytest.raises(MemeError, match="corrupt or truncated"):
        load_svhn(tmp_path, "test", download=False)
    images = np.zeros((10, 28, 28), dtype=np.uint8)
    raw = tmp_path / "MNIST" / "raw"
    write_idx(raw / "t10k-images-idx3-ubyte", images)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.zeros(10, dtype=np.uint8))
    data = (raw / "t10k-images-idx3-ubyte").read_bytes()
    (raw / "t10k-images-idx3-ubyte").write_bytes(data[: len(data) // 2])  # truncated: the message names the file
    with pytest.raises(MemeError, match=r"MNIST file .*t10k-images-idx3-ubyte has 3928 bytes, but its header "
                                        r"\(10 x 28 x 28\) needs 7856: truncated"):
        load_mnist(tmp_path, "test", download=False)


# ---------------------------------------------------- generic paired data
def test_paired_data_from_arrays_and_parquet_round_trip(tmp_path):
    g = np.random.default_rng(1)
    a = g.normal(size=(20, 2, 3)).astype(np.float32)
    b = g.integers(0, 9, size=(20, 5)).astype(np.int64)
    labels = g.integers(0, 4, size=20)
    write_array_table(tmp_path / "a.parquet", a, labels)
    write_array_table(tmp_path / "b.parquet", b, labels)
    data = PairedData.from_parquet(tmp_path / "a.parquet", tmp_path / "b.parquet", "img", "txt")
    assert data.names == ("img", "txt") and len(data) == 20
    assert torch.equal(data.tables[0], torch.from_numpy(a)) and torch.equal(data.tables[1], torch.from_numpy(b))
    assert torch.equal(data.labels, torch.from_numpy(labels))
    xa, la = read_array_table(tmp_path / "a.parquet")
    assert torch.equal(xa, torch.from_numpy(a)) and torch.equal(la, torch.from_numpy(labels))
    with pytest.raises(MemeError, match="rows must pair up"):
        PairedData.from_arrays("img", a, "txt", b[:10])
    write_array_table(tmp_path / "c.parquet", b, (labels + 1) % 4)
    with pytest.raises(MemeError, match="disagree on 'label'"):
        PairedData.from_parquet(tmp_path / "a.parquet", tmp_path / "c.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(MemeError, match="not a readable Parquet file"):
        read_array_table(tmp_path / "bad.parquet")


def test_max_pairs_take_a_seeded_random_subset_not_the_label_sorted_head(synth_dir):
    """Pairing by label lists pairs digit by digit, so the first N pairs would hold one or two digits."""
    from meme.models import TrainConfig
    from meme.train import Trainer

    full = load_mnist_svhn(synth_dir, "train", seed=3, download=False)  # data_seed also seeds the pairing
    assert full.labels[:64].unique().numel() <= 2  # the head holds one or two digits
    cfg = TrainConfig(data_dir=str(synth_dir), download=False, max_train_pairs=64, max_test_pairs=32, data_seed=3,
                      latent_dim=4, K=1, n_pseudo=2, device="cpu")
    tr = Trainer(cfg)
    pick = torch.randperm(len(full), generator=torch.Generator().manual_seed(3))[:64].sort().values
    assert torch.equal(tr.train_data.labels, full.labels[pick])
    assert torch.equal(tr.train_data.index[1], full.index[1][pick])
    assert tr.train_data.labels.unique().numel() == 10
    test = load_mnist_svhn(synth_dir, "test", download=False)
    assert len(tr.test_data) == 32 and tr.test_data.labels.unique().numel() >= 8
    assert not torch.equal(Trainer(cfg.replace(data_seed=4)).train_data.labels, tr.train_data.labels)
    assert full.sample(len(full) + 5, 0) is full and len(test.sample(10, 1)) == 10
