"""Datasets as ``PairedData`` (two modality tables + pairs), partial observation, typed batches.

``DATASETS`` maps a dataset name to a ``DatasetSpec``: its modality names, a loader for a split, and a
builder for its modality networks. ``polymnist`` is the dataset file that ``meme data polymnist`` writes into
``<data dir>/PolyMNIST``. A ``dataset`` that names a ``.yaml``/``.yml``/``.json``
file is the user's own data (``meme.data.dataset_file``), with networks chosen by the rows' shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from meme.data.batch import Batch, BatchLoader
from meme.data.cub import build_cub_modalities, load_cub
from meme.data.dataset_file import is_dataset_file, read_dataset_file
from meme.data.mnist_svhn import load_mnist_svhn, resolve_data_dir
from meme.data.observation import Observation, make_observation
from meme.data.polymnist import dataset_file as polymnist_file
from meme.data.paired import PairedData
from meme.errors import MemeError
from meme.nets import DEFAULT_LATENT_DIM, modality_class


@dataclass(frozen=True)
class DatasetSpec:
    names: tuple[str, str]
    #: (cfg, split) -> PairedData, split in {"train", "test"}
    load: Callable
    #: (cfg, train_data) -> (Modality, Modality)
    build_modalities: Callable
    #: what a network family must have networks for (default: the modality names)
    network_keys: tuple[str, ...] | None = None
    #: the latent size of runs that leave ``latent_dim`` at 0
    latent_dim: int = DEFAULT_LATENT_DIM
    #: cfg -> the dataset file behind the dataset, where there is one (its classifiers are trained on its tables)
    file: Callable | None = None


def registry_modalities(cfg, train_data):
    """The modalities' networks from the config's family (``cfg.nets``); sigma_floor 0 = the family's own."""
    return tuple(
        modality_class(cfg.nets, name)(latent_dim=cfg.latent_dim or DEFAULT_LATENT_DIM, sigma_floor=cfg.sigma_floor or None,
                                       llik_scale=cfg.llik_scale)
        for name in train_data.names
    )


def _load_mnist_svhn(cfg, split: str) -> PairedData:
    pairings = cfg.pairings if split == "train" else 1
    return load_mnist_svhn(cfg.data_dir, split, pairings=pairings, seed=cfg.data_seed, download=cfg.download)


def _polymnist(cfg):
    """The PolyMNIST that ``meme data polymnist`` wrote into ``<data dir>/PolyMNIST``."""
    return read_dataset_file(polymnist_file(cfg.data_dir))


DATASETS: dict[str, DatasetSpec] = {
    "mnist_svhn": DatasetSpec(("mnist", "svhn"), _load_mnist_svhn, registry_modalities),
    "cub": DatasetSpec(("cub_image", "cub_caption"), load_cub, build_cub_modalities),
    "polymnist": DatasetSpec(tuple(f"m{k}" for k in range(5)), lambda cfg, split: _polymnist(cfg).load(split),
                             lambda cfg, data: _polymnist(cfg).build_modalities(cfg, data), network_keys=("polymnist",),
                             latent_dim=512, file=_polymnist),
}


def get_dataset(name: str) -> DatasetSpec:
    """A built-in dataset by name, or the dataset file at the path ``name`` (validated on read)."""
    if is_dataset_file(name):
        ds = read_dataset_file(name)
        return DatasetSpec(ds.names, lambda cfg, split: ds.load(split), ds.build_modalities,
                           network_keys=ds.network_keys, latent_dim=ds.latent_dim or DEFAULT_LATENT_DIM,
                           file=lambda cfg: ds)
    if name not in DATASETS:
        raise MemeError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}, or a dataset file "
                        f"(path/to/data.yaml: see meme.data.dataset_file)")
    return DATASETS[name]


def latent_size(cfg) -> int:
    """The run's latent size: ``latent_dim``, or where it is 0 the dataset's own."""
    return cfg.latent_dim or get_dataset(cfg.dataset).latent_dim


__all__ = ["Batch", "BatchLoader", "DATASETS", "DatasetSpec", "Observation", "PairedData",
           "get_dataset", "is_dataset_file", "latent_size", "make_observation", "resolve_data_dir"]
