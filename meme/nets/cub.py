"""CUB networks: ResNet-101 image features and captions, two families (``nets`` in the config).

The classes below without a prefix are appendix K's table; ``Published*`` are the networks of the
published MEME code's CUB models (``FeatsEnc``/``FeatsDec`` and ``TextEncoder``/``TextDecoder`` in
``models/networks.py``, kept there commented out), the default. They differ from appendix K in:

* sigma: ``max(softplus(.), floor)`` with floors 1e-4 (image features) and 1e-3 (captions), instead of
  ``softplus(.) + 1e-3``;
* captions: the 1x4 stages keep 128 channels (128 -> 128 -> 128, not 256 -> 512); no convolution has a
  bias; the decoder's first upconv has BatchNorm too; ``<pad>`` embeds to zero (``padding_idx``); and the
  logits come from their own linear layer 128 -> V (``toVocabSize``), not from the transposed word
  embedding. The MMVAE code's caption networks (``vae_cub_sent.py``) have the same layers as the
  published MEME ones, but tie that linear layer's weight to the embedding, as appendix K's do here;
  its sigma is ``softplus(.) + 1e-6``.

The image-feature layers (FC 1024 / 512 / 256, ELU) are the same in both families.

**Image features** (2048-d), Laplace likelihood with the fixed scale ``llik_scale``:

* encoder: FC 1024 / 512 / 256 with ELU -> FC L (mu), FC L (sigma);
* decoder: FC 256 / 512 / 1024 with ELU -> FC 2048 (the Laplace location).

**Captions** (``max_len`` = 32 token ids over a vocabulary of 1590), categorical likelihood per
position with ``<pad>`` ignored:

* encoder: word embedding (E = 128) -> the caption as a 1 x 32 x E image ->
  4x4 conv 32, 64, 128 (stride 2, pad 1, BatchNorm, ReLU) -> 1x4 conv 256, 512 (stride 1x2, pad 0x1,
  BatchNorm, ReLU) -> two 4x4 convs to L (mu, sigma), stride 1, pad 0;
* decoder, the mirror: 4x4 upconv 512 (stride 1, pad 0, ReLU) -> 1x4 upconv 256, 128 (stride 1x2,
  pad 0x1, BatchNorm, ReLU) -> 4x4 upconv 64, 32 (stride 2, pad 1, BatchNorm, ReLU) -> 4x4 upconv 1
  (stride 2, pad 1, ReLU) -> 32 x E -> the **transposed word embedding** (the encoder's embedding matrix,
  shared) plus a bias -> 32 x 1590 logits.

The paper's table lists a word embedding of 256, but with a 32 x 256 input these convolutions leave a
4 x 8 map that the final 4x4 convolution cannot reduce to 1 x 1; the published MMVAE and MEME code use
E = 128, for which every shape closes (32x128 -> 16x64 -> 8x32 -> 4x16 -> 4x8 -> 4x4 -> 1x1). E is a
parameter; it must be a power of two >= 128 (one extra 1x4 stage per doubling above 128).

The caption encoder takes token ids (N, 32) int64, or probabilities / one-hot rows (N, 32, V) float,
embedded as ``x @ embedding``: a one-hot row gives exactly the embedding of its token. MEME's
pseudo-samples of captions live in that (32, V) input space (``pseudo_shape``, ``pseudo_input``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from meme.errors import MemeError
from meme.nets.base import LaplaceImageModality, TokenModality

VOCAB_SIZE = 1590
MAX_LEN = 32
EMBEDDING_DIM = 128
PAD_INDEX = 1


def _mlp(sizes: list[int], last_activation: bool) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_activation or i < len(sizes) - 2:
            layers.append(nn.ELU(inplace=True))
    return nn.Sequential(*layers)


class CUBImageModality(LaplaceImageModality):
    name = "cub_image"
    event_shape = (2048,)

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0,
                 feature_dim: int = 2048):
        super().__init__(latent_dim, sigma_floor, llik_scale)
        if feature_dim != 2048:
            self.event_shape = (feature_dim,)
        self.enc = _mlp([feature_dim, 1024, 512, 256], last_activation=True)
        self.enc_mu = nn.Linear(256, latent_dim)
        self.enc_sigma = nn.Linear(256, latent_dim)
        self.dec = _mlp([latent_dim, 256, 512, 1024, feature_dim], last_activation=False)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc(x.float() if not x.is_floating_point() else x)
        return self.enc_mu(h), self.enc_sigma(h)

    def _decode(self, z: Tensor) -> Tensor:
        return self.dec(z)


class PublishedCUBImageModality(CUBImageModality):
    """The published code's image-feature networks (``FeatsEnc``/``FeatsDec``): sigma clamped at 1e-4."""

    sigma_rule = "clamp"
    default_sigma_floor = 1e-4


def _conv(cin, cout, k, s, p, bn=True, bias=None):
    layers = [nn.Conv2d(cin, cout, k, s, p, bias=not bn if bias is None else bias)]
    return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU(inplace=True)]


def _upconv(cin, cout, k, s, p, bn=True, bias=None):
    layers = [nn.ConvTranspose2d(cin, cout, k, s, p, bias=not bn if bias is None else bias)]
    return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU(inplace=True)]


class CUBCaptionModality(TokenModality):
    name = "cub_caption"
    event_shape = (MAX_LEN,)
    #: the published family's switches (see the module docstring); appendix K's values here
    published = False

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0,
                 vocab_size: int = VOCAB_SIZE, max_len: int = MAX_LEN, embedding_dim: int = EMBEDDING_DIM,
                 pad_index: int = PAD_INDEX):
        super().__init__(latent_dim, sigma_floor)
        if max_len != 32:
            raise MemeError(f"max_len={max_len}: the caption networks take 32 tokens (the convolutions reduce 32 rows to 1)")
        stages = math.log2(embedding_dim / 32) if embedding_dim >= 32 else -1
        if stages < 2 or stages != int(stages):
            raise MemeError(f"embedding_dim={embedding_dim} must be a power of two >= 128 (128 in the published code)")
        if not 0 <= pad_index < vocab_size:
            raise MemeError(f"pad_index={pad_index} is outside the vocabulary of {vocab_size}")
        self.vocab_size, self.max_len, self.embedding_dim, self.pad_index = vocab_size, max_len, embedding_dim, pad_index
        self.seq_len = max_len
        self.event_shape = (max_len,)
        pub = self.published
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_index if pub else None)
        # 1x4 stages: appendix K 256, 512 (then 512 for E > 128); published 128 throughout
        wide = [128] * int(stages) if pub else [256, 512] + [512] * (int(stages) - 2)
        enc = _conv(1, 32, 4, 2, 1) + _conv(32, 64, 4, 2, 1) + _conv(64, 128, 4, 2, 1)
        cin = 128
        for c in wide:
            enc += _conv(cin, c, (1, 4), (1, 2), (0, 1))
            cin = c
        self.enc = nn.Sequential(*enc)
        self.enc_mu = nn.Conv2d(cin, latent_dim, 4, 1, 0, bias=not pub)
        self.enc_sigma = nn.Conv2d(cin, latent_dim, 4, 1, 0, bias=not pub)
        dec = _upconv(latent_dim, wide[-1], 4, 1, 0, bn=pub)
        outs = wide[::-1][1:] + [128]
        cin = wide[-1]
        for c in outs:
            dec += _upconv(cin, c, (1, 4), (1, 2), (0, 1))
            cin = c
        dec += _upconv(128, 64, 4, 2, 1) + _upconv(64, 32, 4, 2, 1) + _upconv(32, 1, 4, 2, 1, bn=False, bias=not pub)
        self.dec = nn.Sequential(*dec)
        if pub:
            self.to_vocab = nn.Linear(embedding_dim, vocab_size)   # toVocabSize, its own weights
        else:
            self.out_bias = nn.Parameter(torch.zeros(vocab_size))

    # ------------------------------------------------------------- networks
    def embed(self, x: Tensor) -> Tensor:
        """(N, T) ids or (N, T, V) probabilities -> (N, T, E)."""
        if x.is_floating_point():
            if x.shape[-1] != self.vocab_size:
                raise MemeError(f"caption probabilities have {x.shape[-1]} classes, the vocabulary has {self.vocab_size}")
            return x @ self.embedding.weight.to(x.dtype)
        return self.embedding(x.long())

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc(self.embed(x).unsqueeze(1))
        return self.enc_mu(h).flatten(1), self.enc_sigma(h).flatten(1)

    def _decode(self, z: Tensor) -> Tensor:
        h = self.dec(z[:, :, None, None]).squeeze(1)                   # (N, 32, E)
        if self.published:
            return self.to_vocab(h)
        return h @ self.embedding.weight.to(h.dtype).t() + self.out_bias.to(h.dtype)   # transposed word embedding


class PublishedCUBCaptionModality(CUBCaptionModality):
    """The published code's caption networks (``TextEncoder``/``TextDecoder``): see the module docstring."""

    published = True
    sigma_rule = "clamp"
    default_sigma_floor = 1e-3
