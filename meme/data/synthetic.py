"""Generated stand-in data, written in the real file formats (documented as synthetic everywhere it is used).

SVHN cannot be downloaded on every machine, so the project can generate an *SVHN-format stand-in*:
printed digits rendered with Pillow's bundled font, randomly scaled, rotated, sheared and shifted, in
random foreground/background colours, with parts of neighbouring digits at the sides (as in SVHN's
house-number crops) and pixel noise. It is written as ``SVHN/{train,test}_32x32.mat`` exactly as the
official files (X 32x32x3xN uint8, y Nx1, 10 meaning digit 0), so the real loader reads it.

For tests and the ``smoke`` study, a tiny *MNIST-format* set is generated the same way (white strokes
on black, 28x28) and written as the four IDX files. Neither is a substitute for the real datasets when
reporting results.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from meme.data.mnist_svhn import MNIST_FILES, SVHN_FILES, resolve_data_dir
from meme.errors import MemeError

SVHN_SIZES = {"train": 73257, "test": 26032}


def digit_glyphs(size: int = 64) -> torch.Tensor:
    """(10, size, size) float glyph masks of the digits 0..9, centred."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=int(size * 0.8))
    out = torch.zeros(10, size, size)
    for d in range(10):
        img = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(img)
        l, t, r, b = draw.textbbox((0, 0), str(d), font=font)
        draw.text(((size - (r - l)) / 2 - l, (size - (b - t)) / 2 - t), str(d), fill=255, font=font)
        out[d] = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    return out


def _warp(glyphs: torch.Tensor, labels: torch.Tensor, out: int, g: torch.Generator, scale=(0.9, 1.3),
          rot=15.0, shear=0.2, shift=0.08, thicken=True) -> torch.Tensor:
    """Randomly warped glyphs for ``labels``: (N, out, out) in [0, 1]."""
    n = labels.numel()
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    s = u(*scale)
    a = u(-rot, rot) * math.pi / 180
    sh = u(-shear, shear)
    cos, sin = torch.cos(a), torch.sin(a)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * s, (-sin + sh) * s
    theta[:, 1, 0], theta[:, 1, 1] = sin * s, cos * s
    theta[:, 0, 2], theta[:, 1, 2] = u(-shift, shift), u(-shift, shift)
    src = glyphs[labels].unsqueeze(1)
    if thicken:  # random stroke width: max-pool some glyphs
        fat = torch.rand(n, generator=g) < 0.5
        src = torch.where(fat.view(-1, 1, 1, 1), F.max_pool2d(src, 3, 1, 1), src)
    grid = F.affine_grid(theta, (n, 1, out, out), align_corners=False)
    return F.grid_sample(src, grid, align_corners=False, padding_mode="zeros").squeeze(1).clamp(0, 1)


def make_mnist_like(labels: torch.Tensor, seed: int = 0) -> np.ndarray:
    """(N, 28, 28) uint8 white-on-black digits."""
    g = torch.Generator().manual_seed(seed)
    glyphs = digit_glyphs(64)
    x = _warp(glyphs, labels, 28, g, scale=(1.2, 1.6), rot=20.0, shear=0.3, shift=0.1)
    return (x * 255).round().to(torch.uint8).numpy()


def make_svhn_like(labels: torch.Tensor, seed: int = 0, batch: int = 8192) -> np.ndarray:
    """(N, 3, 32, 32) uint8 house-number-like crops of the digits ``labels``."""
    g = torch.Generator().manual_seed(seed)
    glyphs = digit_glyphs(64)
    out = []
    for start in range(0, labels.numel(), batch):
        lab = labels[start:start + batch]
        n = lab.numel()
        centre = _warp(glyphs, lab, 32, g, scale=(1.1, 1.5))
        # neighbours: other digits shifted left/right so that only a part is visible
        side = []
        for sign in (-1.0, 1.0):
            nb = torch.randint(0, 10, (n,), generator=g)
            img = _warp(glyphs, nb, 32, g, scale=(1.1, 1.5), shift=0.02)
            dx = (sign * (0.55 + 0.25 * torch.rand(n, generator=g))).view(-1, 1, 1)
            theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).repeat(n, 1, 1)
            theta[:, 0, 2] = -dx.view(-1) * 2
            grid = F.affine_grid(theta, (n, 1, 32, 32), align_corners=False)
            keep = (torch.rand(n, generator=g) < 0.6).view(-1, 1, 1).float()
            side.append(F.grid_sample(img.unsqueeze(1), grid, align_corners=False).squeeze(1) * keep)
        mask = torch.maximum(centre, torch.maximum(*side)).unsqueeze(1)  # N,1,32,32
        bg = torch.rand(n, 3, 1, 1, generator=g)
        fg = torch.rand(n, 3, 1, 1, generator=g)
        # keep foreground and background apart in brightness so the digit stays visible
        flip = (fg.mean(1, keepdim=True) - bg.mean(1, keepdim=True)).abs() < 0.3
        fg = torch.where(flip, 1.0 - bg, fg)
        img = bg * (1 - mask) + fg * mask
        shade = 0.1 * torch.randn(n, 1, 1, 1, generator=g) * torch.linspace(-1, 1, 32).view(1, 1, 1, 32)
        img = img + shade + 0.04 * torch.randn(n, 3, 32, 32, generator=g)
        out.append((img.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out).numpy()


def _balanced_labels(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=g) % 10


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file (the MNIST format): magic 0x0000 08 ndim, big-endian dims, uint8 data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = header + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def write_svhn_mat(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write SVHN's official .mat layout: X (32, 32, 3, N) uint8, y (N, 1) uint8 with 10 for digit 0."""
    import scipy.io

    y = np.asarray(labels, dtype=np.uint8).copy()
    y[y == 0] = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)), "y": y.reshape(-1, 1)})


#: in a data dir: the files the generators wrote there, with their sha256 (what they may write over again)
GENERATED = ".meme-generated.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _generated(root: Path) -> dict:
    try:
        return json.loads((root / GENERATED).read_text())
    except (OSError, ValueError):
        return {}


def _made_here(made: dict, root: Path, path: Path) -> bool:
    recorded = made.get(str(path.relative_to(root)))
    return recorded is not None and recorded == _sha256(path)   # hashed only where a generator wrote that file


def check_targets(root: Path, paths: list[Path], what: str, force: bool = False) -> None:
    """A generator writes over no file it did not make: any of ``paths`` that exists and is not, byte for byte,
    what a generator wrote there (``GENERATED``) is refused, naming it, before anything is written."""
    if force:
        return
    made = _generated(root)
    foreign = [p for p in paths if p.exists() and not _made_here(made, root, p)]
    if foreign:
        more = f" (and {len(foreign) - 1} more: {', '.join(p.name for p in foreign[1:])})" if len(foreign) > 1 else ""
        raise MemeError(f"{foreign[0]} exists and was not written by `meme data {what}`{more}; nothing was written "
                        f"(give another --data-dir, or --force to replace)")


def _record(root: Path, paths: list[Path]) -> None:
    made = _generated(root)
    made.update({str(p.relative_to(root)): _sha256(p) for p in paths})
    (root / GENERATED).write_text(json.dumps(made, indent=1) + "\n")


def svhn_standin_files(data_dir) -> list[Path]:
    root = resolve_data_dir(data_dir)
    return [root / "SVHN" / SVHN_FILES[s] for s in ("train", "test")]


def write_svhn_standin(data_dir=None, sizes: dict[str, int] | None = None, seed: int = 0, force: bool = False) -> list[Path]:
    """Generate the SVHN-format stand-in (full SVHN sizes by default) into ``<data_dir>/SVHN``; files there that
    a generator did not write are refused unless ``force`` (``check_targets``)."""
    base = resolve_data_dir(data_dir)
    sizes = sizes or SVHN_SIZES
    check_targets(base, [base / "SVHN" / SVHN_FILES[s] for s in sizes], "svhn-standin", force)
    paths = []
    for i, (split, n) in enumerate(sizes.items()):
        g = torch.Generator().manual_seed(seed * 7919 + i)
        labels = _balanced_labels(n, g)
        images = make_svhn_like(labels, seed=seed * 7919 + 100 + i)
        path = base / "SVHN" / SVHN_FILES[split]
        write_svhn_mat(path, images, labels.numpy())
        paths.append(path)
    _record(base, paths)
    return paths


def write_synthetic_mnist_svhn(data_dir, n_train: int = 600, n_test: int = 200, seed: int = 0, force: bool = False) -> Path:
    """A tiny generated MNIST-format + SVHN-format pair of datasets (tests, the smoke study); files there that a
    generator did not write are refused unless ``force`` (``check_targets``), all six checked before any is written."""
    root = resolve_data_dir(data_dir)
    mnist = [root / "MNIST" / "raw" / f for pair in MNIST_FILES.values() for f in pair]
    check_targets(root, mnist + svhn_standin_files(root), "synthetic", force)
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        g = torch.Generator().manual_seed(seed * 104729 + i)
        labels = _balanced_labels(n, g)
        img_file, lab_file = MNIST_FILES[split]
        write_idx(root / "MNIST" / "raw" / img_file, make_mnist_like(labels, seed=seed * 104729 + 10 + i))
        write_idx(root / "MNIST" / "raw" / lab_file, labels.numpy().astype(np.uint8))
    _record(root, mnist)
    write_svhn_standin(root, {"train": n_train, "test": n_test}, seed=seed + 1, force=True)
    return root
