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
