"""The modality abstraction: one encoder, one decoder and one likelihood per modality.

A ``Modality`` is the only place that knows a modality's shapes and likelihood. Models combine two of
them and never look inside.

* ``encode(x) -> (mu, sigma)``: a diagonal Gaussian over z. The floor on sigma applies by the
  modality's ``sigma_rule``: ``"add"``, ``softplus(.) + sigma_floor`` (appendix K's networks), or
  ``"clamp"``, ``max(softplus(.), sigma_floor)`` (the published code's ``torch.clamp(..., min=...)``,
  which passes no gradient below the floor), or ``"logvar"``, ``exp(. / 2) + sigma_floor`` (a log-variance
  head, as the published PolyMNIST encoder's).
* ``decode(z) -> params``: the likelihood's parameters (image means in [0, 1], or token logits).
  ``z`` may carry extra leading sample dimensions, ``(S, B, L)``; they are flattened for the network.
* ``log_likelihood(x, params) -> (...,)``: summed over the modality's event dimensions.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meme.dists import categorical_log_prob, fp32_or_narrower, laplace_log_prob


class Modality(nn.Module):
    name: str = ""
    event_shape: tuple[int, ...] = ()
    # On the CPU, decode at most this many latents per network call (0: all at once). Convolutional
    # decoders run faster on a few hundred latents at a time than on MEME's (K+2)*B at once, whose
    # activations no longer fit in cache. On GPUs one big call is best, so this applies to the CPU only.
    cpu_decode_chunk: int = 0
    #: the floor on sigma when none is given, and how it applies ("add" or "clamp"; see the module docstring)
    default_sigma_floor: float = 1e-3
    sigma_rule: str = "add"

    def __init__(self, latent_dim: int, sigma_floor: float | None = None):
        super().__init__()
        self.latent_dim = latent_dim
        self.sigma_floor = self.default_sigma_floor if sigma_floor is None else sigma_floor

    # subclasses provide these three
    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (mu, pre-softplus sigma)
        raise NotImplementedError

    def _decode(self, z: Tensor) -> Tensor:  # z is (N, L)
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, params: Tensor) -> Tensor:
        raise NotImplementedError

    # MEME's pseudo-samples live in the encoder's input space: their shape, and how real rows initialise them
    @property
    def pseudo_shape(self) -> tuple[int, ...]:
        return self.event_shape

    def pseudo_input(self, rows: Tensor) -> Tensor:
        """Raw data rows -> the float tensor pseudo-samples start from (e.g. one-hot rows for tokens)."""
        return as_float(rows).float()

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, raw = self._encode(x)
        if self.sigma_rule == "clamp":
            return mu, F.softplus(raw).clamp(min=self.sigma_floor)
        if self.sigma_rule == "logvar":
            return mu, (0.5 * raw).exp() + self.sigma_floor
        return mu, F.softplus(raw) + self.sigma_floor

    def decode(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        chunk = self.cpu_decode_chunk
        if chunk and flat.device.type == "cpu" and flat.shape[0] > chunk:
            out = torch.cat([self._decode(c) for c in flat.split(chunk)])
        else:
            out = self._decode(flat)
        return out.reshape(*lead, *out.shape[1:])


class LaplaceImageModality(Modality):
    """An image (or feature vector) modality with a fixed-scale Laplace likelihood."""

    def __init__(self, latent_dim: int, sigma_floor: float | None = None, llik_scale: float = 1.0):
        super().__init__(latent_dim, sigma_floor)
        self.llik_scale = llik_scale

    def log_likelihood(self, x: Tensor, params: Tensor) -> Tensor:
        return laplace_log_prob(x.float(), fp32_or_narrower(params), self.llik_scale, len(self.event_shape))


class TokenModality(Modality):
    """A modality of token sequences (T,) over ``vocab_size`` ids: categorical likelihood with the padding id
    (``pad_index``, or None) left out; MEME's pseudo-samples are (T, vocab) probability rows. Subclasses set
    ``vocab_size``, ``pad_index`` and ``seq_len``, and their encoders take ids or probability rows."""

    vocab_size: int
    pad_index: int | None
    seq_len: int

    @property
    def pseudo_shape(self) -> tuple[int, ...]:
        return (self.seq_len, self.vocab_size)

    def pseudo_input(self, rows: Tensor) -> Tensor:
        """Token ids -> one-hot float rows (N, T, V), the encoder's probability input."""
        return F.one_hot(rows.long(), self.vocab_size).float()

    def log_likelihood(self, x: Tensor, params: Tensor) -> Tensor:
        """sum over positions of log Cat(x_t; softmax(logits_t)), padding positions left out."""
        tokens = x.long().expand(params.shape[:-1])
        return categorical_log_prob(tokens, params, ignore_index=self.pad_index)

    @staticmethod
    def tokens(params: Tensor) -> Tensor:
        """The most likely sequence of decoder logits."""
        return params.argmax(-1)


def as_float(x: Tensor) -> Tensor:
    """uint8 pixels -> float in [0, 1]; floating data passes through unchanged; integer tokens unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x


@contextmanager
def batchnorm_passes(module: nn.Module, n: int):
    """Inside this block, one training-mode pass of ``module`` moves its BatchNorm running statistics
    exactly as ``n`` passes of the same batch would.

    The published MEME code encodes the same batch up to three times per step (the posterior, again
    for the K classifier samples, and as the other direction's conditional prior); each pass sees the
    same batch statistics, so its outputs are identical, but each moves the running averages once more:
    ``r <- (1 - m) r + m s`` applied ``n`` times is one update with momentum ``1 - (1 - m)^n``. The
    fast path encodes once and uses this; the batch counter advances by ``n`` as well.
    """
    bns = [b for b in module.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)
           and b.training and b.track_running_stats and b.momentum is not None] if n > 1 else []
    saved = [b.momentum for b in bns]
    for b in bns:
        b.momentum = 1.0 - (1.0 - b.momentum) ** n
    try:
        yield
    finally:
        for b, m in zip(bns, saved):
            b.momentum = m
            b.num_batches_tracked.add_(n - 1)
