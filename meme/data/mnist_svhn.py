"""MNIST-SVHN: real loading, pairing by digit label, and the cached pairing index.

Files live under the data directory (``--data-dir`` / ``MEME_DATA_DIR``, default ``~/.cache/meme``):

* ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision's layout);
* ``SVHN/{train,test}_32x32.mat`` (the official Matlab files: ``X`` is 32x32x3xN uint8, ``y`` is Nx1
  with labels 1..10, where 10 means digit 0).

Missing files are downloaded through torchvision when ``download=True``. Pairs are made as in the
MMVAE/MEME code: for every digit, ``pairings`` random permutations of the MNIST and SVHN indices of
that digit, truncated to the shorter list. The pairing is seeded and cached on disk, keyed by a hash of
both label vectors, so it is built once.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from meme.data.paired import PairedData
from meme.errors import MemeError, check_choice

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}


def default_data_dir() -> Path:
    return Path(os.environ.get("MEME_DATA_DIR", Path.home() / ".cache" / "meme")).expanduser()


def cache_dir() -> Path:
    return Path(os.environ.get("MEME_CACHE_DIR", Path.home() / ".cache" / "meme" / "cache")).expanduser()


def resolve_data_dir(data_dir) -> Path:
    return Path(data_dir).expanduser() if data_dir else default_data_dir()


def load_mnist(data_dir, split: str = "train", download: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) int64."""
    check_choice("MNIST split", split, MNIST_FILES)
    from torchvision.datasets import MNIST

    data_dir = resolve_data_dir(data_dir)
    raw = data_dir / "MNIST" / "raw"
    missing = [f for f in MNIST_FILES[split] if not (raw / f).exists()]
    if missing and download:
        try:
            MNIST(str(data_dir), train=split == "train", download=True)
        except Exception as e:  # network errors come in many types
            raise MemeError(
                f"MNIST file {raw / missing[0]} is missing and the download failed ({type(e).__name__}: {e}); "
                f"copy the four IDX files into {raw} or run on a machine with internet"
            ) from None
    elif missing:
        raise MemeError(f"MNIST file {raw / missing[0]} is missing; run with download enabled or copy the IDX files into {raw}")
    images = read_idx(raw / MNIST_FILES[split][0], ndim=3)
    labels = read_idx(raw / MNIST_FILES[split][1], ndim=1)
    if images.dim() != 3 or images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise MemeError(f"MNIST files in {raw} have images {tuple(images.shape)} and labels {tuple(labels.shape)}; expected (N, 28, 28) and (N,)")
    return images.to(torch.uint8).contiguous(), labels.long()


def read_idx(path: Path, ndim: int) -> Tensor:
    """An unsigned-byte IDX file (MNIST's format): magic 0x00 0x00 0x08 ndim, ndim big-endian int32 sizes, the
    bytes. Each fault names the file: a wrong magic number, a wrong rank, or a size that does not match."""
    path = Path(path)
    fix = "delete it and download again (or copy the original file)"
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MemeError(f"cannot read MNIST file {path} ({e.strerror})") from None
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise MemeError(f"MNIST file {path} is not an unsigned-byte IDX file (magic number {raw[:4].hex() or 'missing'}, "
                        f"expected 000008{ndim:02x}); {fix}")
    if raw[3] != ndim:
        raise MemeError(f"MNIST file {path} holds a {raw[3]}-dimensional IDX array, expected {ndim} dimensions; {fix}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise MemeError(f"MNIST file {path} is truncated inside its header ({len(raw)} bytes); {fix}")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    want = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != want:
        raise MemeError(f"MNIST file {path} has {len(raw)} bytes, but its header ({' x '.join(map(str, dims))}) "
                        f"needs {want}: {'truncated' if len(raw) < want else 'trailing data'}; {fix}")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy())


def load_svhn(data_dir, split: str = "train", download: bool = True) -> tuple[Tensor, Tensor]:
    """SVHN images (N, 3, 32, 32) uint8 and labels (N,) int64 in 0..9 (the file's 10 becomes 0)."""
    check_choice("SVHN split", split, SVHN_FILES)
    import scipy.io

    root = resolve_data_dir(data_dir) / "SVHN"
    path = root / SVHN_FILES[split]
    if not path.exists():
        if not download:
            raise MemeError(f"SVHN file {path} is missing; run with download enabled, or fetch "
                            f"http://ufldl.stanford.edu/housenumbers/{SVHN_FILES[split]} into {root}")
        try:
            from torchvision.datasets import SVHN

            SVHN(str(root), split=split, download=True)
        except Exception as e:
            raise MemeError(
                f"SVHN file {path} is missing and the download failed ({type(e).__name__}: {e}); fetch "
                f"http://ufldl.stanford.edu/housenumbers/{SVHN_FILES[split]} into {root}"
            ) from None
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
        x, y = mat["X"], mat["y"]
    except Exception as e:
        raise MemeError(f"SVHN file {path} is corrupt or truncated ({type(e).__name__}: {e}); delete it and download again") from None
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.reshape(-1).shape[0] != x.shape[3]:
        raise MemeError(f"SVHN file {path} has X {x.shape} and y {y.shape}; expected X 32x32x3xN and y Nx1")
    labels = y.reshape(-1).astype(np.int64)
    if labels.min() < 1 or labels.max() > 10:
        raise MemeError(f"SVHN file {path} has labels in {labels.min()}..{labels.max()}; expected 1..10 (10 means digit 0)")
    labels[labels == 10] = 0
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)))  # N, C, H, W
    return images.to(torch.uint8), torch.from_numpy(labels)


def pair_by_label(labels_a: Tensor, labels_b: Tensor, pairings: int = 1, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Indices (idx_a, idx_b) pairing examples of equal label: ``pairings`` random matchings per label."""
    if pairings < 1:
        raise MemeError(f"pairings={pairings} must be a positive integer (1 as in the MEME code, 20 or 30 as in MMVAE)")
    g = torch.Generator().manual_seed(seed)
    out_a, out_b = [], []
    for label in torch.unique(labels_a).tolist():
        ia = (labels_a == label).nonzero().flatten()
        ib = (labels_b == label).nonzero().flatten()
        n = min(ia.numel(), ib.numel())
        for _ in range(pairings):
            out_a.append(ia[torch.randperm(ia.numel(), generator=g)[:n]])
            out_b.append(ib[torch.randperm(ib.numel(), generator=g)[:n]])
    if not out_a:
        return torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    return torch.cat(out_a), torch.cat(out_b)


def cached_pairing(labels_a: Tensor, labels_b: Tensor, pairings: int, seed: int, tag: str) -> tuple[Tensor, Tensor]:
    """``pair_by_label`` cached as an .npz under the cache dir, keyed by both label vectors."""
    h = hashlib.sha256()
    for t in (labels_a, labels_b):
        h.update(t.numpy().astype(np.int64).tobytes())
    path = cache_dir() / "pairings" / f"{tag}_p{pairings}_s{seed}_{h.hexdigest()[:16]}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return torch.from_numpy(z["a"]), torch.from_numpy(z["b"])
        except Exception:
            log.warning("pairing cache %s is unreadable; rebuilding it", path)
    a, b = pair_by_label(labels_a, labels_b, pairings, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp, a=a.numpy(), b=b.numpy())
        os.replace(tmp, path)
    except OSError as e:
        log.warning("could not cache the pairing at %s (%s)", path, e)
    return a, b


def load_mnist_svhn(data_dir=None, split: str = "train", pairings: int = 1, seed: int = 0,
                    download: bool = True) -> PairedData:
    """Paired MNIST-SVHN for ``split`` in {train, test}."""
    check_choice("split", split, ["train", "test"])
    xm, ym = load_mnist(data_dir, split, download)
    xs, ys = load_svhn(data_dir, split, download)
    ia, ib = cached_pairing(ym, ys, pairings, seed, f"mnist_svhn_{split}")
    return PairedData(("mnist", "svhn"), (xm.unsqueeze(1), xs), (ia, ib), ym[ia])
