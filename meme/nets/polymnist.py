"""PolyMNIST networks (Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021; the MoPoE code's
``EncoderImg`` / ``DecoderImg`` for the 3 x 28 x 28 PolyMNIST images). L = latent size (512 there).

**published** (the ``preset: polymnist`` of a dataset file, with ``nets: published``):

* encoder: conv 3x3 with 32, 64, 128 channels, stride 2, pad 1, each followed by ReLU (28 -> 14 -> 7 -> 4) ->
  flatten (2048) -> FC L, ReLU -> FC L (mu) and FC L (log-variance; sigma = exp(logvar / 2), no floor);
* decoder: FC 2048, ReLU -> (128, 4, 4) -> upconv 3x3 to 64 (stride 2, pad 1: 4 -> 7), ReLU -> upconv 3x3
  to 32 (stride 2, pad 1, output pad 1: 7 -> 14), ReLU -> upconv 3x3 to 3 (14 -> 28), with no output
  nonlinearity (the published code leaves its sigmoid commented out);
* the upconvs are ``meme.nets.layers.ConvTranspose2d``: torch's layer and numbers, in channels_last without
  gradients and in bf16 training on a CPU, where its bias gradient is a plain sum (oneDNN's kernel with the bias
  runs up to twice as long);
* a Laplace likelihood with a fixed scale of 0.75 (the dataset file that ``meme data polymnist`` writes
  sets ``scale: 0.75``; the run's ``llik_scale`` otherwise).

With ``nets: appendix_k`` the same preset takes the networks by shape (``meme.nets.shaped``) for 3 x 28 x 28.
"""
from __future__ import annotations

from torch import Tensor, nn

from meme.errors import MemeError
from meme.nets.base import Modality
from meme.nets.layers import ConvTranspose2d
from meme.nets.shaped import _FixedScaleLikelihood

SHAPE = (3, 28, 28)


class PublishedPolyMNISTModality(_FixedScaleLikelihood, Modality):
    kind = "image"
    published = True
    sigma_rule = "logvar"
    default_sigma_floor = 0.0
    cpu_decode_chunk = 512

    def __init__(self, latent_dim: int = 512, sigma_floor: float | None = None, llik_scale: float = 1.0, *,
                 shape=SHAPE, name: str = "polymnist", likelihood: str = "laplace", scale: float | None = None,
                 channels=None, hidden=None, preset: str | None = None):
        super().__init__(latent_dim, sigma_floor)
        if tuple(shape) != SHAPE:
            raise MemeError(f"the polymnist networks take {SHAPE} images, got rows of shape {tuple(shape)}")
        if channels is not None or hidden is not None:
            raise MemeError("the polymnist networks are fixed: channels and hidden do not apply to them")
        self._init_likelihood(likelihood, llik_scale if scale is None else scale)
        self.name, self.event_shape = name, SHAPE
        self.enc = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2048, latent_dim), nn.ReLU())
        self.enc_mu, self.enc_sigma = nn.Linear(latent_dim, latent_dim), nn.Linear(latent_dim, latent_dim)
        self.dec = nn.Sequential(
            nn.Linear(latent_dim, 2048), nn.ReLU(), nn.Unflatten(1, (128, 4, 4)),
            ConvTranspose2d(128, 64, 3, 2, 1), nn.ReLU(),
            ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1), nn.ReLU(),
            ConvTranspose2d(32, 3, 3, 2, 1, output_padding=1))

    def _encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.enc(x)
        return self.enc_mu(h), self.enc_sigma(h)

    def _decode(self, z: Tensor) -> Tensor:
        return self.dec(z).contiguous()   # NCHW for the likelihood and the judges (the upconvs may run channels_last)
