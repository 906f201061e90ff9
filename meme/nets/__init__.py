"""Networks, one module per modality (encoder + decoder + likelihood), in families chosen by ``nets``.

``FAMILIES[nets][modality]`` is the class of a modality's networks:

* ``published`` (the default): the networks of the published MEME code (``thwjoy/meme``,
  ``models/networks.py``), which produced the paper's tables;
* ``appendix_k``: the networks of the paper's appendix K table.

Every model (MEME and the baselines) builds its modalities from the same family, like for like.
Each family also has networks by kind (``image``, ``vector``, ``tokens``: ``meme.nets.shaped``), sized
from the rows' shape, for datasets described by a file, and presets a dataset file can name for a modality
(``networks: {preset: polymnist}``: ``meme.nets.polymnist``; ``{preset: mnist}``: the family's MNIST networks,
``meme.nets.mnist``, for 1 x 28 x 28 images).
Runs written before the family was a config key were trained with ``appendix_k``
(``meme.config.LEGACY_DEFAULTS``).
"""
from __future__ import annotations

from meme.errors import MemeError
from meme.nets.base import Modality, as_float
from meme.nets.cub import CUBCaptionModality, CUBImageModality, PublishedCUBCaptionModality, PublishedCUBImageModality
from meme.nets.mnist import MNISTModality, PublishedMNISTModality
from meme.nets.polymnist import PublishedPolyMNISTModality
from meme.nets.shaped import (ImageModality, PublishedImageModality, PublishedTokensModality, PublishedVectorModality,
                              TokensModality, VectorModality)
from meme.nets.svhn import PublishedSVHNModality, SVHNModality

#: the latent size of runs that leave ``latent_dim`` at 0 and whose dataset names none (the published code's)
DEFAULT_LATENT_DIM = 64

FAMILIES: dict[str, dict[str, type[Modality]]] = {
    "published": {
        "mnist": PublishedMNISTModality,
        "svhn": PublishedSVHNModality,
        "cub_image": PublishedCUBImageModality,
        "cub_caption": PublishedCUBCaptionModality,
        "image": PublishedImageModality,
        "vector": PublishedVectorModality,
        "tokens": PublishedTokensModality,
        "polymnist": PublishedPolyMNISTModality,
    },
    "appendix_k": {
        "mnist": MNISTModality,
        "svhn": SVHNModality,
        "cub_image": CUBImageModality,
        "cub_caption": CUBCaptionModality,
        "image": ImageModality,
        "vector": VectorModality,
        "tokens": TokensModality,
        "polymnist": ImageModality,   # appendix_k has no PolyMNIST networks of its own: by shape
    },
}


def check_family(nets: str, names=()) -> None:
    """A ``MemeError`` naming the valid families unless ``nets`` is one that has networks for all ``names``."""
    if nets not in FAMILIES:
        raise MemeError(f"unknown nets {nets!r}; valid: {', '.join(FAMILIES)}")
    missing = [n for n in names if n not in FAMILIES[nets]]
    if missing:
        valid = [f for f, mods in FAMILIES.items() if all(n in mods for n in names)]
        raise MemeError(f"nets {nets!r} has no networks for modality {missing[0]!r}; valid for "
                        f"{', '.join(names)}: {', '.join(valid) or 'none'}")


def modality_class(nets: str, name: str) -> type[Modality]:
    check_family(nets, (name,))
    return FAMILIES[nets][name]


__all__ = ["DEFAULT_LATENT_DIM", "FAMILIES", "Modality", "as_float", "check_family", "modality_class", "MNISTModality", "SVHNModality",
           "PublishedMNISTModality", "PublishedSVHNModality"]
