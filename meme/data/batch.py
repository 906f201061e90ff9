"""Typed batches and the loader that slices them from in-memory tensors.

A batch is paired, s-only or t-only. Its ``observed`` flags are explicit (never inferred with
``hasattr``) and must agree with which tensors it carries. Every example in a batch shares one
observation pattern, so a model evaluates each term on the whole batch with no masking arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from meme.data.observation import Observation
from meme.data.paired import PairedData
from meme.nets.base import as_float

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

    def to(self, device, non_blocking: bool = True) -> "Batch":
        return Batch(
            tuple(None if v is None else v.to(device, non_blocking=non_blocking) for v in self.x),
            self.observed,
            self.labels.to(device, non_blocking=non_blocking),
        )


def gather(data: PairedData, pairs: Tensor, observed: tuple[bool, bool], device) -> Batch:
    """Slice one batch of pairs out of the tables (one index op per table; no per-sample Python)."""
    xs = []
    for m in range(2):
        if observed[m]:
            rows = data.index[m][pairs]
            xs.append(as_float(data.tables[m][rows].to(device, non_blocking=True)))
        else:
            xs.append(None)
    return Batch(tuple(xs), observed, data.labels[pairs].to(device, non_blocking=True))


class BatchLoader:
    """Yields the batches of one epoch: paired, s-only and t-only batches, shuffled and interleaved.

    The order of an epoch depends only on ``(seed, epoch)``, so a resumed run replays it exactly.
    """

    def __init__(self, data: PairedData, observation: Observation, batch_size: int, device="cpu", seed: int = 0,
                 drop_last: bool = False):
        self.data = data
        self.observation = observation
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        self.drop_last = drop_last

    def _groups(self):
        obs = self.observation
        return [(obs.paired, (True, True)), (obs.s_only, (True, False)), (obs.t_only, (False, True))]

    def plan(self, epoch: int) -> list[tuple[Tensor, tuple[bool, bool]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        chunks = []
        for idx, observed in self._groups():
            if idx.numel() == 0:
                continue
            perm = idx[torch.randperm(idx.numel(), generator=g)]
            for start in range(0, perm.numel(), self.batch_size):
                part = perm[start:start + self.batch_size]
                if self.drop_last and part.numel() < self.batch_size:
                    continue
                chunks.append((part, observed))
        order = torch.randperm(len(chunks), generator=g).tolist()
        return [chunks[i] for i in order]

    def __len__(self) -> int:
        return len(self.plan(0))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for pairs, observed in self.plan(epoch):
            yield gather(self.data, pairs, observed, self.device)


def full_batches(data: PairedData, batch_size: int, device="cpu") -> Iterator[Batch]:
    """Every pair of ``data`` in order, fully observed (evaluation)."""
    n = len(data)
    for start in range(0, n, batch_size):
        yield gather(data, torch.arange(start, min(n, start + batch_size)), (True, True), device)
