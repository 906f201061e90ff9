"""The interface every model implements, and the little they share.

    encode(x, m) -> (mu, sigma)      unimodal Gaussian posterior of modality m (a name or an index)
    decode(z, m) -> params           likelihood parameters of modality m (leading sample dims allowed)
    log_likelihood(x, params, m)     summed over the modality's event dims
    loss(batch) -> (loss, metrics)   scalar to minimise, and a dict of detached scalar tensors
    sample_prior(n) -> z             latents for unconditional (joint) generation
    expert(x, m), fuse(experts)      the posterior given any subset S of the modalities (evaluation):
                                     ``fuse`` of the ``expert`` of each modality in S, as an equally
                                     weighted mixture of C Gaussian components stacked (C, B, L)

A model declares its own config keys next to its code: ``Keys``, a frozen dataclass of ``meme.config.key`` fields
with a ``check(cfg)`` of their values (``meme.config.train_config`` joins every registered model's into
``TrainConfig``); ``check_config(cfg, names)`` and ``check_run(...)`` refuse what its keys cannot do with a dataset
or cannot fit; ``metric_prefixes``/``metric_names``: the terms its loss reports (``meme.metrics``). A new model is
its file and one line in the registry (``meme.models.MODELS``).

A model takes any number M >= 2 of modalities. A batch observes one pattern of them (``meme.batch.Batch``); models branch on ``batch.observed``. ``learns_from(pattern)``
says which patterns the objective has a term for; the trainer leaves the others out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from meme.batch import Batch
from meme.errors import MemeError
from meme.nets.base import Modality


@dataclass(frozen=True)
class NoKeys:
    """The keys of a model that has none of its own."""

    @staticmethod
    def check(cfg) -> None:
        pass


class MultimodalModel(nn.Module):
    name: str = ""
    Keys: type = NoKeys
    #: the names (``metric_names``) and name prefixes (``metric_prefixes``) of the terms its loss reports, beyond
    #: ``loss``, ``recon_*`` and ``kl_*``
    metric_prefixes: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()
    #: the fewest observed modalities of a pattern the objective has a term for (MMVAE: 2, its mixture needs two)
    min_observed: int = 1

    def __init__(self, modalities):
        super().__init__()
        check_modality_count(type(self), len(modalities))
        self.mods = nn.ModuleList(modalities)
        self.names = tuple(mod.name for mod in modalities)
        self.latent_dim = modalities[0].latent_dim

    @property
    def num_modalities(self) -> int:
        return len(self.names)

    @property
    def learns_from_unpaired(self) -> bool:
        """Whether any pattern short of the full one has a term (with two modalities: singly observed examples)."""
        return self.min_observed < self.num_modalities

    def learns_from(self, pattern) -> bool:
        return sum(pattern) >= min(self.min_observed, len(pattern))

    def index(self, m: str | int) -> int:
        if isinstance(m, int) and not isinstance(m, bool) and 0 <= m < len(self.names):
            return m
        if m in self.names:
            return self.names.index(m)
        raise MemeError(f"unknown modality {m!r}; this model has {', '.join(self.names)}")

    def encode(self, x: Tensor, m: str | int) -> tuple[Tensor, Tensor]:
        return self.mods[self.index(m)].encode(x)

    def decode(self, z: Tensor, m: str | int) -> Tensor:
        return self.mods[self.index(m)].decode(z)

    def log_likelihood(self, x: Tensor, params: Tensor, m: str | int) -> Tensor:
        return self.mods[self.index(m)].log_likelihood(x, params)

    def loss(self, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    # ----------------------------------------------------- the posterior given a subset of the modalities
    def expert(self, x: Tensor, m: str | int) -> tuple[Tensor, Tensor]:
        """Modality m's factor of the posterior given a subset (fp32). Default: its unimodal posterior ``encode``."""
        return tuple(v.float() for v in self.encode(x, m))

    def encode_and_expert(self, x: Tensor, m: str | int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor] | None]:
        """``encode(x, m)`` and ``expert(x, m)`` from one pass of the encoder network; the expert is ``None`` where it
        is the unimodal posterior itself in fp32 (the default ``expert``)."""
        post = self.encode(x, m)
        if type(self).expert is MultimodalModel.expert:
            return post, None
        return post, self.expert(x, m)

    def fuse(self, experts: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
        """The posterior given a subset from its modalities' ``expert``s, as (mus, sigmas) of shape (C, B, L): an
        equally weighted mixture of C components (C = 1: one distribution). Default: the mixture of the experts,
        the joint posterior of MMVAE and mmJSD (products override it: MVAE, MoPoE)."""
        return torch.stack([e[0] for e in experts]), torch.stack([e[1] for e in experts])

    def latent_noise(self, like: Tensor) -> Tensor:
        """Standard noise of the posterior family (Gaussian by default)."""
        return torch.randn_like(like)

    def sample_fused(self, mus: Tensor, sigmas: Tensor, use_mean: bool = False) -> Tensor:
        """z from a fused posterior (``fuse``): each example draws its component uniformly, then z from it (its
        location with ``use_mean``)."""
        if mus.shape[0] == 1:
            mu, sigma = mus[0], sigmas[0]
        else:
            pick = torch.randint(mus.shape[0], (mus.shape[1],), device=mus.device)
            rows = torch.arange(mus.shape[1], device=mus.device)
            mu, sigma = mus[pick, rows], sigmas[pick, rows]
        return mu if use_mean else mu + sigma * self.latent_noise(mu)

    def sample_prior(self, n: int) -> Tensor:
        p = next(self.parameters())
        return torch.randn(n, self.latent_dim, device=p.device, dtype=p.dtype)

    @classmethod
    def check_config(cls, cfg, names: tuple[str, ...]) -> None:
        """Refuse, in one line, keys of this model that a dataset with these modalities cannot take."""

    @classmethod
    def check_run(cls, cfg, data, observation, modalities, device) -> None:
        """Refuse, in one line, before the model is built, sizes its keys ask for that cannot fit."""

    @classmethod
    def from_config(cls, cfg, modalities: tuple[Modality, ...], train_data, observation) -> "MultimodalModel":
        """Build from a ``meme.train.TrainConfig``; ``train_data``/``observation`` for data-initialised parts."""
        return cls(modalities)


def check_modality_count(model: type, count: int) -> None:
    """A model class and a dataset's number of modalities agree, or one line saying why not."""
    if count < 2:
        raise MemeError(f"{model.name} needs at least two modalities, got {count}")
