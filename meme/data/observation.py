"""Partial observation (paper §4.1): which training pairs are seen paired, and which as one modality.

A fraction ``f`` of the pairs stays paired; ``round(f * n)`` exactly. The rest follow a scheme:

* ``observed = <name of modality 0>``: the unpaired rest keeps only modality 0 (e.g. "MEME_MNIST");
* ``observed = <name of modality 1>``: it keeps only modality 1;
* ``observed = "split"``: each unpaired example keeps exactly one modality, half of them each
  (the first ``ceil`` half keeps modality 0), so the two are never observed together.

``paired_only=True`` drops the unpaired rest (ablation J.2).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from meme.errors import MemeError, check_choice


@dataclass(frozen=True)
class Observation:
    paired: Tensor
    s_only: Tensor
    t_only: Tensor

    def counts(self) -> dict[str, int]:
        return {"paired": self.paired.numel(), "s_only": self.s_only.numel(), "t_only": self.t_only.numel()}


def check_supervision(f: float) -> None:
    if not isinstance(f, (int, float)) or not (0.0 < float(f) <= 1.0):
        raise MemeError(f"supervision fraction f={f!r} is outside (0, 1]; e.g. 1, 0.5, 0.25, 0.125, 0.0625")


def make_observation(n: int, supervision: float, observed: str, names: tuple[str, str],
                     paired_only: bool = False, seed: int = 0) -> Observation:
    check_supervision(supervision)
    check_choice("observed", observed, [names[0], names[1], "split"])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_paired = int(round(supervision * n))
    if n_paired == 0:
        raise MemeError(f"supervision fraction f={supervision} leaves no paired example out of {n}; raise f")
    paired, rest = perm[:n_paired].sort().values, perm[n_paired:]
    empty = torch.empty(0, dtype=torch.long)
    if paired_only or rest.numel() == 0:
        return Observation(paired, empty, empty)
    if observed == names[0]:
        return Observation(paired, rest.sort().values, empty)
    if observed == names[1]:
        return Observation(paired, empty, rest.sort().values)
    half = (rest.numel() + 1) // 2
    return Observation(paired, rest[:half].sort().values, rest[half:].sort().values)

