r"""CUB: correlation under CCA (paper appendix G, after Shi et al. 2019 and Massiceti et al. 2018).

CCA with ``k`` = 40 components is fitted on the training pairs between the ResNet-101 image features
``x`` (2048-d) and the caption sentence embeddings ``y`` (300-d, ``meme.features.text``):

.. math::

    \max_{w_x, w_y} \operatorname{corr}(w_x^\top x, w_y^\top y), \qquad
    \phi(x) = W_x^\top (x - \bar x),\quad \psi(y) = W_y^\top (y - \bar y)

and a pair scores the cosine of its two projections,
:math:`\operatorname{corr}(x, y) = \phi(x)^\top \psi(y) / (\lVert\phi(x)\rVert \lVert\psi(y)\rVert)`,
averaged over the test pairs. Three scores (``cub_cca_metrics``):

* ``cca_ground_truth``: test images with their own captions;
* ``cca_image_to_caption``: test images with the captions generated from them (encode the image,
  z ~ q(z | image), decode with the caption decoder, most likely token per position);
* ``cca_caption_to_image``: generated image features (caption decoder's counterpart: the image
  decoder's Laplace location) with the input captions' embeddings.

The directions solve the generalised eigenproblem of the MMVAE code by whitening:
``M = Cxx^{-1/2} Cxy Cyy^{-1/2} = U S V^T``, ``W_x = Cxx^{-1/2} U``, ``W_y = Cyy^{-1/2} V``; the canonical
correlations are ``S``. Each component's scale matters for the cosine: ``scaling="mmvae"`` (default)
scales component i of both views by ``1 / ||(w_x,i, w_y,i)||``, which is exactly the unit-norm
eigenvector ``scipy.linalg.eig`` returns in the MMVAE code; ``scaling="canonical"`` keeps unit-variance
projections. Rank-deficient covariances (fewer pairs than dimensions) are handled by dropping the
null space.

``caption_examples`` / ``write_caption_examples`` turn generated captions back into words for figures:
per test image, its caption and the captions generated from it; per caption, the training image
nearest to the features generated from it (like the paper's appendix H tables).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from meme.errors import MemeError, check_choice

log = logging.getLogger(__name__)

SCALINGS = ("mmvae", "canonical")


@dataclass(frozen=True)
class CCA:
    mean_x: Tensor          # (dx,)
    mean_y: Tensor          # (dy,)
    proj_x: Tensor          # (dx, k)
    proj_y: Tensor          # (dy, k)
    correlations: Tensor    # (k,), descending

    def project(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.as_tensor(x, dtype=torch.float64)
        y = torch.as_tensor(y, dtype=torch.float64)
        return (x - self.mean_x) @ self.proj_x, (y - self.mean_y) @ self.proj_y

    def scores(self, x: Tensor, y: Tensor) -> Tensor:
        """Per pair, the cosine between the two projections."""
        px, py = self.project(x, y)
        return F.cosine_similarity(px, py, dim=1)

    def score(self, x: Tensor, y: Tensor) -> float:
        """The mean over pairs of :meth:`scores` (rows of ``x`` and ``y`` pair up)."""
        if x.shape[0] != y.shape[0]:
            raise MemeError(f"CCA score needs paired rows: {x.shape[0]} vs {y.shape[0]}")
        return float(self.scores(x, y).mean())


def _inv_sqrt(c: Tensor, rtol: float) -> Tensor:
    """(d, r) with W^T C W = I_r on C's range (eigenvalues below rtol * max dropped)."""
    lam, vec = torch.linalg.eigh(c)
    keep = lam > rtol * lam.max().clamp_min(1e-300)
    return vec[:, keep] / lam[keep].sqrt()


def fit_cca(x: Tensor, y: Tensor, k: int = 40, eps: float = 1e-12, scaling: str = "mmvae",
            rtol: float = 1e-10) -> CCA:
    """CCA between the rows of ``x`` (N, dx) and ``y`` (N, dy), ``k`` components (computed in float64).

    ``eps`` is added to the diagonals of both covariances, as in the MMVAE code.
    """
    check_choice("CCA scaling", scaling, SCALINGS)
    x = torch.as_tensor(x, dtype=torch.float64)
    y = torch.as_tensor(y, dtype=torch.float64)
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise MemeError(f"CCA needs paired (N, d) matrices; got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if n < 2:
        raise MemeError(f"CCA needs at least 2 pairs, got {n}")
    if not 1 <= k <= min(x.shape[1], y.shape[1]):
        raise MemeError(f"CCA with k={k} components needs 1 <= k <= min(dims) = {min(x.shape[1], y.shape[1])}")
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    cxx = xc.T @ xc / (n - 1) + eps * torch.eye(x.shape[1], dtype=x.dtype)
    cyy = yc.T @ yc / (n - 1) + eps * torch.eye(y.shape[1], dtype=y.dtype)
    cxy = xc.T @ yc / (n - 1)
    wx, wy = _inv_sqrt(cxx, rtol), _inv_sqrt(cyy, rtol)
    u, s, vh = torch.linalg.svd(wx.T @ cxy @ wy, full_matrices=False)
    kk = min(k, s.numel())
    if kk < k:
        log.warning("CCA: the data has rank %d < k=%d; using %d components", s.numel(), k, kk)
    px, py = wx @ u[:, :kk], wy @ vh[:kk].T
    if scaling == "mmvae":
        norm = torch.cat([px, py]).norm(dim=0)
        px, py = px / norm, py / norm
    return CCA(mx, my, px, py, s[:kk])


# ---------------------------------------------------------------- the model
def _embed(embedder, tokens: Tensor) -> Tensor:
    return embedder(tokens.cpu()).double()


def _latent(mu: Tensor, sigma: Tensor, use_mean: bool) -> Tensor:
    return mu if use_mean else mu + sigma * torch.randn_like(mu)


def fit_cub_cca(train_data, embedder, k: int = 40, max_pairs: int = 0, scaling: str = "mmvae", seed: int = 0) -> CCA:
    """The CCA of the training pairs (image features, caption embeddings); ``max_pairs`` > 0: a seeded subset."""
    pairs = torch.arange(len(train_data))
    if max_pairs and max_pairs < len(train_data):
        pairs = torch.randperm(len(train_data), generator=torch.Generator().manual_seed(seed))[:max_pairs]
    x = train_data.rows(0, pairs).double()
    y = torch.cat([_embed(embedder, train_data.rows(1, p)) for p in pairs.split(65_536)])
    dims = min(x.shape[1], y.shape[1])
    if k > dims:  # e.g. word vectors narrower than 40 (quick or test stores)
        log.warning("CUB CCA: %d components asked for, but the caption embeddings have %d dimensions; using %d",
                    k, y.shape[1], dims)
        k = dims
    return fit_cca(x, y, k=k, scaling=scaling)


@torch.no_grad()
def cub_cca_metrics(model, train_data, test_data, embedder, cca: CCA | None = None, k: int = 40,
                    batch_size: int = 256, device=None, use_mean: bool = False, max_train_pairs: int = 0,
                    max_test_pairs: int = 0, seed: int = 0) -> dict[str, float]:
    """CUB correlation scores of ``model`` (the module docstring's three scores, averaged over test pairs).

    ``train_data``/``test_data``: ``PairedData`` of the ``cub`` dataset (modality 0 image features,
    modality 1 caption token ids); ``embedder``: the store's ``SentenceEmbedder``
    (``meme.features.store.read_sentence_embedder``); ``cca``: a CCA fitted earlier with
    :func:`fit_cub_cca` (it depends only on the data, so one fit serves every model), else fitted here on
    ``train_data``. Returns ``cca_ground_truth``, ``cca_image_to_caption``, ``cca_caption_to_image`` and
    ``cca_top_correlation`` (the first canonical correlation on the training pairs).
    """
    if tuple(test_data.names) != tuple(model.names):
        raise MemeError(f"the model is for {model.names} but the test data holds {test_data.names}")
    if cca is None:
        if train_data is None:
            raise MemeError("the CUB CCA is fitted on training pairs: pass train_data or a fitted cca")
        cca = fit_cub_cca(train_data, embedder, k, max_train_pairs, seed=seed)
    p = next(model.parameters())
    device = torch.device(device) if device is not None else p.device
    was_training = model.training
    model.eval()
    n = len(test_data)
    pairs = torch.arange(n)
    if max_test_pairs and max_test_pairs < n:
        pairs = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_test_pairs]
    gt, i2c, c2i = [], [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for b in pairs.split(batch_size):
                img = test_data.rows(0, b).float()
                tok = test_data.rows(1, b)
                emb = _embed(embedder, tok)
                z_img = _latent(*model.encode(img.to(device), 0), use_mean)
                z_cap = _latent(*model.encode(tok.to(device), 1), use_mean)
                gen_tok = model.decode(z_img, 1).argmax(-1).cpu()
                gen_img = model.decode(z_cap, 0).float().cpu()
                gt.append(cca.scores(img, emb))
                i2c.append(cca.scores(img, _embed(embedder, gen_tok)))
                c2i.append(cca.scores(gen_img, emb))
    finally:
        model.train(was_training)
    if not gt:
        raise MemeError("the CUB test set is empty")
    return {"cca_ground_truth": float(torch.cat(gt).mean()), "cca_image_to_caption": float(torch.cat(i2c).mean()),
            "cca_caption_to_image": float(torch.cat(c2i).mean()), "cca_top_correlation": float(cca.correlations[0])}


# ---------------------------------------------------------------- examples
def _first_pairs(data) -> Tensor:
    """For every row of the image table, the first pair that uses it (-1 where none does)."""
    n_rows, n = data.tables[0].shape[0], len(data)
    first = torch.full((n_rows,), n, dtype=torch.long).scatter_reduce_(0, data.index[0], torch.arange(n), reduce="amin")
    return torch.where(first < n, first, -1)


@torch.no_grad()
def caption_examples(model, test_data, vocab, train_data=None, n: int = 8, samples: int = 3, seed: int = 0,
                     device=None) -> list[dict]:
    """For ``n`` test pairs with distinct images: the true caption, ``samples`` captions generated from the
    image, and for the caption -> image direction the row of the (train, else test) image nearest to the
    generated features with that image's first caption. Words are decoded with ``vocab``."""
    ref = train_data if train_data is not None else test_data
    p = next(model.parameters())
    device = torch.device(device) if device is not None else p.device
    firsts = _first_pairs(test_data)
    firsts = firsts[firsts >= 0]
    g = torch.Generator().manual_seed(seed)
    pick = firsts[torch.randperm(firsts.numel(), generator=g)[:n]].sort().values
    ref_feats = ref.tables[0].float()
    ref_first = _first_pairs(ref)
    ref_caption = torch.where(ref_first >= 0, ref.index[1][ref_first.clamp_min(0)], -1)  # first caption of each image
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            img = test_data.rows(0, pick).float().to(device)
            tok = test_data.rows(1, pick).to(device)
            mu, sigma = model.encode(img, 0)
            z = mu + sigma * torch.randn(samples, *mu.shape, device=device)
            gen = model.decode(z, 1).argmax(-1).cpu()                   # (S, n, T)
            feats = model.decode(model.encode(tok, 1)[0], 0).float().cpu()
            nearest = torch.cdist(feats, ref_feats).argmin(1)
    finally:
        model.train(was_training)
    for j, pair in enumerate(pick.tolist()):
        cap_row = int(ref_caption[nearest[j]])
        out.append({"pair": pair, "image_row": int(test_data.index[0][pair]), "label": int(test_data.labels[pair]),
                    "caption": vocab.decode(test_data.rows(1, torch.tensor([pair]))[0]),
                    "generated_captions": [vocab.decode(gen[s, j]) for s in range(samples)],
                    "nearest_image_row": int(nearest[j]),
                    "nearest_image_caption": vocab.decode(ref.tables[1][cap_row]) if cap_row >= 0 else ""})
    return out


def write_caption_examples(path, examples: list[dict], image_files=None) -> list[Path]:
    """``<path>.md`` (two tables, like the paper's appendix H) and ``<path>.png``. ``image_files``: optional
    callable ``(role, row) -> Path | None`` (role "test" or "nearest") to draw thumbnails of the images."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    md = ["| image (test row, class) | its caption | generated captions |", "| --- | --- | --- |"]
    for e in examples:
        md.append(f"| {e['image_row']} ({e['label']}) | {e['caption']} | {' / '.join(e['generated_captions'])} |")
    md += ["", "| input caption | nearest image to the generated features (row) | that image's caption |",
           "| --- | --- | --- |"]
    for e in examples:
        md.append(f"| {e['caption']} | {e['nearest_image_row']} | {e['nearest_image_caption']} |")
    md_path = path.with_suffix(".md")
    md_path.write_text("\n".join(md) + "\n")
    png = path.with_suffix(".png")
    _figure(png, examples, image_files)
    return [md_path, png]


def _wrap(text: str, width: int = 38) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or "(empty)"


def _figure(png: Path, examples: list[dict], image_files) -> None:
    from matplotlib.figure import Figure

    n = len(examples)
    fig = Figure(figsize=(13, 1.5 * n + 0.6))
    axes = fig.subplots(max(n, 1), 4, squeeze=False)
    titles = ["image", "image -> captions", "caption", "caption -> image (nearest)"]
    for j, e in enumerate(examples):
        cells = [f"test image {e['image_row']}\nclass {e['label']}", "\n".join(_wrap(c) for c in e["generated_captions"]),
                 _wrap(e["caption"]), f"image {e['nearest_image_row']}:\n{_wrap(e['nearest_image_caption'])}"]
        for c, text in enumerate(cells):
            ax = axes[j, c]
            ax.set_xticks([])
            ax.set_yticks([])
            shown = None
            if image_files is not None and c in (0, 3):
                shown = image_files("test" if c == 0 else "nearest", e["image_row"] if c == 0 else e["nearest_image_row"])
            if shown is not None and Path(shown).is_file():
                from PIL import Image

                ax.imshow(Image.open(shown).convert("RGB"))
            else:
                ax.text(0.02, 0.5, text, fontsize=6.5, va="center", ha="left", transform=ax.transAxes)
            if j == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
