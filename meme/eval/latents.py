"""Encoding a whole dataset, and the linear latent probe (latent accuracy, paper §4.1)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
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

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def pair(self, a: int, b: int) -> "Encoded":
        """Modalities a and b as modalities 0 and 1 (what the two-modality measures such as W2 take)."""
        return Encoded((self.mu[a], self.mu[b]), (self.sigma[a], self.sigma[b]), self.labels, self.rows)


@torch.no_grad()
def encode_pairs(model, data: PairedData, pairs: Tensor, batch_size: int, device, joint: bool = False) -> Encoded:
    """Encode every modality of ``pairs`` with the model's unimodal encoders, batch by batch (``joint``: also the
    mean of the posterior given all of them)."""
    M = len(data.names)
    mus, sigmas, joints = tuple([] for _ in range(M)), tuple([] for _ in range(M)), []
    for start in range(0, pairs.numel(), batch_size):
        batch = gather(data, pairs[start:start + batch_size], (True,) * M, device)
        for m in range(M):
            mu, sigma = model.encode(batch.x[m], m)
            mus[m].append(mu.float().cpu())
            sigmas[m].append(sigma.float().cpu())
        if joint:
            fused_mu, _ = model.fuse([model.expert(batch.x[m], m) for m in range(M)])
            joints.append(fused_mu.mean(0).float().cpu())
    if not mus[0]:
        raise MemeError("cannot encode an empty set of pairs")
    return Encoded(tuple(torch.cat(v) for v in mus), tuple(torch.cat(v) for v in sigmas), data.labels[pairs].cpu(),
                   data.index[0][pairs].cpu(), torch.cat(joints) if joint else None)


def has_labels(labels: Tensor) -> bool:
    return labels.numel() > 0 and bool((labels >= 0).all())


def latent_accuracy(train_z, train_y, test_z, test_y, seed: int = 0, max_iter: int = 500) -> float:
    """Accuracy on (test_z, test_y) of a logistic regression fitted on (train_z, train_y), features standardised."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_z, test_z = np.asarray(train_z, dtype=np.float64), np.asarray(test_z, dtype=np.float64)
    train_y, test_y = np.asarray(train_y), np.asarray(test_y)
    if len(train_y) == 0 or len(test_y) == 0:
        raise MemeError("the latent probe needs at least one training and one test latent")
    if len(np.unique(train_y)) < 2:
        raise MemeError(f"the latent probe needs at least two classes in its training latents, got {np.unique(train_y).tolist()}")
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_z, train_y)
    return float((probe.predict(test_z) == test_y).mean())
