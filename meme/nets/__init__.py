"""Networks, one module per modality (encoder + decoder + likelihood), and their registry."""
from __future__ import annotations

from meme.nets.base import Modality, as_float
from meme.nets.cub import CUBCaptionModality, CUBImageModality
from meme.nets.mnist import MNISTModality
from meme.nets.svhn import SVHNModality

MODALITIES: dict[str, type[Modality]] = {
    "mnist": MNISTModality,
    "svhn": SVHNModality,
    "cub_image": CUBImageModality,
    "cub_caption": CUBCaptionModality,
}

__all__ = ["MODALITIES", "Modality", "as_float", "MNISTModality", "SVHNModality"]
