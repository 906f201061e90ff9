r"""MMVAE: the multimodal VAE with a mixture of experts (Shi, Siddharth, Paige & Torr, NeurIPS 2019).

The joint posterior of the observed modalities X (M of them) is the equally weighted mixture of their unimodal
posteriors,

.. math::

    q(z|X) = \tfrac1M \sum_{x_m \in X} q(z|x_m),

and every term is estimated with **stratified sampling over the modalities**: K samples are drawn from
each unimodal posterior (never from the mixture as a whole), and each sample is scored against all
decoders of X. With :math:`w_{mk} = p(z_{mk})\prod_{x_d \in X} p(x_d|z_{mk}) / q(z_{mk}|X)`,
:math:`z_{mk} \sim q(z|x_m)` (reparameterised):

.. math::

    \mathcal L_{\mathrm{ELBO}}(X) &= \tfrac1M \sum_m \tfrac1K \sum_k \log w_{mk}
        \qquad(\texttt{elbo}, \text{the default}) \\
    \mathcal L_{\mathrm{IWAE}}(X) &= \tfrac1M \sum_m \log \tfrac1K \sum_k w_{mk}
        \qquad(\texttt{iwae})

``dreg`` has the IWAE value and the doubly reparameterised gradient (Tucker et al., 2019): the
densities :math:`q(z|x_m)` inside :math:`w` see the encoders' parameters detached, and the gradient
that reaches an encoder through a sample :math:`z_{mk}` is scaled by :math:`\tilde w_{mk}^2`
(:math:`\tilde w_{mk} = w_{mk} / \sum_{k'} w_{mk'}`, normalised per modality); the decoders get
:math:`\sum_k \tilde w_{mk} \nabla \log w_{mk}` exactly as under IWAE. The published MMVAE code normalises
the IWAE/DReG weights over all M·K samples at once; here they are normalised per modality, as the paper
writes the stratified bound.

**Posterior and prior family** (``mmvae_posterior``): ``gaussian`` (the like-for-like comparison of
the MEME paper, appendix I: :math:`q(z|x_m) = \mathcal N(\mu_m, \sigma_m)`, :math:`p(z) = \mathcal N(0, I)`)
or ``laplace`` (the original MMVAE: :math:`q(z|x_m) = \mathrm{Laplace}(\mu_m, \sigma_m)`,
:math:`p(z) = \mathrm{Laplace}(0, 1)`). For Laplace the encoder's :math:`\sigma_m` (softplus plus floor)
is used as the scale; the MMVAE code instead uses a softmax-scaled scale that sums to L over dimensions.
``encode(x, m)`` returns the unimodal posterior's (location, scale); ``sample_prior`` samples p(z).

**A missing modality.** The mixture runs over the observed modalities, and so do the decoders: an example
observing X gets the objective of X, and a missing modality's encoder and decoder get no gradient. A singly
observed example has no term: its "mixture" is one unimodal VAE, with no cross-modal part, so MMVAE cannot
learn from unpaired data (MEME paper Table 1). ``min_observed = 2``: the trainer leaves out the examples that
observe fewer than two modalities (with two modalities: trains on the paired part only), logs a warning and
records it in the run's metadata (``learns_from_unpaired``). ``loss`` refuses a batch of one modality.

The loss returned is the negative batch mean. Noise: one draw of shape (M, K, B, L), modality-major, M the
observed modalities.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from meme.batch import Batch
from meme.config import key, positive
from meme.dists import normal_log_prob
from meme.errors import MemeError, check_choice
from meme.models.base import MultimodalModel
from meme.models.experts import mixture_log_prob
from meme.nets.base import Modality


def laplace_log_prob(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log Laplace(z; loc, scale) summed over the last dimension."""
    return (-(z - loc).abs() / scale - torch.log(2.0 * scale)).sum(-1)


def standard_laplace(shape, like: Tensor) -> Tensor:
    """Standard Laplace noise by inverting the CDF (as ``torch.distributions.Laplace.rsample``)."""
    eps = torch.finfo(like.dtype).eps
    u = torch.empty(shape, dtype=like.dtype, device=like.device).uniform_(eps - 1.0, 1.0)
    return -u.sign() * torch.log1p(-u.abs())


#: family -> (log density summed over the last dim, standard noise of a shape)
FAMILIES = {
    "gaussian": (normal_log_prob, lambda shape, like: torch.randn(shape, dtype=like.dtype, device=like.device)),
    "laplace": (laplace_log_prob, standard_laplace),
}
ESTIMATORS = ("elbo", "iwae", "dreg")


@dataclass(frozen=True)
class MMVAEKeys:
    mmvae_posterior: str = key("gaussian", 'posterior and prior family of MMVAE: gaussian (like-for-like) | laplace (original MMVAE)')
    mmvae_estimator: str = key("elbo", 'MMVAE objective: elbo (stratified, as published) | iwae | dreg')
    mmvae_samples: int = key(1, 'samples per modality (K) of the MMVAE estimators (30 with dreg in the MMVAE code)')

    @staticmethod
    def check(cfg) -> None:
        positive(cfg, "mmvae_samples")
        check_choice("mmvae_posterior", cfg.mmvae_posterior, FAMILIES)
        check_choice("mmvae_estimator", cfg.mmvae_estimator, ESTIMATORS)


class MMVAE(MultimodalModel):
    name = "mmvae"
    Keys = MMVAEKeys
    metric_names = ("elbo", "iwae", "dreg", "log_pz", "log_qz_x")
    min_observed = 2

    def __init__(self, modalities: tuple[Modality, Modality], posterior: str = "gaussian",
                 estimator: str = "elbo", K: int = 1):
        super().__init__(modalities)
        check_choice("mmvae_posterior", posterior, FAMILIES)
        check_choice("mmvae_estimator", estimator, ESTIMATORS)
        if K < 1:
            raise MemeError(f"mmvae_samples={K} must be a positive number of samples per modality")
        self.family, self.estimator, self.K = posterior, estimator, K
        self.log_prob, self.noise = FAMILIES[posterior]

    @classmethod
    def from_config(cls, cfg, modalities, train_data, observation):
        return cls(modalities, posterior=cfg.mmvae_posterior, estimator=cfg.mmvae_estimator, K=cfg.mmvae_samples)

    def latent_noise(self, like: Tensor) -> Tensor:
        return self.noise(like.shape, like)

    def log_prior(self, z: Tensor) -> Tensor:
        zero, one = torch.zeros_like(z), torch.ones_like(z)
        return self.log_prob(z, zero, one)

    def sample_prior(self, n: int) -> Tensor:
        p = next(self.parameters())
        return self.noise((n, self.latent_dim), torch.empty(0, device=p.device, dtype=p.dtype))

    def log_weights(self, x: tuple[Tensor | None, ...], detach_q: bool = False) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """log w_{mk} (M, K, B), the per-term means for the metrics, and the samples z (M, K, B, L), over the
        M observed modalities of ``x`` (``None`` for a missing one).

        ``detach_q``: the densities q(z|x_j) inside w see the encoders' outputs detached (DReG).
        """
        obs = [m for m in range(len(x)) if x[m] is not None]
        post = [tuple(v.float() for v in self.mods[m].encode(x[m])) for m in obs]
        mu, scale = torch.stack([p[0] for p in post]), torch.stack([p[1] for p in post])  # (M, B, L)
        M, B, L = mu.shape
        z = mu.unsqueeze(1) + scale.unsqueeze(1) * self.noise((M, self.K, B, L), mu)  # (M, K, B, L)
        qmu, qscale = (mu.detach(), scale.detach()) if detach_q else (mu, scale)
        # log q(z_{mk} | x_j) for every sample (m, k) and every component j: (J, M, K, B)
        log_q = mixture_log_prob(torch.stack([self.log_prob(z, qmu[j], qscale[j]) for j in range(M)]))
        log_p = self.log_prior(z)
        # each decoder scores all M*K samples in one call: (M, K, B) per modality
        recon = [self.mods[d].log_likelihood(x[d], self.mods[d].decode(z)).float() for d in obs]
        lw = log_p
        for r in recon:
            lw = lw + r
        lw = lw - log_q
        terms = {"log_pz": log_p.mean(), "log_qz_x": log_q.mean()}
        for i, m in enumerate(obs):
            for j, d in enumerate(obs):
                terms[f"recon_{self.names[d]}_from_{self.names[m]}"] = recon[j][i].mean()
        return lw, terms, z

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        if sum(batch.observed) < 2:
            raise MemeError("MMVAE has no objective for singly observed examples; train it on paired data "
                            "(the trainer does so automatically)")
        lw, metrics, z = self.log_weights(batch.x, detach_q=self.estimator == "dreg")
        if self.estimator == "elbo":
            bound = surrogate = lw.mean(1).mean(0)  # (B,)
        else:
            bound = surrogate = (torch.logsumexp(lw, 1) - math.log(self.K)).mean(0)
        if self.estimator == "dreg":
            w = torch.softmax(lw.detach(), 1)  # normalised per modality, (M, K, B)
            if z.requires_grad:  # the encoders' gradient through z_{mk}: w * (w * d lw / dz) = w^2 d lw / dz
                z.register_hook(lambda g: g * w.unsqueeze(-1))
            surrogate = (w * lw).sum(1).mean(0)
        loss = -surrogate.mean()
        if self.estimator == "dreg":  # report minus the bound, keep the surrogate's gradient
            loss = loss - loss.detach() + (-bound.mean()).detach()
        metrics[self.estimator] = bound.mean()
        metrics["loss"] = loss
        return loss, {k: v.detach() for k, v in metrics.items()}
