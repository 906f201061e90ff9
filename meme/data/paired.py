"""``PairedData``: M >= 2 modality tables and the aligned examples across them, held in memory as tensors.

Tables keep their storage dtype (uint8 images, float32 features, int64 tokens); batches are converted
on the fly (``meme.nets.as_float``). Example ``p`` is ``(tables[0][index[0][p]], ..., tables[M-1][index[M-1][p]])``
with label ``labels[p]`` (``-1`` where there is none). With several pairings per image the tables are
stored once and only the index grows. (The name is from the two-modality days: a "pair" is one example.)

Users bring their own data with :meth:`PairedData.from_arrays` (two arrays; row i of one pairs with row i of
the other), :meth:`PairedData.from_tables` (any number of named arrays of equal length) or
:meth:`PairedData.from_parquet` (two Parquet tables of equal length).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from meme.arrow import SHAPE_KEY, VECTOR_KEY, column_array, schema_shape
from meme.device import check_fits
from meme.errors import MemeError



@dataclass(frozen=True)
class PairedData:
    names: tuple[str, ...]
    tables: tuple[Tensor, ...]
    index: tuple[Tensor, ...]
    labels: Tensor

    def __post_init__(self):
        n = self.labels.shape[0]
        if not (len(self.names) == len(self.tables) == len(self.index)) or len(self.names) < 2:
            raise MemeError(f"{len(self.names)} names, {len(self.tables)} tables and {len(self.index)} indices: "
                            f"give one of each per modality, at least two modalities")
        for m in range(len(self.names)):
            if self.index[m].shape != (n,):
                raise MemeError(f"modality {self.names[m]!r}: index has shape {tuple(self.index[m].shape)}, expected ({n},)")
            if n and int(self.index[m].max()) >= self.tables[m].shape[0]:
                raise MemeError(f"modality {self.names[m]!r}: index points past its table of {self.tables[m].shape[0]} rows")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_modalities(self) -> int:
        return len(self.names)

    def subset(self, pairs: Tensor) -> "PairedData":
        return PairedData(self.names, self.tables, tuple(i[pairs] for i in self.index), self.labels[pairs])

    def sample(self, n: int, seed: int = 0) -> "PairedData":
        """A seeded random subset of ``n`` examples (all if ``n`` >= len), kept in their original order.

        Quick runs use this rather than the first N examples: datasets paired by label (MNIST-SVHN) or read
        in class order (CUB) list their examples grouped by class, so the first N hold few classes.
        """
        if n >= len(self):
            return self
        pick = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self.subset(pick)

    def to(self, device) -> "PairedData":
        return PairedData(self.names, tuple(t.to(device) for t in self.tables),
                          tuple(i.to(device) for i in self.index), self.labels.to(device))

    def rows(self, m: int, pairs: Tensor | None = None) -> Tensor:
        """The raw rows of modality ``m`` for ``pairs`` (all examples by default)."""
        idx = self.index[m] if pairs is None else self.index[m][pairs]
        return self.tables[m][idx]

    @classmethod
    def from_arrays(cls, name_s: str, x_s, name_t: str, x_t, labels=None) -> "PairedData":
        """Two modalities: row i of ``x_s`` pairs with row i of ``x_t``."""
        return cls.from_tables([(name_s, x_s), (name_t, x_t)], labels)

    @classmethod
    def from_tables(cls, tables, labels=None) -> "PairedData":
        """Any number (>= 2) of named arrays, a dict or (name, array) pairs: row i of each is example i."""
        items = list(tables.items()) if isinstance(tables, dict) else list(tables)
        names = [n for n, _ in items]
        if len(items) < 2:
            raise MemeError(f"{len(items)} modality given ({', '.join(names) or 'none'}); give at least two")
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise MemeError(f"two modalities named {dup!r}; give each its own name")
        xs = [torch.as_tensor(numeric(x, n, finite=True)) for n, x in items]
        for (n, _), x in zip(items[1:], xs[1:]):
            if x.shape[0] != xs[0].shape[0]:
                raise MemeError(f"{names[0]} has {xs[0].shape[0]} rows but {n} has {x.shape[0]}; rows must pair up")
        n = xs[0].shape[0]
        lab = torch.full((n,), -1, dtype=torch.long) if labels is None else class_ids(labels, n, "labels")
        ar = torch.arange(n)
        return cls(tuple(names), tuple(xs), (ar,) * len(xs), lab)

    @classmethod
    def from_parquet(cls, path_s, path_t, name_s: str = "s", name_t: str = "t", column: str = "x",
                     label_column: str | None = "label") -> "PairedData":
        xs, ls = read_array_table(path_s, column, label_column)
        xt, lt = read_array_table(path_t, column, label_column)
        if xs.shape[0] != xt.shape[0]:
            raise MemeError(f"{path_s} has {xs.shape[0]} rows but {path_t} has {xt.shape[0]}; rows must pair up")
        if ls is not None and lt is not None and not torch.equal(ls, lt):
            bad = int((ls != lt).nonzero()[0])
            raise MemeError(f"{path_s} and {path_t} disagree on {label_column!r} at row {bad}: {int(ls[bad])} vs {int(lt[bad])}")
        return cls.from_arrays(name_s, xs, name_t, xt, ls if ls is not None else lt)


def write_array_table(path, x, labels=None, column: str = "x", label_column: str = "label",
                      compression: str = "NONE") -> Path:
    """Write an (N, ...) array as a Parquet table: one fixed-width binary column holding each row's bytes
    (tagged ``meme.vector`` with the value type and width, as the feature store's vectors), the row shape in
    the schema metadata (``meme.shape``), and an optional int64 label column. Fixed-width binary loads about
    as fast as ``numpy.load``; a fixed-size list of the same values is read element by element by Parquet
    and is tens of times slower (``benchmarks/array_tables.py``). ``compression`` is Parquet's codec
    ("NONE" by default: fastest to load; "zstd" makes sparse images such as MNIST several times smaller)."""
    arr = np.ascontiguousarray(numeric(x, column))
    n = arr.shape[0]
    if n == 0:
        raise MemeError(f"{path}: the array has 0 rows; a table needs at least one row")
    lab = None if labels is None else class_ids(labels, n, label_column).numpy()
    flat = np.ascontiguousarray(arr.reshape(n, -1), dtype=arr.dtype.newbyteorder("<"))
    width = flat.shape[1]
    binary = pa.FixedSizeBinaryArray.from_buffers(pa.binary(flat.itemsize * width), n, [None, pa.py_buffer(flat)])
    fields = [pa.field(column, binary.type, metadata={VECTOR_KEY: f"{flat.dtype.str[1:]}[{width}]".encode()})]
    cols = [binary]
    if lab is not None:
        fields.append(pa.field(label_column, pa.int64()))
        cols.append(pa.array(lab))
    schema = pa.schema(fields, metadata={SHAPE_KEY: json.dumps(list(arr.shape[1:])).encode()})
    pq.write_table(pa.Table.from_arrays(cols, schema=schema), path, compression=compression)
    return Path(path)


def read_array_table(path, column: str = "x", label_column: str | None = "label") -> tuple[Tensor, Tensor | None]:
    """Read an (N, ...) array column and its labels from a Parquet table, without per-row Python
    (``meme.arrow.column_array``: fixed-size lists, nested or not, pyarrow's fixed-shape tensors,
    fixed-width binary, equal-length lists, plain numbers). The row shape is the one the schema's
    ``meme.shape`` metadata gives (``write_array_table`` writes it), else the column type's own. The file
    is memory-mapped and the values are copied at most once."""
    path = Path(path)
    if not path.exists():
        raise MemeError(f"Parquet file {path} does not exist")
    try:
        table = pq.read_table(path, memory_map=True)
    except (pa.ArrowInvalid, OSError) as e:
        raise MemeError(f"{path} is not a readable Parquet file ({e}); re-create it") from None
    if column not in table.column_names:
        raise MemeError(f"{path} has no column {column!r}; columns: {', '.join(table.column_names)}")
    values = column_array(table, column, f"{path}: column {column!r}")
    shape = schema_shape(table)
    if shape is not None:
        if int(np.prod(shape, dtype=np.int64)) != int(np.prod(values.shape[1:], dtype=np.int64)):
            raise MemeError(f"{path}: its metadata says rows of shape {tuple(shape)}, but column {column!r} holds "
                            f"{int(np.prod(values.shape[1:]))} values a row")
        values = values.reshape(len(values), *shape)
    if values.dtype.kind not in "biuf":
        raise MemeError(f"{path}: column {column!r} holds {values.dtype} values; it must be numeric")
    labels = None
    if label_column and label_column in table.column_names:
        labels = class_ids(table.column(label_column).to_numpy(zero_copy_only=False), len(values),
                           f"{path}: column {label_column!r}")
    return torch.from_numpy(values), labels


def numeric(x, what: str, finite: bool = False) -> np.ndarray:
    """``x`` as a numeric (bool, integer or float) NumPy array (of finite values, with ``finite``), or a ``MemeError``
    naming ``what``."""
    try:
        arr = np.asarray(x)
    except ValueError:   # rows of different lengths
        raise MemeError(f"{what}: rows of different shapes (a ragged array); every row must have the same shape") from None
    if arr.dtype == object and arr.ndim and any(isinstance(v, (list, tuple, np.ndarray)) for v in arr.flat):
        raise MemeError(f"{what}: rows of different shapes (a ragged array); every row must have the same shape")
    if arr.dtype.kind not in "biuf":
        raise MemeError(f"{what}: values must be numeric, got {arr.dtype} data"
                        + (f" such as {_first(arr)!r}" if arr.size else ""))
    if arr.ndim == 0:
        raise MemeError(f"{what}: expected an array of rows, got a single value")
    if finite:
        check_finite(arr, what)
    return arr


def check_finite(arr: np.ndarray, what: str) -> None:
    """A ``MemeError`` naming ``what``, the first row and its value where a float array holds NaN or Inf."""
    if arr.dtype.kind != "f" or not arr.size:
        return
    flat = arr.reshape(len(arr), -1)
    ok = np.isfinite(flat)
    if not ok.all():
        row = int(np.flatnonzero(~ok.all(axis=1))[0])
        raise MemeError(f"{what}: row {row} holds {flat[row][~ok[row]][0]}; values must be finite "
                        f"(NaN and Inf are refused: remove or impute them)")


def check_classes(labels: Tensor, what: str, device: torch.device) -> None:
    """Class ids up to the largest label must fit the judging classifiers' output layers (256 x classes, with
    gradients and Adam's moments) in ``device``'s memory."""
    if len(labels) and int(labels.max()) >= 0:
        top = int(labels.max())
        check_fits((top + 1) * 256 * 16, f"{what}: label {top} ({top + 1:,} classes, for the judging classifiers' "
                   f"output layers)", device)


def class_ids(labels, n: int, what: str) -> Tensor:
    """Labels as int64 class ids, one per row: integers, or floats that are whole numbers; never coerced."""
    arr = np.asarray(labels)
    if arr.shape != (n,):
        raise MemeError(f"{what}: labels of shape {arr.shape} for {n} rows; give one label per row, shape ({n},)")
    if arr.dtype.kind in "iub":
        return torch.from_numpy(arr.astype(np.int64))
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            raise MemeError(f"{what}: labels must be integer class ids; row {int(bad[0])} holds {float(arr[bad[0]])!r}")
        return torch.from_numpy(arr.astype(np.int64))
    raise MemeError(f"{what}: labels must be integer class ids, got {arr.dtype} values"
                    + (f" such as {_first(arr)!r}" if arr.size else "") + " (map them to 0..C-1 first)")


def _first(arr: np.ndarray):
    v = arr.flat[0]
    return v.item() if hasattr(v, "item") else v
