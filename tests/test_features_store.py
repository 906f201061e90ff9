"""The CUB Parquet store: bit-exact round trips, metadata, validation errors, the caption build, pairing."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from meme.data.cub import load_paired
from meme.errors import MemeError
from meme.features import store as st
from meme.features.captions import CaptionSettings, build_caption_store, write_standin_images
from meme.features.cub_files import read_captions, read_cub_images, write_synthetic_cub
from meme.features.text import FastTextSettings, Vocab, tokenize

SMALL = CaptionSettings(fasttext=FastTextSettings(dim=16, epochs=2, bucket=1000))


def _image_columns(n=7, dim=2048, seed=0):
    g = np.random.default_rng(seed)
    feats = g.standard_normal((n, dim)).astype(np.float32)
    feats[0, :4] = [np.nan, np.inf, -0.0, np.float32(1e-45)]          # odd bit patterns survive too
    return feats, {"image_id": pa.array(np.arange(10, 10 + n), pa.int64()), "label": pa.array(np.arange(n) % 3, pa.int32()),
                   "split": pa.array(["train", "test"] * (n // 2) + ["train"] * (n % 2), pa.string()),
                   "path": pa.array([f"c/{i}.jpg" for i in range(n)], pa.string()),
                   "sha256": pa.array([bytes([i]) * 32 for i in range(n)], pa.binary(32)),
                   "features": st.vector_column(feats, pa.float32())}


def _write_images(path, n=7, **meta_extra):
    feats, cols = _image_columns(n)
    meta = st.make_meta("images", "classes", {"model": "test"}, {"images.txt": "abc"}, **meta_extra)
    st.write_table(path, "images", cols, meta)
    return feats, meta


def test_image_table_round_trip_is_bit_exact_with_metadata(tmp_path):
    feats, meta = _write_images(tmp_path / st.FILES["images"])
    images = st.read_images(tmp_path)
    assert images.features.dtype == torch.float32 and images.features.shape == (7, 2048)
    assert torch.equal(images.features.view(torch.int32), torch.from_numpy(feats).view(torch.int32))
    assert images.image_id.tolist() == list(range(10, 17)) and images.label.tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert images.mask("test").tolist() == [False, True] * 3 + [False]
    assert images.meta["version"] == st.SCHEMA_VERSION and images.meta["table"] == "images"
    assert images.meta["settings"] == {"model": "test"} and images.meta["sources"] == {"images.txt": "abc"}
    assert {"torch", "torchvision", "gensim", "pyarrow", "numpy"} <= set(images.meta["libraries"])
    assert images.meta == meta
    schema = pq.read_schema(tmp_path / st.FILES["images"])
    assert str(schema.field("features").type) == "fixed_size_binary[8192]"
    assert schema.field("features").metadata == {b"meme.vector": b"float32[2048]"}
    # the tensor is a view of Arrow's buffer, and writable without touching the file
    images.features[1, 0] = 123.0
    assert st.read_images(tmp_path).features[1, 0] == float(feats[1, 0])


def test_corrupted_and_foreign_files_give_clear_errors(tmp_path):
    path = tmp_path / st.FILES["images"]
    _write_images(path)
    data = bytearray(path.read_bytes())
    # flip bytes inside the feature values: the page checksum catches it
    mid = len(data) // 2
    data[mid:mid + 8] = bytes(8)
    bad = tmp_path / "flipped" / st.FILES["images"]
    bad.parent.mkdir()
    bad.write_bytes(bytes(data))
    with pytest.raises(MemeError, match=r"flipped/images.parquet is corrupt .*delete it and extract again"):
        st.read_images(bad.parent)
    truncated = tmp_path / "trunc" / st.FILES["images"]
    truncated.parent.mkdir()
    truncated.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(MemeError, match="is corrupt or not a Parquet file"):
        st.read_images(truncated.parent)
    plain = tmp_path / "plain" / st.FILES["images"]
    plain.parent.mkdir()
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(MemeError, match="not a MEME CUB feature table"):
        st.read_images(plain.parent)
    with pytest.raises(MemeError, match=r"no CUB feature table at .*meme features images"):
        st.read_images(tmp_path / "absent")


def test_schema_and_version_mismatch(tmp_path):
    path = tmp_path / st.FILES["images"]
    feats, cols = _image_columns()
    meta = st.make_meta("images", "classes", {}, {})
    # a float64 feature column: not the schema the reader expects
    table = pa.table({**cols, "features": pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1).astype(np.float64)), 2048)})
    pq.write_table(table.replace_schema_metadata({st.META_KEY: json.dumps(meta).encode()}), path)
    with pytest.raises(MemeError, match=r"schema mismatch: column 'features' is fixed_size_list<element: double>\[2048\], "
                                        r"expected a vector column of float32 \(fixed_size_binary\)"):
        st.read_images(tmp_path)
    # float64 bytes tagged as such: the right width in bytes, the wrong values
    f64 = pa.field("features", pa.binary(8192), nullable=False, metadata={b"meme.vector": b"float64[1024]"})
    wrong = pa.Table.from_arrays([cols[f.name] for f in st.image_schema(2048)][:-1] +
                                 [st.vector_column(feats.reshape(7, 1024, 2).mean(-1).astype(np.float64), pa.float64())],
                                 schema=pa.schema(list(st.image_schema(2048))[:-1] + [f64]))
    pq.write_table(wrong.replace_schema_metadata({st.META_KEY: json.dumps(meta).encode()}), path)
    with pytest.raises(MemeError, match=r"column 'features' holds float64\[1024\], expected float32\[2048\]"):
        st.read_images(tmp_path)
    good = pa.Table.from_arrays([cols[f.name] for f in st.image_schema(2048)], schema=st.image_schema(2048))
    pq.write_table(good.drop_columns(["label"]).replace_schema_metadata({st.META_KEY: json.dumps(meta).encode()}), path)
    with pytest.raises(MemeError, match=r"schema mismatch: columns \['image_id', 'split', "):
        st.read_images(tmp_path)
    _write_images(path)
    old = {**st.read_meta(path), "version": 0}
    t = pq.read_table(path)
    pq.write_table(t.replace_schema_metadata({st.META_KEY: json.dumps(old).encode()}), path)
    with pytest.raises(MemeError, match="store version 0, this meme reads versions 2; extract the features again"):
        st.read_images(tmp_path)
    _write_images(path)
    with pytest.raises(MemeError, match="holds a 'images' table, expected 'captions'"):
        st.read_table(path, "captions")


def test_version_1_stores_are_refused_with_the_fix(tmp_path):
    """Version 1 (fixed-size-list vectors) never shipped outside this repository; such a store is extracted again."""
    path = tmp_path / st.FILES["images"]
    _write_images(path)
    table = pq.read_table(path)
    meta = {**st.read_meta(path), "version": 1}
    pq.write_table(table.replace_schema_metadata({st.META_KEY: json.dumps(meta).encode()}), path)
    with pytest.raises(MemeError, match="store version 1, this meme reads versions 2; extract the features again"):
        st.read_images(tmp_path)


def test_page_checksums_are_verified_once_per_process_and_file(tmp_path, monkeypatch):
    path = tmp_path / st.FILES["images"]
    _write_images(path)
    seen = []
    real = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: seen.append(k["page_checksum_verification"]) or real(*a, **k))
    st.read_images(tmp_path)
    st.read_images(tmp_path)
    st.read_table(path, "images", verify="always")
    st.read_table(path, "images", verify="never")
    _write_images(path, n=5)  # a new file at the same path is verified again
    st.read_images(tmp_path)
    assert seen == [True, False, True, False, True]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    cub = write_synthetic_cub(tmp_path_factory.mktemp("cub"), per_class=4)
    images = read_cub_images(cub)
    caps = read_captions(cub, images, "flat")
    out = tmp_path_factory.mktemp("store")
    summary = build_caption_store(images, caps, out, "classes", SMALL, progress=False)
    return cub, images, caps, out, summary


def test_caption_store_contents(built):
    cub, images, caps, out, summary = built
    table = st.read_captions(out)
    vocab = Vocab.load(out / st.VOCAB_FILE)
    order = {int(i): r for r, i in enumerate(images.image_ids)}
    rows = np.array([order[int(i)] for i in table.image_id])
    assert np.array_equal(rows, np.repeat(caps.image_index, 10))
    assert table.caption_index.tolist() == list(range(10)) * len(caps.image_index)
    assert table.label.tolist() == images.labels[rows].tolist()
    assert table.mask("train").tolist() == (images.class_split[rows] == "train").tolist()
    assert table.texts(range(3)) == caps.texts[:3]
    # the vocabulary is built on the training captions only
    train_tokens = [tokenize(t) for t, s in zip(caps.texts, images.class_split[rows]) if s == "train"]
    assert vocab == Vocab.build(train_tokens, 3, 32)
    assert torch.equal(table.tokens, torch.from_numpy(vocab.encode([tokenize(t) for t in caps.texts])))
    emb = st.read_sentence_embedder(out)
    assert torch.allclose(table.embedding, emb(table.tokens), atol=1e-6)
    assert table.embedding.shape[1] == 16 and table.meta["vocab_sha256"] == vocab.sha256
    assert summary["vocab_size"] == len(vocab) and summary["train_captions"] == len(train_tokens)
    # up to date: a second build is skipped; force rebuilds
    assert build_caption_store(images, caps, out, "classes", SMALL, progress=False) == {"skipped": True}


def test_paired_loading_and_standin(built, tmp_path):
    cub, images, caps, out, _ = built
    store = tmp_path / "s"
    shutil.copytree(out, store)
    write_standin_images(store, seed=1)
    imgs, table = st.read_images(store), st.read_captions(store)
    assert imgs.meta["standin"] is True and imgs.features.shape == (len(images), 2048)
    assert (imgs.features >= 0).all()
    for split in ("train", "test"):
        data = load_paired(store, split)
        n = int(table.mask(split).sum())
        assert data.names == ("cub_image", "cub_caption") and len(data) == n
        cap_rows = table.mask(split).nonzero().flatten()
        assert torch.equal(data.rows(1), table.tokens[cap_rows])
        id_to_row = {int(i): r for r, i in enumerate(imgs.image_id)}
        expected = imgs.features[[id_to_row[int(i)] for i in table.image_id[cap_rows]]]
        assert torch.equal(data.rows(0), expected)
        assert torch.equal(data.labels, table.label[cap_rows])
        assert data.tables[0].shape[0] == n // 10                          # each image stored once
    # a store whose two tables disagree on the split scheme
    t = pq.read_table(store / st.FILES["images"])
    meta = {**json.loads(t.schema.metadata[st.META_KEY]), "split_scheme": "official"}
    pq.write_table(t.replace_schema_metadata({st.META_KEY: json.dumps(meta).encode()}), store / st.FILES["images"])
    with pytest.raises(MemeError, match="images.parquet uses the 'official' split but captions.parquet the 'classes' split"):
        load_paired(store, "train")
