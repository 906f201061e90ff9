"""A literal reference implementation of the MEME objective (paper eq. 1-5, and appendix E for M > 2), for tests
and benchmarks.

Every term is computed as written, with ``torch.distributions``, one network call per term, in the
order of the equations: no shared encoder passes, no batched classifier samples, no fused decoders.
Each direction encodes its data twice (the posterior, then again for the K classifier samples) as the
published code does, and each modality of its conditional prior once, so BatchNorm's running averages move
as there. The product of experts is written out (precisions add); the mixture's KL is the mean over the K+1
posterior samples of log q(z) - log p(z), with the mixture as ``torch.distributions.MixtureSameFamily``.
It uses the same networks and draws the same noise as :class:`meme.models.meme.MEME` (one
``randn(K+1, B, L)`` per direction, in the order of the observed modalities), so under the same seed the two
losses agree to floating-point tolerance.
"""
from __future__ import annotations

import math

import torch
from torch.distributions import Categorical, Independent, Laplace, MixtureSameFamily, Normal, kl_divergence

from meme.batch import Batch
from meme.models.meme import MEME


def _log_lik(model: MEME, m: int, x, z):
    mod = model.mods[m]
    return Laplace(mod.decode(z), mod.llik_scale).log_prob(x).flatten(1).sum(-1)


def _mixture(mus, sigmas):
    """The equally weighted mixture of the diagonal Gaussians stacked on axis 0, per example."""
    comps = Independent(Normal(torch.stack(mus, -2), torch.stack(sigmas, -2)), 1)   # batch (B, C), event L
    return MixtureSameFamily(Categorical(logits=torch.zeros(comps.batch_shape)), comps)


def reference_direction(model: MEME, x, a: int, b, eps):
    """L_{a<-R} per example, term by term, R = ``b`` (one modality or a tuple); the encoders are called as often as
    the published code calls them."""
    R = (b,) if isinstance(b, int) else tuple(b)
    mu_a, sigma_a = model.mods[a].encode(x[a])          # posterior q(z|a)
    priors = [model.mods[r].encode(x[r]) for r in R]    # the experts of the conditional prior p(z|R)
    q_z_a = Normal(mu_a, sigma_a)
    z = mu_a + sigma_a * eps[0]
    log_p_a = _log_lik(model, a, x[a], z)               # log p(a|z)
    log_q_R = sum(_log_lik(model, r, x[r], z) for r in R)   # log q(R|z): the product of R's likelihoods
    terms = [log_q_R]
    mu_k, sigma_k = model.mods[a].encode(x[a])          # q(z|a) again, for the K samples (as published)
    samples = [z]
    for k in range(1, model.K + 1):
        z_k = mu_k + sigma_k * eps[k]
        samples.append(z_k)
        terms.append(sum(_log_lik(model, r, x[r], z_k) for r in R))
    log_q_R_given_a = torch.logsumexp(torch.stack(terms), 0) - math.log(model.K + 1)
    w = torch.exp(log_q_R - log_q_R_given_a).detach()
    if len(R) == 1:
        kl = kl_divergence(q_z_a, Normal(*priors[0])).sum(-1)
    elif model.combine == "product":
        precision = sum(s ** -2 for _, s in priors)
        mean = sum(m * s ** -2 for m, s in priors) / precision
        kl = kl_divergence(q_z_a, Normal(mean, precision ** -0.5)).sum(-1)
    else:
        mix = _mixture([m for m, _ in priors], [s for _, s in priors])
        kl = sum(q_z_a.log_prob(zk).sum(-1) - mix.log_prob(zk) for zk in samples) / len(samples)
    return w * (log_p_a - log_q_R - kl) + model.lam * log_q_R_given_a


def reference_unpaired(model: MEME, x, a: int, eps):
    mu, sigma = model.mods[a].encode(x)
    z = mu + sigma * eps
    log_q = Normal(mu, sigma).log_prob(z).sum(-1)
    if not model.use_pseudo:
        return _log_lik(model, a, x, z) - (log_q - Normal(0.0, 1.0).log_prob(z).sum(-1))
    comps = []
    for b in range(model.num_modalities):   # every other modality's pseudo-samples, through its own encoder
        if b != a:
            mu_u, sigma_u = model.mods[b].encode(model.pseudo[b])
            comps += [Normal(mu_u[n], sigma_u[n]).log_prob(z).sum(-1) for n in range(mu_u.shape[0])]
    log_p = torch.logsumexp(torch.stack(comps), 0) - math.log(len(comps))
    return _log_lik(model, a, x, z) - (log_q - log_p)


def reference_meme_loss(model: MEME, batch: Batch) -> torch.Tensor:
    """Negative batch mean of the MEME objective for one typed batch, computed literally."""
    observed = [m for m, o in enumerate(batch.observed) if o]
    if len(observed) >= 2:
        total = 0.0
        for a, R in model._directions(batch.observed):
            B = batch.x[a].shape[0]
            eps = torch.randn(model.K + 1, B, model.latent_dim, device=batch.x[a].device)
            total = total + reference_direction(model, batch.x, a, R, eps)
    else:
        a = observed[0]
        eps = torch.randn(batch.x[a].shape[0], model.latent_dim, device=batch.x[a].device)
        total = reference_unpaired(model, batch.x[a], a, eps)
    return -total.mean()
