"""Batches (``meme.batch.Batch``) sliced from in-memory tables, and the loader that plans an epoch of them."""
from __future__ import annotations

import logging
from typing import Iterator

import torch
from torch import Tensor

from meme.batch import Batch
from meme.data.observation import Observation
from meme.data.paired import PairedData
from meme.nets.base import as_float

log = logging.getLogger(__name__)


def gather(data: PairedData, pairs: Tensor, observed: tuple[bool, ...], device) -> Batch:
    """Slice one batch of examples out of the tables (one index op per observed table; no per-sample Python)."""
    xs = []
    for m in range(len(observed)):
        if observed[m]:
            rows = data.index[m][pairs]
            xs.append(as_float(data.tables[m][rows].to(device, non_blocking=True)))
        else:
            xs.append(None)
    return Batch(tuple(xs), observed, data.labels[pairs].to(device, non_blocking=True))


class BatchLoader:
    """Yields the batches of one epoch: each observation pattern's examples (``Observation.groups``, in its order)
    shuffled and cut into batches, then all the batches shuffled together, so the patterns interleave and each
    gets batches in proportion to its examples.

    How a pattern is cut: with two modalities, into full batches and the rest (as runs always were); with more,
    into ``ceil(n / batch_size)`` batches whose sizes differ by at most one, so a pattern's last batch is never
    a sliver (with ``random`` observation there are up to 2^M - 1 patterns, each with its own last batch).
    The order of an epoch depends only on ``(seed, epoch)``, so a resumed run replays it exactly.
    """

    def __init__(self, data: PairedData, observation: Observation, batch_size: int, device="cpu", seed: int = 0,
                 batchnorm: tuple[bool, ...] = ()):
        self.data = data
        self.observation = observation
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.seed = seed
        #: per modality, whether its networks hold BatchNorm, which cannot train on a batch of one example: a last
        #: batch of one that observes such a modality is left out of the epoch (said once, in the log)
        self.batchnorm = batchnorm
        self._said = False

    def cut(self, n: int) -> list[int]:
        """The sizes of the batches a pattern of ``n`` examples is cut into."""
        b = self.batch_size
        if len(self.observation.names) == 2:
            return [b] * (n // b) + ([n % b] if n % b else [])
        k = -(-n // b)
        return [n // k + (1 if i < n % k else 0) for i in range(k)]

    def plan(self, epoch: int) -> list[tuple[Tensor, tuple[bool, ...]]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        chunks = []
        for observed, idx in self.observation.groups.items():
            perm = idx[torch.randperm(idx.numel(), generator=g)]
            for chunk in perm.split(self.cut(perm.numel())):
                if chunk.numel() == 1 and any(o and bn for o, bn in zip(observed, self.batchnorm)):
                    if not self._said:
                        log.info("a last batch of one example is left out of each epoch (BatchNorm needs two)")
                        self._said = True
                    continue
                chunks.append((chunk, observed))
        order = torch.randperm(len(chunks), generator=g).tolist()
        chunks = [chunks[i] for i in order]
        if self.device.type != "cpu" and chunks:  # the epoch's indices go to the device in one copy, not one per step
            flat = torch.cat([pairs for pairs, _ in chunks]).to(self.device)
            chunks = list(zip(flat.split([pairs.numel() for pairs, _ in chunks]), (o for _, o in chunks)))
        return chunks

    def __len__(self) -> int:
        return len(self.plan(0))

    def epoch(self, epoch: int) -> Iterator[Batch]:
        for pairs, observed in self.plan(epoch):
            yield gather(self.data, pairs, observed, self.device)
