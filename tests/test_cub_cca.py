"""CUB correlation under CCA (appendix G): hand computations, the MMVAE code's eigenproblem, the metrics."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from meme.data.paired import PairedData
from meme.errors import MemeError
from meme.eval.cca import caption_examples, cub_cca_metrics, fit_cca, fit_cub_cca, write_caption_examples
from meme.features.text import SentenceEmbedder, Vocab


def _hadamard8():
    h = np.array([[1]])
    for _ in range(3):
        h = np.block([[h, h], [h, -h]])
    return h[:, 1:].astype(np.float64)     # 7 zero-mean, mutually orthogonal columns of +-1


def test_cca_on_a_small_matrix_by_hand():
    h = _hadamard8()
    x = np.stack([h[:, 0], h[:, 1]], 1) + np.array([3.0, -1.0])             # offsets: CCA centres
    y = np.stack([0.8 * h[:, 0] + 0.6 * h[:, 2], 0.6 * h[:, 1] + 0.8 * h[:, 3]], 1)
    # Cxx = Cyy = 8/7 I and Cxy = 8/7 diag(0.8, 0.6): the canonical correlations are 0.8 and 0.6, and the
    # canonical directions are the coordinate axes, so each pair scores the cosine of its centred rows.
    for scaling in ("mmvae", "canonical"):
        cca = fit_cca(torch.tensor(x), torch.tensor(y), k=2, scaling=scaling)
        assert torch.allclose(cca.correlations, torch.tensor([0.8, 0.6], dtype=torch.float64), atol=1e-12)
        xc = x - x.mean(0)
        hand = [(xc[i] @ y[i]) / (np.linalg.norm(xc[i]) * np.linalg.norm(y[i])) for i in range(8)]
        assert np.allclose(cca.scores(torch.tensor(x), torch.tensor(y)).numpy(), hand, atol=1e-12)
        assert abs(cca.score(torch.tensor(x), torch.tensor(y)) - np.mean(hand)) < 1e-12
    # e.g. row 0: x_c = (1, 1), y = (1.4, 1.4) -> 1; row 2: x_c = (1, -1), y = (0.2, 0.2) -> 0;
    # row 4: x_c = (1, 1), y = (1.4, -0.2) -> 1.2 / 2 = 0.6; row 6: x_c = (1, -1), y = (0.2, -1.4) -> 1.6 / 2 = 0.8
    assert np.allclose(hand, [1, 1, 0, 0, 0.6, 0.6, 0.8, 0.8]) and np.isclose(np.mean(hand), 0.6)


def mmvae_cca(x, y, k, eps=1e-12):
    """The MMVAE code's CCA, written out: the generalised eigenproblem A v = lambda B v, unit-norm eigenvectors."""
    n = x.shape[0]
    xc, yc = x - x.mean(0), y - y.mean(0)
    dx = x.shape[1]
    A = np.zeros((dx + y.shape[1],) * 2)
    B = np.zeros_like(A)
    B[:dx, :dx], B[dx:, dx:] = xc.T @ xc / (n - 1), yc.T @ yc / (n - 1)
    A[:dx, dx:] = xc.T @ yc / (n - 1)
    A[dx:, :dx] = A[:dx, dx:].T
    A[np.diag_indices_from(A)] += eps
    B[np.diag_indices_from(B)] += eps
    w, v = scipy.linalg.eig(A, B)
    idx = w.argsort()[::-1][:k]
    return w[idx].real, v[:dx, idx].real, v[dx:, idx].real


def test_cca_matches_the_mmvae_eigenproblem():
    g = np.random.default_rng(0)
    z = g.standard_normal((400, 3))
    x = z @ g.standard_normal((3, 7)) + 0.7 * g.standard_normal((400, 7))
    y = z @ g.standard_normal((3, 5)) + g.standard_normal((400, 5))
    w, px, py = mmvae_cca(x, y, 4)
    cca = fit_cca(torch.tensor(x), torch.tensor(y), k=4)
    assert np.allclose(cca.correlations.numpy(), w, atol=1e-8)
    assert np.allclose(np.abs(cca.proj_x.numpy()), np.abs(px), atol=1e-8)
    xt, yt = g.standard_normal((30, 7)), g.standard_normal((30, 5))
    a, b = (xt - x.mean(0)) @ px, (yt - y.mean(0)) @ py
    ref = np.mean((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))
    assert abs(cca.score(torch.tensor(xt), torch.tensor(yt)) - ref) < 1e-8


def test_cca_near_one_for_linear_views_and_near_zero_for_independent_ones():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 12, generator=g)
    y = x @ torch.randn(12, 12, generator=g) + 5.0
    cca = fit_cca(x[:1500], y[:1500], k=8)
    assert torch.allclose(cca.correlations, torch.ones(8, dtype=torch.float64), atol=1e-6)
    assert cca.score(x[1500:], y[1500:]) > 0.999
    u, v = torch.randn(4000, 12, generator=g), torch.randn(4000, 9, generator=g)
    ind = fit_cca(u[:2000], v[:2000], k=8)
    assert abs(ind.score(u[2000:], v[2000:])) < 0.03
    # fewer pairs than dimensions: the null space is dropped, the views are still fitted exactly
    few = fit_cca(x[:6], y[:6], k=3)
    assert torch.allclose(few.correlations, torch.ones(3, dtype=torch.float64), atol=1e-6)
    with pytest.raises(MemeError, match=r"k=13 components needs 1 <= k <= min\(dims\) = 12"):
        fit_cca(x, y, k=13)


class Oracle(nn.Module):
    """A stand-in model that generates the true other modality of each test pair (its latent is the pair index)."""

    names = ("cub_image", "cub_caption")

    def __init__(self, data: PairedData, vocab_size: int):
        super().__init__()
        self.data, self.V = data, vocab_size
        self.w = nn.Parameter(torch.zeros(1))

    def _find(self, x, m):
        rows = self.data.rows(m).float()
        return torch.cdist(x.float().flatten(1), rows.flatten(1)).argmin(1).float()

    def encode(self, x, m):
        idx = self._find(x, m)
        return idx.unsqueeze(1), torch.full_like(idx.unsqueeze(1), 1e-9)

    def decode(self, z, m):
        idx = z.round().long().squeeze(-1)
        if m == 0:
            return self.data.rows(0, idx).float()
        return 10.0 * torch.nn.functional.one_hot(self.data.rows(1, idx), self.V).float()


@pytest.fixture(scope="module")
def toy():
    g = torch.Generator().manual_seed(1)
    V, n_img = 12, 30
    feats = torch.randn(n_img, 6, generator=g)
    tokens = torch.randint(3, V, (n_img * 4, 32), generator=g)
    tokens[:, 8] = 2
    tokens[:, 9:] = 1
    img_index = torch.arange(n_img).repeat_interleave(4)
    data = PairedData(("cub_image", "cub_caption"), (feats, tokens), (img_index, torch.arange(n_img * 4)),
                      img_index % 3)
    vectors = torch.randn(V, 5, generator=g)
    embedder = SentenceEmbedder(vectors, torch.rand(V, generator=g), torch.nn.functional.normalize(torch.randn(5, generator=g), dim=0))
    vocab = Vocab(("<exc>", "<pad>", "<eos>", *[f"w{i}" for i in range(3, V)]), (1, 0, 0, *[5] * (V - 3)))
    return data, embedder, vocab


def test_cub_metrics_wiring_with_an_oracle_model(toy):
    data, embedder, vocab = toy
    train, test = data.subset(torch.arange(80)), data.subset(torch.arange(80, 120))
    cca = fit_cub_cca(train, embedder, k=4)
    model = Oracle(test, vocab_size=len(vocab.words))
    m = cub_cca_metrics(model, train, test, embedder, k=4, batch_size=7, use_mean=True)
    gt = cca.score(test.rows(0).double(), embedder(test.rows(1)).double())
    assert set(m) == {"cca_ground_truth", "cca_image_to_caption", "cca_caption_to_image", "cca_top_correlation"}
    assert abs(m["cca_ground_truth"] - gt) < 1e-8
    assert abs(m["cca_top_correlation"] - float(cca.correlations[0])) < 1e-12
    # the oracle generates each pair's true counterpart: the image -> caption score uses the first caption of
    # each image (the one the image's row finds), the caption -> image score equals the ground truth exactly
    assert abs(m["cca_caption_to_image"] - gt) < 1e-8
    first = test.rows(1, torch.tensor([(test.index[0] == test.index[0][p]).nonzero()[0].item() for p in range(len(test))]))
    i2c = cca.score(test.rows(0).double(), embedder(first).double())
    assert abs(m["cca_image_to_caption"] - i2c) < 1e-8
    # a fitted CCA can be passed in; metrics do not change
    assert cub_cca_metrics(model, None, test, embedder, cca=cca, batch_size=7, use_mean=True) == m


def test_caption_examples_decode_words(toy, tmp_path):
    data, embedder, vocab = toy
    model = Oracle(data, vocab_size=len(vocab.words))
    ex = caption_examples(model, data, vocab, n=4, samples=2)
    assert len(ex) == 4 and len({e["image_row"] for e in ex}) == 4
    for e in ex:
        assert e["caption"] == vocab.decode(data.rows(1, torch.tensor([e["pair"]]))[0])
        assert e["caption"].split() == [f"w{i}" for i in data.rows(1, torch.tensor([e["pair"]]))[0, :8].tolist()]
        assert e["generated_captions"] == [e["caption"]] * 2      # each example is the first pair of its image
        assert e["nearest_image_row"] == e["image_row"] and e["nearest_image_caption"] == e["caption"]
    files = write_caption_examples(tmp_path / "cub_examples", ex)
    assert [f.name for f in files] == ["cub_examples.md", "cub_examples.png"] and all(f.stat().st_size > 0 for f in files)
    assert ex[0]["caption"] in files[0].read_text()
