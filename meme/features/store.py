"""The CUB feature store: Parquet tables that every trial reads, with their provenance in the metadata.

A store is one folder::

    images.parquet    image_id int64, label int32, split string, path string, sha256 binary(32)
                      (of the image file), features fixed_size_list<float32>[2048]   one row per image
    captions.parquet  image_id int64, caption_index int8, label int32, split string, text string,
                      tokens fixed_size_list<int32>[32], embedding fixed_size_list<float32>[300]
                                                                        one row per caption
    words.parquet     token_id int32, word string, count int64, weight float32,
                      vector fixed_size_list<float32>[300]              one row per vocabulary entry
    vocab.json        the vocabulary (MMVAE-compatible ``w2i``/``i2w``, plus counts and settings)

``split`` is "train" or "test" under the store's split scheme (``meme.data.cub.SPLITS``). Each table's
schema metadata holds, under the key ``meme.cub``, a JSON object: ``format``, ``version``
(``SCHEMA_VERSION``), ``table``, ``split_scheme``, ``settings`` (the extraction settings),
``vocab_sha256`` (caption and word tables), ``libraries`` (versions), ``sources`` (sha256 of the source
files) and ``standin`` (true for generated stand-in image features).

Reading checks the metadata and the exact schema and raises ``MemeError`` naming the file and the
difference; Parquet page checksums are written and verified, so a damaged file is an error rather
than silently wrong numbers. The readers memory-map the file and turn each fixed-size-list column into
one tensor over Arrow's own buffer (no per-row Python, no copy where the data is in one chunk).
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

from meme.errors import MemeError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
META_KEY = b"meme.cub"
FORMAT = "meme.cub"
FILES = {"images": "images.parquet", "captions": "captions.parquet", "words": "words.parquet"}
VOCAB_FILE = "vocab.json"
MODALITY_NAMES = ("cub_image", "cub_caption")


def _vec(dtype: pa.DataType, width: int) -> pa.DataType:
    return pa.list_(pa.field("element", dtype, nullable=False), width)


def _field(name, typ) -> pa.Field:
    return pa.field(name, typ, nullable=False)


def image_schema(dim: int = 2048) -> pa.Schema:
    return pa.schema([_field("image_id", pa.int64()), _field("label", pa.int32()), _field("split", pa.string()),
                      _field("path", pa.string()), _field("sha256", pa.binary(32)),
                      _field("features", _vec(pa.float32(), dim))])


def caption_schema(max_len: int = 32, dim: int = 300) -> pa.Schema:
    return pa.schema([_field("image_id", pa.int64()), _field("caption_index", pa.int8()), _field("label", pa.int32()),
                      _field("split", pa.string()), _field("text", pa.string()),
                      _field("tokens", _vec(pa.int32(), max_len)), _field("embedding", _vec(pa.float32(), dim))])


def word_schema(dim: int = 300) -> pa.Schema:
    return pa.schema([_field("token_id", pa.int32()), _field("word", pa.string()), _field("count", pa.int64()),
                      _field("weight", pa.float32()), _field("vector", _vec(pa.float32(), dim))])


#: table kind -> (schema builder, the list column whose width parameterises it)
SCHEMAS = {"images": (image_schema, ("features",)), "captions": (caption_schema, ("tokens", "embedding")),
           "words": (word_schema, ("vector",))}


def library_versions() -> dict[str, str]:
    import gensim
    import torchvision

    import meme

    return {"python": platform.python_version(), "meme": getattr(meme, "__version__", "?"), "numpy": np.__version__,
            "pyarrow": pa.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "gensim": gensim.__version__}


def make_meta(table: str, split_scheme: str, settings: dict, sources: dict, vocab_sha256: str | None = None,
              standin: bool = False, **extra) -> dict:
    return {"format": FORMAT, "version": SCHEMA_VERSION, "table": table, "split_scheme": split_scheme,
            "settings": settings, "vocab_sha256": vocab_sha256, "libraries": library_versions(), "sources": sources,
            "standin": standin, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **extra}


# ------------------------------------------------------------------ writing
def fixed_list(x: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    """(N, W) array -> fixed_size_list<dtype>[W] (non-nullable elements), zero-copy where the dtype matches."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        raise MemeError(f"expected an (N, W) array for a fixed-size-list column, got shape {x.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), type=dtype), type=_vec(dtype, x.shape[1]))


def write_table(path, kind: str, columns: dict, meta: dict) -> Path:
    """Write one store table atomically (temporary file + rename), with page checksums and no compression
    (feature floats barely compress; uncompressed pages decode fastest)."""
    builder, list_cols = SCHEMAS[kind]
    widths = [columns[c].type.list_size for c in list_cols]
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
    if meta.get("version") != SCHEMA_VERSION:
        raise MemeError(f"{path} is store version {meta.get('version')!r}, this meme reads version {SCHEMA_VERSION}; "
                        f"extract the features again")
    if meta.get("table") != kind:
        raise MemeError(f"{path} holds a {meta.get('table')!r} table, expected {kind!r}")
    builder, list_cols = SCHEMAS[kind]
    widths = []
    for c in list_cols:
        if c not in schema.names or not pa.types.is_fixed_size_list(schema.field(c).type):
            got = schema.field(c).type if c in schema.names else "missing"
            raise MemeError(f"{path}: schema mismatch: column {c!r} is {got}, expected a fixed_size_list")
        widths.append(schema.field(c).type.list_size)
    expected = builder(*widths)
    if schema.names != expected.names:
        raise MemeError(f"{path}: schema mismatch: columns {schema.names}, expected {expected.names}")
    for f, e in zip(schema, expected):
        if not _same_type(f.type, e.type):
            raise MemeError(f"{path}: schema mismatch: column {f.name!r} is {f.type}, expected {e.type}")


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Equal types, ignoring nullability and the list element's field name."""
    if pa.types.is_fixed_size_list(a) and pa.types.is_fixed_size_list(b):
        return a.list_size == b.list_size and a.value_type.equals(b.value_type)
    return a.equals(b)


def read_table(path, kind: str) -> tuple[pa.Table, dict]:
    """A validated store table (memory-mapped, page checksums verified) and its metadata."""
    path = Path(path)
    meta = read_meta(path)
    try:
        table = pq.read_table(path, memory_map=True, page_checksum_verification=True)
    except (pa.ArrowException, OSError) as e:
        raise MemeError(f"{path} is corrupt ({e}); delete it and extract again") from None
    check_schema(path, kind, table.schema, meta)
    return table, meta


def list_tensor(table: pa.Table, name: str) -> Tensor:
    """A fixed_size_list column as an (N, W) tensor over Arrow's buffer (one copy only if it spans chunks)."""
    col = table.column(name)
    width = col.type.list_size
    parts = []
    for chunk in col.chunks:
        values = chunk.values.slice(chunk.offset * width, len(chunk) * width)
        buf = values.buffers()[1]
        dtype = values.type.to_pandas_dtype()
        arr = np.frombuffer(buf, dtype=dtype, count=len(values), offset=values.offset * np.dtype(dtype).itemsize)
        parts.append(arr.reshape(len(chunk), width))
    if not parts:
        return torch.empty(0, width)
    arr = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if not arr.flags.writeable:  # an immutable (e.g. memory-mapped) buffer: hand out a private copy
        arr = arr.copy()
    return torch.from_numpy(arr)


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
    return ImageTable(column_tensor(table, "image_id"), column_tensor(table, "label"), list_tensor(table, "features"),
                      table, meta)


def read_captions(store) -> CaptionTable:
    table, meta = read_table(Path(store) / FILES["captions"], "captions")
    return CaptionTable(column_tensor(table, "image_id"), column_tensor(table, "caption_index"),
                        column_tensor(table, "label"), list_tensor(table, "tokens").long(),
                        list_tensor(table, "embedding"), table, meta)


def read_vocab(store):
    """The store's vocabulary (``vocab.json``)."""
    from meme.features.text import Vocab

    return Vocab.load(Path(store) / VOCAB_FILE)


def read_sentence_embedder(store):
    """The ``SentenceEmbedder`` (word vectors, weights, principal component) the store's captions were embedded with."""
    from meme.features.text import SentenceEmbedder

    table, meta = read_table(Path(store) / FILES["words"], "words")
    vocab = read_vocab(store)
    if meta.get("vocab_sha256") != vocab.sha256:
        raise MemeError(f"{Path(store) / FILES['words']} was built for another vocabulary than {Path(store) / VOCAB_FILE}; "
                        f"rebuild with `meme features captions --force`")
    return SentenceEmbedder(list_tensor(table, "vector"), torch.from_numpy(np.array(table.column("weight").to_numpy())),
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


def load_paired(store, split: str):
    """``PairedData`` of ``split``: one pair per caption of that split, with its image's features.

    Tables: image features (images of the split, float32) and caption token ids (int64); labels are
    the images' classes (-1 where unknown).
    """
    from meme.data.paired import PairedData
    from meme.errors import check_choice

    check_choice("split", split, ["train", "test"])
    images, captions = read_images(store), read_captions(store)
    check_consistent(store, images, captions)
    if images.meta.get("standin"):
        log.warning("%s holds STAND-IN image features (%s), not ResNet-101 features of CUB images",
                    store, images.meta.get("settings", {}).get("standin", "generated"))
    rows = caption_image_rows(images, captions, store)
    cap = captions.mask(split).nonzero().flatten()
    img_rows = rows[cap]
    mismatch = ~images.mask(split)[img_rows]
    if bool(mismatch.any()):
        bad = int(captions.image_id[cap][mismatch][0])
        raise MemeError(f"{store}: image {bad} is in the {split} split of captions.parquet but not of images.parquet")
    used, local = torch.unique(img_rows, return_inverse=True)
    return PairedData(MODALITY_NAMES, (images.features[used], captions.tokens[cap]), (local, torch.arange(cap.numel())),
                      images.label[img_rows])
