"""SVHN networks (paper appendix K).

Encoder: conv 4x4 with 32/64/128 channels, stride 2, pad 1, ReLU -> two 4x4 convs to L (stride 1, pad 0).
Decoder: upconv 4x4 to 128 (stride 1, pad 0), then 64, 32 (stride 2, pad 1), ReLU -> upconv to 3, sigmoid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meme.nets.base import LaplaceImageModality


class SVHNModality(LaplaceImageModality):
    name = "svhn"
    event_shape = (3, 32, 32)
    cpu_decode_chunk = 384  # 1,536 latents (K = 10, batch 128): 458 ms fwd+bwd in chunks of 384, 709 ms at once

    def __init__(self, latent_dim: int = 64, sigma_floor: float = 1e-3, llik_scale: float = 1.0):
        super().__init__(latent_dim, sigma_floor, llik_scale)
        self.enc = nn.Sequential(
            nn.Conv2d(3, 32, 4, 2, 1), nn.ReLU(inplace=True),     # 32 -> 16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(inplace=True),    # 16 -> 8
            nn.Conv2d(64, 128, 4, 2, 1), nn.ReLU(inplace=True),   # 8 -> 4
        )
        self.enc_mu = nn.Conv2d(128, latent_dim, 4, 1, 0)         # 4 -> 1
        self.enc_sigma = nn.Conv2d(128, latent_dim, 4, 1, 0)
        self.dec = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 128, 4, 1, 0), nn.ReLU(inplace=True),  # 1 -> 4
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(inplace=True),          # 4 -> 8
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(inplace=True),           # 8 -> 16
            nn.ConvTranspose2d(32, 3, 4, 2, 1), nn.Sigmoid(),                     # 16 -> 32
        )

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
