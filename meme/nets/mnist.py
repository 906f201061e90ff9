"""MNIST networks (paper appendix K): 784 -> FC 400 ReLU -> FC L (mu), FC L (sigma); mirror with sigmoid."""
from __future__ import annotations

from torch import Tensor, nn

from meme.nets.base import LaplaceImageModality

HIDDEN = 400


class MNISTModality(LaplaceImageModality):
    name = "mnist"
    event_shape = (1, 28, 28)

    def __init__(self, latent_dim: int = 64, sigma_floor: float = 1e-3, llik_scale: float = 1.0):
        super().__init__(latent_dim, sigma_floor, llik_scale)
        self.enc_hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, HIDDEN), nn.ReLU(inplace=True))
        self.enc_mu = nn.Linear(HIDDEN, latent_dim)
        self.enc_sigma = nn.Linear(HIDDEN, latent_dim)
        self.dec = nn.Sequential(
            nn.Linear(latent_dim, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, 784), nn.Sigmoid()
        )

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc_hidden(x)
        return self.enc_mu(h), self.enc_sigma(h)

    def _decode(self, z: Tensor) -> Tensor:
        return self.dec(z).view(-1, *self.event_shape)
