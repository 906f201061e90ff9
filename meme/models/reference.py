"""A literal reference implementation of the MEME objective (paper eq. 1-5), for tests and benchmarks.

Every term is computed as written, with ``torch.distributions``, one network call per term, in the
order of the equations: no shared encoder passes, no batched classifier samples, no fused decoders.
Each direction encodes its data twice (the posterior, then again for the K classifier samples) as the
published code does, so BatchNorm's running averages move as there.
It uses the same networks and draws the same noise as :class:`meme.models.meme.MEME` (one
``randn(K+1, B, L)`` per direction, mirrored direction second), so under the same seed the two
losses agree to floating-point tolerance.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Laplace, Normal, kl_divergence

from meme.batch import Batch
from meme.models.meme import MEME


def _log_lik(model: MEME, m: int, x, z):
    mod = model.mods[m]
    return Laplace(mod.decode(z), mod.llik_scale).log_prob(x).flatten(1).sum(-1)


def reference_direction(model: MEME, x, a: int, b: int, eps):
    """L_{a<-b} per example, term by term; the encoders are called as often as the published code calls them."""
    mu_a, sigma_a = model.mods[a].encode(x[a])          # posterior q(z|a)
    mu_b, sigma_b = model.mods[b].encode(x[b])          # conditional prior p(z|b)
    q_z_a = Normal(mu_a, sigma_a)
    p_z_b = Normal(mu_b, sigma_b)
    z = mu_a + sigma_a * eps[0]
    log_p_a = _log_lik(model, a, x[a], z)               # log p(a|z)
    log_q_b = _log_lik(model, b, x[b], z)               # log q(b|z)
    terms = [log_q_b]
    mu_k, sigma_k = model.mods[a].encode(x[a])          # q(z|a) again, for the K samples (as published)
    for k in range(1, model.K + 1):
        z_k = mu_k + sigma_k * eps[k]
        terms.append(_log_lik(model, b, x[b], z_k))
    log_q_b_given_a = torch.logsumexp(torch.stack(terms), 0) - math.log(model.K + 1)
    w = torch.exp(log_q_b - log_q_b_given_a).detach()
    kl = kl_divergence(q_z_a, p_z_b).sum(-1)
    return w * (log_p_a - log_q_b - kl) + model.lam * log_q_b_given_a


def reference_unpaired(model: MEME, x, a: int, eps):
    b = 1 - a
    mu, sigma = model.mods[a].encode(x)
    z = mu + sigma * eps
    log_q = Normal(mu, sigma).log_prob(z).sum(-1)
    mu_u, sigma_u = model.mods[b].encode(model.pseudo[b])
    comps = torch.stack([Normal(mu_u[n], sigma_u[n]).log_prob(z).sum(-1) for n in range(mu_u.shape[0])])
    log_p = torch.logsumexp(comps, 0) - math.log(mu_u.shape[0])
    return _log_lik(model, a, x, z) - (log_q - log_p)


def reference_meme_loss(model: MEME, batch: Batch) -> torch.Tensor:
    """Negative batch mean of the MEME objective for one typed batch, computed literally."""
    if batch.observed == (True, True):
        total = 0.0
        for a, b in model._directions():
            B = batch.x[a].shape[0]
            eps = torch.randn(model.K + 1, B, model.latent_dim, device=batch.x[a].device)
            total = total + reference_direction(model, batch.x, a, b, eps)
    else:
        a = 0 if batch.observed[0] else 1
        eps = torch.randn(batch.x[a].shape[0], model.latent_dim, device=batch.x[a].device)
        total = reference_unpaired(model, batch.x[a], a, eps)
    return -total.mean()
