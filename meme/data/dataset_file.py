"""Your own modalities (two or more), described by a small dataset file (YAML or JSON).

```yaml
name: digits_halves          # optional (default: the file's stem)
labels: label                # optional: the label column (Parquet) or array (.npz) of the tables
latent_dim: 32               # optional: the latent size when the run does not set latent_dim
modalities:
  - name: top                # letters, digits and '_'; what --observed and the metrics use
    train: top_train.parquet # Parquet (.parquet, .pq) or NumPy (.npy, .npz); relative to this file
    test: top_test.parquet
    column: x                # the Parquet column or .npz array holding the rows (default: x)
    kind: image              # image | vector | tokens (default: inferred from the rows' shape and dtype)
    networks: {channels: 32, hidden: [512], likelihood: laplace, scale: 1.0}   # optional overrides
  - name: bottom
    train: bottom_train.npy
    test: bottom_test.npy
```

* Any number (two or more) of modalities, each with its own name. Row i of each modality's table is example i
  (per split), so the tables of a split have equal row counts, and where several carry labels they agree.
* **Kinds**, inferred when left out: rows of rank 2 or 3 are images ((H, W) is read as (1, H, W));
  rank-1 rows of integers (other than uint8) are tokens; other rank-1 rows are vectors. Images are uint8
  (0..255) or floats in [0, 1]. Tokens are integer ids in 0..vocab-1 (``vocab``: default the largest id
  in train and test plus one; ``pad``: the padding id, default 0, ``null`` for none).
* ``networks`` (per modality): ``hidden`` (MLP widths), ``channels`` (the first conv's width, images),
  ``likelihood`` (``laplace`` or ``gaussian``, images and vectors), ``scale`` (its fixed scale; default
  the run's ``llik_scale``; images and vectors) and ``preset`` (named networks for images of their shape:
  ``polymnist``, the published PolyMNIST networks under ``nets: published``, ``meme.nets.polymnist``; ``mnist``,
  the MNIST networks of the run's family, ``meme.nets.mnist``); a key
  the modality's kind does not take is an error, not ignored. The networks themselves are chosen by shape: ``meme.nets.shaped``. A vector modality's decoder
  output follows its values (``Resolved.unit_range``, the run's ``vector_output``): a sigmoid where all of
  them lie in [0, 1], else standardised rows (the training table's per-feature statistics).

The file is validated when it is read (unknown keys, missing or unreadable tables, types), and the
tables when they are loaded (row counts, labels, shapes, value ranges); each fault is one line naming
the file, the column and what is valid. ``meme train --dataset data.yaml`` and a study's
``base: {dataset: data.yaml}`` take it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meme.data.paired import PairedData, check_classes, check_finite, class_ids, read_array_table
from meme.device import check_fits
from meme.errors import MemeError
from meme.paths import FILE_SUFFIXES, is_dataset_file, resolved
from meme.nets import DEFAULT_LATENT_DIM, modality_class
from meme.nets.shaped import KINDS, LIKELIHOODS, check_image_shape
from meme.yamlio import load_yaml

TABLE_SUFFIXES = (".parquet", ".pq", ".npy", ".npz")
TOP_KEYS = ("name", "modalities", "labels", "latent_dim")
MODALITY_KEYS = ("name", "train", "test", "column", "kind", "vocab", "pad", "networks")
NETWORK_KEYS = ("hidden", "channels", "likelihood", "scale", "preset")
#: the ``networks`` keys each kind's builder (``meme.nets.shaped``) takes
NETWORK_KEYS_BY_KIND = {"image": NETWORK_KEYS, "vector": ("hidden", "likelihood", "scale"), "tokens": ("hidden",)}
#: named networks a modality can ask for instead of the shaped ones: preset -> the row shape it takes
PRESETS = {"polymnist": (3, 28, 28), "mnist": (1, 28, 28)}
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RESERVED = ("split", "random")   # the observation schemes that are not a modality


@dataclass(frozen=True)
class ModalityEntry:
    name: str
    train: Path
    test: Path
    column: str = "x"
    kind: str | None = None
    vocab: int | None = None
    pad: int | None = 0
    networks: dict = field(default_factory=dict)

    def table(self, split: str) -> Path:
        return self.train if split == "train" else self.test


@dataclass(frozen=True)
class Resolved:
    """A modality as its tables show it: kind, row shape, (tokens) vocabulary and (vectors) whether every
    value of both splits lies in [0, 1]."""
    kind: str
    shape: tuple[int, ...]
    vocab: int | None = None
    unit_range: bool | None = None

    def vector_output(self, choice: str) -> str:
        """The vector decoder's output (``meme.nets.shaped``) for the run's ``vector_output``."""
        if choice == "linear":
            return "linear"
        return "sigmoid" if self.unit_range else "standardized"


@dataclass(frozen=True)
class DatasetFile:
    path: Path
    name: str
    modalities: tuple[ModalityEntry, ...]
    labels: str | None = None
    latent_dim: int | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def network_keys(self) -> tuple[str, ...]:
        """The kinds (and presets) whose networks a family must have (all kinds where some are inferred)."""
        presets = [m.networks["preset"] for m in self.modalities if m.networks.get("preset")]
        kinds = [m.kind for m in self.modalities if not m.networks.get("preset")]
        return tuple(dict.fromkeys((*(KINDS if None in kinds else kinds), *presets)))

    # ------------------------------------------------------------- loading
    def load(self, split: str) -> PairedData:
        return self._loaded()[0][split]

    def resolved(self) -> tuple[Resolved, ...]:
        return self._loaded()[1]

    def _loaded(self):
        key = (str(self.path), *(_stamp(m.table(s)) for m in self.modalities for s in ("train", "test")))
        if key not in _LOADED:
            _LOADED.clear()  # one user dataset per process at a time (trials of a study share it)
            _LOADED[key] = load_tables(self)
        return _LOADED[key]

    def build_modalities(self, cfg, train_data=None):
        """The modalities' networks, chosen by kind from the config's family (``cfg.nets``)."""
        latent = cfg.latent_dim or self.latent_dim or DEFAULT_LATENT_DIM
        out = []
        for m, (entry, res) in enumerate(zip(self.modalities, self.resolved())):
            extra = {"vocab": res.vocab, "pad": entry.pad} if res.kind == "tokens" else {}
            if res.kind == "vector":
                extra["output"] = res.vector_output(cfg.vector_output)
                if extra["output"] == "standardized":
                    extra["mean"], extra["std"] = feature_stats(self.load("train").rows(m))
            out.append(modality_class(cfg.nets, entry.networks.get("preset") or res.kind)(
                latent_dim=latent, sigma_floor=cfg.sigma_floor or None, llik_scale=cfg.llik_scale,
                shape=res.shape, name=entry.name, **extra, **{k: v for k, v in entry.networks.items() if k != "preset"}))
        return tuple(out)


_LOADED: dict = {}
_PARSED: dict = {}


def feature_stats(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and spread of (N, D) rows, in float64 then float32; a constant feature gets spread 1."""
    x = rows.double()
    mean, std = x.mean(0), x.std(0, unbiased=False) if len(x) > 1 else torch.zeros(x.shape[1:], dtype=x.dtype)
    return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


def _stamp(path: Path):
    try:
        st = path.stat()
        return (st.st_mtime_ns, st.st_size)
    except OSError:
        return None


# ------------------------------------------------------------------ parsing
def read_dataset_file(path) -> DatasetFile:
    """The dataset file at ``path``, validated (cached per file version)."""
    path = resolved(path, "dataset file")
    if not path.is_file():
        raise MemeError(f"no dataset file {path} (a dataset is a built-in name or a {'/'.join(FILE_SUFFIXES)} file)")
    key = (str(path), _stamp(path))
    if key not in _PARSED:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise MemeError(f"cannot read dataset file {path}: {e}") from None
        _PARSED[key] = parse_dataset(load_yaml(text, str(path)), path)
    return _PARSED[key]


def parse_dataset(doc, path: Path) -> DatasetFile:
    def fail(key, msg):
        raise MemeError(f"{path}: {key}: {msg}")

    def mapping(key, v, allowed, required=()):
        if not isinstance(v, dict):
            fail(key or "(file)", f"must be a mapping, got {type(v).__name__} {v!r}")
        for k in v:
            if k not in allowed:
                fail(f"{key}.{k}" if key else str(k), f"unknown key; valid keys: {', '.join(allowed)}")
        for r in required:
            if r not in v:
                fail(f"{key}.{r}" if key else r, "missing (required)")
        return v

    def positive_int(key, v):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            fail(key, f"must be a positive integer, got {v!r}")
        return v

    doc = mapping("", {} if doc is None else doc, TOP_KEYS, ("modalities",))
    name = doc.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        fail("name", f"must be a non-empty string, got {name!r}")
    labels = doc.get("labels")
    if labels is not None and (not isinstance(labels, str) or not labels):
        fail("labels", f"must be a column name, got {labels!r}")
    latent = doc.get("latent_dim")
    if latent is not None:
        positive_int("latent_dim", latent)
    mods = doc["modalities"]
    if not isinstance(mods, list) or len(mods) < 2:
        fail("modalities", f"must be a list of two or more modalities, got {mods!r}"[:300])
    entries = []
    for i, m in enumerate(mods):
        key = f"modalities[{i}]"
        m = mapping(key, m, MODALITY_KEYS, ("name", "train", "test"))
        mname = m["name"]
        if not isinstance(mname, str) or not _NAME.match(mname) or mname in RESERVED:
            fail(f"{key}.name", f"{mname!r} must start with a letter and use only letters, digits and '_' "
                                f"(and not be {' or '.join(map(repr, RESERVED))})")
        earlier = [e.name for e in entries]
        if mname in earlier:
            fail(f"{key}.name", f"{mname!r} is the name of modalities[{earlier.index(mname)}] too; each modality "
                                f"needs its own name")
        tables = {}
        for split in ("train", "test"):
            v = m[split]
            if not isinstance(v, str) or not v:
                fail(f"{key}.{split}", f"must be a file path, got {v!r}")
            p = Path(v).expanduser()
            p = p if p.is_absolute() else path.parent / p
            if p.suffix.lower() not in TABLE_SUFFIXES:
                fail(f"{key}.{split}", f"{p} is not a Parquet or NumPy table; valid: {', '.join(TABLE_SUFFIXES)}")
            if not p.is_file():
                fail(f"{key}.{split}", f"{p} does not exist")
            tables[split] = p.resolve()
        column = m.get("column", "x")
        if not isinstance(column, str) or not column:
            fail(f"{key}.column", f"must be a column name, got {column!r}")
        kind = m.get("kind")
        if kind is not None and kind not in KINDS:
            fail(f"{key}.kind", f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
        vocab = m.get("vocab")
        pad = m.get("pad", 0)
        if kind not in (None, "tokens") and ("vocab" in m or "pad" in m):
            fail(f"{key}.{'vocab' if 'vocab' in m else 'pad'}", f"applies to kind tokens only, not {kind}")
        if vocab is not None:
            positive_int(f"{key}.vocab", vocab)
        if pad is not None and (not isinstance(pad, int) or isinstance(pad, bool) or pad < 0):
            fail(f"{key}.pad", f"must be a token id >= 0 or null, got {pad!r}")
        nets = dict(mapping(f"{key}.networks", m.get("networks") or {}, NETWORK_KEYS))
        if "hidden" in nets:
            h = nets["hidden"]
            hs = h if isinstance(h, list) else [h]
            if not hs or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in hs):
                fail(f"{key}.networks.hidden", f"must be a positive integer or a list of them, got {h!r}")
        if "channels" in nets:
            positive_int(f"{key}.networks.channels", nets["channels"])
        if "likelihood" in nets:
            if nets["likelihood"] not in LIKELIHOODS:
                fail(f"{key}.networks.likelihood", f"unknown likelihood {nets['likelihood']!r}; valid: {', '.join(LIKELIHOODS)}")
        if "preset" in nets and nets["preset"] not in PRESETS:
            fail(f"{key}.networks.preset", f"unknown preset {nets['preset']!r}; valid: {', '.join(PRESETS)}")
        if "scale" in nets:
            s = nets["scale"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0:
                fail(f"{key}.networks.scale", f"must be a number > 0, got {s!r}")
            nets["scale"] = float(s)
        entries.append(ModalityEntry(mname, tables["train"], tables["test"], column, kind, vocab, pad, nets))
    return DatasetFile(path, name.strip(), tuple(entries), labels, latent)


# ------------------------------------------------------------------ tables
def read_table(path: Path, column: str, label_column: str | None) -> tuple[np.ndarray, torch.Tensor | None]:
    """(rows, labels or None) of one table: Parquet through ``read_array_table``, .npy memory-mapped and
    copied once, .npz by array name."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        x, labels = read_array_table(path, column, label_column)
        return x.numpy(), labels
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            return np.array(arr), None  # the one copy, out of the mapped file
        with np.load(path, allow_pickle=False) as z:
            if column not in z.files:
                raise MemeError(f"{path} has no array {column!r}; arrays: {', '.join(z.files)}")
            x = z[column]
            labels = None
            if label_column and label_column in z.files:
                labels = class_ids(z[label_column], len(x), f"{path}: array {label_column!r}")
            return x, labels
    except MemeError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise MemeError(f"{path} is not a readable NumPy {suffix} file ({type(e).__name__}: {str(e)[:120]})") from None


def _where(path: Path, column: str) -> str:
    return f"{path}" if path.suffix.lower() == ".npy" else f"{path}: column {column!r}"


def _infer_kind(x: np.ndarray) -> str | None:
    rank = x.ndim - 1
    if rank == 1:
        return "tokens" if x.dtype.kind in "iu" and x.dtype != np.uint8 else "vector"
    if rank in (2, 3):
        return "image"
    return None


def _check_rows(entry: ModalityEntry, split: str, x: np.ndarray, kind: str | None) -> tuple[str, np.ndarray]:
    """The kind of the rows and the rows as the networks take them; a one-line error for what cannot be used."""
    where = _where(entry.table(split), entry.column)
    if x.ndim == 0 or x.dtype.kind not in "biuf":
        raise MemeError(f"{where}: holds {x.dtype} values; it must be numeric")
    check_finite(x, where)
    kind = kind or _infer_kind(x)
    if kind is None:
        rank = x.ndim - 1
        raise MemeError(f"{where}: rows of shape {tuple(x.shape[1:])} are not supported ({'scalars' if rank == 0 else f'rank {rank}'}); "
                        f"nearest supported: {(1,) if rank == 0 else (1, *x.shape[-2:])} "
                        f"(images are (C, H, W), vectors (D,), tokens (T,))")
    try:
        if kind == "image":
            shape = check_image_shape(x.shape[1:])
            x = x.reshape(len(x), *shape)
            if x.dtype.kind == "f":
                lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
                if not (0.0 <= lo and hi <= 1.0):
                    raise MemeError(f"image values span {lo:g}..{hi:g}; images are uint8 (0..255) or floats in [0, 1] "
                                    f"(rescale them, or give kind: vector)")
            elif x.dtype != np.uint8 and x.dtype.kind != "b":
                raise MemeError(f"images of {x.dtype} values; images are uint8 (0..255) or floats in [0, 1]")
        elif kind in ("vector", "tokens") and x.ndim != 2:
            raise MemeError(f"{kind} rows of shape {tuple(x.shape[1:])} are not supported; nearest supported: "
                            f"({int(np.prod(x.shape[1:]))},) (flatten each row)")
        elif kind == "tokens" and x.dtype.kind not in "iu":
            raise MemeError(f"tokens must be integer ids, got {x.dtype} values")
    except MemeError as e:
        msg = str(e)
        raise MemeError(msg if msg.startswith(str(entry.table(split))) else f"{where}: {msg}") from None
    if x.dtype.kind == "f" and x.dtype != np.float32:
        x = x.astype(np.float32)
    if x.dtype.kind == "b":
        x = x.astype(np.uint8) * 255 if kind == "image" else x.astype(np.float32)
    if kind == "tokens":
        x = x.astype(np.int64, copy=False)
    return kind, x


def _check_network_keys(ds: DatasetFile, m: int, kind: str, shape=()) -> None:
    """``networks`` keys that the modality's kind (given or inferred from its rows) does not take are refused,
    not ignored: ``channels`` on vector rows, a likelihood on tokens (always categorical)."""
    valid = NETWORK_KEYS_BY_KIND[kind]
    bad = [k for k in ds.modalities[m].networks if k not in valid]
    if bad:
        raise MemeError(f"{ds.path}: modalities[{m}].networks.{bad[0]}: does not apply to {kind} rows "
                        f"({ds.modalities[m].name!r}); valid for {kind}: {', '.join(valid)}")
    preset = ds.modalities[m].networks.get("preset")
    if preset and tuple(shape) != PRESETS[preset]:
        raise MemeError(f"{ds.path}: modalities[{m}].networks.preset: {preset} takes rows of shape {PRESETS[preset]}, "
                        f"but {ds.modalities[m].name!r} has {tuple(shape)}")


def load_tables(ds: DatasetFile):
    """Both splits as ``PairedData`` and what each modality resolved to; every check of the module docstring."""
    splits: dict[str, list] = {"train": [], "test": []}
    labels: dict[str, list] = {"train": [], "test": []}
    for entry in ds.modalities:
        for split in ("train", "test"):
            x, lab = read_table(entry.table(split), entry.column, ds.labels)
            splits[split].append(x)
            labels[split].append(lab)
    resolved = []
    for m, entry in enumerate(ds.modalities):
        kinds = {}
        for split in ("train", "test"):
            kinds[split], splits[split][m] = _check_rows(entry, split, splits[split][m], entry.kind)
        if kinds["train"] != kinds["test"] or splits["train"][m].shape[1:] != splits["test"][m].shape[1:]:
            raise MemeError(f"{entry.test}: rows of shape {tuple(splits['test'][m].shape[1:])} ({kinds['test']}), but "
                            f"{entry.train} has {tuple(splits['train'][m].shape[1:])} ({kinds['train']}); "
                            f"the train and test tables of {entry.name!r} must have the same row shape")
        _check_network_keys(ds, m, kinds["train"], splits["train"][m].shape[1:])
        vocab = None
        if kinds["train"] == "tokens":
            vocab = _check_tokens(entry, splits["train"][m], splits["test"][m])
        unit = None
        if kinds["train"] == "vector":
            unit = all(x.dtype == np.uint8 or not x.size or (float(x.min()) >= 0.0 and float(x.max()) <= 1.0)
                       for x in (splits["train"][m], splits["test"][m]))
        resolved.append(Resolved(kinds["train"], tuple(splits["train"][m].shape[1:]), vocab, unit))
    data = {}
    for split in ("train", "test"):
        xs, labs = splits[split], labels[split]
        paths = [e.table(split) for e in ds.modalities]
        for m in range(1, len(xs)):
            if len(xs[m]) != len(xs[0]):
                raise MemeError(f"{paths[0]} has {len(xs[0])} rows but {paths[m]} has {len(xs[m])}; row i of each "
                                f"table is example i, so the {split} tables need equal row counts")
        carrying = [m for m in range(len(xs)) if labs[m] is not None]
        for m in carrying[1:]:
            a, b = carrying[0], m
            if not torch.equal(labs[a], labs[b]):
                bad = int((labs[a] != labs[b]).nonzero()[0])
                raise MemeError(f"{paths[a]} and {paths[b]} disagree on labels column {ds.labels!r} at row {bad}: "
                                f"{int(labs[a][bad])} vs {int(labs[b][bad])}; paired rows must carry the same label")
        lab = labs[carrying[0]] if carrying else None
        where = paths[carrying[0]] if carrying else None
        if lab is not None:
            check_classes(lab, f"{where}: column {ds.labels!r}", torch.device("cpu"))
        if ds.labels and lab is None:
            where_not = (f"neither {paths[0].name} nor {paths[1].name}" if len(paths) == 2 else
                         f"none of {', '.join(p.name for p in paths)}")
            raise MemeError(f"{ds.path}: labels: column {ds.labels!r} is in {where_not}")
        if lab is not None and len(lab) and int(lab.min()) < 0:
            bad = int((lab < 0).nonzero()[0])
            raise MemeError(f"{where}: column {ds.labels!r}: row {bad} holds {int(lab[bad])}; "
                            f"labels are class ids 0..C-1")
        data[split] = PairedData.from_tables(list(zip(ds.names, xs)), lab)
    if not len(data["train"]) or not len(data["test"]):
        empty = "train" if not len(data["train"]) else "test"
        raise MemeError(f"{ds.modalities[0].table(empty)}: the {empty} table has no rows")
    return data, tuple(resolved)


def _check_tokens(entry: ModalityEntry, train: np.ndarray, test: np.ndarray) -> int:
    top = max(int(train.max()) if train.size else 0, int(test.max()) if test.size else 0)
    vocab = entry.vocab or top + 1
    # an embedding and an output layer of vocab x 128 each, with gradients and Adam's moments
    check_fits(vocab * 256 * 16, f"{_where(entry.train, entry.column)}: token id {top} (a vocabulary of {vocab:,})",
               torch.device("cpu"))
    for split, x in (("train", train), ("test", test)):
        bad = np.flatnonzero(((x < 0) | (x >= vocab)).any(axis=1)) if x.size else []
        if len(bad):
            row = int(bad[0])
            tok = int(x[row][(x[row] < 0) | (x[row] >= vocab)][0])
            raise MemeError(f"{_where(entry.table(split), entry.column)}: row {row} holds token id {tok}, outside the "
                            f"vocabulary 0..{vocab - 1}" + ("" if entry.vocab else " (ids must be >= 0)")
                            + (f"; raise vocab: to at least {top + 1}" if entry.vocab and tok >= 0 else ""))
    if entry.pad is not None and entry.pad >= vocab:
        raise MemeError(f"{entry.train}: pad id {entry.pad} is outside the vocabulary 0..{vocab - 1}")
    if vocab < 2:
        raise MemeError(f"{_where(entry.train, entry.column)}: tokens need a vocabulary of at least 2 ids; give vocab:")
    return vocab
