"""``Batch``: one batch of examples, paired, s-only or t-only, with explicit observation flags.

A batch is what every model's ``loss`` takes. Its ``observed`` flags are explicit (never inferred with
``hasattr``) and must agree with which tensors it carries. Every example in a batch shares one
observation pattern, so a model evaluates each term on the whole batch with no masking arithmetic.
Batches are sliced from the data by ``meme.data.batch``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

KINDS = {(True, True): "paired", (True, False): "s", (False, True): "t"}


@dataclass(frozen=True)
class Batch:
    x: tuple[Tensor | None, Tensor | None]
    observed: tuple[bool, bool]
    labels: Tensor

    def __post_init__(self):
        if self.observed not in KINDS:
            raise ValueError("a batch observes at least one modality")
        for i in range(2):
            if (self.x[i] is not None) != self.observed[i]:
                raise ValueError(f"batch mask says modality {i} observed={self.observed[i]} but tensor is {type(self.x[i])}")

    @property
    def kind(self) -> str:
        return KINDS[self.observed]

    def __len__(self) -> int:
        return int(self.labels.shape[0])
