"""Closed-form densities and divergences used by every model and by the evaluation.

All functions sum over the event dimensions and keep the batch dimensions, so a ``(..., B, L)`` input
gives a ``(..., B)`` output.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def _flat_sum(x: Tensor, event_dims: int) -> Tensor:
    return x.flatten(start_dim=x.dim() - event_dims).sum(-1) if event_dims else x


def normal_log_prob(z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log N(z; mu, diag(sigma^2)) summed over the last dimension."""
    return (-0.5 * ((z - mu) / sigma) ** 2 - sigma.log() - 0.5 * LOG_2PI).sum(-1)


def kl_normal(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """KL( N(mu1, sigma1^2) || N(mu2, sigma2^2) ) for diagonal Gaussians, summed over the last dimension."""
    var_ratio = (sigma1 / sigma2) ** 2
    return 0.5 * (var_ratio + ((mu1 - mu2) / sigma2) ** 2 - 1.0 - var_ratio.log()).sum(-1)


class _FixedScaleLaplace(torch.autograd.Function):
    """log Laplace(x; loc, scale) summed over the trailing ``event_dims`` dimensions, for a scale that takes no gradient,
    in the dtype ``x`` and ``loc`` promote to (a bf16 ``loc`` beside an fp32 ``x`` is computed in fp32 without a cast
    copy of it). The values and ``loc``'s gradient are bit for bit those of the plain expression
    ``(-|x - loc| / scale - log(2 scale)).sum(...)`` (negation is exact, so the order of the steps does not round
    differently, and ``g / scale`` is the same number whether taken once per example or once per element), in fewer
    passes: the forward works in place on one new tensor, and the backward writes ``sign(x - loc) * (g / scale)``
    straight into ``loc``'s dtype, where autograd takes six passes. ``x`` gets no gradient (data)."""

    @staticmethod
    def forward(ctx, x: Tensor, loc: Tensor, scale: Tensor, log_2scale: Tensor, event_dims: int) -> Tensor:
        ctx.save_for_backward(x, loc, scale)
        ctx.event_dims = event_dims
        return _flat_sum((x - loc).abs_().div_(scale).neg_().sub_(log_2scale), event_dims)

    @staticmethod
    def backward(ctx, g: Tensor):
        if not ctx.needs_input_grad[1]:
            return None, None, None, None, None
        x, loc, scale = ctx.saved_tensors
        g = g.reshape(*g.shape, *(1,) * ctx.event_dims)
        sign = (x - loc).sgn_()
        # g has the batch shape padded with ones: a number scale divides it once per example, a per-feature one
        # broadcasts to one quotient per element, as autograd takes it
        q = g / scale
        if loc.dtype == sign.dtype:
            return None, sign.mul_(q), None, None, None
        return None, torch.mul(sign, q, out=torch.empty(sign.shape, dtype=loc.dtype, device=sign.device)), None, None, None


def fp32_or_narrower(t: Tensor) -> Tensor:
    """``t`` as it is where it is bf16 or fp16 (a likelihood promotes it to fp32 exactly as it computes, without a cast
    copy), else as fp32: the likelihoods always compute in fp32, since a bf16 sum over thousands of pixels loses
    too much."""
    return t if t.dtype in (torch.bfloat16, torch.float16) else t.float()


def laplace_log_prob(x: Tensor, loc: Tensor, scale: float | Tensor, event_dims: int) -> Tensor:
    """log Laplace(x; loc, scale) summed over the trailing ``event_dims`` dimensions, in the dtype ``x`` and ``loc``
    promote to (the likelihoods pass fp32 data and the decoder's output as it is: fp32, or bf16 under autocast)."""
    dtype = torch.promote_types(x.dtype, loc.dtype)
    # a number stays a 0-dim tensor on the host: kernels on any device read it as a scalar argument, while
    # making it on loc's device would copy it there at every call (a host sync per likelihood on a GPU)
    scale = scale.to(dtype) if isinstance(scale, Tensor) else torch.tensor(scale, dtype=dtype)
    log_2scale = torch.log(2.0 * scale)
    if scale.requires_grad or x.requires_grad:
        return _flat_sum(-(x - loc).abs() / scale - log_2scale, event_dims)
    return _FixedScaleLaplace.apply(x, loc, scale, log_2scale, event_dims)


def normal_log_prob_fixed(x: Tensor, loc: Tensor, scale: float | Tensor, event_dims: int) -> Tensor:
    """log N(x; loc, scale^2) with a fixed scale (one number, or one per event element), summed over the
    trailing ``event_dims`` dimensions."""
    log_scale = scale.log() if isinstance(scale, Tensor) else math.log(scale)
    lp = -0.5 * ((x - loc) / scale) ** 2 - log_scale - 0.5 * LOG_2PI
    return _flat_sum(lp, event_dims)


def categorical_log_prob(tokens: Tensor, logits: Tensor, ignore_index: int | None = None) -> Tensor:
    """log Cat(tokens; softmax(logits)) summed over the sequence; ``logits`` is (..., T, V), ``tokens`` (..., T).

    Positions equal to ``ignore_index`` (padding) contribute zero.
    """
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    if ignore_index is not None:
        lp = lp.masked_fill(tokens == ignore_index, 0.0)
    return lp.sum(-1)


def w2_diag_sq(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance between diagonal Gaussians: ||mu1-mu2||^2 + ||sigma1-sigma2||^2."""
    return ((mu1 - mu2) ** 2).sum(-1) + ((sigma1 - sigma2) ** 2).sum(-1)


def log_mean_exp(x: Tensor, dim: int = 0) -> Tensor:
    """log( (1/n) sum_i exp(x_i) ) along ``dim``, computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def mixture_normal_log_prob(z: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """log (1/N) sum_n N(z; mu_n, sigma_n) for z of shape (B, L) and components (N, L); returns (B,)."""
    lp = normal_log_prob(z.unsqueeze(1), mu.unsqueeze(0), sigma.unsqueeze(0))  # (B, N)
    return log_mean_exp(lp, dim=1)
