"""Closed-form densities against hand computations and torch.distributions."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Laplace, Normal, kl_divergence

from meme.dists import (categorical_log_prob, kl_normal, laplace_log_prob, log_mean_exp, mixture_normal_log_prob,
                        normal_log_prob, w2_diag_sq)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_kl_hand_computed_1d():
    # KL(N(1, 2^2) || N(0, 1)) = 0.5 * (4 + 1 - 1 - log 4) = 2 - log 2
    kl = kl_normal(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert kl.item() == pytest.approx(2.0 - math.log(2.0), abs=1e-12)


def test_kl_matches_torch_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    s1, s2 = torch.rand(3, 5, generator=g) + 0.3, torch.rand(3, 5, generator=g) + 0.3
    kl = kl_normal(mu1, s1, mu2, s2)
    assert torch.allclose(kl, kl_divergence(Normal(mu1, s1), Normal(mu2, s2)).sum(-1), atol=1e-12)
    z = mu1 + s1 * torch.randn(200_000, 3, 5, generator=g)
    mc = (normal_log_prob(z, mu1, s1) - normal_log_prob(z, mu2, s2)).mean(0)
    assert torch.allclose(mc, kl, atol=0.05, rtol=0.02)


def test_kl_of_identical_gaussians_is_zero():
    mu, s = torch.randn(4, 7), torch.rand(4, 7) + 0.1
    assert torch.equal(kl_normal(mu, s, mu, s), torch.zeros(4))


def test_normal_log_prob_matches_torch():
    z, mu, s = torch.randn(6, 4), torch.randn(6, 4), torch.rand(6, 4) + 0.2
    assert torch.allclose(normal_log_prob(z, mu, s), Normal(mu, s).log_prob(z).sum(-1), atol=1e-12)


def test_laplace_hand_computed_and_torch():
    # one pixel: x = 1, loc = 0.25, scale 0.75 -> -|0.75|/0.75 - log(1.5) = -1 - log 1.5
    lp = laplace_log_prob(torch.tensor([[1.0]]), torch.tensor([[0.25]]), 0.75, event_dims=1)
    assert lp.item() == pytest.approx(-1.0 - math.log(1.5), abs=1e-12)
    x, loc = torch.rand(5, 3, 8, 8), torch.rand(5, 3, 8, 8)
    ref = Laplace(loc, 0.75).log_prob(x).flatten(1).sum(-1)
    assert torch.allclose(laplace_log_prob(x, loc, 0.75, event_dims=3), ref, atol=1e-10)


def _literal_laplace(x, loc, scale, event_dims):
    """The plain autograd expression the fused likelihood replaced (the likelihoods cast loc to fp32 first)."""
    loc32 = loc.float()
    s = scale.to(loc32.dtype) if isinstance(scale, torch.Tensor) else torch.tensor(scale, dtype=loc32.dtype)
    lp = -(x - loc32).abs() / s - torch.log(2.0 * s)
    return lp.flatten(start_dim=lp.dim() - event_dims).sum(-1)


@pytest.mark.parametrize("loc_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["same", "samples", "per_feature"])
def test_the_fused_laplace_gives_the_literal_values_and_gradient_bit_for_bit(loc_dtype, case):
    """The likelihoods' fused Laplace (fp32 data, the decoder's output in fp32 or bf16 as it comes) against the
    autograd expression on loc.float(): equal values and an equal gradient, in loc's dtype and shape, for one decoding
    per example, for samples broadcast against the data (MMVAE's (M, K, B, ...)), and for a per-feature scale."""
    g = torch.Generator().manual_seed(3)
    x = torch.rand(7, 3, 5, 5, generator=g, dtype=torch.float32)
    shape = (2, 3, 7, 3, 5, 5) if case == "samples" else (7, 3, 5, 5)
    loc0 = (torch.randn(shape, generator=g, dtype=torch.float32) * 2).to(loc_dtype)
    scale = 0.75 * (torch.rand(3, 5, 5, generator=g, dtype=torch.float32) + 0.5) if case == "per_feature" else 0.75
    w = torch.randn(shape[:-3], generator=g, dtype=torch.float32)
    outs = []
    for f in (laplace_log_prob, _literal_laplace):
        loc = loc0.clone().requires_grad_()
        lp = f(x, loc, scale, 3)
        (lp * w).sum().backward()
        outs.append((lp.detach(), loc.grad))
    (got, got_grad), (want, want_grad) = outs
    assert got.dtype == torch.float32 and got_grad.dtype == loc_dtype and got_grad.shape == shape
    assert torch.equal(got, want) and torch.equal(got_grad, want_grad)
    assert (got_grad != 0).all()   # every element's gradient is a signed 1/scale times its weight, none lost
    with torch.no_grad():
        assert torch.equal(laplace_log_prob(x, loc0, scale, 3), want)


def test_the_fused_laplace_gives_data_broadcast_against_one_decoding_the_summed_gradient():
    """One decoding scored against several copies of the data (loc broadcast over x): the gradient is the sum over
    the copies, as autograd's."""
    g = torch.Generator().manual_seed(4)
    x, loc0 = torch.rand(4, 6, 9, generator=g), torch.rand(6, 9, generator=g)
    grads = []
    for f in (laplace_log_prob, _literal_laplace):
        loc = loc0.clone().requires_grad_()
        f(x, loc, 0.5, 1).sum().backward()
        grads.append(loc.grad)
    assert grads[0].shape == (6, 9) and torch.allclose(grads[0], grads[1], atol=1e-12)


def test_log_mean_exp_hand_computed():
    # log((1 + 3) / 2) = log 2
    assert log_mean_exp(torch.tensor([0.0, math.log(3.0)])).item() == pytest.approx(math.log(2.0), abs=1e-12)
    # stable for large values: log mean exp(1000 + [0, log 3]) = 1000 + log 2
    assert log_mean_exp(torch.tensor([1000.0, 1000.0 + math.log(3.0)])).item() == pytest.approx(1000 + math.log(2.0))


def test_mixture_log_prob_hand_computed_and_loop():
    # 1-D, two unit components at -1 and +1, evaluated at 0: each density is exp(-0.5)/sqrt(2 pi)
    lp = mixture_normal_log_prob(torch.zeros(1, 1), torch.tensor([[-1.0], [1.0]]), torch.ones(2, 1))
    assert lp.item() == pytest.approx(-0.5 - 0.5 * math.log(2 * math.pi), abs=1e-12)
    g = torch.Generator().manual_seed(3)
    z, mu, s = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g), torch.rand(6, 3, generator=g) + 0.5
    loop = torch.stack([torch.log(sum(Normal(mu[n], s[n]).log_prob(z[b]).sum().exp() for n in range(6)) / 6)
                        for b in range(4)])
    assert torch.allclose(mixture_normal_log_prob(z, mu, s), loop, atol=1e-10)


def test_categorical_ignores_padding():
    logits = torch.randn(2, 4, 5)
    tokens = torch.tensor([[1, 2, 0, 0], [3, 4, 4, 0]])
    lp = categorical_log_prob(tokens, logits, ignore_index=0)
    full = Categorical(logits=logits).log_prob(tokens)
    expected = (full * (tokens != 0)).sum(-1)
    assert torch.allclose(lp.double(), expected, atol=1e-5)


def test_w2_diag_hand_computed():
    # ||(1,2)-(0,0)||^2 + ||(1,1)-(2,3)||^2 = 5 + 5
    w = w2_diag_sq(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), torch.zeros(2), torch.tensor([2.0, 3.0]))
    assert w.item() == pytest.approx(10.0)
