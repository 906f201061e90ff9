r"""MVAE: the multimodal VAE with a product of Gaussian experts (Wu & Goodman, NeurIPS 2018).

The posterior over z given any set S of observed modalities is the product of the prior expert and the
unimodal experts :math:`\tilde q(z|x_m) = \mathcal N(\mu_m(x_m), \sigma_m(x_m))` of the observed ones:

.. math::

    q(z|X_S) \propto p(z) \prod_{m \in S} \tilde q(z|x_m), \qquad p(z) = \mathcal N(0, I),

a Gaussian with precision :math:`1 + \sum_{m\in S} \sigma_m^{-2}` and the precision-weighted mean
(``meme.models.experts.poe``). The ELBO of a set S, with one reparameterised sample and the analytic KL:

.. math::

    \mathrm{ELBO}(X_S) = \mathbb E_{q(z|X_S)} \Big[\sum_{m \in S} \log p(x_m|z)\Big]
        - \beta\, \mathrm{KL}(q(z|X_S) \,\|\, p(z)).

**Sub-sampled training objective** (paper §3): for an example observing the set X of modalities, the ELBO of
all of X plus each single-modality ELBO,

.. math::

    \mathcal L(X) = \mathrm{ELBO}(X) + \sum_{x_m \in X} \mathrm{ELBO}(x_m)
    \qquad (\text{two modalities: } \mathcal L(s, t) = \mathrm{ELBO}(s, t) + \mathrm{ELBO}(s) + \mathrm{ELBO}(t)),

and :math:`\mathcal L(x_m) = \mathrm{ELBO}(x_m)` when X is one modality. (Wu & Goodman also add the ELBOs of a
few random subsets for M > 2; the terms here are the deterministic part of their objective, which for two
modalities is all of it.)

**A missing modality** (partial observation, MEME paper Table 1 "(✓)"): the product and the sums run over
the observed experts only. A missing modality's encoder and decoder do not enter the loss and get no gradient.

``encode(x, m)`` returns MVAE's unimodal posterior :math:`q(z|x_m) \propto p(z)\,\tilde q(z|x_m)` (the
expert combined with the prior expert, as used for cross-generation), not the bare expert.
The loss returned is the negative batch mean. Noise is drawn in the order of the terms: all of X, then each
modality alone in order (two modalities: joint, s, t).
"""
from __future__ import annotations

import torch
from torch import Tensor

from meme.batch import Batch
from meme.models.experts import BetaWeightedModel, kl_to_standard_normal, poe, with_prior_expert


class MVAE(BetaWeightedModel):
    name = "mvae"

    def experts(self, x: tuple[Tensor | None, ...]) -> dict[int, tuple[Tensor, Tensor]]:
        """The unimodal experts (mu, sigma) of the observed modalities, in fp32."""
        return {m: tuple(v.float() for v in self.mods[m].encode(x[m])) for m in range(len(x)) if x[m] is not None}

    def posterior(self, experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """q(z|X_S): the product of the prior expert and the given experts."""
        mus, sigmas = with_prior_expert(torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts]))
        return poe(mus, sigmas)

    def encode(self, x: Tensor, m: str | int) -> tuple[Tensor, Tensor]:
        """MVAE's unimodal posterior q(z|x_m): expert m combined with the prior expert."""
        return self.posterior([self.mods[self.index(m)].encode(x)])

    def expert(self, x: Tensor, m: str | int) -> tuple[Tensor, Tensor]:
        """The bare expert of modality m (no prior expert: ``fuse`` adds it once)."""
        return tuple(v.float() for v in self.mods[self.index(m)].encode(x))

    def encode_and_expert(self, x: Tensor, m: str | int):
        """``encode`` and ``expert`` from one pass of modality m's encoder."""
        raw = self.mods[self.index(m)].encode(x)
        return self.posterior([raw]), tuple(v.float() for v in raw)

    def fuse(self, experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """q(z|X_S): the product of the prior expert and the experts of S (one component)."""
        mu, sigma = self.posterior(experts)
        return mu.unsqueeze(0), sigma.unsqueeze(0)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        experts = self.experts(batch.x)
        # the subsets whose ELBOs are summed: all observed, then each alone ((s, t), (s), (t) for a paired batch)
        subsets = [tuple(experts)] + ([(m,) for m in experts] if len(experts) > 1 else [])
        posts = {S: self.posterior([experts[m] for m in S]) for S in subsets}
        z = {S: mu + sigma * torch.randn_like(mu) for S, (mu, sigma) in posts.items()}
        # one decoder call per observed modality, over every subset that contains it
        recon = {}
        for m in experts:
            uses = [S for S in subsets if m in S]
            lik = self.mods[m].log_likelihood(batch.x[m], self.mods[m].decode(torch.stack([z[S] for S in uses])))
            recon.update({(S, m): lik[i].float() for i, S in enumerate(uses)})
        total, metrics = 0.0, {}
        for S in subsets:
            kl = kl_to_standard_normal(*posts[S])
            rec = sum(recon[(S, m)] for m in S)
            total = total + rec - self.beta * kl
            tag = "_".join(self.names[m] for m in S)
            metrics[f"kl_{tag}"] = kl.mean()
            for m in S:
                metrics[f"recon_{self.names[m]}_from_{tag}"] = recon[(S, m)].mean()
        loss = -total.mean()
        metrics["loss"] = loss
        return loss, {k: v.detach() for k, v in metrics.items()}
