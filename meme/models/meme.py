r"""MEME: the mutually supervised multimodal VAE (Joy et al., ICLR 2022).

Two modalities s and t, four networks (one encoder and one decoder each), shared by both directions.

One direction, "t supervises s" (paper eq. 1, appendix A); q(z|s) is the posterior, p(z|t) the
conditional prior, p(s|z) the likelihood and q(t|z) the "classifier":

.. math::

    z_0, \dots, z_K &\sim q(z|s) \quad (\text{reparameterised}; z = z_0) \\
    \log q(t|s) &\approx \operatorname{logsumexp}_{k=0..K} \log q(t|z_k) - \log(K+1) \\
    w &= \exp(\log q(t|z) - \log q(t|s)) \le K+1 \\
    \mathcal{L}_{s\leftarrow t} &= \operatorname{sg}(w)\,[\log p(s|z) - \log q(t|z)
        - \mathrm{KL}(q(z|s)\,\|\,p(z|t))] + \lambda \log q(t|s)

Both directions (eq. 2): :math:`\mathcal{L}_{MEME} = \mathcal{L}_{s\leftarrow t} + \mathcal{L}_{t\leftarrow s}`.

t missing (eq. 3-4), with N learnable pseudo-samples :math:`u_n` in t's input space:

.. math::

    z \sim q(z|s),\quad \hat p(z) = \tfrac1N \sum_n p(z|u_n),\quad
    \mathcal{L}(s) = \log p(s|z) - (\log q(z|s) - \log \hat p(z))

t's decoder gets no gradient from :math:`\mathcal{L}(s)`; t's encoder and the pseudo-samples do.
The loss returned is the negative batch mean of the relevant term.

The fast path computes each encoder once per batch and each decoder once per batch (the K+1
classifier evaluations of one direction and the likelihood of the other direction share one call).

**BatchNorm** (the published SVHN encoder has it) follows the published code: in training mode each
encoder call normalises by the statistics of its own batch, so the pseudo-samples of a missing
modality, passed through that modality's encoder, are normalised by theirs; the K+1 samples of a
direction come from one posterior, whose re-encoding in the published code gives the same outputs;
the running averages move as often as the published code encodes each batch (three times per paired
step, see ``meme.nets.base.batchnorm_passes``). Evaluation runs in eval mode, on the running averages.
``meme.models.reference.reference_meme_loss`` computes the same quantity term by term, as written.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from meme.batch import Batch
from meme.dists import kl_normal, log_mean_exp, mixture_normal_log_prob, normal_log_prob
from meme.errors import MemeError, check_choice
from meme.models.base import MultimodalModel
from meme.nets.base import Modality, as_float, batchnorm_passes

DIRECTIONS = ("both", "t_supervises_s", "s_supervises_t")


def pseudo_init_rows(data, observation, m: int, n: int, seed: int, modality: Modality | None = None) -> Tensor:
    """n real training rows of modality m, taken from the examples where m is observed, as
    ``modality.pseudo_input`` makes them (default: ``as_float``)."""
    pairs = observation.observing(m)
    if pairs.numel() == 0:
        raise MemeError(f"no training example observes modality {data.names[m]!r}; cannot initialise its pseudo-samples")
    g = torch.Generator().manual_seed(seed + 17 * m)
    pick = pairs[torch.randint(pairs.numel(), (n,), generator=g)] if n > pairs.numel() else \
        pairs[torch.randperm(pairs.numel(), generator=g)[:n]]
    rows = data.rows(m, pick)
    return modality.pseudo_input(rows) if modality is not None else as_float(rows).float()


class MEME(MultimodalModel):
    name = "meme"
    max_modalities = 2
    beyond = ("MEME beyond two modalities (the paper's appendix E, with meme_combine) is not built yet; for now "
              "use mvae, mmvae, mopoe or mmjsd")

    def __init__(self, modalities: tuple[Modality, Modality], K: int = 10, lam: float = 10.0,
                 n_pseudo: int = 100, direction: str = "both",
                 pseudo_init: tuple[Tensor, Tensor] | None = None):
        super().__init__(modalities)
        if K < 1:
            raise MemeError(f"K={K} must be at least 1 (the published code uses 10)")
        if n_pseudo < 1:
            raise MemeError(f"n_pseudo={n_pseudo} must be a positive number of pseudo-samples")
        check_choice("direction", direction, DIRECTIONS)
        self.K, self.lam, self.direction = K, lam, direction
        if pseudo_init is None:
            pseudo_init = tuple(torch.rand(n_pseudo, *m.pseudo_shape) for m in modalities)
        for m, u in zip(modalities, pseudo_init):
            if u.shape != (n_pseudo, *m.pseudo_shape):
                raise MemeError(f"pseudo-samples of {m.name} have shape {tuple(u.shape)}, expected {(n_pseudo, *m.pseudo_shape)}")
        self.pseudo = nn.ParameterList([nn.Parameter(u.clone().float()) for u in pseudo_init])

    @classmethod
    def from_config(cls, cfg, modalities, train_data, observation):
        init = tuple(pseudo_init_rows(train_data, observation, m, cfg.n_pseudo, cfg.seed, modalities[m])
                     for m in range(len(modalities)))
        return cls(modalities, K=cfg.K, lam=cfg.lam, n_pseudo=cfg.n_pseudo, direction=cfg.direction, pseudo_init=init)

    # ------------------------------------------------------------------ paired
    def _directions(self) -> list[tuple[int, int]]:
        return {"both": [(0, 1), (1, 0)], "t_supervises_s": [(0, 1)], "s_supervises_t": [(1, 0)]}[self.direction]

    def paired_terms(self, x: tuple[Tensor, Tensor]) -> dict[tuple[int, int], dict[str, Tensor]]:
        """Per direction (a, b) (b supervises a): the per-example terms of L_{a<-b}."""
        K1 = self.K + 1
        dirs = self._directions()
        post = []
        for m in range(2):
            # BatchNorm's running averages move as in the published code, which encodes m's batch twice
            # where m is the data (posterior, then again for the K classifier samples) and once where it
            # is the label (conditional prior); the outputs of those passes are identical.
            passes = 2 * any(a == m for a, _ in dirs) + any(b == m for _, b in dirs)
            with batchnorm_passes(self.mods[m], passes):
                post.append(self.mods[m].encode(x[m]))
        z = {}
        for a, _ in dirs:
            mu, sigma = post[a]
            z[a] = mu + sigma * torch.randn(K1, *mu.shape, device=mu.device, dtype=mu.dtype)
        # One decoder call per modality m: the K+1 classifier samples of the direction where m is the
        # label (z drawn from the other encoder), then the likelihood sample of the direction where m is data.
        lik = {}
        for m in range(2):
            parts = []
            if (1 - m, m) in dirs:
                parts.append(z[1 - m])
            if (m, 1 - m) in dirs:
                parts.append(z[m][:1])
            zz = torch.cat(parts, 0)
            out = self.mods[m].decode(zz)
            lik[m] = self.mods[m].log_likelihood(x[m], out).float()  # (S, B)
        terms = {}
        for a, b in dirs:
            log_q_b_z = lik[b][:K1]  # (K+1, B): log q(b | z_k), k = 0 is the posterior sample
            log_p_a_z = lik[a][-1]   # log p(a | z_0)
            log_q_b_a = log_mean_exp(log_q_b_z, 0)
            w = torch.exp(log_q_b_z[0] - log_q_b_a).detach()
            kl = kl_normal(*post[a], *post[b]).float()
            terms[(a, b)] = {
                "elbo": w * (log_p_a_z - log_q_b_z[0] - kl) + self.lam * log_q_b_a,
                "recon": log_p_a_z, "cls": log_q_b_z[0], "kl": kl, "log_q": log_q_b_a, "w": w,
            }
        return terms

    # ---------------------------------------------------------------- unpaired
    def unpaired_terms(self, x: Tensor, a: int) -> dict[str, Tensor]:
        """Per-example terms of L(a) when the other modality b is missing."""
        b = 1 - a
        mu, sigma = self.mods[a].encode(x)
        z = mu + sigma * torch.randn_like(mu)
        mu_u, sigma_u = self.mods[b].encode(self.pseudo[b])
        log_q = normal_log_prob(z.float(), mu.float(), sigma.float())
        log_p = mixture_normal_log_prob(z.float(), mu_u.float(), sigma_u.float())
        recon = self.mods[a].log_likelihood(x, self.mods[a].decode(z)).float()
        return {"elbo": recon - (log_q - log_p), "recon": recon, "kl": log_q - log_p}

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        s, t = self.names
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

    def sample_prior(self, n: int) -> Tensor:
        """z from the pseudo-sample mixture of both modalities (MEME has no unconditional prior)."""
        mus, sigmas = zip(*(self.mods[m].encode(self.pseudo[m]) for m in range(2)))
        mu, sigma = torch.cat(mus), torch.cat(sigmas)
        pick = torch.randint(mu.shape[0], (n,), device=mu.device)
        return mu[pick] + sigma[pick] * torch.randn(n, mu.shape[1], device=mu.device, dtype=mu.dtype)
