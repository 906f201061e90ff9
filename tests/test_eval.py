"""The evaluation suite on models with known answers: W2, coherence, latent probe, likelihoods, relatedness."""
from __future__ import annotations

import dataclasses
import math
import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

from meme.data.paired import PairedData
from meme.dists import w2_diag_sq
from meme.errors import MemeError
from meme.eval import EvalConfig, evaluate
from meme.eval.latents import Encoded, latent_accuracies, latent_accuracy
from meme.eval.likelihood import conditional_log_likelihood
from meme.eval.relatedness import auroc, class_linkage, pairwise_w2, relatedness
from meme.models.base import MultimodalModel
from meme.nets.base import Modality

N_CLASSES, LATENT, SCALE = 10, 10, 5.0


# ----------------------------------------------------------------------------- W2 (appendix F)
def w2_general(m1, c1, m2, c2) -> float:
    """The general 2-Wasserstein formula with matrix square roots (Givens & Shortt 2002)."""
    from scipy.linalg import sqrtm

    r2 = sqrtm(c2)
    cross = sqrtm(r2 @ c1 @ r2)
    return math.sqrt(float(np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * np.real(cross))))


def test_w2_closed_form_matches_the_general_formula_on_random_diagonal_gaussians():
    g = torch.Generator().manual_seed(0)
    mu_a, mu_b = torch.randn(5, 6, generator=g), torch.randn(4, 6, generator=g)
    sig_a, sig_b = torch.rand(5, 6, generator=g) * 2 + 0.05, torch.rand(4, 6, generator=g) * 2 + 0.05
    d = pairwise_w2(mu_a, sig_a, mu_b, sig_b)
    assert d.shape == (5, 4)
    for i in range(5):
        for j in range(4):
            ref = w2_general(mu_a[i].double().numpy(), np.diag(sig_a[i].double().numpy() ** 2),
                             mu_b[j].double().numpy(), np.diag(sig_b[j].double().numpy() ** 2))
            assert float(d[i, j]) == pytest.approx(ref, rel=1e-6)
            assert float(w2_diag_sq(mu_a[i], sig_a[i], mu_b[j], sig_b[j])) == pytest.approx(ref ** 2, rel=1e-5)
    # a distance: zero from itself, symmetric
    assert torch.equal(pairwise_w2(mu_a, sig_a, mu_a, sig_a).diagonal(), torch.zeros(5, dtype=torch.float64))
    assert torch.allclose(pairwise_w2(mu_b, sig_b, mu_a, sig_a), d.T)


def test_auroc_is_the_mann_whitney_statistic():
    assert auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    # unrelated {1, 3} vs related {2, 2}: pairs (1,2) lose, (3,2) win -> 0.5; a tie counts half
    assert auroc(np.array([2.0, 2.0]), np.array([1.0, 3.0])) == 0.5
    assert auroc(np.array([1.0]), np.array([1.0, 2.0])) == 0.75
    assert math.isnan(auroc(np.array([]), np.array([1.0])))
    assert math.isnan(auroc(np.array([1.0, np.nan]), np.array([2.0]))) and math.isnan(auroc(np.array([1.0]),
                                                                                             np.array([np.nan])))


def test_auroc_gives_the_rank_sum_statistic_bit_for_bit_ties_included():
    """The binary searches give the same float as the ranks of both sides together (the way it was computed
    before), on float32 W2 values with and without ties."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    for q in (None, 4.0, 1000.0):
        for n0, n1 in ((1, 7), (513, 4099), (25_600, 230_400)):
            related = rng.normal(size=n0).astype(np.float32)
            unrelated = (rng.normal(size=n1) + 0.7).astype(np.float32)
            if q:
                related, unrelated = np.round(related * q) / q, np.round(unrelated * q) / q
            ranks = rankdata(np.concatenate([unrelated, related]).astype(np.float64))
            want = float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))
            assert auroc(related, unrelated) == want, (q, n0, n1)


# ------------------------------------------------------------------ a model with known answers
def templates(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N_CLASSES, *shape, generator=g) > 0.5).float()


def nearest_template(x: torch.Tensor, temps: torch.Tensor) -> torch.Tensor:
    """Negative squared distance to each class template: logits of the 'classifier that recognises templates'."""
    return -((x.flatten(1).unsqueeze(1) - temps.flatten(1).unsqueeze(0)) ** 2).sum(-1)


class TemplateModality(Modality):
    """Encodes an image as SCALE * one_hot(class of the nearest template); decodes z to the template of argmax z."""

    def __init__(self, name, temps, constant: int | None = None):
        super().__init__(LATENT)
        self.name, self.event_shape = name, tuple(temps.shape[1:])
        self.register_buffer("temps", temps)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.constant = constant

    def encode(self, x):
        c = nearest_template(x, self.temps).argmax(1)
        mu = SCALE * nn.functional.one_hot(c, LATENT).float()
        return mu, torch.full_like(mu, 0.1)

    def decode(self, z):
        c = z.argmax(-1) if self.constant is None else torch.full(z.shape[:-1], self.constant, dtype=torch.long)
        return self.temps[c]


class TemplateModel(MultimodalModel):
    name = "template"

    def sample_prior(self, n):
        return SCALE * nn.functional.one_hot(torch.randint(N_CLASSES, (n,)), LATENT).float()


class TemplateClassifier(nn.Module):
    def __init__(self, temps):
        super().__init__()
        self.register_buffer("temps", temps)

    def forward(self, x):
        return nearest_template(x, self.temps)


def template_data(ta, tb, n, seed) -> PairedData:
    g = torch.Generator().manual_seed(seed)
    y = torch.randperm(n, generator=g) % N_CLASSES
    xa = (ta[y] + 0.2 * torch.randn(n, *ta.shape[1:], generator=g)).clamp(0, 1)
    xb = (tb[y] + 0.2 * torch.randn(n, *tb.shape[1:], generator=g)).clamp(0, 1)
    return PairedData.from_arrays("a", xa, "b", xb, y)


@pytest.fixture(scope="module")
def template_setup():
    ta, tb = templates((1, 8, 8), 1), templates((3, 8, 8), 2)
    model = TemplateModel((TemplateModality("a", ta), TemplateModality("b", tb)))
    clfs = {"a": TemplateClassifier(ta), "b": TemplateClassifier(tb)}
    return model, clfs, template_data(ta, tb, 400, 0), template_data(ta, tb, 300, 1), (ta, tb)


FAST = EvalConfig(batch_size=64, likelihood_k=0, elbo=False, n_joint=500, n_tsne=0, n_latent_train=0)


def test_coherence_is_one_for_a_template_model_and_chance_for_a_constant_decoder(template_setup):
    model, clfs, train, test, (ta, tb) = template_setup
    metrics, files = evaluate(model, train, test, clfs, FAST)
    assert files == []
    assert metrics["coherence_a_to_b"] == 1.0
    assert metrics["coherence_b_to_a"] == 1.0
    assert metrics["coherence_joint"] == 1.0
    assert metrics["n_test_pairs"] == 300.0

    const = TemplateModel((TemplateModality("a", ta), TemplateModality("b", tb, constant=3)))
    metrics, _ = evaluate(const, train, test, clfs, FAST)
    assert metrics["coherence_a_to_b"] == pytest.approx(float((test.labels == 3).float().mean()))
    assert metrics["coherence_a_to_b"] == pytest.approx(0.1)  # balanced labels: chance level
    assert metrics["coherence_b_to_a"] == 1.0


def test_latent_probe_is_perfect_for_the_label_and_chance_for_noise(template_setup):
    model, clfs, train, test, _ = template_setup
    metrics, _ = evaluate(model, train, test, clfs, FAST)
    assert metrics["latent_acc_a"] == metrics["latent_acc_b"] == 1.0

    g = torch.Generator().manual_seed(3)
    y_tr, y_te = torch.randint(10, (3000,), generator=g), torch.randint(10, (3000,), generator=g)
    w = torch.randn(10, 16, generator=g)
    z = lambda y: nn.functional.one_hot(y, 10).float() @ w + 0.1 * torch.randn(len(y), 16, generator=g)  # noqa: E731
    assert latent_accuracy(z(y_tr), y_tr, z(y_te), y_te) >= 0.99
    noise = latent_accuracy(torch.randn(3000, 16, generator=g), y_tr, torch.randn(3000, 16, generator=g), y_te)
    assert abs(noise - 0.1) < 0.03  # 3000 test points: one standard deviation is 0.0055
    with pytest.raises(MemeError, match="two classes"):
        latent_accuracy(np.zeros((4, 2)), np.zeros(4), np.zeros((2, 2)), np.zeros(2))


def test_class_matrix_of_label_latents_has_a_zero_diagonal(template_setup):
    model, clfs, train, test, _ = template_setup
    y = test.labels
    mu = SCALE * nn.functional.one_hot(y, LATENT).float()
    enc = Encoded((mu, mu.clone()), (torch.full_like(mu, 0.1), torch.full_like(mu, 0.1)), y, torch.arange(len(y)))
    rel = relatedness(enc, batch_size=64, by="label")
    m = rel.class_matrix
    assert m.shape == (10, 10)
    assert np.all(np.diag(m) == 0.0)
    off = m[~np.eye(10, dtype=bool)]
    assert np.allclose(off, SCALE * math.sqrt(2))  # ||5 e_i - 5 e_j|| for i != j
    s = rel.summary()
    assert s["w2_paired_mean"] == 0.0 and s["w2_auroc"] == 1.0
    assert s["w2_gap"] == pytest.approx(SCALE * math.sqrt(2))
    # every (i, j) of every batch is counted once: 300 = 4 batches of 64 and one of 44
    assert rel.related.size + rel.unrelated.size == 4 * 64 ** 2 + 44 ** 2
    # the dendrogram of equidistant classes merges everything at 5 sqrt(2)
    assert np.allclose(class_linkage(m)[:, 2], SCALE * math.sqrt(2))
    # the same numbers come out of evaluate() for this model
    metrics, _ = evaluate(model, train, test, clfs, FAST)
    assert metrics["w2_class_diag_mean"] == 0.0 and metrics["w2_auroc"] == 1.0


def test_relatedness_by_pair_relates_the_same_row_of_the_first_modality():
    mu = torch.arange(6.0).view(6, 1).repeat(1, 2)
    sig = torch.ones(6, 2)
    enc = Encoded((mu, mu.clone()), (sig, sig.clone()), torch.full((6,), -1), torch.arange(6))
    rel = relatedness(enc, batch_size=3, by="pair")
    assert rel.class_matrix is None
    assert rel.related.tolist() == [0.0] * 6
    # within a batch of 3, |i - j| * sqrt(2) for i != j: 4 x 1 and 2 x 2 per batch
    assert np.allclose(np.sort(rel.unrelated), np.sort([math.sqrt(2)] * 8 + [2 * math.sqrt(2)] * 4))
    # two captions of one image (rows 0, 0, 1): (0, 1) and (1, 0) are related too
    enc = Encoded((mu[:3], mu[:3].clone()), (sig[:3], sig[:3].clone()), torch.full((3,), -1), torch.tensor([0, 0, 1]))
    rel = relatedness(enc, batch_size=3, by="pair")
    assert rel.related.size == 5 and rel.unrelated.size == 4
    with pytest.raises(MemeError, match="needs every test pair labelled"):
        relatedness(enc, batch_size=3, by="label")


def test_evaluate_is_seeded_leaves_the_rng_alone_and_writes_figures(template_setup, tmp_path):
    model, clfs, train, test, _ = template_setup
    cfg = EvalConfig(batch_size=64, likelihood_k=0, elbo=False, n_joint=200, n_tsne=60, n_latent_train=300,
                     max_test_pairs=250, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    m1, files = evaluate(model, train, test, clfs, cfg, out_dir=tmp_path / "a")
    assert torch.equal(torch.get_rng_state(), before)
    m2, none = evaluate(model, train, test, clfs, cfg)
    assert m1 == m2 and none == []
    assert m1["n_test_pairs"] == 250.0
    names = sorted(p.name for p in files)
    assert names == ["class_matrix.png", "cross_a_to_b.png", "cross_b_to_a.png", "metrics.json", "relatedness.json",
                     "tsne.png", "w2_histogram.png"]
    for p in files:
        assert p.exists() and p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    assert json.loads((tmp_path / "a" / "metrics.json").read_text()) == m1
    rel = json.loads((tmp_path / "a" / "relatedness.json").read_text())
    assert [row[i] for i, row in enumerate(rel["class_matrix"])] == [0.0] * 10
    assert sorted(rel["dendrogram_leaves"]) == list(range(10))


def test_coherence_is_absent_for_modalities_without_a_classifier(template_setup):
    model, clfs, train, test, _ = template_setup
    metrics, _ = evaluate(model, train, test, {"a": clfs["a"]}, FAST)
    assert metrics["coherence_b_to_a"] == 1.0
    assert "coherence_a_to_b" not in metrics and "coherence_joint" not in metrics
    metrics, _ = evaluate(model, None, test, {}, FAST)
    assert not any(k.startswith(("coherence", "latent_acc", "classifier")) for k in metrics)
    assert metrics["w2_auroc"] == 1.0


def test_bad_inputs_are_clear_errors(template_setup):
    model, clfs, train, test, (ta, tb) = template_setup
    empty = test.subset(torch.arange(0))
    with pytest.raises(MemeError, match="test set is empty"):
        evaluate(model, train, empty, clfs, FAST)
    swapped = PairedData.from_arrays("b", test.tables[1], "a", test.tables[0], test.labels)
    with pytest.raises(MemeError, match=r"modalities \('a', 'b'\) but the test data holds \('b', 'a'\)"):
        evaluate(model, train, swapped, clfs, FAST)
    with pytest.raises(MemeError, match="'svhn'"):
        evaluate(model, train, test, {"svhn": clfs["a"]}, FAST)
    with pytest.raises(MemeError, match="batch_size=1"):
        EvalConfig(batch_size=1)
    with pytest.raises(MemeError, match="unknown eval config key"):
        EvalConfig.from_dict({"K": 3})
    with pytest.raises(MemeError, match="likelihood_k"):
        EvalConfig(likelihood_k=-1)
    with pytest.raises(MemeError, match="eval config key 'use_mean' must be of type bool, got 1"):
        EvalConfig(use_mean=1)
    with pytest.raises(MemeError, match="unknown related_by 'image'; valid: auto, label, pair"):
        EvalConfig(related_by="image")


# ------------------------------------------------------- importance-sampled likelihood (Table 2)
class LinearGaussian(Modality):
    """x = A z + N(0, noise^2 I) with z ~ N(0, I); A has orthogonal columns, so the exact posterior is diagonal."""

    def __init__(self, name, A, noise):
        super().__init__(A.shape[1])
        self.name, self.event_shape = name, (A.shape[0],)
        self.register_buffer("A", A)
        self.noise = noise
        self.dummy = nn.Parameter(torch.zeros(1))

    def posterior(self, x):
        prec = 1.0 + (self.A ** 2).sum(0) / self.noise ** 2  # diagonal of I + A^T A / noise^2
        return (x @ self.A) / self.noise ** 2 / prec, prec.rsqrt().expand(x.shape[0], -1)

    def encode(self, x):
        return self.posterior(x)

    def decode(self, z):
        return z @ self.A.T

    def log_likelihood(self, x, params):
        return torch.distributions.Normal(params, self.noise).log_prob(x).sum(-1)


def test_importance_sampled_likelihood_matches_the_linear_gaussian_closed_form():
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    A_s = q[:, :2] * torch.tensor([1.5, 0.7], dtype=torch.float64)
    A_t = q[:, 2:] * torch.tensor([1.2, 0.9], dtype=torch.float64)  # orthogonal columns: diagonal posteriors
    ms, mt = LinearGaussian("s", A_s, 0.5), LinearGaussian("t", A_t, 0.8)
    model = TemplateModel((ms, mt)).double()
    z = torch.randn(50, 2, dtype=torch.float64)
    xs = z @ A_s.T + 0.5 * torch.randn(50, 4, dtype=torch.float64)
    xt = z @ A_t.T + 0.8 * torch.randn(50, 4, dtype=torch.float64)

    def exact(x_a, x_b, ma, mb):  # p(x_a | x_b) = N(A_a m_b, A_a S_b A_a^T + noise_a^2 I)
        m, s = mb.posterior(x_b)
        cov = ma.A @ torch.diag_embed(s ** 2) @ ma.A.T + ma.noise ** 2 * torch.eye(4, dtype=torch.float64)
        return torch.distributions.MultivariateNormal(m @ ma.A.T, cov).log_prob(x_a)

    ref_st, ref_ts = exact(xs, xt, ms, mt), exact(xt, xs, mt, ms)
    errors = {}
    for K in (1000, 10000):
        torch.manual_seed(1)
        errors[K] = (conditional_log_likelihood(model, xs, xt, 0, 1, K=K) - ref_st,
                     conditional_log_likelihood(model, xt, xs, 1, 0, K=K) - ref_ts)
    for err in errors[1000]:  # log-likelihoods of about -4 per example, within a few hundredths
        assert err.abs().mean() < 0.05 and err.mean().abs() < 0.01
    for e1000, e10000 in zip(*errors.values()):  # and the estimate converges as K grows
        assert e10000.abs().mean() < 0.6 * e1000.abs().mean()
    # with one sample it is a (noisy) lower bound: below the exact value on average
    torch.manual_seed(2)
    assert conditional_log_likelihood(model, xs, xt, 0, 1, K=1).mean() < ref_st.mean() - 0.05


def test_w2_from_one_matrix_product_equals_the_exact_differences():
    """``exact=False`` (the evaluation in bf16) computes the same distances from |a|^2 + |b|^2 - 2 a.b."""
    g = torch.Generator().manual_seed(3)
    mu_a, mu_b = torch.randn(256, 512, generator=g) * 3, torch.randn(200, 512, generator=g) * 3
    s_a, s_b = torch.rand(256, 512, generator=g), torch.rand(200, 512, generator=g)
    mu_b[:5], s_b[:5] = mu_a[:5] + 1e-3, s_a[:5]   # near pairs, where a cancellation would show
    exact = pairwise_w2(mu_a, s_a, mu_b, s_b)
    fast = pairwise_w2(mu_a, s_a, mu_b, s_b, exact=False)
    assert exact.dtype == fast.dtype == torch.float64
    assert torch.allclose(fast, exact, rtol=1e-9, atol=1e-9), (fast - exact).abs().max()
    near = torch.full((5,), 1e-3 * math.sqrt(512), dtype=torch.float64)   # float32 inputs: 1e-3 to about 1e-4
    assert torch.allclose(exact[:5, :5].diagonal(), near, rtol=1e-3)
    assert torch.allclose(fast[:5, :5].diagonal(), exact[:5, :5].diagonal(), rtol=1e-6)


def test_the_judge_for_inference_folds_batchnorm_and_gives_the_same_logits():
    from meme.eval.classifiers import DigitClassifier

    torch.manual_seed(0)
    clf = DigitClassifier((3, 28, 28), (32, 64))
    for m in clf.modules():   # running statistics and affine parameters away from the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, -1.5, 1.5)   # negative scales too: the fold must keep their sign
            nn.init.uniform_(m.bias, -0.5, 0.5)
    clf.test_accuracy = 0.97
    clf.eval()
    fast = clf.for_inference()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in clf.modules())   # the original is left as it was
    assert fast.test_accuracy == 0.97 and not fast.training
    x = torch.rand(300, 3, 28, 28)
    with torch.no_grad():
        want, got = clf(x), fast(x)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert fast.features[1].__class__ is nn.MaxPool2d and fast.features[2].__class__ is nn.ReLU   # pool, then ReLU


def test_the_probe_in_float32_gives_the_float64_accuracy_and_runs_where_the_evaluation_is_bf16(template_setup,
                                                                                                monkeypatch):
    g = torch.Generator().manual_seed(5)
    y_tr, y_te = torch.randint(10, (3000,), generator=g), torch.randint(10, (3000,), generator=g)
    w = torch.randn(10, 32, generator=g)
    z = lambda y: nn.functional.one_hot(y, 10).float() @ w + 1.5 * torch.randn(len(y), 32, generator=g)  # noqa: E731
    tr, te = z(y_tr), z(y_te)
    f64 = latent_accuracy(tr, y_tr, te, y_te)
    f32 = latent_accuracy(tr, y_tr, te, y_te, dtype=np.float32)
    assert 0.3 < f64 < 0.99 and abs(f32 - f64) <= 0.002, (f32, f64)   # an overlapping problem, 3000 test points
    # which dtype each precision's evaluation fits the probe in, and with how many BLAS threads and workers
    import meme.eval.latents as latents
    import meme.eval.suite as suite

    seen = []

    def spy(*a, dtype, **k):
        blas = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
        seen.append((dtype, blas, threading.current_thread() is threading.main_thread()))
        return 1.0

    monkeypatch.setattr(latents, "latent_accuracy", spy)
    monkeypatch.setattr(suite, "resolve_precision", lambda precision, device: precision)
    model, clfs, train, test, _ = template_setup
    threads, blas = torch.get_num_threads(), {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    for precision in ("fp32", "bf16"):
        evaluate(model, train, test, clfs, dataclasses.replace(FAST, precision=precision))
    # a, b and the joint posterior: in fp32 as before (float64, in this thread, BLAS untouched); in bf16 float32
    # on worker threads with BLAS on one thread
    assert seen == [(np.float64, blas, True)] * 3 + [(np.float32, {1}, False)] * 3
    assert torch.get_num_threads() == threads and {i["num_threads"] for i in threadpool_info()
                                                   if i["user_api"] == "blas"} == blas   # both as they were


def test_the_probes_on_worker_threads_give_the_numbers_of_single_threaded_blas_for_any_number_of_workers():
    g = torch.Generator().manual_seed(6)
    y_tr, y_te = torch.randint(10, (2000,), generator=g).numpy(), torch.randint(10, (2000,), generator=g).numpy()
    w = torch.randn(10, 24, generator=g)
    z = lambda y: (nn.functional.one_hot(torch.as_tensor(y), 10).float() @ w  # noqa: E731
                   + 2.0 * torch.randn(len(y), 24, generator=g)).numpy()
    fits = [(z(y_tr), z(y_te)) for _ in range(3)]
    before = [latent_accuracy(tr, y_tr, te, y_te, 0) for tr, te in fits]
    assert latent_accuracies(fits, y_tr, y_te) == before   # workers=None: one at a time, as the fp32 evaluation was
    with threadpool_limits(1, user_api="blas"):
        want = [latent_accuracy(tr, y_tr, te, y_te, 0, dtype=np.float32) for tr, te in fits]
    assert len(set(want)) == 3 and all(0.3 < a < 0.95 for a in want), want   # three different, overlapping problems
    for workers in (1, 2, 5):
        assert latent_accuracies(fits, y_tr, y_te, dtype=np.float32, workers=workers) == want, workers
