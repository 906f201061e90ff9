"""The CUB feature store: Parquet tables that every trial reads, with their provenance in the metadata.

A store is one folder::

    images.parquet    image_id int64, label int32, split string, path string, sha256 binary(32)
                      (of the image file), features float32[2048]       one row per image
    captions.parquet  image_id int64, caption_index int8, label int32, split string, text string,
                      tokens int32[32], embedding float32[300]          one row per caption
    words.parquet     token_id int32, word string, count int64, weight float32,
                      vector float32[300]                               one row per vocabulary entry
    vocab.json        the vocabulary (MMVAE-compatible ``w2i``/``i2w``, plus counts and settings)

**Vector columns** (``dtype[W]`` above) are stored as ``fixed_size_binary(itemsize * W)``: each row's W
little-endian values, back to back, with the field metadata ``meme.vector = "dtype[W]"``. The column's
data is then one plain buffer that Parquet copies out without decoding, so loading the 11,788 x 2048
feature table costs about as much as ``numpy.load`` of the same array (``benchmarks/features.py``). As a
``fixed_size_list<float32>[2048]`` Parquet would decode a repetition level per float, about 6x slower. Outside this package, a vector column reads as::

    col = pq.read_table(path, columns=["features"]).column("features").combine_chunks()
    x = np.frombuffer(col.buffers()[1], np.float32).reshape(len(col), -1)

``split`` is "train" or "test" under the store's split scheme (``meme.features.cub_files.SPLITS``). Each table's
schema metadata holds, under the key ``meme.cub``, a JSON object: ``format``, ``version``
(``SCHEMA_VERSION``), ``table``, ``split_scheme``, ``settings`` (the extraction settings),
``vocab_sha256`` (caption and word tables), ``libraries`` (versions), ``sources`` (sha256 of the source
files) and ``standin`` (true for generated stand-in image features).

Reading checks the metadata and the exact schema and raises ``MemeError`` naming the file and the
difference; Parquet page checksums are written and verified (once per process and file, see
``read_table``), so a damaged file is an error rather than silently wrong numbers. The readers
memory-map the file and turn each vector column into one tensor over Arrow's own buffer (no per-row
Python, no copy where the data is in one chunk).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch import Tensor

import meme
from meme.arrow import VECTOR_KEY, column_array
from meme.errors import MemeError
from meme.features.text import SentenceEmbedder, Vocab

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: store versions this reader reads (version 1, with fixed_size_list vectors, never shipped and is no longer read)
READABLE_VERSIONS = (SCHEMA_VERSION,)
META_KEY = b"meme.cub"
FORMAT = "meme.cub"
FILES = {"images": "images.parquet", "captions": "captions.parquet", "words": "words.parquet"}
VOCAB_FILE = "vocab.json"
MODALITY_NAMES = ("cub_image", "cub_caption")


def _itemsize(dtype: pa.DataType) -> int:
    return dtype.bit_width // 8


def _dtype_name(dtype: pa.DataType) -> str:
    """numpy's name of an Arrow value type ("float32", "int32"), as vector tags and messages write it."""
    return np.dtype(dtype.to_pandas_dtype()).name


def _vec(name: str, dtype: pa.DataType, width: int) -> pa.Field:
    """A vector column of ``width`` values of ``dtype``: tagged fixed-width binary."""
    return pa.field(name, pa.binary(_itemsize(dtype) * width), nullable=False,
                    metadata={VECTOR_KEY: f"{_dtype_name(dtype)}[{width}]".encode()})


def _vector_width(typ: pa.DataType | None, dtype: pa.DataType) -> int | None:
    """The width W of a vector column of type ``typ`` holding ``dtype`` values, or None if ``typ`` is not such
    a column."""
    if typ is None:
        return None
    if pa.types.is_fixed_size_binary(typ) and typ.byte_width % _itemsize(dtype) == 0:
        return typ.byte_width // _itemsize(dtype)
    return None


def _field(name, typ) -> pa.Field:
    return pa.field(name, typ, nullable=False)


def image_schema(dim: int = 2048) -> pa.Schema:
    return pa.schema([_field("image_id", pa.int64()), _field("label", pa.int32()), _field("split", pa.string()),
                      _field("path", pa.string()), _field("sha256", pa.binary(32)),
                      _vec("features", pa.float32(), dim)])


def caption_schema(max_len: int = 32, dim: int = 300) -> pa.Schema:
    return pa.schema([_field("image_id", pa.int64()), _field("caption_index", pa.int8()), _field("label", pa.int32()),
                      _field("split", pa.string()), _field("text", pa.string()),
                      _vec("tokens", pa.int32(), max_len), _vec("embedding", pa.float32(), dim)])


def word_schema(dim: int = 300) -> pa.Schema:
    return pa.schema([_field("token_id", pa.int32()), _field("word", pa.string()), _field("count", pa.int64()),
                      _field("weight", pa.float32()), _vec("vector", pa.float32(), dim)])


#: table kind -> (schema builder, its vector columns and their value types, whose widths parameterise it)
SCHEMAS = {"images": (image_schema, (("features", pa.float32()),)),
           "captions": (caption_schema, (("tokens", pa.int32()), ("embedding", pa.float32()))),
           "words": (word_schema, (("vector", pa.float32()),))}


def library_versions() -> dict[str, str]:
    import gensim
    import torchvision

    return {"python": platform.python_version(), "meme": getattr(meme, "__version__", "?"), "numpy": np.__version__,
            "pyarrow": pa.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "gensim": gensim.__version__}


def make_meta(table: str, split_scheme: str, settings: dict, sources: dict, vocab_sha256: str | None = None,
              standin: bool = False, **extra) -> dict:
    return {"format": FORMAT, "version": SCHEMA_VERSION, "table": table, "split_scheme": split_scheme,
            "settings": settings, "vocab_sha256": vocab_sha256, "libraries": library_versions(), "sources": sources,
            "standin": standin, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}


# ------------------------------------------------------------------ writing
def vector_column(x: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeBinaryArray:
    """(N, W) array -> a vector column: fixed_size_binary(itemsize * W) over the array's bytes (zero-copy
    where ``x`` is already a C-contiguous little-endian array of ``dtype``)."""
    x = np.ascontiguousarray(x, dtype=np.dtype(dtype.to_pandas_dtype()).newbyteorder("<"))
    if x.ndim != 2:
        raise MemeError(f"expected an (N, W) array for a vector column, got shape {x.shape}")
    n, width = x.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(x.itemsize * width), n, [None, pa.py_buffer(x)])


def write_table(path, kind: str, columns: dict, meta: dict) -> Path:
    """Write one store table atomically (temporary file + rename), with page checksums and no compression
    (feature floats barely compress; uncompressed pages decode fastest)."""
    builder, vector_cols = SCHEMAS[kind]
    widths = []
    for c, dtype in vector_cols:
        typ = columns[c].type if c in columns else None
        width = _vector_width(typ, dtype)
        if width is None:
            raise MemeError(f"cannot build the {kind} table: column {c!r} must be a vector column of "
                            f"{_dtype_name(dtype)} (meme.features.store.vector_column), got {typ}")
        widths.append(width)
    schema = builder(*widths)
    try:
        table = pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, KeyError) as e:
        raise MemeError(f"cannot build the {kind} table: {e}") from None
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="NONE", use_dictionary=[c for c in ("split", "path") if c in schema.names],
                   write_statistics=False,
                   write_page_checksum=True, row_group_size=max(table.num_rows, 1))
    tmp.replace(path)
    return path


# ------------------------------------------------------------------ reading
def read_meta(path) -> dict:
    """The ``meme.cub`` metadata of a store table (reads only the footer)."""
    path = Path(path)
    if not path.is_file():
        raise MemeError(f"no CUB feature table at {path}; build the store with `meme features images` and "
                        f"`meme features captions` (see the README's CUB section)")
    try:
        schema = pq.read_schema(path, memory_map=True)
    except (pa.ArrowException, OSError) as e:
        raise MemeError(f"{path} is corrupt or not a Parquet file ({e}); delete it and extract again") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise MemeError(f"{path} is a Parquet file but not a MEME CUB feature table (no {META_KEY.decode()} metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise MemeError(f"{path} has unreadable {META_KEY.decode()} metadata; delete it and extract again") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MemeError(f"{path} is not a MEME CUB feature table (format {meta.get('format') if isinstance(meta, dict) else meta!r})")
    return meta


def check_schema(path, kind: str, schema: pa.Schema, meta: dict) -> None:
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        raise MemeError(f"{path} is store version {version!r}, this meme reads versions "
                        f"{', '.join(map(str, READABLE_VERSIONS))}; extract the features again")
    if meta.get("table") != kind:
        raise MemeError(f"{path} holds a {meta.get('table')!r} table, expected {kind!r}")
    builder, vector_cols = SCHEMAS[kind]
    widths = []
    for c, dtype in vector_cols:
        got = schema.field(c).type if c in schema.names else None
        width = _vector_width(got, dtype)
        if width is None:
            raise MemeError(f"{path}: schema mismatch: column {c!r} is {got or 'missing'}, expected a vector "
                            f"column of {_dtype_name(dtype)} (fixed_size_binary)")
        widths.append(width)
    expected = builder(*widths)
    if schema.names != expected.names:
        raise MemeError(f"{path}: schema mismatch: columns {schema.names}, expected {expected.names}")
    for f, e in zip(schema, expected):
        if not _same_type(f.type, e.type):
            raise MemeError(f"{path}: schema mismatch: column {f.name!r} is {f.type}, expected {e.type}")
        want = (e.metadata or {}).get(VECTOR_KEY)
        if want is not None and (f.metadata or {}).get(VECTOR_KEY) != want:
            have = (f.metadata or {}).get(VECTOR_KEY)
            raise MemeError(f"{path}: schema mismatch: column {f.name!r} holds "
                            f"{have.decode() if have else 'untagged bytes'}, expected {want.decode()}")


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, ignoring nullability and the list element's field name."""
    if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b):
        return a.list_size == b.list_size and a.value_type.equals(b.value_type)
    return a.equals(b)


#: files whose page checksums this process has verified: (resolved path, size, mtime_ns, inode)
_VERIFIED: set = set()


def _identity(path: Path) -> tuple:
    st_ = path.stat()
    return str(path.resolve()), st_.st_size, st_.st_mtime_ns, st_.st_ino


def read_table(path, kind: str, verify: str = "once") -> tuple[pa.Table, dict]:
    """A validated store table (memory-mapped) and its metadata.

    ``verify``: page checksums (CRC32 of every data page, about 0.4 ms per MiB) are checked ``"always"``,
    ``"once"`` per process and file (a file replaced or modified since is checked again; the default, as
    a run reads the same store for its train and test splits and every evaluation) or ``"never"``.
    """
    path = Path(path)
    meta = read_meta(path)
    ident = _identity(path)
    check = verify == "always" or (verify == "once" and ident not in _VERIFIED)
    try:
        table = pq.read_table(path, memory_map=True, page_checksum_verification=check)
    except (pa.ArrowException, OSError) as e:
        raise MemeError(f"{path} is corrupt ({e}); delete it and extract again") from None
    check_schema(path, kind, table.schema, meta)
    if check:
        _VERIFIED.add(ident)
    return table, meta


def vector_tensor(table: pa.Table, name: str) -> Tensor:
    """A vector column (fixed_size_binary tagged ``meme.vector``, or a version-1 fixed_size_list) as an
    (N, W) tensor over Arrow's buffer (one copy only if it spans chunks): ``meme.arrow.column_array``."""
    col = table.column(name)
    if pa.types.is_fixed_size_binary(col.type) and VECTOR_KEY not in (table.schema.field(name).metadata or {}):
        raise MemeError(f"column {name!r} is {col.type} without its {VECTOR_KEY.decode()} tag (value type and width)")
    return torch.from_numpy(column_array(table, name))


def column_tensor(table: pa.Table, name: str, dtype=torch.int64) -> Tensor:
    return torch.from_numpy(np.array(table.column(name).to_numpy(), dtype=np.int64)).to(dtype)


def split_mask(table: pa.Table, split: str) -> Tensor:
    return torch.from_numpy(pc.equal(table.column("split"), split).to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class ImageTable:
    image_id: Tensor      # (N,) int64
    label: Tensor         # (N,) int64, -1 = unknown
    features: Tensor      # (N, D) float32
    table: pa.Table       # the Arrow table (split, path columns)
    meta: dict

    def mask(self, split: str) -> Tensor:
        return split_mask(self.table, split)


@dataclass(frozen=True)
class CaptionTable:
    image_id: Tensor      # (M,) int64
    caption_index: Tensor
    label: Tensor
    tokens: Tensor        # (M, T) int64
    embedding: Tensor     # (M, E) float32
    table: pa.Table       # the Arrow table (split, text columns)
    meta: dict

    def mask(self, split: str) -> Tensor:
        return split_mask(self.table, split)

    def texts(self, rows) -> list[str]:
        return [self.table.column("text")[int(i)].as_py() for i in rows]


def read_images(store) -> ImageTable:
    table, meta = read_table(Path(store) / FILES["images"], "images")
    return ImageTable(column_tensor(table, "image_id"), column_tensor(table, "label"), vector_tensor(table, "features"),
                      table, meta)


def read_captions(store) -> CaptionTable:
    table, meta = read_table(Path(store) / FILES["captions"], "captions")
    return CaptionTable(column_tensor(table, "image_id"), column_tensor(table, "caption_index"),
                        column_tensor(table, "label"), vector_tensor(table, "tokens").long(),
                        vector_tensor(table, "embedding"), table, meta)


def read_vocab(store):
    """The store's vocabulary (``vocab.json``)."""
    return Vocab.load(Path(store) / VOCAB_FILE)


def read_sentence_embedder(store):
    """The ``SentenceEmbedder`` (word vectors, weights, principal component) the store's captions were embedded with."""
    table, meta = read_table(Path(store) / FILES["words"], "words")
    vocab = read_vocab(store)
    if meta.get("vocab_sha256") != vocab.sha256:
        raise MemeError(f"{Path(store) / FILES['words']} was built for another vocabulary than {Path(store) / VOCAB_FILE}; "
                        f"rebuild with `meme features captions --force`")
    return SentenceEmbedder(vector_tensor(table, "vector"), torch.from_numpy(np.array(table.column("weight").to_numpy())),
                            torch.tensor(meta["pc"], dtype=torch.float32))


# ------------------------------------------------------------------ pairing
def check_consistent(store, images: ImageTable, captions: CaptionTable) -> None:
    store = Path(store)
    a, b = images.meta.get("split_scheme"), captions.meta.get("split_scheme")
    if a != b:
        raise MemeError(f"{store}: images.parquet uses the {a!r} split but captions.parquet the {b!r} split; "
                        f"extract both with the same --split")
    vocab = read_vocab(store)
    if captions.meta.get("vocab_sha256") != vocab.sha256:
        raise MemeError(f"{store / FILES['captions']} was built for another vocabulary than {store / VOCAB_FILE}; "
                        f"rebuild with `meme features captions --force`")


def caption_image_rows(images: ImageTable, captions: CaptionTable, store="") -> Tensor:
    """For every caption, the row of its image in the image table (vectorised join on image_id)."""
    order = torch.argsort(images.image_id)
    sorted_ids = images.image_id[order]
    pos = torch.searchsorted(sorted_ids, captions.image_id).clamp_max(max(len(sorted_ids) - 1, 0))
    found = sorted_ids[pos] == captions.image_id if len(sorted_ids) else torch.zeros_like(captions.image_id, dtype=torch.bool)
    if not bool(found.all()):
        missing = captions.image_id[~found][:3].tolist()
        raise MemeError(f"{store}: captions refer to images {missing} that images.parquet does not hold; "
                        f"extract the image features for the same CUB folder")
    return order[pos]
