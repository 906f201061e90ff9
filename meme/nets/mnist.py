"""MNIST networks, two families (``nets`` in the config).

**published** (the published MEME code, ``MLPEncoder`` / ``MLPDecoder``; the default), L = latent size:

* encoder: 784 -> FC 512, ELU -> FC 512, softplus -> FC L (mu), FC L (sigma = max(softplus(.), 1e-3));
* decoder: L -> FC 512, ReLU -> FC 512, ReLU -> FC 784, sigmoid.

**appendix_k** (the paper's appendix K table): 784 -> FC 400, ReLU -> FC L (mu), FC L
(sigma = softplus(.) + 1e-3); decoder L -> FC 400, ReLU -> FC 784, sigmoid.

Both take (N, 1, 28, 28) images and sum a fixed-scale Laplace log-likelihood over the 784 pixels (the
published code flattens the images to 784 first; the sum is the same).

A dataset file asks for these networks for its own 1 x 28 x 28 image rows with ``networks: {preset: mnist}``
(the family follows the run's ``nets``); ``likelihood`` and ``scale`` then apply as to the networks by
shape, and ``channels`` and ``hidden`` are refused (the networks are fixed). The published family's
networks for 784-vectors (``meme.nets.shaped``, ``kind: vector``) are the same networks, so the same
pixels declared as vectors or as images with this preset train the same model.
"""
from __future__ import annotations

from torch import Tensor, nn

from meme.errors import MemeError
from meme.nets.base import Modality
from meme.nets.shaped import _FixedScaleLikelihood

HIDDEN = 400            # appendix K
PUBLISHED_HIDDEN = 512  # the published code's hidden_dim=[512, 512]


class MNISTModality(_FixedScaleLikelihood, Modality):
    """Appendix K's MNIST networks. The keywords are a dataset file's (``preset: mnist``)."""

    name = "mnist"
    event_shape = (1, 28, 28)

    def __init__(self, latent_dim: int = 64, sigma_floor: float | None = None, llik_scale: float = 1.0, *,
                 shape=event_shape, name: str = "mnist", likelihood: str = "laplace", scale: float | None = None,
                 channels=None, hidden=None):
        super().__init__(latent_dim, sigma_floor)
        if tuple(shape) != self.event_shape:
            raise MemeError(f"the mnist networks take {self.event_shape} images, got rows of shape {tuple(shape)}")
        if channels is not None or hidden is not None:
            raise MemeError("the mnist networks are fixed: channels and hidden do not apply to them")
        self._init_likelihood(likelihood, llik_scale if scale is None else scale)
        self.name = name
        self._build(latent_dim)

    def _build(self, latent_dim: int) -> None:
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


class PublishedMNISTModality(MNISTModality):
    """The published code's MNIST networks (two hidden layers of 512; sigma clamped at 1e-3)."""

    sigma_rule = "clamp"
    default_sigma_floor = 1e-3

    def _build(self, latent_dim: int) -> None:
        h = PUBLISHED_HIDDEN
        self.enc_hidden = nn.Sequential(nn.Flatten(), nn.Linear(784, h), nn.ELU(), nn.Linear(h, h), nn.Softplus())
        self.enc_mu = nn.Linear(h, latent_dim)
        self.enc_sigma = nn.Linear(h, latent_dim)
        self.dec = nn.Sequential(
            nn.Linear(latent_dim, h), nn.ReLU(inplace=True), nn.Linear(h, h), nn.ReLU(inplace=True),
            nn.Linear(h, 784), nn.Sigmoid(),
        )
