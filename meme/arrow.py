"""Arrow columns of fixed-shape rows as NumPy arrays, without per-row Python and with at most one copy.

``column_array(table, name)`` reads, as an (N, *shape) array:

* ``fixed_size_list`` columns, nested ones included (``(1, 28, 28)`` as lists of lists of lists);
* ``arrow.fixed_shape_tensor`` columns (pyarrow's fixed-shape tensor type; the shape is in the type);
* ``fixed_size_binary`` columns: tagged ``meme.vector`` (the feature store's vectors, value type and
  width in the field's metadata), else raw bytes (uint8);
* ``list`` / ``large_list`` columns whose rows all have the same length;
* plain numeric columns, as (N, 1).

The values are a view of Arrow's buffer where the buffer is mutable (decoded Parquet pages live in
Arrow's memory pool) and a single copy otherwise (an immutable buffer, or rows spread over several
chunks). ``schema_shape`` reads the row shape a table carries in its schema metadata (``meme.shape``).
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from meme.errors import MemeError

SHAPE_KEY = b"meme.shape"     # schema metadata: JSON list, the shape of one row
VECTOR_KEY = b"meme.vector"   # field metadata of a fixed_size_binary vector column: "<dtype>[<width>]"


class _ArrowView:
    """Exposes a mutable Arrow buffer to numpy as a writable array, keeping the buffer alive."""

    def __init__(self, buf: pa.Buffer, dtype: np.dtype, offset: int, count: int):
        self._buf = buf
        self.__array_interface__ = {"data": (buf.address + offset, False), "typestr": dtype.str,
                                    "shape": (count,), "version": 3}


def frombuffer(buf: pa.Buffer, dtype: np.dtype, count: int, offset: int, what: str = "a column") -> np.ndarray:
    """``np.frombuffer`` that is writable where Arrow's buffer is (decoded pages live in Arrow's memory pool;
    only a memory-mapped file region is read-only, and is copied by the caller)."""
    if offset + count * dtype.itemsize > buf.size:
        raise MemeError(f"{what} holds {buf.size} bytes, fewer than its rows need")
    if buf.is_mutable:
        return np.asarray(_ArrowView(buf, dtype, offset, count))
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset)


def _primitive(values: pa.Array, what: str) -> np.ndarray:
    """The flat values of a primitive numeric array (no nulls) over its buffer."""
    if values.null_count:
        raise MemeError(f"{what} has {values.null_count} missing values; every row must be complete")
    typ = values.type
    if pa.types.is_boolean(typ):
        return values.to_numpy(zero_copy_only=False)
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        raise MemeError(f"{what} holds {typ} values; it must be numeric (numbers, or fixed-size lists of them)")
    dtype = np.dtype(typ.to_pandas_dtype())
    return frombuffer(values.buffers()[1], dtype, len(values), values.offset * dtype.itemsize, what)


def _chunk_array(chunk: pa.Array, tag: bytes | None, what: str, top: bool) -> np.ndarray:
    """One chunk as an (n, *shape) array; ``top``: a plain numeric column becomes (n, 1)."""
    typ = chunk.type
    n = len(chunk)
    if isinstance(typ, pa.BaseExtensionType):
        sub = _chunk_array(chunk.storage, tag, what, top)
        return sub.reshape(n, *typ.shape) if getattr(typ, "extension_name", "") == "arrow.fixed_shape_tensor" else sub
    if (pa.types.is_fixed_size_binary(typ) or pa.types.is_nested(typ)) and chunk.null_count:
        raise MemeError(f"{what} has {chunk.null_count} missing rows; every row must be complete")
    if pa.types.is_fixed_size_binary(typ):
        dtype = np.dtype(tag.decode().split("[")[0]).newbyteorder("<") if tag else np.dtype(np.uint8)
        width = typ.byte_width // dtype.itemsize
        return frombuffer(chunk.buffers()[1], dtype, n * width, chunk.offset * typ.byte_width, what).reshape(n, width)
    if pa.types.is_fixed_size_list(typ):
        width = typ.list_size
        sub = _chunk_array(chunk.values.slice(chunk.offset * width, n * width), None, what, False)
        return sub.reshape(n, width, *sub.shape[1:])
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        offsets = np.asarray(chunk.offsets)
        lengths = np.diff(offsets)
        if n and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise MemeError(f"{what}: rows have different lengths ({lengths[0]} at row 0, {lengths[bad]} at row {bad}); "
                            f"every row must have the same shape")
        width = int(lengths[0]) if n else 0
        sub = _chunk_array(chunk.values.slice(int(offsets[0]) if n else 0, n * width), None, what, False)
        return sub.reshape(n, width, *sub.shape[1:])
    flat = _primitive(chunk, what)
    return flat.reshape(n, 1) if top else flat


def column_array(table: pa.Table, name: str, what: str | None = None) -> np.ndarray:
    """Column ``name`` as an (N, *shape) array (see the module docstring); writable, one copy at most."""
    what = what or f"column {name!r}"
    if name not in table.column_names:
        raise MemeError(f"no column {name!r}; columns: {', '.join(table.column_names)}")
    col = table.column(name)
    tag = (table.schema.field(name).metadata or {}).get(VECTOR_KEY)
    parts = [_chunk_array(c, tag, what, True) for c in (col.chunks or [col.combine_chunks()])]
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if not arr.flags.writeable:  # an immutable (e.g. memory-mapped) buffer: hand out a private copy
        arr = arr.copy()
    return arr


def schema_shape(table: pa.Table) -> list[int] | None:
    meta = table.schema.metadata or {}
    return json.loads(meta[SHAPE_KEY]) if SHAPE_KEY in meta else None
