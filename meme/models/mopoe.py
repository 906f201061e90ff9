r"""MoPoE: the mixture of products of experts (Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021).

For the observed modalities X, every non-empty subset :math:`X_S \in \mathcal P(X)` gets a product of
Gaussian experts :math:`\tilde q(z|X_S)`, and the joint posterior is their equally weighted mixture:

.. math::

    q(z|X) = \frac{1}{|\mathcal P(X)|} \sum_{X_S \in \mathcal P(X)} \tilde q(z|X_S), \qquad
    \tilde q(z|X_S) = \begin{cases} q(z|x_m) & X_S = \{x_m\} \\
        \mathrm{PoE}\big(p(z), \{q(z|x_m)\}_{x_m \in X_S}\big) & |X_S| \ge 2 \end{cases}

The prior expert :math:`p(z) = \mathcal N(0, I)` joins every product of two or more experts; a single-modality
subset is that modality's encoder as it is. (With two modalities that is the published code's rule: the prior
expert joins the product of the full set only.) The subsets come in a fixed order: by size, then with the
earlier modalities first, so the full set is last. The objective
(with the mixture's KL replaced by its upper bound, the mean of the components' KLs, as in the paper):

.. math::

    \mathcal L(X) = \mathbb E_{z \sim q(z|X)} \Big[ \sum_{x_d \in X} \log p(x_d|z) \Big]
        - \frac{\beta}{|\mathcal P(X)|} \sum_{X_S \in \mathcal P(X)} \mathrm{KL}(\tilde q(z|X_S) \,\|\, p(z)).

z is drawn from the mixture by splitting the batch into equal blocks, one per subset
(``meme.models.experts.select_components``): for a paired two-modality batch of B examples about B/3
reconstruct from :math:`q(z|s)`, B/3 from :math:`q(z|t)` and B/3 from the joint product; with five observed
modalities, B/31 per subset.

**A missing modality.** The powerset runs over the observed modalities: for an s-only example it is
:math:`\{\{s\}\}`, the mixture is :math:`q(z|x_s)` and :math:`\mathcal L(s) = \mathbb E_{q(z|x_s)}[\log p(s|z)]
- \beta\,\mathrm{KL}(q(z|x_s)\,\|\,p(z))`. The missing modality's encoder and decoder get no gradient.

``encode(x, m)`` returns :math:`\tilde q(z|\{x_m\}) = q(z|x_m)`; ``sample_prior`` samples :math:`\mathcal N(0, I)`.
The loss returned is the negative batch mean.
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

from meme.batch import Batch
from meme.models.experts import BetaWeightedModel, kl_to_standard_normal, poe, select_components, with_prior_expert


class MoPoE(BetaWeightedModel):
    name = "mopoe"

    def subset_posteriors(self, x) -> dict[tuple[int, ...], tuple[Tensor, Tensor]]:
        """(mu, sigma) of the product of every non-empty subset of the observed modalities, in fp32, in the
        subsets' order (by size, then the earlier modalities first)."""
        obs = [m for m in range(len(x)) if x[m] is not None]
        post = {(m,): tuple(v.float() for v in self.mods[m].encode(x[m])) for m in obs}
        for size in range(2, len(obs) + 1):
            for S in itertools.combinations(obs, size):
                mus, sigmas = with_prior_expert(torch.stack([post[(m,)][0] for m in S]),
                                                torch.stack([post[(m,)][1] for m in S]))
                post[S] = poe(mus, sigmas)
        return post

    def fuse(self, experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The posterior given a subset S: its own component of the mixture, q~(z|X_S) (the encoder for one
        modality; the product with the prior expert for more), as the published code generates from a subset."""
        if len(experts) == 1:
            return experts[0][0].unsqueeze(0), experts[0][1].unsqueeze(0)
        mu, sigma = poe(*with_prior_expert(torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts])))
        return mu.unsqueeze(0), sigma.unsqueeze(0)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        post = self.subset_posteriors(batch.x)
        mu, sigma = select_components(torch.stack([p[0] for p in post.values()]),
                                      torch.stack([p[1] for p in post.values()]))
        z = mu + sigma * torch.randn_like(mu)
        metrics = {}
        recon = 0.0
        for m in range(len(batch.observed)):
            if batch.observed[m]:
                r = self.mods[m].log_likelihood(batch.x[m], self.mods[m].decode(z)).float()
                metrics[f"recon_{self.names[m]}"] = r.mean()
                recon = recon + r
        kls = {S: kl_to_standard_normal(*p) for S, p in post.items()}
        for S, kl in kls.items():
            metrics["kl_" + "_".join(self.names[m] for m in S)] = kl.mean()
        kl = torch.stack(list(kls.values())).mean(0)
        loss = -(recon - self.beta * kl).mean()
        metrics["loss"] = loss
        return loss, {k: v.detach() for k, v in metrics.items()}
