"""SVHN networks, two families (``nets`` in the config). L = latent size.

**published** (the published MEME code, ``MSEncoder`` / ``MSDecoder``; the default):

* encoder: conv 4x4 with 32/64/128 channels, stride 2, pad 1, each followed by BatchNorm2d and ReLU ->
  conv 4x4 to 512 (stride 1, pad 0) and BatchNorm2d (no activation) -> FC L (mu), FC L
  (sigma = max(softplus(.), 1e-4)). The published encoder also builds two more heads that it never uses
  (``c3``, ``c4``); they are left out here (they change nothing but the initial random draws).
* decoder: as appendix K's.

**appendix_k** (the paper's table): conv 4x4 with 32/64/128 channels, stride 2, pad 1, ReLU -> two
4x4 convs to L (stride 1, pad 0); sigma = softplus(.) + 1e-3.

Decoder (both): upconv 4x4 to 128 (stride 1, pad 0), then 64, 32 (stride 2, pad 1), ReLU -> upconv to 3,
sigmoid.

**BatchNorm** (published encoder) behaves as in the published code: in training mode every encoder
call normalises by the statistics of the batch it is given, so MEME's pseudo-samples, passed through
the encoder of a missing modality, are normalised by their own statistics, and move the running
averages as a batch of data would; the K + 1 classifier samples all come from one encoder pass, as
the published code's re-encoding of the same batch gives identical outputs. The running averages move
as many times per step as the published code encodes the batch (``meme.nets.base.batchnorm_passes``).
In eval mode (every evaluation) the running averages are used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meme.nets.base import LaplaceImageModality

PUBLISHED_HIDDEN = 512  # the published encoder's last conv width (hidden_dim)


class SVHNModality(LaplaceImageModality):
    """Appendix K's SVHN networks."""

    name = "svhn"
    event_shape = (3, 32, 32)
    cpu_decode_chunk = 384  # 1,536 latents (K = 10, batch 128): 458 ms fwd+bwd in chunks of 384, 709 ms at once

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0):
        super().__init__(latent_dim, sigma_floor, llik_scale)
        self._build_encoder(latent_dim)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 128, 4, 1, 0), nn.ReLU(inplace=True),  # 1 -> 4
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(inplace=True),          # 4 -> 8
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(inplace=True),           # 8 -> 16
            nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Sigmoid(),                     # 16 -> 32
        )

    def _build_encoder(self, latent_dim: int) -> None:
        self.enc = self._conv_trunk(bn=False)
        self.enc_mu = nn.Conv2d(128, latent_dim, 4, 1, 0)         # 4 -> 1
        self.enc_sigma = nn.Conv2d(128, latent_dim, 4, 1, 0)

    @staticmethod
    def _conv_trunk(bn: bool) -> nn.Sequential:
        layers = []
        for cin, cout in ((3, 32), (32, 64), (64, 128)):  # 32 -> 16 -> 8 -> 4
            layers += [nn.Conv2d(cin, cout, 4, 2, 1)] + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU(inplace=True)]
        return nn.Sequential(*layers)

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc(x.contiguous(memory_format=torch.channels_last))
        return self.enc_mu(h).flatten(1), self.enc_sigma(h).flatten(1)

    def _decode(self, z: Tensor) -> Tensor:
        # The first upconv maps a 1x1 input to 4x4 (stride 1, pad 0): exactly a linear map to 128*4*4,
        # computed as one GEMM instead of the transposed-convolution kernel. Same parameters.
        first = self.dec[0]
        h = F.linear(z, first.weight.flatten(1).t()).view(-1, 128, 4, 4) + first.bias.view(1, -1, 1, 1)
        h = h.contiguous(memory_format=torch.channels_last)
        for layer in self.dec[1:]:
            h = layer(h)
        return h


class PublishedSVHNModality(SVHNModality):
    """The published code's SVHN networks: BatchNorm after every encoder conv, a 4x4 conv to 512, two linear heads."""

    sigma_rule = "clamp"
    default_sigma_floor = 1e-4

    def _build_encoder(self, latent_dim: int) -> None:
        h = PUBLISHED_HIDDEN
        self.enc = nn.Sequential(*self._conv_trunk(bn=True), nn.Conv2d(128, h, 4, 1, 0), nn.BatchNorm2d(h), nn.Flatten())
        self.enc_mu = nn.Linear(h, latent_dim)
        self.enc_sigma = nn.Linear(h, latent_dim)   # (flatten(1) in _encode leaves these (N, L) heads as they are)
