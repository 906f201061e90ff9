"""The interface every model implements, and the little they share.

    encode(x, m) -> (mu, sigma)      unimodal Gaussian posterior of modality m (a name or 0/1)
    decode(z, m) -> params           likelihood parameters of modality m (leading sample dims allowed)
    log_likelihood(x, params, m)     summed over the modality's event dims
    loss(batch) -> (loss, metrics)   scalar to minimise, and a dict of detached scalar tensors
    sample_prior(n) -> z             latents for unconditional (joint) generation

A batch is paired, s-only or t-only (``meme.batch.Batch``); models branch on ``batch.observed``.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from meme.batch import Batch
from meme.errors import MemeError
from meme.nets.base import Modality


class MultimodalModel(nn.Module):
    name: str = ""
    #: whether the objective has a term for singly-observed examples (MMVAE does not)
    learns_from_unpaired: bool = True

    def __init__(self, modalities: tuple[Modality, Modality]):
        super().__init__()
        if len(modalities) != 2:
            raise MemeError(f"{self.name} takes exactly two modalities, got {len(modalities)}")
        self.mods = nn.ModuleList(modalities)
        self.names = (modalities[0].name, modalities[1].name)
        self.latent_dim = modalities[0].latent_dim

    def index(self, m: str | int) -> int:
        if isinstance(m, int) and m in (0, 1):
            return m
        if m in self.names:
            return self.names.index(m)
        raise MemeError(f"unknown modality {m!r}; this model has {self.names[0]}, {self.names[1]}")

    def encode(self, x: Tensor, m: str | int) -> tuple[Tensor, Tensor]:
        return self.mods[self.index(m)].encode(x)

    def decode(self, z: Tensor, m: str | int) -> Tensor:
        return self.mods[self.index(m)].decode(z)

    def log_likelihood(self, x: Tensor, params: Tensor, m: str | int) -> Tensor:
        return self.mods[self.index(m)].log_likelihood(x, params)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def sample_prior(self, n: int) -> Tensor:
        p = next(self.parameters())
        return torch.randn(n, self.latent_dim, device=p.device, dtype=p.dtype)

    @classmethod
    def from_config(cls, cfg, modalities: tuple[Modality, Modality], train_data, observation) -> "MultimodalModel":
        """Build from a ``meme.train.TrainConfig``; ``train_data``/``observation`` for data-initialised parts."""
        return cls(modalities)
