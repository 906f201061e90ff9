r"""MEME: the mutually supervised multimodal VAE (Joy et al., ICLR 2022), for two modalities (the paper's
eq. 1-5) and for M > 2 (its appendix E).

**Two modalities.** s and t, four networks (one encoder and one decoder each), shared by both directions.
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

**M modalities** (appendix E). A batch observes a set O of the modalities. When :math:`|O| \ge 2`, every
observed modality m in turn is the posterior and the rest of O, :math:`R = O \setminus \{m\}`, supervises it:

.. math::

    z_0, \dots, z_K &\sim q(z|x_m), \qquad
    \log q(x_R|z) = \textstyle\sum_{r \in R} \log q(x_r|z) \quad (\text{the product of their likelihoods}) \\
    \log q(x_R|x_m) &\approx \operatorname{logsumexp}_{k} \log q(x_R|z_k) - \log(K+1), \qquad
    w = \exp(\log q(x_R|z_0) - \log q(x_R|x_m)) \\
    \mathcal{L}_{m\leftarrow R} &= \operatorname{sg}(w)\,[\log p(x_m|z_0) - \log q(x_R|z_0)
        - \mathrm{KL}(q(z|x_m)\,\|\,p_f(z|x_R))] + \lambda \log q(x_R|x_m), \qquad
    \mathcal{L}_{MEME}(O) = \textstyle\sum_{m \in O} \mathcal{L}_{m\leftarrow R}

(with three modalities s, t, u: :math:`R(s, f(t, u)) + R(t, f(s, u)) + R(u, f(s, t))`). The conditional prior
:math:`p_f(z|x_R) = f(q(z|x_r) : r \in R)` combines the other observed modalities' encoders, chosen by
``combine`` (the config's ``meme_combine``):

* ``product``: :math:`p_f \propto \prod_{r} q(z|x_r)`, a Gaussian (precisions add, the mean is precision-weighted,
  no prior expert); the KL stays analytic.
* ``mixture``: :math:`p_f = \tfrac1{|R|}\sum_r q(z|x_r)`, whose KL from a Gaussian has no closed form. It is
  estimated by Monte Carlo on the K+1 posterior samples the step draws anyway,
  :math:`\widehat{\mathrm{KL}} = \tfrac1{K+1}\sum_k [\log q(z_k|x_m) - \log p_f(z_k|x_R)]`: unbiased (the mean
  of a function of exact samples of q), reparameterised, and free of extra network calls.

With one modality in R the two coincide and the KL is the analytic one, so two modalities give exactly the
two-modality objective above whatever ``combine`` is. Missing modalities take no part: their encoders and
decoders get exactly zero gradient from the batch.

When every other modality is missing (:math:`O = \{m\}`), m's conditional prior is the pseudo-sample mixture
of eq. 3-4 over **every other modality's** pseudo-samples, each passed through its own modality's encoder:
:math:`\hat p(z) = \tfrac1{(M-1)N} \sum_{r \ne m} \sum_n q(z|u^r_n)`. The prior given nothing observed of
the rest is the marginal of :math:`p_f` over the missing modalities; each :math:`\tfrac1N\sum_n q(z|u^r_n)` is
the learned approximation of r's marginal :math:`\int q(z|x_r)\,p(x_r)\,dx_r`, and with f = mixture the
marginal is exactly their mixture. With f = product the marginal of a product is not a product of the
marginals (which would also have :math:`N^{M-1}` components), so both combinations use the mixture. With
two modalities this is t's pseudo-samples, as in eq. 3-4. ``use_pseudo=False`` (the config's
``--no-meme-pseudo``, an ablation) gives such an example the standard normal prior instead.

**Cost.** A step encodes each observed modality once and calls each observed modality's decoder once, on
the K+1 classifier samples of each of the |O| - 1 directions it supervises and the one likelihood sample of
its own direction: :math:`|O|(|O|-1)(K+1) + |O|` decoder evaluations per example, growing as M(M-1), not
as the :math:`2^M` subsets.

The fast path computes each encoder once per batch and each decoder once per batch (the K+1
classifier evaluations of one direction and the likelihood of the other direction share one call).

**BatchNorm** (the published SVHN encoder has it) follows the published code: in training mode each
encoder call normalises by the statistics of its own batch, so the pseudo-samples of a missing
modality, passed through that modality's encoder, are normalised by theirs; the K+1 samples of a
direction come from one posterior, whose re-encoding in the published code gives the same outputs;
the running averages move as often as the published code encodes each batch (see
``meme.nets.base.batchnorm_passes``): twice for the direction where the modality is the posterior and once
for each direction whose conditional prior it is part of (three times per paired step with two modalities).
Evaluation runs in eval mode, on the running averages.
``meme.models.reference.reference_meme_loss`` computes the same quantity term by term, as written.

**Generation from a subset S** (the evaluation): z from :math:`f(q(z|x_s) : s \in S)`, the same combination
as the conditional prior (``fuse``), so a single input is its own posterior.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meme.batch import Batch
from meme.config import key, non_negative, positive
from meme.device import check_fits
from meme.dists import kl_normal, log_mean_exp, mixture_normal_log_prob, normal_log_prob
from meme.errors import MemeError, check_choice
from meme.models.base import MultimodalModel
from meme.models.experts import poe
from meme.nets.base import Modality, as_float, batchnorm_passes

DIRECTIONS = ("both", "t_supervises_s", "s_supervises_t")
COMBINES = ("product", "mixture")


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


def mixture_kl(z: Tensor, mu: Tensor, sigma: Tensor, mus: Tensor, sigmas: Tensor) -> Tensor:
    """Monte Carlo KL( N(mu, sigma) || (1/C) sum_c N(mus_c, sigmas_c) ) per example, on samples z (S, B, L) of the
    first: the mean over S of log q(z) - log p(z). ``mus``/``sigmas``: (C, B, L). Returns (B,), fp32."""
    z, mus, sigmas = z.float(), mus.float(), sigmas.float()
    log_q = normal_log_prob(z, mu.float(), sigma.float())                           # (S, B)
    log_p = log_mean_exp(normal_log_prob(z.unsqueeze(1), mus, sigmas), 1)           # (S, C, B) -> (S, B)
    return (log_q - log_p).mean(0)


@dataclass(frozen=True)
class MEMEKeys:
    """MEME's config keys (``meme train --K 10``; a study's ``K: [1, 10]``)."""

    K: int = key(10, 'extra posterior samples in the log q(t|s) estimate', name="K{}")
    lam: float = key(10.0, 'weight of log q(t|s)', name="lam{:g}")
    n_pseudo: int = key(100, 'pseudo-samples per modality (mixture prior of a missing modality)', name="p{}")
    direction: str = key("both", 'both | t_supervises_s | s_supervises_t (two modalities; with more, every observed '
                         'modality supervises the rest: both)')
    meme_combine: str = key("", 'MEME with more than two modalities: how the conditional prior combines the other '
                            'observed modalities\' encoders, product (analytic KL) | mixture (KL estimated on the K+1 '
                            'posterior samples); "" = product', only=True)
    meme_pseudo: bool = key(True, "MEME: an example observing one modality alone gets the pseudo-sample mixture prior "
                            "(eq. 3-4; --no-meme-pseudo: the standard normal, the pseudo-samples unused, an ablation)",
                            name=("pseudo", "nopseudo"), only=True)

    @staticmethod
    def check(cfg) -> None:
        positive(cfg, "K", "n_pseudo")
        non_negative(cfg, "lam")
        check_choice("direction", cfg.direction, DIRECTIONS)
        if cfg.meme_combine:
            check_choice("meme_combine", cfg.meme_combine, COMBINES)


class MEME(MultimodalModel):
    name = "meme"
    Keys = MEMEKeys
    metric_prefixes = ("cls_", "log_q_", "w_")

    def __init__(self, modalities: tuple[Modality, ...], K: int = 10, lam: float = 10.0,
                 n_pseudo: int = 100, direction: str = "both",
                 pseudo_init: tuple[Tensor, ...] | None = None, combine: str = "product", use_pseudo: bool = True):
        super().__init__(modalities)
        if K < 1:
            raise MemeError(f"K={K} must be at least 1 (the published code uses 10)")
        if n_pseudo < 1:
            raise MemeError(f"n_pseudo={n_pseudo} must be a positive number of pseudo-samples")
        check_choice("direction", direction, DIRECTIONS)
        check_choice("meme_combine", combine, COMBINES)
        if direction != "both" and len(modalities) > 2:
            raise MemeError(f"direction={direction!r} names one of two modalities' directions; with "
                            f"{len(modalities)} modalities every observed modality supervises the rest: use 'both'")
        self.K, self.lam, self.direction, self.combine, self.use_pseudo = K, lam, direction, combine, use_pseudo
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
        return cls(modalities, K=cfg.K, lam=cfg.lam, n_pseudo=cfg.n_pseudo, direction=cfg.direction, pseudo_init=init,
                   combine=cfg.meme_combine or "product", use_pseudo=cfg.meme_pseudo)

    @classmethod
    def check_config(cls, cfg, names) -> None:
        if cfg.direction != "both" and len(names) > 2:
            raise MemeError(f"direction={cfg.direction!r} names one of two modalities' directions; with "
                            f"{len(names)} modalities every observed modality supervises the rest: use 'both'")

    @classmethod
    def check_run(cls, cfg, data, observation, modalities, device) -> None:
        """Refused before anything is built: more pseudo-samples than rows to start them from, and a batch whose
        (K + 2) x batch_size decoded latents per modality cannot fit."""
        for m, rows in enumerate(observation.observing(i).numel() for i in range(len(data.names))):
            if cfg.n_pseudo > max(rows, 100):
                raise MemeError(f"n_pseudo={cfg.n_pseudo} is more than the {rows} training rows that observe "
                                f"{data.names[m]!r}, which the pseudo-samples start from; give at most {max(rows, 100)}")
        values = sum(math.prod(m.event_shape) for m in modalities)
        # the decoded parameters and, for the backward pass, about as many activations again, in fp32
        check_fits((cfg.K + 2) * cfg.batch_size * values * 4 * 2, f"K={cfg.K} at batch_size={cfg.batch_size} "
                   f"(per batch)", device)

    # ------------------------------------------------------------------ observed together
    def _directions(self, observed=None) -> list[tuple[int, tuple[int, ...]]]:
        """(a, R): modality a is the posterior, the rest R of the observed modalities supervises it."""
        if self.num_modalities == 2 and self.direction != "both":
            return {"t_supervises_s": [(0, (1,))], "s_supervises_t": [(1, (0,))]}[self.direction]
        O = [m for m in range(self.num_modalities) if observed is None or observed[m]]
        return [(a, tuple(r for r in O if r != a)) for a in O]

    def conditional_prior_kl(self, post: list, a: int, R: tuple[int, ...], z: Tensor) -> Tensor:
        """KL( q(z|x_a) || f(q(z|x_r) : r in R) ) per example (fp32); ``z``: a's K+1 posterior samples."""
        if len(R) == 1:
            return kl_normal(*post[a], *post[R[0]]).float()
        mus, sigmas = torch.stack([post[r][0] for r in R]), torch.stack([post[r][1] for r in R])
        if self.combine == "product":
            return kl_normal(post[a][0].float(), post[a][1].float(), *poe(mus, sigmas))
        return mixture_kl(z, *post[a], mus, sigmas)

    def paired_terms(self, x, observed=None) -> dict[tuple[int, tuple[int, ...]], dict[str, Tensor]]:
        """Per direction (a, R) (the rest R of the observed modalities supervises a): the per-example terms of
        L_{a<-R}. ``observed``: which of ``x`` are observed (default: all)."""
        K1 = self.K + 1
        dirs = self._directions(observed)
        used = sorted({a for a, _ in dirs} | {r for _, R in dirs for r in R})
        post = [None] * self.num_modalities
        for m in used:
            # BatchNorm's running averages move as in the published code, which encodes m's batch twice where m
            # is the data (posterior, then again for the K classifier samples) and once for each direction whose
            # conditional prior m is part of; the outputs of those passes are identical.
            passes = 2 * any(a == m for a, _ in dirs) + sum(m in R for _, R in dirs)
            with batchnorm_passes(self.mods[m], passes):
                post[m] = self.mods[m].encode(x[m])
        z = {}
        for a, _ in dirs:
            mu, sigma = post[a]
            z[a] = mu + sigma * torch.randn(K1, *mu.shape, device=mu.device, dtype=mu.dtype)
        # One decoder call per modality r: the K+1 classifier samples of each direction r supervises (z drawn from
        # that direction's posterior), then the likelihood sample of the direction where r is the data.
        lik, rows = {}, {}
        for r in used:
            parts = []
            for a, R in dirs:
                if r in R:
                    rows[(a, r)] = len(parts) * K1
                    parts.append(z[a])
            if r in z:
                parts.append(z[r][:1])
            out = self.mods[r].decode(torch.cat(parts, 0))
            lik[r] = self.mods[r].log_likelihood(x[r], out).float()  # (S, B)
        terms = {}
        for a, R in dirs:
            # (K+1, B): log q(x_R | z_k) = sum over r in R of log q(x_r | z_k); k = 0 is the posterior sample
            log_q_R_z = sum(lik[r][rows[(a, r)]:rows[(a, r)] + K1] for r in R)
            log_p_a_z = lik[a][-1]   # log p(x_a | z_0)
            log_q_R_a = log_mean_exp(log_q_R_z, 0)
            w = torch.exp(log_q_R_z[0] - log_q_R_a).detach()
            kl = self.conditional_prior_kl(post, a, R, z[a])
            terms[(a, R)] = {
                "elbo": w * (log_p_a_z - log_q_R_z[0] - kl) + self.lam * log_q_R_a,
                "recon": log_p_a_z, "cls": log_q_R_z[0], "kl": kl, "log_q": log_q_R_a, "w": w,
            }
        return terms

    # ---------------------------------------------------------------- one modality alone
    def pseudo_prior(self, a: int) -> tuple[Tensor, Tensor]:
        """The conditional prior of a when every other modality is missing: the components (N(M-1), L) of the
        mixture over every other modality's pseudo-samples, each through its own modality's encoder."""
        parts = [self.mods[b].encode(self.pseudo[b]) for b in range(self.num_modalities) if b != a]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def unpaired_terms(self, x: Tensor, a: int) -> dict[str, Tensor]:
        """Per-example terms of L(a) when every other modality is missing."""
        mu, sigma = self.mods[a].encode(x)
        z = mu + sigma * torch.randn_like(mu)
        log_q = normal_log_prob(z.float(), mu.float(), sigma.float())
        if self.use_pseudo:
            mu_u, sigma_u = self.pseudo_prior(a)
            log_p = mixture_normal_log_prob(z.float(), mu_u.float(), sigma_u.float())
        else:   # the ablation without pseudo-samples: the standard normal prior
            log_p = normal_log_prob(z.float(), torch.zeros_like(z, dtype=torch.float32), torch.ones_like(z, dtype=torch.float32))
        recon = self.mods[a].log_likelihood(x, self.mods[a].decode(z)).float()
        return {"elbo": recon - (log_q - log_p), "recon": recon, "kl": log_q - log_p}

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        observed = [m for m, o in enumerate(batch.observed) if o]
        if len(observed) >= 2:
            terms = self.paired_terms(batch.x, batch.observed)
            total = sum(v["elbo"] for v in terms.values())
            metrics = {}
            for (a, R), v in terms.items():
                na, nr = self.names[a], "_".join(self.names[r] for r in R)
                metrics[f"recon_{na}"] = v["recon"].mean()
                metrics[f"cls_{nr}_given_z"] = v["cls"].mean()
                metrics[f"kl_{na}"] = v["kl"].mean()
                metrics[f"log_q_{nr}_given_{na}"] = v["log_q"].mean()
                metrics[f"w_{nr}_given_{na}"] = v["w"].mean()
        else:
            a = observed[0]
            v = self.unpaired_terms(batch.x[a], a)
            total = v["elbo"]
            na = self.names[a]
            metrics = {f"recon_{na}_only": v["recon"].mean(), f"kl_{na}_only": v["kl"].mean()}
        loss = -total.mean()
        metrics["loss"] = loss.detach()
        return loss, {k: v.detach() for k, v in metrics.items()}

    # ---------------------------------------------------------------- generation
    def fuse(self, experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The posterior given a subset S: f over the encoders in S, as the conditional prior combines them
        (product: one Gaussian; mixture: their equally weighted mixture)."""
        mixture = super().fuse(experts)   # the experts stacked (C, B, L), as a mixture
        if self.combine == "product" and len(experts) > 1:
            mu, sigma = poe(*mixture)
            return mu.unsqueeze(0), sigma.unsqueeze(0)
        return mixture

    def sample_prior(self, n: int) -> Tensor:
        """z from the pseudo-sample mixture of every modality (MEME has no unconditional prior; without
        pseudo-samples, the standard normal)."""
        if not self.use_pseudo:
            return super().sample_prior(n)
        mus, sigmas = zip(*(self.mods[m].encode(self.pseudo[m]) for m in range(self.num_modalities)))
        mu, sigma = torch.cat(mus), torch.cat(sigmas)
        pick = torch.randint(mu.shape[0], (n,), device=mu.device)
        return mu[pick] + sigma[pick] * torch.randn(n, mu.shape[1], device=mu.device, dtype=mu.dtype)
