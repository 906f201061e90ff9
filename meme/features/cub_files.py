"""CUB-200-2011 images and the captions of Reed et al. (2016) as files: raw readers, splits, and a generated
folder in the same layout for tests (``write_synthetic_cub``). The ``cub`` dataset over the feature store
built from them is ``meme.data.cub``.

Neither part has a stable programmatic download, so nothing here downloads. Get them by hand:

* the images: CUB-200-2011 (Wah et al. 2011), ``CUB_200_2011.tgz`` from
  https://www.vision.caltech.edu/datasets/cub_200_2011/ (data.caltech.edu record 65de6-vp158);
* the captions, in either of two layouts:

  - ``text_c10/<class>/<image>.txt``, one file of 10 lines per image: Reed et al.'s ``cvpr2016_cub``
    release (https://github.com/reedscot/cvpr2016, "CUB captions");
  - ``text_trainvalclasses.txt`` and ``text_testclasses.txt``: the MMVAE code's ``cub.zip``
    (https://github.com/iffsid/mmvae, "CUB Image-Caption"), 10 consecutive lines per image.

Layout on disk (``cub_dir`` may be the ``CUB_200_2011`` folder or a folder holding it)::

    CUB_200_2011/images.txt               "<image id> <class folder>/<file>.jpg"
    CUB_200_2011/image_class_labels.txt   "<image id> <class id 1..200>"
    CUB_200_2011/train_test_split.txt     "<image id> <1 = train, 0 = test>"
    CUB_200_2011/classes.txt              "<class id> <class folder>"
    CUB_200_2011/images/<class folder>/<file>.jpg

**Image order.** Everything here lists images in *folder order*: sorted by class folder, then by file
name (the order of torchvision's ``ImageFolder``, which the MMVAE code used). The flat caption files
follow it: line ``10 i + j`` of ``text_testclasses.txt`` is caption ``j`` of the ``i``-th test-class
image in folder order (the same holds for the train/val-class file).

**Splits** (``SPLITS``):

* ``classes``: the MMVAE/zero-shot class split of Reed et al. -- the 150 train/val classes for
  training, the 50 ``MMVAE_TEST_CLASSES`` for testing (the paper's setting);
* ``official``: CUB's own image split, ``train_test_split.txt`` (5,994 / 5,794 images);
* ``random``: a seeded image-level split (``test_fraction`` of the images for testing), for caption
  files without image metadata.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meme.errors import MemeError, check_choice

log = logging.getLogger(__name__)

METADATA_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
FLAT_CAPTION_FILES = {"train": "text_trainvalclasses.txt", "test": "text_testclasses.txt"}
C10_DIR = "text_c10"
CAPTIONS_PER_IMAGE = 10
DOWNLOAD_HELP = ("get CUB-200-2011 from https://www.vision.caltech.edu/datasets/cub_200_2011/ and the captions "
                 "from https://github.com/reedscot/cvpr2016 (text_c10/) or the MMVAE cub.zip "
                 "(text_trainvalclasses.txt, text_testclasses.txt); see the README's CUB section")

#: the 50 test classes of the zero-shot class split of Reed et al. (2016) used by the MMVAE and MEME code
#: (1-based CUB class ids; 2,933 images); the other 150 classes are the train/val classes.
MMVAE_TEST_CLASSES = frozenset({
    1, 4, 6, 8, 9, 14, 23, 29, 31, 33, 34, 35, 36, 37, 38, 43, 49, 51, 53, 66,
    72, 79, 83, 84, 86, 91, 95, 96, 98, 101, 102, 103, 112, 114, 119, 121, 130, 135, 138, 147,
    156, 163, 165, 166, 180, 183, 185, 186, 187, 197,
})
SPLITS = ("classes", "official", "random")


@dataclass(frozen=True)
class CUBImages:
    """The images of one CUB folder, in folder order (see the module docstring).

    ``labels`` are 0-based class indices (class id - 1), ``-1`` where unknown; ``official_train`` is
    ``None`` where the official split is unknown (caption files read without the image metadata).
    ``class_split`` is "train"/"test" under the MMVAE class split.
    """
    image_ids: np.ndarray            # (N,) int64, CUB's image ids
    paths: list[str]                 # "<class folder>/<file>.jpg", relative to images/
    labels: np.ndarray               # (N,) int64
    class_split: np.ndarray          # (N,) str
    official_train: np.ndarray | None
    class_names: list[str]
    root: Path | None                # the CUB_200_2011 folder (None without metadata)
    sources: dict[str, str] = field(default_factory=dict)  # file name -> sha256

    def __len__(self) -> int:
        return int(self.image_ids.shape[0])

    def image_path(self, i: int) -> Path:
        if self.root is None:
            raise MemeError("these images were listed from caption files only; there are no image files")
        return self.root / "images" / self.paths[i]

    def split(self, scheme: str = "classes", seed: int = 0, test_fraction: float = 0.2) -> np.ndarray:
        """(N,) array of "train"/"test" under ``scheme`` (one of ``SPLITS``)."""
        check_choice("CUB split", scheme, SPLITS)
        if scheme == "classes":
            return self.class_split.copy()
        if scheme == "official":
            if self.official_train is None:
                raise MemeError("the official CUB split needs train_test_split.txt; pass --cub-dir, or use --split classes/random")
            return np.where(self.official_train, "train", "test")
        if not 0.0 < test_fraction < 1.0:
            raise MemeError(f"test_fraction={test_fraction} must be in (0, 1)")
        rng = np.random.default_rng(seed)
        test = np.zeros(len(self), dtype=bool)
        test[rng.permutation(len(self))[:int(round(test_fraction * len(self)))]] = True
        return np.where(test, "test", "train")


@dataclass(frozen=True)
class Captions:
    """Captions of some images: ``texts[10 k + j]`` is caption ``j`` of image ``image_index[k]`` (an index into a ``CUBImages``)."""
    image_index: np.ndarray          # (M,) int64
    texts: list[str]                 # (M * per_image,)
    per_image: int = CAPTIONS_PER_IMAGE
    sources: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


# ------------------------------------------------------------------ helpers
def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_pairs(path: Path) -> list[tuple[str, str]]:
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise MemeError(f"{path}:{n}: expected '<id> <value>', got {line!r}")
        out.append((parts[0], parts[1].strip()))
    return out


def _int(path: Path, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise MemeError(f"{path}: expected an integer, got {value!r}") from None


def find_cub_root(cub_dir) -> Path:
    """The folder holding CUB-200-2011's metadata files: ``cub_dir`` itself or ``cub_dir/CUB_200_2011``."""
    base = Path(cub_dir).expanduser()
    for cand in (base, base / "CUB_200_2011"):
        if all((cand / f).is_file() for f in METADATA_FILES) and (cand / "images").is_dir():
            return cand
    missing = [f for f in (*METADATA_FILES, "images/") if not (base / f.rstrip("/")).exists()
               and not (base / "CUB_200_2011" / f.rstrip("/")).exists()]
    raise MemeError(f"no CUB-200-2011 folder at {base}: expected {', '.join((*METADATA_FILES, 'images/'))} there or in "
                    f"{base / 'CUB_200_2011'} (missing: {', '.join(missing) or 'images/'}); {DOWNLOAD_HELP}")


def read_cub_images(cub_dir, check_files: bool = True) -> CUBImages:
    """The images listed by CUB-200-2011's metadata files, in folder order, with labels and both splits."""
    root = find_cub_root(cub_dir)
    paths = dict(_read_pairs(root / "images.txt"))
    labels = {k: _int(root / "image_class_labels.txt", v) for k, v in _read_pairs(root / "image_class_labels.txt")}
    train = {k: _int(root / "train_test_split.txt", v) for k, v in _read_pairs(root / "train_test_split.txt")}
    classes = {_int(root / "classes.txt", k): v for k, v in _read_pairs(root / "classes.txt")}
    for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", train)):
        if set(table) != set(paths):
            odd = sorted(set(table) ^ set(paths), key=lambda s: (len(s), s))[:3]
            raise MemeError(f"{root / name} and images.txt list different image ids (e.g. {', '.join(odd)})")
    bad = sorted({c for c in labels.values() if c not in classes})
    if bad:
        raise MemeError(f"{root / 'image_class_labels.txt'} uses class ids {bad[:5]} that classes.txt does not define")
    order = sorted(paths, key=lambda k: tuple(paths[k].split("/", 1)))  # folder order
    if check_files:
        absent = [paths[k] for k in order if not (root / "images" / paths[k]).is_file()]
        if absent:
            raise MemeError(f"{len(absent)} image(s) listed in images.txt are missing under {root / 'images'} "
                            f"(first: {absent[0]}); {DOWNLOAD_HELP}")
    class_ids = np.array([labels[k] for k in order], dtype=np.int64)
    n_classes = max(classes)
    return CUBImages(
        image_ids=np.array([_int(root / "images.txt", k) for k in order], dtype=np.int64),
        paths=[paths[k] for k in order],
        labels=class_ids - 1,
        class_split=np.where(np.isin(class_ids, list(MMVAE_TEST_CLASSES)), "test", "train"),
        official_train=np.array([train[k] == 1 for k in order], dtype=bool),
        class_names=[classes.get(i, "") for i in range(1, n_classes + 1)],
        root=root,
        sources={f: sha256_file(root / f) for f in METADATA_FILES},
    )


# ----------------------------------------------------------------- captions
def _caption_lines(path: Path, per_image: int, exact: bool) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) < per_image or (exact and len(lines) != per_image):
        raise MemeError(f"{path} has {len(lines)} caption lines, expected {per_image}")
    if len(lines) > per_image:
        log.warning("%s has %d caption lines; using the first %d", path, len(lines), per_image)
    return lines[:per_image]


def read_captions_c10(text_dir, images: CUBImages, per_image: int = CAPTIONS_PER_IMAGE) -> Captions:
    """Captions of every image from ``text_c10/<class folder>/<image stem>.txt`` (Reed et al.'s layout)."""
    text_dir = Path(text_dir)
    texts = []
    digest = hashlib.sha256()
    for p in images.paths:
        path = (text_dir / p).with_suffix(".txt")
        if not path.is_file():
            raise MemeError(f"caption file {path} is missing (text_c10/<class>/<image>.txt for every image); {DOWNLOAD_HELP}")
        lines = _caption_lines(path, per_image, exact=False)
        digest.update(("\n".join(lines) + "\n").encode())
        texts.extend(lines)
    return Captions(np.arange(len(images), dtype=np.int64), texts, per_image, {C10_DIR: digest.hexdigest()})


def read_captions_flat(caption_dir, images: CUBImages, per_image: int = CAPTIONS_PER_IMAGE) -> Captions:
    """Captions from the MMVAE code's flat files (either or both present): the train/val-class file covers
    the ``class_split == "train"`` images in folder order, the test-class file the test images."""
    caption_dir = Path(caption_dir)
    index, texts, sources = [], [], {}
    for split, name in FLAT_CAPTION_FILES.items():
        path = caption_dir / name
        if not path.is_file():
            continue
        lines = _flat_lines(path, per_image)
        rows = np.flatnonzero(images.class_split == split)
        if len(lines) != per_image * rows.size:
            raise MemeError(f"{path} has {len(lines)} lines, but the {split} classes have {rows.size} images "
                            f"({per_image * rows.size} lines expected, {per_image} per image)")
        index.append(rows)
        texts.extend(lines)
        sources[name] = sha256_file(path)
    if not index:
        raise MemeError(f"no caption files in {caption_dir}: expected {' and/or '.join(FLAT_CAPTION_FILES.values())} "
                        f"or a {C10_DIR}/ folder; {DOWNLOAD_HELP}")
    return Captions(np.concatenate(index).astype(np.int64), texts, per_image, sources)


def _flat_lines(path: Path, per_image: int) -> list[str]:
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if any(not ln for ln in lines):
        raise MemeError(f"{path} has an empty line at line {lines.index('') + 1}; each line must be one caption")
    if len(lines) % per_image:
        raise MemeError(f"{path} has {len(lines)} lines, not a multiple of {per_image} captions per image")
    return lines


def read_flat_captions_only(paths, per_image: int = CAPTIONS_PER_IMAGE) -> tuple[CUBImages, Captions]:
    """Captions from flat files alone, without CUB's image metadata: anonymous images numbered 1..N in
    file order (``labels`` -1). A file named ``text_testclasses.txt`` holds test-class images, any other
    train/val-class images, so the ``classes`` split still works; ``official`` does not."""
    paths = [Path(p) for p in paths]
    ids, splits, texts, sources = [], [], [], {}
    for path in paths:
        if not path.is_file():
            raise MemeError(f"caption file {path} does not exist; {DOWNLOAD_HELP}")
        lines = _flat_lines(path, per_image)
        n = len(lines) // per_image
        start = len(ids)
        ids.extend(range(start + 1, start + n + 1))
        splits.extend(["test" if path.name == FLAT_CAPTION_FILES["test"] else "train"] * n)
        texts.extend(lines)
        sources[path.name] = sha256_file(path)
    n = len(ids)
    images = CUBImages(np.array(ids, dtype=np.int64), [""] * n, np.full(n, -1, dtype=np.int64), np.array(splits),
                       None, [], None, dict(sources))
    return images, Captions(np.arange(n, dtype=np.int64), texts, per_image, sources)


def read_captions(caption_dir, images: CUBImages, layout: str = "auto", per_image: int = CAPTIONS_PER_IMAGE) -> Captions:
    """Captions in ``layout`` ("c10", "flat", or "auto": ``text_c10/`` if present, else the flat files)."""
    check_choice("caption layout", layout, ("auto", "c10", "flat"))
    caption_dir = Path(caption_dir).expanduser()
    c10 = caption_dir if caption_dir.name == C10_DIR else caption_dir / C10_DIR
    if layout == "c10" or (layout == "auto" and c10.is_dir()):
        if not c10.is_dir():
            raise MemeError(f"no {C10_DIR}/ folder at {caption_dir}; {DOWNLOAD_HELP}")
        return read_captions_c10(c10, images, per_image)
    return read_captions_flat(caption_dir, images, per_image)


# ------------------------------------------------------- a generated folder
SYNTHETIC_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 4: "004.Groove_billed_Ani",
                     10: "010.Red_winged_Blackbird", 14: "014.Indigo_Bunting"}
_COLOURS = ["red", "black", "white", "brown", "yellow", "blue", "grey", "orange"]
_PARTS = ["beak", "wings", "crown", "belly", "tail", "breast"]


def write_synthetic_cub(root, per_class: int = 6, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """A tiny generated CUB folder in the real layouts, for tests and first tries: ``CUB_200_2011/`` (images
    as JPEGs of a class colour plus noise, the four metadata files) and the captions in both layouts
    (``text_c10/`` and the two flat files). Five classes, three of them MMVAE test classes (1, 4, 14). Returns ``root``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    cub = root / "CUB_200_2011"
    (cub / "images").mkdir(parents=True, exist_ok=True)
    lines = {f: [] for f in METADATA_FILES}
    captions: dict[str, list[str]] = {}
    image_id = 0
    for cid, cname in sorted(SYNTHETIC_CLASSES.items()):
        lines["classes.txt"].append(f"{cid} {cname}")
        (cub / "images" / cname).mkdir(exist_ok=True)
        colour = rng.integers(0, 256, 3)
        # file numbers in random order, so images.txt's id order is not the folder (sorted) order
        for num in rng.permutation(np.arange(100, 100 + 7 * per_class, 7)):
            image_id += 1
            rel = f"{cname}/{cname.split('.', 1)[1]}_{num:04d}_{rng.integers(10_000, 99_999)}.jpg"
            pixels = np.clip(colour + rng.normal(0, 40, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(cub / "images" / rel, quality=90)
            lines["images.txt"].append(f"{image_id} {rel}")
            lines["image_class_labels.txt"].append(f"{image_id} {cid}")
            lines["train_test_split.txt"].append(f"{image_id} {int(rng.random() < 0.6)}")
            c1, c2 = _COLOURS[cid % len(_COLOURS)], _COLOURS[int(rng.integers(len(_COLOURS)))]
            captions[rel] = [f"this bird has a {c1} {_PARTS[int(rng.integers(len(_PARTS)))]} and {c2} "
                             f"{_PARTS[int(rng.integers(len(_PARTS)))]}{', small' if k % 3 == 0 else ''}."
                             for k in range(CAPTIONS_PER_IMAGE)]
    for name, content in lines.items():
        (cub / name).write_text("\n".join(content) + "\n")
    for rel, caps in captions.items():
        path = (root / C10_DIR / rel).with_suffix(".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(caps) + "\n")
    images = read_cub_images(root)
    for split, name in FLAT_CAPTION_FILES.items():
        rows = np.flatnonzero(images.class_split == split)
        (root / name).write_text("".join(c + "\n" for r in rows for c in captions[images.paths[r]]))
    return root
