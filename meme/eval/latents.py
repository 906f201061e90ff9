"""Encoding a whole dataset, and the linear latent probe (latent accuracy, paper §4.1)."""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from meme.data.batch import gather
from meme.data.paired import PairedData
from meme.errors import MemeError


@dataclass(frozen=True)
class Encoded:
    """Per modality, the unimodal posteriors ``N(mu[m], sigma[m]^2)`` of the pairs ``pairs`` of a dataset (on CPU)."""
    mu: tuple[Tensor, ...]
    sigma: tuple[Tensor, ...]
    labels: Tensor
    #: the row of modality 0's table behind each pair (the shared object, e.g. the image of an image-caption pair)
    rows: Tensor
    #: the mean of the posterior given all the modalities (``model.fuse``), where asked for
    joint_mu: Tensor | None = None
    #: per modality, ``model.expert`` (mu, sigma) where asked for and where it is not the unimodal posterior
    #: (MVAE's bare experts); ``expert(m)`` gives either
    experts: tuple[tuple[Tensor, Tensor], ...] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pair(self, a: int, b: int) -> "Encoded":
        """Modalities a and b as modalities 0 and 1 (what the two-modality measures such as W2 take)."""
        return Encoded((self.mu[a], self.mu[b]), (self.sigma[a], self.sigma[b]), self.labels, self.rows)

    def expert(self, m: int) -> tuple[Tensor, Tensor]:
        """Modality m's factor of a subset's posterior (``model.expert``), on CPU in fp32."""
        return self.experts[m] if self.experts is not None else (self.mu[m], self.sigma[m])


@torch.no_grad()
def encode_pairs(model, data: PairedData, pairs: Tensor, batch_size: int, device, joint: bool = False,
                 experts: bool = False) -> Encoded:
    """Encode every modality of ``pairs`` with the model's unimodal encoders, batch by batch, one pass of each
    encoder network per batch (``joint``: also the mean of the posterior given all of them; ``experts``: also
    each modality's ``model.expert``, for the posteriors given subsets)."""
    M = len(data.names)
    mus, sigmas, joints = tuple([] for _ in range(M)), tuple([] for _ in range(M)), []
    bare = tuple([] for _ in range(M))   # model.expert, batch by batch, where it is not the posterior (MVAE)
    for start in range(0, pairs.numel(), batch_size):
        batch = gather(data, pairs[start:start + batch_size], (True,) * M, device)
        found = []
        for m in range(M):
            post, expert = model.encode_and_expert(batch.x[m], m)
            mu, sigma = post[0].float(), post[1].float()
            found.append((mu, sigma) if expert is None else expert)
            mus[m].append(mu.cpu())
            sigmas[m].append(sigma.cpu())
            if experts and expert is not None:
                bare[m].append(tuple(v.cpu() for v in expert))
        if joint:
            fused_mu, _ = model.fuse(found)
            joints.append(fused_mu.mean(0).float().cpu())
    if not mus[0]:
        raise MemeError("cannot encode an empty set of pairs")
    return Encoded(tuple(torch.cat(v) for v in mus), tuple(torch.cat(v) for v in sigmas), data.labels[pairs].cpu(),
                   data.index[0][pairs].cpu(), torch.cat(joints) if joint else None,
                   tuple(tuple(torch.cat(v) for v in zip(*b)) for b in bare) if bare[0] else None)


def has_labels(labels: Tensor) -> bool:
    return labels.numel() > 0 and bool((labels >= 0).all())


def latent_accuracy(train_z, train_y, test_z, test_y, seed: int = 0, max_iter: int = 500, dtype=np.float64) -> float:
    """Accuracy on (test_z, test_y) of a logistic regression fitted on (train_z, train_y), features standardised,
    in ``dtype`` (float64, or float32 where the evaluation runs in bf16: about a third less time)."""
    LogisticRegression, make_pipeline, StandardScaler, ConvergenceWarning = _sklearn()
    train_z, test_z = np.asarray(train_z, dtype=dtype), np.asarray(test_z, dtype=dtype)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_y) == 0 or len(test_y) == 0:
        raise MemeError("the latent probe needs at least one training and one test latent")
    if len(np.unique(train_y)) < 2:
        raise MemeError(f"the latent probe needs at least two classes in its training latents, got {np.unique(train_y).tolist()}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_z, train_y)
    return float((probe.predict(test_z) == test_y).mean())


def _sklearn():
    """The probe's parts of scikit-learn, imported on first use: the import takes about a second, which every
    ``meme`` command (``--help`` too) would pay at start-up."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return LogisticRegression, make_pipeline, StandardScaler, ConvergenceWarning


def latent_accuracies(fits, train_y, test_y, seed: int = 0, dtype=np.float64, workers: int | None = None) -> list[float]:
    """``latent_accuracy`` of each (train_z, test_z) of ``fits``, with the labels they share.

    ``workers`` None: one fit at a time, with BLAS as the process has it (the numbers of every evaluation in fp32).
    An int n >= 1: BLAS on one thread in every fit, and n fits at a time on threads (lbfgs runs mostly in BLAS
    and compiled loops, outside the GIL). A fit's numbers then do not depend on n or on the machine's core count.
    On this project's 2-core CPUs a multithreaded BLAS spends most of a fit on its threads' hand-offs (the
    matrices are only 10,000 x 512 by 10): the six probes of a PolyMNIST evaluation took 17 s one at a time with
    two BLAS threads, and 3.3 s with n = 2 (``benchmarks/eval_speed_m.py``)."""
    def fit(pair):
        return latent_accuracy(pair[0], train_y, pair[1], test_y, seed, dtype=dtype)

    if workers is None:
        return [fit(pair) for pair in fits]
    _sklearn()   # imported here, once: the workers importing it at once took 3.5 s more than one import
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(max(1, workers)) as pool:
        return list(pool.map(fit, fits))
