r"""Importance-sampled conditional likelihoods (paper appendix C, Table 2) and the test-set objective.

The conditional likelihood of x_a given x_b uses b's encoder as the conditional prior p(z | x_b) (MEME's
prior in the direction "b supervises a") and a's encoder as the proposal:

.. math::

    \log p(x_a \mid x_b) \approx \log \frac1K \sum_{k=1}^K
        \frac{p(x_a \mid z_k)\, p(z_k \mid x_b)}{q(z_k \mid x_a)}, \qquad z_k \sim q(z \mid x_a).

It is a consistent estimate (a lower bound in expectation, by Jensen) that tightens as K grows.

With M > 2 modalities the same estimate is made for every ordered pair (``loglik_<a>_given_<b>``, |S| = 1) and
for each modality given all the others (``loglik_<a>_given_rest``, |S| = M - 1), whose conditional prior is
the model's posterior given the others (``model.fuse``: a product, or a mixture whose density is the mean of
its components'); ``loglik_given_1`` and ``loglik_given_<M-1>`` average them.
"""
from __future__ import annotations

import math

import torch

from meme.data.batch import gather
from meme.data.paired import PairedData
from meme.dists import normal_log_prob

#: decoder outputs per call (samples x batch) while estimating likelihoods
DECODES_PER_CALL = 4096


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


@torch.no_grad()
def conditional_log_likelihood(model, x_a, x_b, a: int, b: int, K: int, prior=None) -> torch.Tensor:
    """Per-example estimate of log p(x_a | x_b) from K importance samples; returns (B,). ``prior``: the
    conditional prior as (mus, sigmas) of shape (C, B, L), an equally weighted mixture (default: b's encoder)."""
    mu_a, sigma_a = (_at_least_fp32(v) for v in model.encode(x_a, a))
    if prior is None:
        mu_b, sigma_b = (_at_least_fp32(v) for v in model.encode(x_b, b))
    chunk = max(1, DECODES_PER_CALL // x_a.shape[0])
    log_w = []
    for start in range(0, K, chunk):
        s = min(chunk, K - start)
        z = mu_a + sigma_a * torch.randn(s, *mu_a.shape, device=mu_a.device, dtype=mu_a.dtype)
        lik = _at_least_fp32(model.log_likelihood(x_a, model.decode(z, a), a))
        if prior is None:
            log_prior = normal_log_prob(z, mu_b, sigma_b)
        else:
            comps = torch.stack([normal_log_prob(z, mu, sig) for mu, sig in zip(*prior)])
            log_prior = torch.logsumexp(comps, 0) - math.log(comps.shape[0])
        log_w.append(lik + log_prior - normal_log_prob(z, mu_a, sigma_a))
    return torch.logsumexp(torch.cat(log_w), 0) - math.log(K)


def conditional_log_likelihoods(model, data: PairedData, pairs, K: int, batch_size: int, device) -> dict[str, float]:
    """Mean of log p(x_a | x_b) over ``pairs``, every ordered pair: ``loglik_<a>_given_<b>``; with M > 2 also each
    modality given the rest and the averages (the module docstring)."""
    M, names = len(data.names), model.names
    sums = {(a, b): 0.0 for a in range(M) for b in range(M) if a != b}
    rest = {a: 0.0 for a in range(M)} if M > 2 else {}
    for start in range(0, pairs.numel(), batch_size):
        batch = gather(data, pairs[start:start + batch_size], (True,) * M, device)
        for a, b in sums:
            sums[(a, b)] += float(conditional_log_likelihood(model, batch.x[a], batch.x[b], a, b, K).double().sum())
        for a in rest:
            prior = model.fuse([model.expert(batch.x[m], m) for m in range(M) if m != a])
            rest[a] += float(conditional_log_likelihood(model, batch.x[a], None, a, -1, K, prior).double().sum())
    n = pairs.numel()
    out = {f"loglik_{names[a]}_given_{names[b]}": v / n for (a, b), v in sums.items()}
    if rest:
        out.update({f"loglik_{names[a]}_given_rest": v / n for a, v in rest.items()})
        out["loglik_given_1"] = sum(sums.values()) / n / len(sums)
        out[f"loglik_given_{M - 1}"] = sum(rest.values()) / n / M
    return out


@torch.no_grad()
def test_objective(model, data: PairedData, pairs, batch_size: int, device) -> dict[str, float]:
    """The model's own objective on paired test batches: ``elbo_test`` (= -loss) and ``test_<metric>``."""
    sums: dict[str, float] = {}
    for start in range(0, pairs.numel(), batch_size):
        batch = gather(data, pairs[start:start + batch_size], (True,) * len(data.names), device)
        loss, metrics = model.loss(batch)
        for k, v in {"elbo_test": -loss, **{f"test_{k}": v for k, v in metrics.items() if k != "loss"}}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
    return {k: v / pairs.numel() for k, v in sums.items()}
