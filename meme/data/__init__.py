"""Datasets as ``PairedData`` (two modality tables + pairs), partial observation, typed batches.

``DATASETS`` maps a dataset name to a ``DatasetSpec``: its two modality names, a loader for a split,
and a builder for its two modality networks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from meme.data.batch import Batch, BatchLoader, full_batches
from meme.data.cub import build_cub_modalities, load_cub
from meme.data.mnist_svhn import load_mnist_svhn, resolve_data_dir
from meme.data.observation import Observation, make_observation
from meme.data.paired import PairedData
from meme.errors import check_choice
from meme.nets import modality_class


@dataclass(frozen=True)
class DatasetSpec:
    names: tuple[str, str]
    #: (cfg, split) -> PairedData, split in {"train", "test"}
    load: Callable
    #: (cfg, train_data) -> (Modality, Modality)
    build_modalities: Callable


def registry_modalities(cfg, train_data):
    """The two modalities' networks from the config's family (``cfg.nets``); sigma_floor 0 = the family's own."""
    return tuple(
        modality_class(cfg.nets, name)(latent_dim=cfg.latent_dim, sigma_floor=cfg.sigma_floor or None,
                                       llik_scale=cfg.llik_scale)
        for name in train_data.names
    )


def _load_mnist_svhn(cfg, split: str) -> PairedData:
    pairings = cfg.pairings if split == "train" else 1
    return load_mnist_svhn(cfg.data_dir, split, pairings=pairings, seed=cfg.data_seed, download=cfg.download)


DATASETS: dict[str, DatasetSpec] = {
    "mnist_svhn": DatasetSpec(("mnist", "svhn"), _load_mnist_svhn, registry_modalities),
    "cub": DatasetSpec(("cub_image", "cub_caption"), load_cub, build_cub_modalities),
}


def get_dataset(name: str) -> DatasetSpec:
    check_choice("dataset", name, DATASETS)
    return DATASETS[name]


__all__ = ["Batch", "BatchLoader", "DATASETS", "DatasetSpec", "Observation", "PairedData", "full_batches",
           "get_dataset", "make_observation", "resolve_data_dir"]
