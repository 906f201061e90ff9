"""``Batch``: one batch of examples of M >= 2 modalities that share one observation pattern.

A batch is what every model's ``loss`` takes. ``observed`` holds one flag per modality, explicit (never inferred
with ``hasattr``), and must agree with which tensors ``x`` carries (``None`` for a missing modality). Every
example in a batch shares one observation pattern, so a model evaluates each term on the whole batch, on dense
tensors, with no masking arithmetic. Batches are sliced from the data by ``meme.data.batch``.

``kind`` names the pattern: ``paired`` when every modality is observed; with two modalities ``s`` or ``t``
for the one observed (the names runs have always logged), and with more ``partial``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

KINDS = {(True, True): "paired", (True, False): "s", (False, True): "t"}


def pattern_kind(observed: tuple[bool, ...]) -> str:
    """``paired``, ``s``, ``t`` (two modalities) or ``partial``: the name a pattern's losses are logged under."""
    if all(observed):
        return "paired"
    return KINDS.get(tuple(observed), "partial")


@dataclass(frozen=True)
class Batch:
    x: tuple[Tensor | None, ...]
    observed: tuple[bool, ...]
    labels: Tensor

    def __post_init__(self):
        if len(self.x) != len(self.observed) or len(self.observed) < 2:
            raise ValueError(f"a batch has one tensor and one flag per modality (at least two), got {len(self.x)} "
                             f"tensors and {len(self.observed)} flags")
        if not any(self.observed):
            raise ValueError("a batch observes at least one modality")
        for i, o in enumerate(self.observed):
            if (self.x[i] is not None) != o:
                raise ValueError(f"batch mask says modality {i} observed={o} but tensor is {type(self.x[i])}")

    @property
    def kind(self) -> str:
        return pattern_kind(self.observed)

    @property
    def present(self) -> tuple[int, ...]:
        """The observed modalities' indices, in order."""
        return tuple(m for m, o in enumerate(self.observed) if o)

    def __len__(self) -> int:
        return int(self.labels.shape[0])
