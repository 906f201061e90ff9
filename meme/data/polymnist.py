"""PolyMNIST (Sutter, Daunhawer & Vogt, "Generalized Multimodal ELBO", ICLR 2021): five modalities m0..m4, each
an MNIST digit of the example's class drawn over a random 28 x 28 crop of that modality's own background photo.

Two ways in, one result::

    meme data polymnist --out DIR [--data-dir D] [--n-train N] [--n-test N] [--seed S]   # built here
    meme data polymnist --out DIR --from-release R     # the official release: R/{train,test}/m0..m4/<i>.<label>.png

``--out`` defaults to ``<data dir>/PolyMNIST``, where ``--dataset polymnist`` finds it. Either writes into DIR
the tables ``m<k>_<split>.npz`` (``x``: (N, 3, 28, 28) uint8, ``label``), the dataset file
``polymnist.yaml`` (five image modalities with the published PolyMNIST networks, ``meme.nets.polymnist``: latent
size 512, Laplace scale 0.75) and ``.meme-generated.json`` (the files' hashes and what they were made from).
``meme train --dataset DIR/polymnist.yaml`` then trains on it, and coherence is judged by one classifier per
modality trained on that modality's training images (``meme.eval.table_classifiers``).

**The published recipe** (built here): modality k has one background photo; example i of class y takes, in
modality 0, MNIST image i of a seeded random subset, and in modality k > 0 a seeded random instance of class y
(another one, as a rule). The digit is binarised (pixel > 127), a uniformly random 28 x 28 crop of the
background is taken, and the crop's colours are inverted where the digit is (c -> 255 - c). The photos ship
with scikit-image (``BACKGROUNDS``): the official release used its own five photos, so the two differ in their
backgrounds, not in their recipe.

**Plain backgrounds** (``--plain-backgrounds``, a reduced PolyMNIST for a CPU, not the benchmark): each
modality's background is one colour, so the five modalities differ in colour only and the digit is all there is
to model; the recipe is otherwise the same (same digits, same draws). Two things make it learnable in a few
epochs, and both are needed (MoPoE at f = 1, latent 64, batch 64, lr 1e-3, 12,000 examples: conditional
coherence after 3 epochs reaches 0.59 / 0.67 / 0.73 / 0.77 given 1 to 4 inputs with both, and stays at chance,
0.113, with either one missing; with the mean colours and the PolyMNIST networks, still after 10 epochs):

* the colour is the photo's mean colour pushed away from mid-grey until its farthest channel reaches 0 or 255
  (``full_contrast``). The plain mean colours sit near grey, and the inverted digit then differs from them by
  at most 63 of 255 in any channel in m0, 81 in m1, 99 in m4;
* its dataset file takes the image networks by shape (``meme.nets.shaped``: with ``nets: published`` the
  published MEME code's conv networks, BatchNorm and a sigmoid output) in place of the PolyMNIST networks.
  Those learn the photo backgrounds, whose crops carry most of each image's information; over one flat colour
  under their Laplace likelihood, the background is every pixel's median, the decoders fit it, and the
  posterior collapses onto the prior (a one-modality VAE of those networks on m0 at full contrast encodes
  nothing after 12 epochs, KL 0.01 nats; the same VAE on the photo crops uses its latent from the first epoch).
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from meme.data.mnist_svhn import load_mnist, resolve_data_dir
from meme.data.synthetic import GENERATED, _record, _sha256, check_targets
from meme.errors import MemeError

M = 5
NAMES = tuple(f"m{k}" for k in range(M))
SIZE = 28
#: scikit-image's colour photos, one per modality
BACKGROUNDS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")
MNIST_SIZES = {"train": 60_000, "test": 10_000}
_PNG = re.compile(r"^(\d+)\.(\d+)\.png$")

DATASET = """# PolyMNIST: five modalities, each an MNIST digit of the example's class over a crop of its own background.
# Written by `meme data polymnist` ({source}).{note}
name: polymnist
labels: label
latent_dim: 512
modalities:
{modalities}"""

PLAIN_NOTE = """
# Plain backgrounds: the image networks by shape, not the PolyMNIST preset, whose posterior collapses over one
# flat colour (meme/data/polymnist.py says why)."""


def dataset_file(data_dir) -> Path:
    """``<data dir>/PolyMNIST/polymnist.yaml``, where ``--dataset polymnist`` reads it (one line if it is not there)."""
    path = resolve_data_dir(data_dir or None) / "PolyMNIST" / "polymnist.yaml"
    if not path.is_file():
        raise MemeError(f"no PolyMNIST in {path.parent}; write it with `meme data polymnist --data-dir "
                        f"{resolve_data_dir(data_dir or None)}` (or give the --data-dir that holds it)")
    return path


def files_for(out: Path) -> list[Path]:
    return [out / f"{n}_{split}.npz" for n in NAMES for split in ("train", "test")] + [out / "polymnist.yaml"]


def backgrounds(plain: bool = False) -> list[np.ndarray]:
    """The five background photos (H, W, 3) uint8, from scikit-image's data (``plain``: each as a 28 x 28 image of
    its mean colour)."""
    try:
        from skimage import data
    except ImportError:
        raise MemeError("PolyMNIST's backgrounds come from scikit-image, which is not installed; "
                        "pip install scikit-image") from None
    out = []
    for name in BACKGROUNDS:
        img = np.ascontiguousarray(np.asarray(getattr(data, name)())[..., :3]).astype(np.uint8)
        if plain:
            img = np.broadcast_to(full_contrast(img.reshape(-1, 3).mean(0)), (SIZE, SIZE, 3)).copy()
        out.append(img)
    return out


def full_contrast(colour: np.ndarray) -> np.ndarray:
    """An RGB ``colour`` (0..255) moved away from mid-grey along its own direction until its farthest channel
    reaches 0 or 255, as uint8: the digit, drawn in the inverse colour, then differs from it by 255 there."""
    d = np.asarray(colour, dtype=np.float64) - 127.5
    far = np.abs(d).max()
    scaled = 127.5 + d * (127.5 / far) if far > 0 else np.zeros(3)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def compose(digits: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(N, 28, 28) uint8 digits over random 28 x 28 crops of ``background`` (H, W, 3): the crop's colours inverted
    where the binarised digit is. Returns (N, 3, 28, 28) uint8."""
    from numpy.lib.stride_tricks import sliding_window_view

    h, w = background.shape[:2]
    windows = sliding_window_view(background, (SIZE, SIZE), axis=(0, 1))   # (h-27, w-27, 3, 28, 28), a view
    ys = rng.integers(0, h - SIZE + 1, len(digits))
    xs = rng.integers(0, w - SIZE + 1, len(digits))
    crops = windows[ys, xs].copy()                                            # (N, 3, 28, 28)
    mask = np.broadcast_to((digits > 127)[:, None], crops.shape)
    crops[mask] = 255 - crops[mask]
    return crops


def build(images: np.ndarray, labels: np.ndarray, n: int, seed: int, bgs: list[np.ndarray]) -> tuple[list, np.ndarray]:
    """One split: the five modalities' (n, 3, 28, 28) images and the labels, by the published recipe."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.permutation(len(images))[:n])
    y = labels[pick]
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    out = []
    for k in range(M):
        if k == 0:
            idx = pick
        else:   # another instance of each example's class
            idx = np.empty(n, dtype=np.int64)
            for c, members in by_class.items():
                where = np.flatnonzero(y == c)
                idx[where] = members[rng.integers(0, len(members), len(where))]
        out.append(compose(images[idx], bgs[k], rng))
    return out, y


def read_release(root: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """The official release's ``<root>/<split>/m0..m4/<index>.<label>.png``: five (N, 3, 28, 28) uint8 arrays in
    index order, and the labels; every modality must hold the same indices with the same labels."""
    from PIL import Image

    base = root / split
    indices = None
    stacks = []
    for k, name in enumerate(NAMES):
        folder = base / name
        if not folder.is_dir():
            raise MemeError(f"{folder} is missing; the PolyMNIST release holds {split}/m0 .. {split}/m4 "
                            f"(files <index>.<label>.png)")
        entries = {}
        for p in folder.iterdir():
            match = _PNG.match(p.name)
            if not match:
                raise MemeError(f"{p}: not a PolyMNIST file name; the release names them <index>.<label>.png")
            entries[int(match.group(1))] = (int(match.group(2)), p)
        if not entries:
            raise MemeError(f"{folder} holds no images")
        order = sorted(entries)
        labels = np.array([entries[i][0] for i in order], dtype=np.int64)
        if indices is None:
            indices, first_labels = order, labels
        elif order != indices:
            missing = sorted(set(indices) ^ set(order))[:1]
            raise MemeError(f"{folder} and {base / NAMES[0]} hold different examples (index {missing[0]} is in one "
                            f"only); every modality holds the same indices")
        elif not np.array_equal(labels, first_labels):
            i = int(np.flatnonzero(labels != first_labels)[0])
            raise MemeError(f"{folder}: example {order[i]} has label {labels[i]} but {first_labels[i]} in "
                            f"{NAMES[0]}; the modalities must agree")

        def load(path: Path) -> np.ndarray:
            with Image.open(path) as img:
                arr = np.asarray(img.convert("RGB"))
            if arr.shape != (SIZE, SIZE, 3):
                raise MemeError(f"{path}: an image of {arr.shape[1]}x{arr.shape[0]}; PolyMNIST images are 28x28")
            return arr

        with ThreadPoolExecutor(8) as pool:
            arrays = list(pool.map(load, (entries[i][1] for i in order)))
        stacks.append(np.stack(arrays).transpose(0, 3, 1, 2).copy())
    return stacks, first_labels


def write_release_layout(root: Path, split: str, images: list[np.ndarray], labels: np.ndarray) -> None:
    """The official layout, ``<root>/<split>/m<k>/<index>.<label>.png`` (what a downloaded release looks like)."""
    from PIL import Image

    for name, x in zip(NAMES, images):
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, (img, y) in enumerate(zip(x, labels)):
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i}.{int(y)}.png")


def write_polymnist(out, data_dir=None, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                    release=None, download: bool = True, force: bool = False, plain: bool = False) -> list[Path]:
    """Build PolyMNIST into ``out`` (module docstring) from MNIST, or convert the official ``release``. A folder that
    already holds a PolyMNIST made otherwise is refused, naming both; made the same way, it is left as it is."""
    out = Path(out).expanduser().resolve()
    if plain and release is not None:
        raise MemeError("--plain-backgrounds builds PolyMNIST from MNIST; the release has its own backgrounds "
                        "(give one or the other)")
    source = _source(data_dir, n_train, n_test, seed, release, plain)
    made = _made_from(out)
    if made is not None and not force:
        if made == source:
            print(f"{out} already holds this PolyMNIST ({_describe(source)}); nothing to do")
            return []
        raise MemeError(f"{out} already holds a different PolyMNIST ({_describe(made)}, not {_describe(source)}); "
                        f"nothing was written (give another --out, or --force to replace it)")
    targets = files_for(out)
    check_targets(out, targets, "polymnist", force)
    if release is not None:
        splits = {split: read_release(Path(release).expanduser().resolve(), split) for split in ("train", "test")}
    else:
        bgs = backgrounds(plain)
        splits = {}
        for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
            x, y = load_mnist(data_dir, split, download)
            n = min(n or len(x), len(x))
            splits[split] = build(x.numpy(), y.numpy(), n, seed * 1009 + i, bgs)
    out.mkdir(parents=True, exist_ok=True)
    for split, (images, labels) in splits.items():
        for name, x in zip(NAMES, images):
            np.savez(out / f"{name}_{split}.npz", x=x, label=labels)
    preset = "" if plain else "preset: polymnist, "   # plain: the image networks by shape (module docstring)
    mods = "".join(f"  - {{name: {n}, train: {n}_train.npz, test: {n}_test.npz, kind: image,\n"
                   f"     networks: {{{preset}likelihood: laplace, scale: 0.75}}}}\n" for n in NAMES)
    note = PLAIN_NOTE if plain else ""
    (out / "polymnist.yaml").write_text(DATASET.format(source=_describe(source), modalities=mods, note=note))
    _record(out, targets)
    record = json.loads((out / GENERATED).read_text())
    record["polymnist"] = source
    (out / GENERATED).write_text(json.dumps(record, indent=1) + "\n")
    return targets


def _source(data_dir, n_train, n_test, seed, release, plain=False) -> dict:
    if release is not None:
        return {"release": str(Path(release).expanduser().resolve())}
    source = {"mnist": "MNIST", "n_train": n_train or MNIST_SIZES["train"], "n_test": n_test or MNIST_SIZES["test"],
              "seed": seed, "backgrounds": list(BACKGROUNDS)}
    if plain:   # what the plain backgrounds are (True: the photos' mean colours, written before full contrast)
        source["plain"] = "full contrast"
    return source


def _describe(source: dict) -> str:
    if "release" in source:
        return f"the release in {source['release']}"
    plain = source.get("plain")   # True: written before full contrast
    plain = "" if not plain else f", plain backgrounds of {'mean colours' if plain is True else plain}"
    return f"built from MNIST: {source['n_train']} train, {source['n_test']} test, seed {source['seed']}{plain}"


def _made_from(out: Path) -> dict | None:
    """What the PolyMNIST in ``out`` was made from (None where there is none, or its files changed since)."""
    try:
        record = json.loads((out / GENERATED).read_text())
    except (OSError, ValueError):
        return None
    source = record.get("polymnist")
    if source is None:
        return None
    intact = all(record.get(str(p.relative_to(out))) == _sha256(p) for p in files_for(out) if p.exists())
    return source if intact else None
