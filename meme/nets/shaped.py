"""Networks chosen by the data's shape, for datasets described by a file (``meme.data.dataset_file``).

Three kinds, each written once and sized from the rows' shape; each comes in the two families of
``nets`` (see ``meme.nets``), which differ as the published MEME code's MNIST/SVHN networks differ from
appendix K's:

* ``image`` rows (C, H, W), float in [0, 1] or uint8: a conv encoder/decoder pair. The encoder halves
  H and W with 4x4 convs (stride 2, pad 1; 32, 64, 128, ... channels, at most 256) while both are even
  and at least 8, then one conv whose kernel covers what is left (h x w) maps to 1 x 1. The decoder
  mirrors it (a transposed conv of kernel h x w, then stride-2 upconvs back to H x W, sigmoid). For
  (3, 32, 32) this is exactly the SVHN networks; for (1, 28, 28) the stages are 28 -> 14 -> 7 -> 1.

  - published: BatchNorm after every encoder conv, the last conv to 512 channels, two linear heads,
    sigma = max(softplus, 1e-4);
  - appendix_k: no BatchNorm, two convs to L (mu, sigma), sigma = softplus + 1e-3.

  Fixed-scale Laplace likelihood (``llik_scale``), or Gaussian (``likelihood: gaussian``).
* ``vector`` rows (D,): MLPs (uint8 rows are read as [0, 1] floats).

  - published: D -> 512 ELU -> 512 softplus -> heads, sigma = max(softplus, 1e-3); decoder
    L -> 512 ReLU -> 512 ReLU -> D (the published MNIST networks, for any D);
  - appendix_k: D -> 400 ReLU -> heads, sigma = softplus + 1e-3; decoder L -> 400 ReLU -> D.

  Laplace (default) or Gaussian likelihood with a fixed scale. The decoder's output follows the data
  (``output``, chosen by the run's ``vector_output``):

  - ``sigmoid``: rows whose values all lie in [0, 1] (pixels, frequencies, probabilities); the last layer
    ends in a sigmoid, as the image decoders and the published MNIST decoder do (for D = 784 the published
    family is then exactly the published MNIST networks). An unbounded output under a fixed-scale
    Laplace likelihood learns the per-feature median given z: every background feature sits at zero, its
    sign gradient of +-1/scale never dies down, and generation into such a modality stays at chance;
  - ``standardized``: any other rows. The encoder reads ``(x - mean) / std`` and the decoder's linear
    output is de-standardised (``mean + std * out``), with the training table's per-feature mean and
    spread kept as buffers; the likelihood's scale is ``scale * std`` per feature, so it measures errors
    in units of each feature's spread rather than in the data's raw units (a scale of 1 on features that
    vary by 0.01 would make the likelihood flat, and on features that vary by 1000 would drown the KL);
  - ``linear``: the identity output on the raw rows (runs written before ``vector_output`` existed).
* ``tokens`` rows (T,) of integer ids below ``vocab``: a word embedding (128, the padding id embeds to
  zero) flattened into the same MLPs as vectors; the decoder's last layer gives T x 128, and one linear
  layer shared by the positions gives T x vocab logits. Categorical likelihood, padding positions left
  out. MEME's pseudo-samples of tokens are (T, vocab) probability rows (one-hot at the start).

``hidden`` (the MLP widths), ``channels`` (the first conv width), ``likelihood`` and ``scale`` override the
defaults per modality (the dataset file's ``networks``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meme.dists import fp32_or_narrower, laplace_log_prob, normal_log_prob_fixed
from meme.errors import MemeError, check_choice
from meme.nets.base import Modality, TokenModality

KINDS = ("image", "vector", "tokens")
VECTOR_OUTPUTS = ("sigmoid", "standardized", "linear")
LIKELIHOODS = ("laplace", "gaussian")
MIN_SIDE, MAX_SIDE, MAX_CHANNELS = 8, 512, 64
MAX_CONV_CHANNELS = 256
EMBEDDING_DIM = 128


# --------------------------------------------------------------- shape rules
def image_stages(h: int, w: int) -> tuple[int, int, int]:
    """(number of stride-2 stages, h, w left after them): halve while both sides are even and >= 8."""
    n = 0
    while h % 2 == 0 and w % 2 == 0 and min(h, w) >= MIN_SIDE:
        h, w, n = h // 2, w // 2, n + 1
    return n, h, w


def conv_widths(n: int, base: int = 32) -> list[int]:
    """Channels of the n stride-2 encoder convs: base, 2 base, 4 base, ... at most 256."""
    return [min(base * 2 ** i, MAX_CONV_CHANNELS) for i in range(n)]


def _even_within(v: int) -> int:
    v = min(max(v, MIN_SIDE), MAX_SIDE)
    return v + (v % 2)


def check_image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``shape`` as (C, H, W) if the image builder handles it, else a ``MemeError`` with the nearest one it does.

    Handled: 1 <= C <= 64 channels first, 8 <= H, W <= 512, both even (at least one stride-2 stage)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3:
        raise MemeError(f"image rows of shape {shape} are not supported; images are (C, H, W) or (H, W)"
                        + (f"; nearest supported: {(shape[-3], *map(_even_within, shape[-2:]))} (drop the leading dimensions)"
                           if len(shape) > 3 else ""))
    c, h, w = shape
    if w in (1, 3, 4) and c not in (1, 3, 4) and min(c, h) >= MIN_SIDE:  # channels last, e.g. (32, 32, 3)
        raise MemeError(f"image rows of shape {shape} look channels-last; nearest supported: "
                        f"{(w, _even_within(c), _even_within(h))} (transpose each row to (C, H, W))")
    if not (1 <= c <= MAX_CHANNELS and all(MIN_SIDE <= s <= MAX_SIDE and s % 2 == 0 for s in (h, w))):
        near = (min(max(c, 1), MAX_CHANNELS), _even_within(h), _even_within(w))
        raise MemeError(f"image rows of shape {shape} are not supported (C in 1..{MAX_CHANNELS}, H and W even and in "
                        f"{MIN_SIDE}..{MAX_SIDE}); nearest supported: {near} (pad or crop the images)")
    return c, h, w


def _hidden(value, default: list[int]) -> list[int]:
    if value is None:
        return list(default)
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


class _FixedScaleLikelihood:
    """Laplace or Gaussian log-likelihood with a fixed scale, summed over the event dimensions, in fp32."""

    def _init_likelihood(self, likelihood: str, scale: float) -> None:
        check_choice("likelihood", likelihood, LIKELIHOODS)
        if not scale > 0:
            raise MemeError(f"likelihood scale={scale} must be > 0")
        self.likelihood, self.llik_scale = likelihood, float(scale)

    def _scale(self):
        return self.llik_scale

    def log_likelihood(self, x: Tensor, params: Tensor) -> Tensor:
        dims = len(self.event_shape)
        if self.likelihood == "gaussian":
            return normal_log_prob_fixed(x.float(), params.float(), self._scale(), dims)
        return laplace_log_prob(x.float(), fp32_or_narrower(params), self._scale(), dims)


def _mlp_trunk(d_in: int, hidden: list[int], published: bool) -> nn.Sequential:
    """The encoder trunk: published: Linear ELU ... Linear softplus (the published MNIST encoder's
    activations); appendix_k: Linear ReLU throughout."""
    layers, prev = [], d_in
    for i, h in enumerate(hidden):
        last = i == len(hidden) - 1
        act = (nn.Softplus() if last else nn.ELU()) if published else nn.ReLU(inplace=True)
        layers += [nn.Linear(prev, h), act]
        prev = h
    return nn.Sequential(*layers)


def _mlp_decoder(latent_dim: int, hidden: list[int], d_out: int) -> nn.Sequential:
    layers, prev = [], latent_dim
    for h in hidden:
        layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
        prev = h
    return nn.Sequential(*layers, nn.Linear(prev, d_out))


# -------------------------------------------------------------------- image
class ImageModality(_FixedScaleLikelihood, Modality):
    """Conv networks sized from (C, H, W); appendix K's style (see the module docstring)."""

    kind = "image"
    published = False
    cpu_decode_chunk = 384

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0, *,
                 shape, name: str = "image", channels: int = 32, likelihood: str = "laplace", scale: float | None = None,
                 hidden=None):
        super().__init__(latent_dim, sigma_floor)
        self._init_likelihood(likelihood, llik_scale if scale is None else scale)
        self.name = name
        c, h, w = check_image_shape(shape)
        self.event_shape = (c, h, w)
        n, kh, kw = image_stages(h, w)
        widths = conv_widths(n, int(channels))
        layers, prev = [], c
        for ch in widths:
            layers += [nn.Conv2d(prev, ch, 4, 2, 1)] + ([nn.BatchNorm2d(ch)] if self.published else []) + [nn.ReLU(inplace=True)]
            prev = ch
        self.enc = nn.Sequential(*layers)
        if self.published:
            width = _hidden(hidden, [512])[-1]
            self.enc_last = nn.Sequential(nn.Conv2d(prev, width, (kh, kw)), nn.BatchNorm2d(width))
            self.enc_mu, self.enc_sigma = nn.Linear(width, latent_dim), nn.Linear(width, latent_dim)
        else:
            self.enc_mu, self.enc_sigma = nn.Conv2d(prev, latent_dim, (kh, kw)), nn.Conv2d(prev, latent_dim, (kh, kw))
        up = [nn.ConvTranspose2d(latent_dim, widths[-1], (kh, kw)), nn.ReLU(inplace=True)]
        rev = widths[::-1]
        for cin, cout in zip(rev, rev[1:] + [c]):
            up += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.ReLU(inplace=True)]
        up[-1] = nn.Sigmoid()
        self.dec = nn.Sequential(*up)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc(x)
        if self.published:
            h = self.enc_last(h).flatten(1)
            return self.enc_mu(h), self.enc_sigma(h)
        return self.enc_mu(h).flatten(1), self.enc_sigma(h).flatten(1)

    def _decode(self, z: Tensor) -> Tensor:
        return self.dec(z[:, :, None, None])


class PublishedImageModality(ImageModality):
    published = True
    sigma_rule = "clamp"
    default_sigma_floor = 1e-4


# ------------------------------------------------------------------- vector
class VectorModality(_FixedScaleLikelihood, Modality):
    """MLPs for (D,) rows; appendix K's style (see the module docstring)."""

    kind = "vector"
    published = False

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0, *,
                 shape, name: str = "vector", hidden=None, likelihood: str = "laplace", scale: float | None = None,
                 channels=None, output: str = "linear", mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__(latent_dim, sigma_floor)
        self._init_likelihood(likelihood, llik_scale if scale is None else scale)
        check_choice("vector output", output, VECTOR_OUTPUTS)
        self.name, self.output = name, output
        shape = tuple(int(s) for s in shape)
        if len(shape) != 1 or shape[0] < 1:
            raise MemeError(f"vector rows of shape {shape} are not supported; nearest supported: "
                            f"({math.prod(shape)},) (flatten each row)")
        self.event_shape = shape
        if output == "standardized":  # the training table's statistics; a checkpoint restores its own
            self.register_buffer("x_mean", torch.zeros(shape) if mean is None else torch.as_tensor(mean).float().reshape(shape))
            self.register_buffer("x_std", torch.ones(shape) if std is None else torch.as_tensor(std).float().reshape(shape))
        hid = _hidden(hidden, [512, 512] if self.published else [400])
        self.enc_hidden = _mlp_trunk(shape[0], hid, self.published)
        self.enc_mu, self.enc_sigma = nn.Linear(hid[-1], latent_dim), nn.Linear(hid[-1], latent_dim)
        self.dec = _mlp_decoder(latent_dim, hid[::-1], shape[0])
        if output == "sigmoid":
            self.dec.append(nn.Sigmoid())

    def _scale(self):
        return self.llik_scale * self.x_std if self.output == "standardized" else self.llik_scale

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.output == "standardized":
            x = (x - self.x_mean.to(x.dtype)) / self.x_std.to(x.dtype)
        h = self.enc_hidden(x)
        return self.enc_mu(h), self.enc_sigma(h)

    def _decode(self, z: Tensor) -> Tensor:
        out = self.dec(z)
        if self.output == "standardized":
            out = self.x_mean.to(out.dtype) + self.x_std.to(out.dtype) * out
        return out


class PublishedVectorModality(VectorModality):
    published = True
    sigma_rule = "clamp"
    default_sigma_floor = 1e-3


# ------------------------------------------------------------------- tokens
class TokensModality(TokenModality):
    """Token sequences (T,) over a vocabulary; appendix K's style of MLP (see the module docstring)."""

    kind = "tokens"
    published = False

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0, *,
                 shape, vocab: int, pad: int | None = 0, name: str = "tokens", hidden=None, likelihood=None,
                 scale=None, channels=None):
        super().__init__(latent_dim, sigma_floor)
        self.name = name
        shape = tuple(int(s) for s in shape)
        if len(shape) != 1 or shape[0] < 1:
            raise MemeError(f"token rows of shape {shape} are not supported; nearest supported: ({math.prod(shape)},)")
        if vocab < 2:
            raise MemeError(f"vocab={vocab}: a token vocabulary needs at least 2 ids")
        if pad is not None and not 0 <= pad < vocab:
            raise MemeError(f"pad={pad} is outside the vocabulary 0..{vocab - 1}")
        self.event_shape, self.vocab_size, self.pad_index, self.seq_len = shape, int(vocab), pad, shape[0]
        T, E = shape[0], EMBEDDING_DIM
        hid = _hidden(hidden, [512, 512] if self.published else [400])
        self.embedding = nn.Embedding(vocab, E, padding_idx=pad)
        self.enc_hidden = _mlp_trunk(T * E, hid, self.published)
        self.enc_mu, self.enc_sigma = nn.Linear(hid[-1], latent_dim), nn.Linear(hid[-1], latent_dim)
        self.dec = _mlp_decoder(latent_dim, hid[::-1], T * E)
        self.to_vocab = nn.Linear(E, vocab)

    def embed(self, x: Tensor) -> Tensor:
        """(N, T) ids or (N, T, V) probabilities -> (N, T * E)."""
        if x.is_floating_point():
            e = x @ self.embedding.weight.to(x.dtype)
        else:
            e = self.embedding(x.long())
        return e.flatten(1)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc_hidden(self.embed(x))
        return self.enc_mu(h), self.enc_sigma(h)

    def _decode(self, z: Tensor) -> Tensor:
        h = self.dec(z).view(z.shape[0], self.event_shape[0], EMBEDDING_DIM)
        return self.to_vocab(F.relu(h))


class PublishedTokensModality(TokensModality):
    published = True
    sigma_rule = "clamp"
    default_sigma_floor = 1e-3
