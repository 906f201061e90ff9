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
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_z, test_z = np.asarray(train_z, dtype=dtype), np.asarray(test_z, dtype=dtype)
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
