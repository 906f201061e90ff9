r"""Product- and mixture-of-experts arithmetic shared by the baselines (MVAE, MMVAE, MoPoE, mmJSD).

Experts are diagonal Gaussians stacked along a leading axis: ``mus`` and ``sigmas`` of shape (E, ..., L).

**Product of Gaussian experts** (optionally weighted, which gives a weighted geometric mean): with
precisions :math:`T_e = \sigma_e^{-2}` and weights :math:`w_e` (all 1 for a plain product),

.. math::

    T = \sum_e w_e T_e, \qquad \mu = T^{-1} \sum_e w_e T_e \mu_e, \qquad \sigma = T^{-1/2}.

The *prior expert* :math:`\mathcal N(0, I)` is one more expert with :math:`\mu = 0, \sigma = 1`
(:func:`with_prior_expert`).

``BetaWeightedModel`` is the common base of the baselines whose regulariser carries a weight ``beta``
(MVAE, MoPoE, mmJSD).

**Mixture sampling** (:func:`select_components`): a batch of B examples is split into C contiguous
blocks whose sizes differ by at most one, and block c takes its latents from component c, so each
component is drawn equally often (the published MoPoE/mmJSD code splits the batch the same way).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meme.config import key, non_negative
from meme.dists import kl_normal, log_mean_exp
from meme.errors import MemeError
from meme.models.base import MultimodalModel
from meme.nets.base import Modality


@dataclass(frozen=True)
class BetaKeys:
    beta: float = key(1.0, 'weight of the KL / JS term of MVAE, MoPoE and mmJSD', name="beta{:g}")

    @staticmethod
    def check(cfg) -> None:
        non_negative(cfg, "beta")


class BetaWeightedModel(MultimodalModel):
    """A model whose objective is a likelihood term minus ``beta`` times a divergence."""

    Keys = BetaKeys

    def __init__(self, modalities: tuple[Modality, Modality], beta: float = 1.0):
        super().__init__(modalities)
        if beta < 0:
            raise MemeError(f"beta={beta} must be >= 0")
        self.beta = beta

    @classmethod
    def from_config(cls, cfg, modalities, train_data, observation):
        return cls(modalities, beta=cfg.beta)


def kl_to_standard_normal(mu: Tensor, sigma: Tensor) -> Tensor:
    """KL( N(mu, sigma^2) || N(0, I) ), summed over the last dimension."""
    return kl_normal(mu, sigma, torch.zeros_like(mu), torch.ones_like(sigma))


def with_prior_expert(mus: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """Append the prior expert N(0, I) to a stack of experts (E, ..., L) -> (E+1, ..., L)."""
    return (torch.cat([mus, torch.zeros_like(mus[:1])]), torch.cat([sigmas, torch.ones_like(sigmas[:1])]))


def poe(mus: Tensor, sigmas: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Product of the Gaussian experts stacked on axis 0: the precision-weighted mean and its scale.

    ``weights`` (E,), if given, raises each expert to a power (a weighted geometric mean when they sum to 1).
    Computed in fp32.
    """
    mus, sigmas = mus.float(), sigmas.float()
    precision = sigmas.pow(-2)
    if weights is not None:
        precision = precision * weights.to(precision).view(-1, *([1] * (precision.dim() - 1)))
    total = precision.sum(0)
    mu = (precision * mus).sum(0) / total
    return mu, total.rsqrt()


def component_of(n: int, c: int, device=None) -> Tensor:
    """Which of ``c`` components each of ``n`` examples draws from: contiguous, balanced blocks."""
    return torch.arange(n, device=device) * c // n


def select_components(mus: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(C, B, L) component parameters -> (B, L): example i gets component ``component_of(B, C)[i]``."""
    c, b = mus.shape[0], mus.shape[1]
    pick = component_of(b, c, mus.device)
    rows = torch.arange(b, device=mus.device)
    return mus[pick, rows], sigmas[pick, rows]


def mixture_log_prob(log_probs: Tensor) -> Tensor:
    """log of an equally weighted mixture, from the components' log densities stacked on axis 0."""
    return log_mean_exp(log_probs, 0)
