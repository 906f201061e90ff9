"""The evaluation's figures, as PNG files (matplotlib, Agg backend; nothing is shown on screen)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _figure(rows: int, cols: int, figsize):
    """A standalone Figure (no pyplot state, no GUI backend) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def is_image(x: Tensor) -> bool:
    """Images the grids can show: (N, C, H, W) with 1 or 3 channels."""
    return x.dim() == 4 and x.shape[1] in (1, 3)


def _tile(images: list[Tensor], h: int, w: int, pad: int = 2) -> Tensor:
    """One row of images as an RGB strip (3, h + 2 pad, n (w + 2 pad)), each image centred in its cell."""
    cells = []
    for img in images:
        img = img.detach().float().clamp(0, 1).cpu().expand(3, -1, -1)
        cell = torch.ones(3, h + 2 * pad, w + 2 * pad)
        top, left = pad + (h - img.shape[1]) // 2, pad + (w - img.shape[2]) // 2
        cell[:, top:top + img.shape[1], left:left + img.shape[2]] = img
        cells.append(cell)
    return torch.cat(cells, 2)


def cross_generation_grid(path, inputs: Tensor, outputs: Tensor, src: str, dst: str, labels: Tensor | None = None) -> Path:
    """Row 0: the ``src`` inputs; rows 1..S: their cross-generations into ``dst`` (``outputs`` is (S, N, C, H, W))."""
    n, rows = inputs.shape[0], 1 + outputs.shape[0]
    h, w = max(inputs.shape[2], outputs.shape[3]), max(inputs.shape[3], outputs.shape[4])
    canvas = torch.cat([_tile(list(inputs), h, w)] + [_tile(list(o), h, w) for o in outputs], 1)
    fig, ax = _figure(1, 1, (0.45 * n + 1.2, 0.45 * rows + 0.6))
    ax = ax[0, 0]
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    cell_h, cell_w = h + 4, w + 4
    ax.set_yticks([cell_h * (i + 0.5) for i in range(rows)], [src] + [f"{dst} {i}" for i in range(1, rows)], fontsize=7)
    has_labels = labels is not None and bool((labels >= 0).all())
    ax.set_xticks([cell_w * (j + 0.5) for j in range(n)] if has_labels else [],
                  [str(int(v)) for v in labels] if has_labels else [], fontsize=7)
    ax.tick_params(length=0)
    ax.set_title(f"cross-generation {src} -> {dst} (top: input; below: samples)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def tsne_figure(path, points: np.ndarray, labels: np.ndarray, modality: np.ndarray, names: tuple[str, ...],
                seed: int = 0) -> Path:
    """t-SNE of latents, two panels: coloured by label, and by modality."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3.0)))
    # one thread: t-SNE's OpenMP loops slow down by orders of magnitude on a CPU shared with other work
    with threadpool_limits(1):
        emb = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(
            np.asarray(points, dtype=np.float32))
    fig, axes = _figure(1, 2, (11, 5))
    axes = axes[0]
    if labels is not None and (labels >= 0).all():
        sc = axes[0].scatter(emb[:, 0], emb[:, 1], c=labels, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
        fig.colorbar(sc, ax=axes[0], ticks=range(10), label="label")
    else:
        axes[0].scatter(emb[:, 0], emb[:, 1], s=4, color="gray")
    axes[0].set_title("t-SNE of latent means, by label")
    for m, colour in enumerate(f"C{i % 10}" for i in range(len(names))):   # tab:blue, tab:orange, ...
        sel = modality == m
        axes[1].scatter(emb[sel, 0], emb[sel, 1], s=4, color=colour, label=names[m], alpha=0.6)
    axes[1].legend(markerscale=3)
    axes[1].set_title("t-SNE of latent means, by modality")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def w2_histogram(path, related: np.ndarray, unrelated: np.ndarray, names: tuple[str, str], labelled: bool) -> Path:
    fig, ax = _figure(1, 1, (6, 4))
    ax = ax[0, 0]
    both = np.concatenate([related, unrelated])
    bins = np.linspace(float(both.min()), float(np.percentile(both, 99.5)) + 1e-9, 80)
    what = "same label" if labelled else "paired"
    other = "different label" if labelled else "unpaired"
    ax.hist(unrelated, bins=bins, density=True, alpha=0.6, color="tab:blue", label=f"{other} (n={unrelated.size})")
    ax.hist(related, bins=bins, density=True, alpha=0.6, color="tab:orange", label=f"{what} (n={related.size})")
    ax.set_xlabel(f"W2( q(z|{names[0]}_i), q(z|{names[1]}_j) )")
    ax.set_ylabel("density")
    ax.legend()
    ax.set_title("relatedness: 2-Wasserstein between the encoders, all (i, j) in a batch", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def class_matrix_figure(path, matrix: np.ndarray, linkage: np.ndarray | None, names: tuple[str, str]) -> Path:
    """The class distance matrix (left) and the dendrogram of its hierarchical clustering (right)."""
    from scipy.cluster.hierarchy import dendrogram

    n = matrix.shape[0]
    fig, axes = _figure(1, 2, (11, 4.5))
    axes = axes[0]
    im = axes[0].imshow(matrix, cmap="viridis")
    fig.colorbar(im, ax=axes[0], label="mean W2")
    if n <= 20:
        axes[0].set_xticks(range(n))
        axes[0].set_yticks(range(n))
    axes[0].set_xlabel(f"class of {names[1]}")
    axes[0].set_ylabel(f"class of {names[0]}")
    axes[0].set_title("class distance matrix")
    if linkage is not None:
        dendrogram(linkage, labels=[str(i) for i in range(n)], ax=axes[1], color_threshold=None, no_labels=n > 20)
        axes[1].set_title("dendrogram (average linkage)")
        axes[1].set_ylabel("W2")
    else:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "some class pairs never met:\nno dendrogram", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def pick_grid_examples(labels: Tensor, n: int, g: torch.Generator) -> Tensor:
    """Positions of ``n`` examples: one per class 0, 1, ... (cycling) where labelled, else the first n."""
    if labels.numel() == 0 or not bool((labels >= 0).all()):
        return torch.arange(min(n, labels.numel()))
    classes = torch.unique(labels).tolist()
    out = []
    for i in range(n):
        idx = (labels == classes[i % len(classes)]).nonzero().flatten()
        out.append(idx[torch.randint(idx.numel(), (1,), generator=g)])
    return torch.cat(out)
