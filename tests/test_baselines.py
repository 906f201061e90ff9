"""The baselines (MVAE, MMVAE, MoPoE, mmJSD): expert arithmetic with known answers, each objective against a
literal reference (torch.distributions, term by term), exact zero gradients for a missing modality, and short
real training runs through the project's trainer and CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch.distributions import Laplace, Normal, kl_divergence

from meme.cli import main
from meme.models import TrainConfig
from meme.batch import Batch
from meme.errors import MemeError
from meme.models import MODELS, MMJSD, MMVAE, MVAE, MoPoE
from meme.models.experts import component_of, poe, select_components, with_prior_expert
from meme.models.mmjsd import js_dynamic_prior
from meme.models.mmvae import laplace_log_prob, standard_laplace
from meme.nets import MNISTModality, SVHNModality

L, B = 8, 6
BASELINES = ("mvae", "mmvae", "mopoe", "mmjsd")


def make(cls, seed=0, **kw):
    torch.manual_seed(seed)
    return cls((MNISTModality(L), SVHNModality(L)), **kw)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g), torch.arange(B) % 10


def batch(data, observed):
    xs, xt, y = data
    return Batch((xs if observed[0] else None, xt if observed[1] else None), observed, y)


def log_lik(model, m, x, z):
    """log p(x_m | z), literally: a Laplace with the modality's fixed scale, summed over pixels."""
    mod = model.mods[m]
    return Laplace(mod.decode(z), mod.llik_scale).log_prob(x).flatten(-3).sum(-1)


def kl_std(mu, sigma):
    return kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(sigma))).sum(-1)


# ------------------------------------------------------------------ expert arithmetic
def test_product_of_gaussian_experts_is_the_precision_weighted_mean_including_the_prior_expert():
    # experts N(1, 1^2) and N(3, 0.5^2), with the prior expert N(0, 1): precisions 1, 4, 1 -> 6
    mu, sigma = poe(*with_prior_expert(torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0], [0.5]])))
    assert mu.item() == pytest.approx(13 / 6, rel=1e-6)
    assert sigma.item() == pytest.approx(1 / math.sqrt(6), rel=1e-6)
    # without the prior expert: precisions 1 and 4 -> mean (1 + 12) / 5
    mu, sigma = poe(torch.tensor([[1.0], [3.0]]), torch.tensor([[1.0], [0.5]]))
    assert (mu.item(), sigma.item()) == pytest.approx((13 / 5, 1 / math.sqrt(5)), rel=1e-6)
    # the normalised product of the three densities on a fine grid has the same mean and variance
    z = torch.linspace(-8, 8, 200001, dtype=torch.float64)
    dens = (Normal(1.0, 1.0).log_prob(z) + Normal(3.0, 0.5).log_prob(z) + Normal(0.0, 1.0).log_prob(z)).exp()
    dens = dens / dens.sum()
    m = (z * dens).sum()
    assert m.item() == pytest.approx(13 / 6, rel=1e-6)
    assert ((z - m) ** 2 * dens).sum().item() == pytest.approx(1 / 6, rel=1e-5)
    # weights 1/2, 1/2 of N(0, 1) and N(2, 1): the geometric mean N(1, 1)
    mu, sigma = poe(torch.tensor([[0.0], [2.0]]), torch.ones(2, 1), torch.tensor([0.5, 0.5]))
    assert (mu.item(), sigma.item()) == pytest.approx((1.0, 1.0))


def test_poe_over_one_observed_expert_is_that_expert_with_the_prior(data):
    xs, xt, y = data
    model = make(MVAE)
    for m, x in ((0, xs), (1, xt)):
        mu_e, s_e = model.mods[m].encode(x)
        precision = s_e ** -2 + 1.0
        mu, sigma = model.encode(x, m)  # what cross-generation and the latent probe see
        assert torch.allclose(mu, mu_e * s_e ** -2 / precision, rtol=1e-5, atol=1e-6)
        assert torch.allclose(sigma, precision.rsqrt(), rtol=1e-5)
        assert (sigma < 1).all() and (sigma < s_e).all()  # a product is narrower than each factor


def test_mixture_sampling_draws_from_each_expert_equally():
    for n in (6, 7, 64, 127, 128):
        for c in (1, 2, 3):
            comp = component_of(n, c)
            counts = torch.bincount(comp, minlength=c)
            assert counts.sum() == n and counts.max() - counts.min() <= 1
            assert (comp.diff() >= 0).all()  # contiguous blocks
    mus = torch.arange(3.0).view(3, 1, 1).expand(3, 6, 2) + torch.arange(6.0).view(1, 6, 1) * 10
    sig = mus + 100
    mu, s = select_components(mus, sig)
    assert mu[:, 0].tolist() == [0, 10, 21, 31, 42, 52]  # examples 0-1 from expert 0, 2-3 from 1, 4-5 from 2
    assert torch.equal(s, mu + 100)


def test_laplace_family_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    z, loc, scale = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.rand(5, 4, generator=g) + 0.1
    assert torch.allclose(laplace_log_prob(z, loc, scale), Laplace(loc, scale).log_prob(z).sum(-1))
    torch.manual_seed(0)
    eps = standard_laplace((400_000,), torch.empty(0))
    assert eps.mean().abs() < 0.01 and eps.abs().mean().item() == pytest.approx(1.0, abs=0.01)
    assert eps.var().item() == pytest.approx(2.0, rel=0.02)  # Laplace(0, 1), not N(0, 1)
    prior = make(MMVAE, posterior="laplace").sample_prior(100_000)
    assert prior.shape == (100_000, L) and prior.var().item() == pytest.approx(2.0, rel=0.03)


def test_js_divergence_towards_the_dynamic_prior_by_hand():
    # q = N(1, 1), p = N(0, 1), pi = 1/2: p_f = N(1/2, 1); JS = (1/8 + 1/8) / 2
    js, mu_f, s_f = js_dynamic_prior(torch.tensor([[1.0], [0.0]]), torch.ones(2, 1))
    assert (js.item(), mu_f.item(), s_f.item()) == pytest.approx((0.125, 0.5, 1.0), rel=1e-6)
    # q = N(0, 0.5^2), p = N(0, 1): precision of p_f = (4 + 1) / 2, variance 0.4
    js, _, s_f = js_dynamic_prior(torch.tensor([[0.0], [0.0]]), torch.tensor([[0.5], [1.0]]))
    kl = lambda v1, v2: 0.5 * (v1 / v2 - 1 - math.log(v1 / v2))  # noqa: E731
    assert s_f.item() ** 2 == pytest.approx(0.4, rel=1e-6)
    assert js.item() == pytest.approx(0.5 * (kl(0.25, 0.4) + kl(1.0, 0.4)), rel=1e-5)


def loss_then_experts(cls, data, seed, observed=(True, True), **kw):
    """The model's loss under ``seed``; then the RNG is reset to ``seed`` for the reference to draw the same noise."""
    xs, xt, _ = data
    model = make(cls, **kw)
    torch.manual_seed(seed)
    loss, metrics = model.loss(batch(data, observed))
    torch.manual_seed(seed)
    return model, loss, metrics, model.mods[0].encode(xs), model.mods[1].encode(xt)


# ------------------------------------------------------------------ objectives against literal references
def test_mvae_subsampled_elbo_equals_reference(data):
    xs, xt, _ = data
    model, loss, metrics, (ms, ss), (mt, st) = loss_then_experts(MVAE, data, 3, beta=0.7)
    ps, pt = ss ** -2, st ** -2
    joint = ((ms * ps + mt * pt) / (ps + pt + 1), (ps + pt + 1) ** -0.5)   # prior expert: precision 1, mean 0
    only_s, only_t = (ms * ps / (ps + 1), (ps + 1) ** -0.5), (mt * pt / (pt + 1), (pt + 1) ** -0.5)
    total = 0
    for (mu, sig), mods in ((joint, (0, 1)), (only_s, (0,)), (only_t, (1,))):  # noise drawn in this order
        z = mu + sig * torch.randn(B, L)
        total = total + sum(log_lik(model, m, (xs, xt)[m], z) for m in mods) - 0.7 * kl_std(mu, sig)
    assert loss.item() == pytest.approx(-total.mean().item(), rel=1e-5)
    assert metrics["kl_mnist_svhn"].item() == pytest.approx(kl_std(*joint).mean().item(), rel=1e-5)
    # an s-only example: the ELBO of {s} alone
    torch.manual_seed(4)
    loss_s, _ = model.loss(batch(data, (True, False)))
    torch.manual_seed(4)
    z = only_s[0] + only_s[1] * torch.randn(B, L)
    ref = log_lik(model, 0, xs, z) - 0.7 * kl_std(*only_s)
    assert loss_s.item() == pytest.approx(-ref.mean().item(), rel=1e-5)


def mmvae_reference_log_weights(model, xs, xt, eps, dist):
    """log w_{mk}: z_{mk} from q(z|x_m), scored by the prior, both decoders and the mixture of both experts."""
    q = [dist(*model.mods[m].encode(x)) for m, x in ((0, xs), (1, xt))]
    prior = dist(torch.zeros(L), torch.ones(L))
    rows = []
    for m in range(2):
        per_k = []
        for k in range(eps.shape[1]):
            z = q[m].loc + q[m].scale * eps[m, k]
            log_q = torch.logsumexp(torch.stack([q[j].log_prob(z).sum(-1) for j in range(2)]), 0) - math.log(2)
            per_k.append(prior.log_prob(z).sum(-1) + log_lik(model, 0, xs, z) + log_lik(model, 1, xt, z) - log_q)
        rows.append(torch.stack(per_k))
    return torch.stack(rows)  # (M, K, B)


@pytest.mark.parametrize("posterior, estimator, K", [("gaussian", "elbo", 1), ("gaussian", "elbo", 3),
                                                     ("gaussian", "iwae", 3), ("laplace", "elbo", 2),
                                                     ("laplace", "iwae", 3)])
def test_mmvae_stratified_objective_equals_reference(data, posterior, estimator, K):
    xs, xt, _ = data
    model = make(MMVAE, posterior=posterior, estimator=estimator, K=K)
    torch.manual_seed(5)
    loss, _ = model.loss(batch(data, (True, True)))
    torch.manual_seed(5)  # the same noise: one draw of (M, K, B, L), modality-major
    eps = torch.randn(2, K, B, L) if posterior == "gaussian" else standard_laplace((2, K, B, L), torch.empty(0))
    lw = mmvae_reference_log_weights(model, xs, xt, eps, Normal if posterior == "gaussian" else Laplace)
    per_modality = lw.mean(1) if estimator == "elbo" else torch.logsumexp(lw, 1) - math.log(K)
    ref = per_modality.mean(0)  # each expert's samples weigh exactly 1/M
    assert loss.item() == pytest.approx(-ref.mean().item(), rel=1e-5)


def grads(model, loss):
    return {n: g for n, g in zip([n for n, _ in model.named_parameters()],
                                 torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))}


def test_mmvae_iwae_with_one_sample_is_the_elbo_and_dreg_changes_only_encoder_gradients(data):
    b = batch(data, (True, True))
    losses, g = {}, {}
    for est, K in (("elbo", 1), ("iwae", 1), ("iwae", 4), ("dreg", 4)):
        model = make(MMVAE, estimator=est, K=K)
        torch.manual_seed(6)
        losses[est, K], _ = model.loss(b)
        g[est, K] = grads(model, losses[est, K])
    assert losses["elbo", 1].item() == losses["iwae", 1].item()
    assert all(torch.allclose(g["elbo", 1][n], g["iwae", 1][n], rtol=1e-5, atol=1e-8) for n in g["elbo", 1])
    # DReG reports the IWAE bound and gives the decoders the IWAE gradient; the encoders' gradients differ
    assert losses["dreg", 4].item() == pytest.approx(losses["iwae", 4].item(), rel=1e-6)
    dec = [n for n in g["iwae", 4] if ".dec." in n]
    enc = [n for n in g["iwae", 4] if ".enc" in n]
    assert dec and enc
    assert all(torch.allclose(g["dreg", 4][n], g["iwae", 4][n], rtol=1e-3, atol=1e-4 * g["iwae", 4][n].abs().max())
               for n in dec)
    assert any(not torch.allclose(g["dreg", 4][n], g["iwae", 4][n], rtol=1e-2) for n in enc)


def test_mmvae_dreg_encoder_gradient_is_the_squared_weight_estimator(data):
    xs, xt, _ = data
    K = 4
    model = make(MMVAE, estimator="dreg", K=K)
    enc = [p for n, p in model.named_parameters() if ".enc" in n]
    torch.manual_seed(7)
    loss, _ = model.loss(batch(data, (True, True)))
    g_model = torch.autograd.grad(loss, enc)
    # by hand: -(1/(M B)) sum_{m,k,b} w~^2 d lw/dz dz/dphi, with the mixture density's parameters held fixed
    torch.manual_seed(7)
    lw, _, z = model.log_weights((xs, xt), detach_q=True)
    w = torch.softmax(lw.detach(), 1)
    dlw_dz = torch.autograd.grad(lw.sum(), z, retain_graph=True)[0]  # each lw_{mk} depends on z_{mk} only
    g_hand = torch.autograd.grad(z, enc, grad_outputs=-(w ** 2).unsqueeze(-1) * dlw_dz / (2 * B))
    for a, b in zip(g_model, g_hand):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * b.abs().max().item())


def test_mopoe_objective_equals_reference(data):
    xs, xt, _ = data
    model, loss, _, (ms, ss), (mt, st) = loss_then_experts(MoPoE, data, 8, beta=1.5)
    prec = ss ** -2 + st ** -2 + 1
    joint = ((ms * ss ** -2 + mt * st ** -2) / prec, prec ** -0.5)
    # B = 6 examples, 3 subsets: examples 0-1 from q(z|s), 2-3 from q(z|t), 4-5 from the joint product
    mu = torch.cat([ms[:2], mt[2:4], joint[0][4:]])
    sig = torch.cat([ss[:2], st[2:4], joint[1][4:]])
    z = mu + sig * torch.randn(B, L)
    kl = (kl_std(ms, ss) + kl_std(mt, st) + kl_std(*joint)) / 3
    ref = log_lik(model, 0, xs, z) + log_lik(model, 1, xt, z) - 1.5 * kl
    assert loss.item() == pytest.approx(-ref.mean().item(), rel=1e-5)
    assert torch.equal(model.encode(xs, "mnist")[0], ms)  # a singleton subset is the encoder itself
    torch.manual_seed(9)
    loss_t, _ = model.loss(batch(data, (False, True)))
    torch.manual_seed(9)
    ref_t = log_lik(model, 1, xt, mt + st * torch.randn(B, L)) - 1.5 * kl_std(mt, st)
    assert loss_t.item() == pytest.approx(-ref_t.mean().item(), rel=1e-5)


def test_mmjsd_objective_equals_reference(data):
    xs, xt, _ = data
    model, loss, metrics, (ms, ss), (mt, st) = loss_then_experts(MMJSD, data, 10, beta=2.0)
    # dynamic prior: the geometric mean of q(z|s), q(z|t) and N(0, I) with weights 1/3
    prec = (ss ** -2 + st ** -2 + 1) / 3
    p_f = Normal((ms * ss ** -2 + mt * st ** -2) / 3 / prec, prec ** -0.5)
    dists = [Normal(ms, ss), Normal(mt, st), Normal(torch.zeros_like(ms), torch.ones_like(ms))]
    js = sum(kl_divergence(d, p_f).sum(-1) for d in dists) / 3
    z = torch.cat([ms[:3], mt[3:]]) + torch.cat([ss[:3], st[3:]]) * torch.randn(B, L)  # half from each expert
    ref = log_lik(model, 0, xs, z) + log_lik(model, 1, xt, z) - 2.0 * js
    assert loss.item() == pytest.approx(-ref.mean().item(), rel=1e-5)
    assert metrics["js"].item() == pytest.approx(js.mean().item(), rel=1e-5)
    torch.manual_seed(11)
    loss_s, _ = model.loss(batch(data, (True, False)))
    torch.manual_seed(11)
    prec = (ss ** -2 + 1) / 2
    p_f = Normal(ms * ss ** -2 / 2 / prec, prec ** -0.5)
    js = (kl_divergence(dists[0], p_f).sum(-1) + kl_divergence(dists[2], p_f).sum(-1)) / 2
    ref_s = log_lik(model, 0, xs, ms + ss * torch.randn(B, L)) - 2.0 * js
    assert loss_s.item() == pytest.approx(-ref_s.mean().item(), rel=1e-5)


# ------------------------------------------------------------------ missing modalities
@pytest.mark.parametrize("cls", [MVAE, MoPoE, MMJSD])
@pytest.mark.parametrize("observed", [(True, False), (False, True)])
def test_missing_modality_gets_exactly_zero_gradient(data, cls, observed):
    model = make(cls)
    loss, _ = model.loss(batch(data, observed))
    assert torch.isfinite(loss)
    loss.backward()
    present = 0 if observed[0] else 1
    missing = model.mods[1 - present]
    assert all(p.grad is None or not p.grad.any() for p in missing.parameters())  # encoder and decoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mods[present].dec.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mods[present].enc_mu.parameters())


def test_mmvae_refuses_unpaired_batches_and_trains_both_decoders_on_paired_ones(data):
    model = make(MMVAE)
    for observed in ((True, False), (False, True)):
        with pytest.raises(MemeError, match="no objective for singly observed examples"):
            model.loss(batch(data, observed))
    loss, _ = model.loss(batch(data, (True, True)))
    loss.backward()
    for mod in model.mods:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert MMVAE.min_observed == 2 and all(MODELS[n].min_observed == 1 for n in ("mvae", "mopoe", "mmjsd"))


# ------------------------------------------------------------------ real training runs, config and CLI
def small(synth_dir, **kw) -> TrainConfig:
    base = dict(data_dir=str(synth_dir), download=False, max_train_pairs=512, max_test_pairs=64, batch_size=64,
                latent_dim=8, epochs=4, supervision=0.5, observed="split", precision="fp32", device="cpu", lr=1e-3)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("model, extra", [("mvae", {}), ("mmvae", {}), ("mopoe", {}), ("mmjsd", {}),
                                          ("mmvae", dict(mmvae_posterior="laplace", mmvae_estimator="dreg",
                                                         mmvae_samples=3))])
def test_short_training_run_is_finite_and_the_loss_decreases(synth_dir, model, extra):
    from meme.train import Trainer

    trainer = Trainer(small(synth_dir, model=model, **extra))
    history = [trainer.run_epoch() for _ in range(4)]
    losses = [h["loss"] for h in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.01 * abs(losses[0]), losses
    meta = trainer.metadata()
    if model == "mmvae":  # the unpaired half is dropped, and the run says so
        assert meta["learns_from_unpaired"] is False
        assert (meta["n_paired"], meta["n_s_only"], meta["n_t_only"]) == (256, 0, 0)
        assert "loss_s" not in history[0] and "loss_paired" in history[0]
    else:
        assert meta["learns_from_unpaired"] is True
        assert (meta["n_paired"], meta["n_s_only"], meta["n_t_only"]) == (256, 128, 128)
        assert {"loss_paired", "loss_s", "loss_t"} <= set(history[0])


def test_cli_trains_a_baseline_and_records_what_it_learned_from(capsys, tmp_path, synth_dir):
    out = tmp_path / "mmvae"
    code = main(["train", "--model", "mmvae", "--out", str(out), "--data-dir", str(synth_dir), "--no-download",
                 "--epochs", "1", "--max-train-pairs", "128", "--latent-dim", "8", "--quiet", "--supervision", "0.25",
                 "--observed", "mnist", "--precision", "fp32", "--mmvae-posterior", "laplace"])
    assert code == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["learns_from_unpaired"] is False and (meta["n_paired"], meta["n_s_only"]) == (32, 0)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == "mmvae" and cfg["mmvae_posterior"] == "laplace"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["model_name"] == "mmvae"


@pytest.mark.parametrize("argv, message", [
    (["--mmvae-posterior", "cauchy"], "unknown mmvae_posterior 'cauchy'; valid: gaussian, laplace"),
    (["--mmvae-estimator", "vimco"], "unknown mmvae_estimator 'vimco'; valid: elbo, iwae, dreg"),
    (["--mmvae-samples", "0"], "mmvae_samples=0 must be a positive integer"),
    (["--beta", "-1"], "beta=-1.0 must be >= 0"),
])
def test_cli_bad_baseline_settings_are_one_line_errors(capsys, tmp_path, argv, message):
    code = main(["train", "--model", "mmvae", "--out", str(tmp_path / "x"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("meme: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", BASELINES)
def test_encode_and_prior_serve_the_evaluation(data, name):
    xs, xt, _ = data
    model = make(MODELS[name])
    for m, x in (("mnist", xs), ("svhn", xt)):
        mu, sigma = model.encode(x, m)
        assert mu.shape == sigma.shape == (B, L) and (sigma > 0).all()
    z = model.sample_prior(5)
    assert z.shape == (5, L)
    assert model.decode(z, "svhn").shape == (5, 3, 32, 32)
