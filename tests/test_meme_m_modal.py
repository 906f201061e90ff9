"""MEME beyond two modalities (the paper's appendix E): two modalities give exactly what they gave before; the
M-modal objective equals its literal reference term by term; its cost; the mixture KL estimator; bad input."""
from __future__ import annotations

import copy

import pytest
import torch

from meme.batch import Batch
from meme.dists import kl_normal, log_mean_exp, mixture_normal_log_prob, normal_log_prob
from meme.models.meme import MEME
from meme.nets import FAMILIES
from meme.nets.base import batchnorm_passes

L, B, K, N = 8, 6, 4, 5


class TwoModalMEME(MEME):
    """MEME's two-modality objective exactly as it was written before the objective took M modalities (frozen
    here, line for line): the new objective at M = 2 must equal it in loss, gradients and BatchNorm buffers."""

    def paired_terms(self, x):
        K1 = self.K + 1
        dirs = {"both": [(0, 1), (1, 0)], "t_supervises_s": [(0, 1)], "s_supervises_t": [(1, 0)]}[self.direction]
        post = []
        for m in range(2):
            passes = 2 * any(a == m for a, _ in dirs) + any(b == m for _, b in dirs)
            with batchnorm_passes(self.mods[m], passes):
                post.append(self.mods[m].encode(x[m]))
        z = {}
        for a, _ in dirs:
            mu, sigma = post[a]
            z[a] = mu + sigma * torch.randn(K1, *mu.shape, device=mu.device, dtype=mu.dtype)
        lik = {}
        for m in range(2):
            parts = []
            if (1 - m, m) in dirs:
                parts.append(z[1 - m])
            if (m, 1 - m) in dirs:
                parts.append(z[m][:1])
            out = self.mods[m].decode(torch.cat(parts, 0))
            lik[m] = self.mods[m].log_likelihood(x[m], out).float()
        terms = {}
        for a, b in dirs:
            log_q_b_z = lik[b][:K1]
            log_p_a_z = lik[a][-1]
            log_q_b_a = log_mean_exp(log_q_b_z, 0)
            w = torch.exp(log_q_b_z[0] - log_q_b_a).detach()
            kl = kl_normal(*post[a], *post[b]).float()
            terms[(a, b)] = {"elbo": w * (log_p_a_z - log_q_b_z[0] - kl) + self.lam * log_q_b_a,
                             "recon": log_p_a_z, "cls": log_q_b_z[0], "kl": kl, "log_q": log_q_b_a, "w": w}
        return terms

    def unpaired_terms(self, x, a):
        b = 1 - a
        mu, sigma = self.mods[a].encode(x)
        z = mu + sigma * torch.randn_like(mu)
        mu_u, sigma_u = self.mods[b].encode(self.pseudo[b])
        log_q = normal_log_prob(z.float(), mu.float(), sigma.float())
        log_p = mixture_normal_log_prob(z.float(), mu_u.float(), sigma_u.float())
        recon = self.mods[a].log_likelihood(x, self.mods[a].decode(z)).float()
        return {"elbo": recon - (log_q - log_p), "recon": recon, "kl": log_q - log_p}

    def loss(self, batch):
        if batch.observed == (True, True):
            terms = self.paired_terms(batch.x)
            total = sum(v["elbo"] for v in terms.values())
            metrics = {}
            for (a, b), v in terms.items():
                na, nb = self.names[a], self.names[b]
                metrics[f"recon_{na}"] = v["recon"].mean()
                metrics[f"cls_{nb}_given_z"] = v["cls"].mean()
                metrics[f"kl_{na}"] = v["kl"].mean()
                metrics[f"log_q_{nb}_given_{na}"] = v["log_q"].mean()
                metrics[f"w_{nb}_given_{na}"] = v["w"].mean()
        else:
            a = 0 if batch.observed[0] else 1
            v = self.unpaired_terms(batch.x[a], a)
            total = v["elbo"]
            na = self.names[a]
            metrics = {f"recon_{na}_only": v["recon"].mean(), f"kl_{na}_only": v["kl"].mean()}
        loss = -total.mean()
        metrics["loss"] = loss.detach()
        return loss, {k: v.detach() for k, v in metrics.items()}


def two_modal_pair(direction="both", nets="published"):
    torch.manual_seed(0)
    mods = (FAMILIES[nets]["mnist"](L), FAMILIES[nets]["svhn"](L))
    init = (torch.rand(N, 1, 28, 28), torch.rand(N, 3, 32, 32))
    new = MEME(mods, K=K, lam=10.0, n_pseudo=N, direction=direction, pseudo_init=init)
    old = TwoModalMEME(copy.deepcopy(mods), K=K, lam=10.0, n_pseudo=N, direction=direction, pseudo_init=init)
    old.load_state_dict(new.state_dict())
    return new, old


@pytest.mark.parametrize("nets", ["published", "appendix_k"])
@pytest.mark.parametrize("kind", ["paired", "s", "t"])
@pytest.mark.parametrize("direction", ["both", "t_supervises_s", "s_supervises_t"])
def test_two_modalities_give_exactly_the_loss_gradients_and_buffers_they_gave_before(kind, direction, nets):
    g = torch.Generator().manual_seed(1)
    xs, xt = torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g)
    y = torch.arange(B) % 10
    batch = {"paired": Batch((xs, xt), (True, True), y), "s": Batch((xs, None), (True, False), y),
             "t": Batch((None, xt), (False, True), y)}[kind]
    new, old = two_modal_pair(direction, nets)
    for _ in range(2):   # two steps: the second starts from BatchNorm averages the first moved
        torch.manual_seed(42)
        loss_new, metrics_new = new.loss(batch)
        grads_new = torch.autograd.grad(loss_new, list(new.parameters()), allow_unused=True)
        torch.manual_seed(42)
        loss_old, metrics_old = old.loss(batch)
        grads_old = torch.autograd.grad(loss_old, list(old.parameters()), allow_unused=True)
        assert torch.equal(loss_new, loss_old)
        assert metrics_new.keys() == metrics_old.keys()
        for k in metrics_old:
            assert torch.equal(metrics_new[k], metrics_old[k]), k
        for (name, _), gn, go in zip(new.named_parameters(), grads_new, grads_old):
            assert (gn is None) == (go is None), name
            if gn is not None:
                assert torch.equal(gn, go), name
        old_buffers = dict(old.named_buffers())
        for name, buf in new.named_buffers():
            assert torch.equal(buf, old_buffers[name]), name


@pytest.mark.parametrize("combine", ["product", "mixture"])
@pytest.mark.parametrize("kind", ["paired", "s", "t"])
def test_either_combination_is_the_two_modality_objective_with_two_modalities(kind, combine):
    """With one other modality the product and the mixture are that modality's encoder: the same numbers."""
    g = torch.Generator().manual_seed(3)
    xs, xt = torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g)
    batch = {"paired": Batch((xs, xt), (True, True), None), "s": Batch((xs, None), (True, False), None),
             "t": Batch((None, xt), (False, True), None)}[kind]
    new, old = two_modal_pair()
    new.combine = combine
    torch.manual_seed(5)
    loss_new, _ = new.loss(batch)
    torch.manual_seed(5)
    loss_old, _ = old.loss(batch)
    assert torch.equal(loss_new, loss_old)


# ------------------------------------------------------------------ M modalities against the literal reference
from meme.models.reference import reference_meme_loss  # noqa: E402
from tests.test_meme_objective import biases_before_batchnorm  # noqa: E402
from meme.nets.shaped import VectorModality  # noqa: E402

DIMS = (5, 7, 3, 4, 6)


def m_modal(M, combine="product", use_pseudo=True, bn=True, seed=0):
    """M modalities: the published SVHN networks (BatchNorm in the encoder) when ``bn``, then vectors."""
    torch.manual_seed(seed)
    mods = [FAMILIES["published"]["svhn"](L)] if bn else []
    mods += [VectorModality(L, shape=(DIMS[m],), name=f"v{m}", hidden=[16]) for m in range(M - len(mods))]
    init = tuple(torch.rand(N, *m.pseudo_shape) for m in mods)
    return MEME(tuple(mods), K=K, lam=10.0, n_pseudo=N, pseudo_init=init, combine=combine, use_pseudo=use_pseudo)


def m_data(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(B, *m.event_shape, generator=g) if isinstance(m, VectorModality) else torch.rand(B, 3, 32, 32, generator=g)
            for m in model.mods]


def observe(xs, pattern):
    return Batch(tuple(x if o else None for x, o in zip(xs, pattern)), tuple(bool(o) for o in pattern), None)


PATTERNS_3 = [(1, 1, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 0, 0), (0, 0, 1)]


CASES_3 = [(p, c, True) for p in PATTERNS_3 for c in ("product", "mixture")] + \
    [(p, "product", False) for p in PATTERNS_3 if sum(p) == 1]   # no pseudo-samples: they enter only there


@pytest.mark.parametrize("pattern, combine, use_pseudo", CASES_3)
def test_three_modalities_equal_the_literal_reference_term_by_term(pattern, combine, use_pseudo):
    model = m_modal(3, combine, use_pseudo)
    ref_model = copy.deepcopy(model)
    batch = observe(m_data(model), pattern)
    torch.manual_seed(11)
    fast, metrics = model.loss(batch)
    g_fast = torch.autograd.grad(fast, list(model.parameters()), allow_unused=True)
    torch.manual_seed(11)
    ref = reference_meme_loss(ref_model, batch)
    g_ref = torch.autograd.grad(ref, list(ref_model.parameters()), allow_unused=True)
    assert torch.isfinite(fast) and fast.item() == pytest.approx(ref.item(), rel=1e-5)
    before_bn = biases_before_batchnorm(model)
    assert before_bn   # the SVHN encoder's convolutions feed BatchNorm
    ref_buffers = dict(ref_model.named_buffers())
    for name, buf in model.named_buffers():   # the SVHN encoder's averages moved as often as the reference encodes
        assert torch.allclose(buf.float(), ref_buffers[name].float(), rtol=1e-5, atol=1e-6), name
    moved = [b for n, b in model.named_buffers() if n.endswith("running_mean")]
    # the SVHN encoder ran on the data where SVHN is observed, on its pseudo-samples where another is alone
    assert all(bool(b.abs().sum() > 0) == bool(pattern[0] or (sum(pattern) == 1 and use_pseudo)) for b in moved)
    for (name, _), gf, gr in zip(model.named_parameters(), g_fast, g_ref):
        m = int(name.split(".")[1]) if name.startswith("mods.") else None
        if m is not None and not pattern[m] and (".dec" in name or "dec_" in name or ".dec." in name):
            # a missing modality's decoder: exactly zero gradient (no path at all)
            assert gf is None or not gf.any(), name
            assert gr is None or not gr.any(), name
            continue
        if gf is None or gr is None:
            assert (gf is None or not gf.any()) and (gr is None or not gr.any()), name
            continue
        if name in before_bn:   # a bias BatchNorm removes: exact gradient 0, both paths give rounding
            assert gf.abs().max() < 1e-3 and gr.abs().max() < 1e-3, name
            continue
        assert torch.allclose(gf, gr, rtol=1e-3, atol=1e-4 * gr.abs().max().item() + 1e-7), name
    observed = [model.names[m] for m in range(3) if pattern[m]]
    if len(observed) == 3:
        assert {"kl_v1", "cls_svhn_v0_given_z", "log_q_v0_v1_given_svhn", "w_svhn_v1_given_v0"} <= set(metrics)


def test_a_missing_modalitys_decoder_gets_exactly_zero_gradient_and_its_encoder_only_where_alone():
    model = m_modal(4, bn=False)
    xs = m_data(model)
    for pattern in [(1, 1, 1, 0), (1, 0, 1, 0), (0, 1, 0, 0)]:
        model.zero_grad()
        loss, _ = model.loss(observe(xs, pattern))
        loss.backward()
        for m, o in enumerate(pattern):
            dec = [p.grad for n, p in model.mods[m].named_parameters() if n.startswith("dec")]
            enc = [p.grad for n, p in model.mods[m].named_parameters() if n.startswith("enc")]
            if not o:
                assert all(g is None or not g.any() for g in dec), (pattern, m)
                # a missing encoder learns only through its pseudo-samples, where one modality is observed alone
                assert any(g is not None and g.any() for g in enc) == (sum(pattern) == 1), (pattern, m)
            else:
                assert any(g is not None and g.any() for g in dec), (pattern, m)


@pytest.mark.parametrize("M", [2, 3, 4, 5])
def test_a_step_decodes_M_times_M_minus_1_directions_not_two_to_the_M(M):
    """One encoder and one decoder call per observed modality; the decoders see B * (M(M-1)(K+1) + M) latents."""
    model = m_modal(M, bn=False)
    calls = {"enc": 0, "dec": 0, "rows": 0}
    for mod in model.mods:
        enc, dec = mod.encode, mod.decode

        def counted_enc(x, _f=enc):
            calls["enc"] += 1
            return _f(x)

        def counted_dec(z, _f=dec):
            calls["dec"] += 1
            calls["rows"] += z.shape[0] * (z.shape[1] if z.dim() > 2 else 1)
            return _f(z)

        mod.encode, mod.decode = counted_enc, counted_dec
    model.loss(observe(m_data(model), (1,) * M))
    assert calls == {"enc": M, "dec": M, "rows": B * (M * (M - 1) * (K + 1) + M)}


def test_the_mixture_kl_estimate_is_unbiased_against_a_large_sample_value():
    from meme.models.meme import mixture_kl

    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(1, 4, generator=g), 0.5 + torch.rand(1, 4, generator=g)
    mus, sigmas = torch.randn(3, 1, 4, generator=g) * 1.5, 0.5 + torch.rand(3, 1, 4, generator=g)
    big = mixture_kl(mu + sigma * torch.randn(1_000_000, 1, 4, generator=g), mu, sigma, mus, sigmas).item()
    estimates = torch.stack([mixture_kl(mu + sigma * torch.randn(K + 1, 1, 4, generator=g), mu, sigma, mus, sigmas)
                             for _ in range(20_000)]).squeeze(1)
    stderr = estimates.std().item() / 20_000 ** 0.5
    assert abs(estimates.mean().item() - big) < 4 * stderr + 1e-3, (estimates.mean().item(), big, stderr)
    assert estimates.std().item() > 0.05   # an estimate, not the closed form of something else
    # and it is not the product's KL, which the product combination computes in closed form
    from meme.models.experts import poe

    assert abs(big - kl_normal(mu, sigma, *poe(mus, sigmas)).item()) > 0.1


def test_generation_from_a_subset_combines_its_encoders_as_the_prior_does():
    from meme.models.experts import poe

    xs = m_data(m_modal(3, bn=False))
    for combine in ("product", "mixture"):
        model = m_modal(3, combine, bn=False).eval()
        experts = [model.expert(xs[m], m) for m in (0, 2)]
        mus, sigmas = model.fuse(experts)
        if combine == "product":
            mu, sigma = poe(torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts]))
            assert mus.shape == (1, B, L) and torch.allclose(mus[0], mu) and torch.allclose(sigmas[0], sigma)
            # precisions add: the product is narrower than either expert
            assert (sigmas[0] < torch.minimum(experts[0][1], experts[1][1])).all()
        else:
            assert mus.shape == (2, B, L) and torch.equal(mus[1], experts[1][0])
        single = model.fuse(experts[:1])
        assert torch.equal(single[0][0], experts[0][0])


def test_one_modality_alone_gets_the_mixture_of_every_other_modalitys_pseudo_samples():
    model = m_modal(3, bn=False)
    mu, sigma = model.pseudo_prior(1)
    assert mu.shape == (2 * N, L)
    for part, b in zip((slice(0, N), slice(N, 2 * N)), (0, 2)):
        want = model.mods[b].encode(model.pseudo[b])
        assert torch.equal(mu[part], want[0]) and torch.equal(sigma[part], want[1])
