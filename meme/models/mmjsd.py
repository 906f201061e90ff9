r"""mmJSD: the multimodal Jensen-Shannon divergence VAE (Sutter, Daunhawer & Vogt, NeurIPS 2020).

The joint posterior is the equally weighted mixture of the unimodal posteriors of the observed
modalities X, :math:`q(z|X) = \frac1{|X|} \sum_{x_m \in X} q(z|x_m)`, and the regulariser is a
Jensen-Shannon divergence among the |X| + 1 distributions :math:`q_1..q_{|X|}` (the unimodal posteriors)
and :math:`q_{|X|+1} = p(z) = \mathcal N(0, I)`, with uniform weights :math:`\pi_j = 1/(|X|+1)`, taken
towards the **dynamic prior**, their weighted geometric mean (a Gaussian; ``meme.models.experts.poe``
with weights :math:`\pi`):

.. math::

    p_f(z|X) \propto \prod_j q_j(z)^{\pi_j}, \qquad
    \mathrm{JS}_\pi(X) = \sum_j \pi_j\, \mathrm{KL}(q_j \,\|\, p_f(z|X)),

    \mathcal L(X) = \mathbb E_{z \sim q(z|X)} \Big[ \sum_{x_d \in X} \log p(x_d|z) \Big] - \beta\, \mathrm{JS}_\pi(X).

Every KL is analytic. z is drawn from the mixture by splitting the batch into equal blocks, one per
observed modality (``meme.models.experts.select_components``).

**A missing modality.** Everything runs over the observed modalities: for an s-only example the mixture
is :math:`q(z|x_s)`, the dynamic prior is the geometric mean of :math:`q(z|x_s)` and :math:`p(z)`
(:math:`\pi = 1/2` each) and :math:`\mathcal L(s) = \mathbb E_{q(z|x_s)}[\log p(s|z)]
- \tfrac\beta2 [\mathrm{KL}(q(z|x_s)\,\|\,p_f) + \mathrm{KL}(p(z)\,\|\,p_f)]`. The missing modality's
encoder and decoder get no gradient.

``encode(x, m)`` returns the unimodal posterior :math:`q(z|x_m)`; ``sample_prior`` samples :math:`\mathcal N(0, I)`.
The loss returned is the negative batch mean.
"""
from __future__ import annotations

import torch
from torch import Tensor

from meme.batch import Batch
from meme.dists import kl_normal
from meme.models.experts import BetaWeightedModel, poe, select_components, with_prior_expert


def js_dynamic_prior(mus: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """JS_pi among the experts stacked on axis 0 (uniform pi) and their geometric mean p_f.

    Returns (js, mu_f, sigma_f); ``js`` sums over the last dimension.
    """
    n = mus.shape[0]
    weights = torch.full((n,), 1.0 / n, device=mus.device)
    mu_f, sigma_f = poe(mus, sigmas, weights)
    kls = kl_normal(mus.float(), sigmas.float(), mu_f.unsqueeze(0), sigma_f.unsqueeze(0))  # (n, ...)
    return kls.mean(0), mu_f, sigma_f


class MMJSD(BetaWeightedModel):
    name = "mmjsd"
    metric_names = ("js",)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        obs = list(batch.present)
        post = [tuple(v.float() for v in self.mods[m].encode(batch.x[m])) for m in obs]
        mus, sigmas = torch.stack([p[0] for p in post]), torch.stack([p[1] for p in post])
        js, _, _ = js_dynamic_prior(*with_prior_expert(mus, sigmas))
        mu, sigma = select_components(mus, sigmas)
        z = mu + sigma * torch.randn_like(mu)
        metrics = {"js": js.mean()}
        recon = 0.0
        for m in obs:
            r = self.mods[m].log_likelihood(batch.x[m], self.mods[m].decode(z)).float()
            metrics[f"recon_{self.names[m]}"] = r.mean()
            recon = recon + r
        loss = -(recon - self.beta * js).mean()
        metrics["loss"] = loss
        return loss, {k: v.detach() for k, v in metrics.items()}
