r"""Relatedness (paper §4.2, appendix F): 2-Wasserstein distances between the two encoders' Gaussians.

For diagonal Gaussians the 2-Wasserstein distance has the closed form

.. math::  W_2(\mathcal N(\mu_1, \sigma_1^2), \mathcal N(\mu_2, \sigma_2^2))^2 = \|\mu_1-\mu_2\|^2 + \|\sigma_1-\sigma_2\|^2,

the general formula :math:`\|\mu_1-\mu_2\|^2 + \operatorname{tr}(\Sigma_1+\Sigma_2-2(\Sigma_2^{1/2}\Sigma_1\Sigma_2^{1/2})^{1/2})`
with commuting covariances. So W2 is the Euclidean distance between the vectors ``[mu, sigma]``, and all
(i, j) of a batch are one ``cdist``.

Within each test batch (of a seeded shuffle of the test set) every (i, j) gives
``W2(q(z | x_a^i), q(z | x_b^j))``. The pair is *related* when i and j show the same concept: by
``"label"``, the same label (the paper's MNIST-SVHN digits); by ``"pair"``, the same row of modality a
(the paper's CUB: the same image, whichever of its captions). Summaries: the mean over related and unrelated (i, j), their gap, and the AUROC of W2 as a score
separating unrelated from related (1 = every unrelated pair is further apart than every related one,
0.5 = no separation). The class matrix holds the mean W2 between class i of modality a and class j of
modality b, over the same within-batch (i, j).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from meme.errors import MemeError, check_choice
from meme.eval.latents import Encoded, has_labels


def pairwise_w2(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor, exact: bool = True) -> Tensor:
    """(N_a, N_b) 2-Wasserstein distances between diagonal Gaussians, in float64: from the exact pairwise differences,
    or (``exact=False``, the evaluation in bf16) from one matrix product, ``|a|^2 + |b|^2 - 2 a.b``, 10x faster and
    equal to about 1e-12 relative."""
    a = torch.cat([mu_a, sigma_a], -1).double()
    b = torch.cat([mu_b, sigma_b], -1).double()
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist")


@dataclass(frozen=True)
class Relatedness:
    related: np.ndarray          # W2 of every related (i, j) in the test batches
    unrelated: np.ndarray        # W2 of every unrelated (i, j)
    class_matrix: np.ndarray | None  # (C, C) mean W2 of class i (modality a) vs class j (modality b); NaN if unseen

    def summary(self) -> dict[str, float]:
        rel = float(self.related.mean()) if self.related.size else float("nan")
        unr = float(self.unrelated.mean()) if self.unrelated.size else float("nan")
        out = {"w2_paired_mean": rel, "w2_unpaired_mean": unr, "w2_gap": unr - rel,
               "w2_auroc": auroc(self.related, self.unrelated)}
        if self.class_matrix is not None:
            m = self.class_matrix
            off = ~np.eye(m.shape[0], dtype=bool)
            out["w2_class_diag_mean"] = float(np.nanmean(np.diag(m)))
            out["w2_class_offdiag_mean"] = float(np.nanmean(m[off]))
        return out


def auroc(related: np.ndarray, unrelated: np.ndarray) -> float:
    """P(W2 of an unrelated pair > W2 of a related pair), ties counted half (Mann-Whitney U / (n1 n0)); NaN where
    either side is empty or holds a NaN.

    U counts, for every related value, the unrelated values above it and half of those equal to it: binary
    searches into the sorted unrelated values. The sums are whole or half numbers below 2^53, so U is exact, and
    the same number as from the ranks of both sides together (``scipy.stats.rankdata``, as this was before), in
    a sixth of the time (0.06 against 0.4 s for the 2.6 million pairs of 10,000 test examples)."""
    n1, n0 = unrelated.size, related.size
    if n1 == 0 or n0 == 0 or np.isnan(related).any() or np.isnan(unrelated).any():
        return float("nan")
    ranked = np.sort(unrelated.astype(np.float64))   # sorted, the binary searches below stay in cache
    vals = np.sort(related.astype(np.float64))
    upto = np.searchsorted(ranked, vals, side="right")   # per related value: the unrelated ones at or below it
    ties = upto - np.searchsorted(ranked, vals, side="left")
    u = float((n1 - upto).sum()) + 0.5 * float(ties.sum())
    return float(u / (n1 * n0))


@torch.no_grad()
def relatedness(enc: Encoded, batch_size: int, by: str = "label", n_classes: int | None = None,
                exact: bool = True) -> Relatedness:
    """W2 over all (i, j) inside consecutive batches of ``enc`` (modality 0 at i, modality 1 at j).

    ``by="label"`` also fills the class matrix. ``exact``: see ``pairwise_w2``.
    """
    check_choice("related_by", by, ["label", "pair"])
    labelled = by == "label"
    if labelled and not has_labels(enc.labels):
        raise MemeError("relatedness by label needs every test pair labelled; use related_by='pair'")
    if labelled and n_classes is None:
        n_classes = int(enc.labels.max()) + 1
    related, unrelated = [], []
    sums = torch.zeros(n_classes * n_classes, dtype=torch.float64) if labelled else None
    counts = torch.zeros(n_classes * n_classes, dtype=torch.float64) if labelled else None
    for start in range(0, len(enc), batch_size):
        sl = slice(start, start + batch_size)
        d = pairwise_w2(enc.mu[0][sl], enc.sigma[0][sl], enc.mu[1][sl], enc.sigma[1][sl], exact)
        y = enc.labels[sl] if labelled else enc.rows[sl]
        same = y[:, None] == y[None, :]
        related.append(d[same].float().numpy())
        unrelated.append(d[~same].float().numpy())
        if labelled:
            cell = (y[:, None] * n_classes + y[None, :]).flatten()
            sums.index_add_(0, cell, d.flatten())
            counts.index_add_(0, cell, torch.ones_like(d.flatten()))
    matrix = None
    if labelled:
        matrix = (sums / counts).view(n_classes, n_classes).numpy()  # 0/0 -> NaN where a cell was never seen
    return Relatedness(np.concatenate(related), np.concatenate(unrelated), matrix)


def class_linkage(matrix: np.ndarray, method: str = "average") -> np.ndarray:
    """scipy hierarchical clustering of the classes, distances = the symmetrised class matrix, diagonal ignored."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    d = (matrix + matrix.T) / 2.0
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(d, checks=False), method=method)
