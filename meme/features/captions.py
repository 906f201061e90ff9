"""Caption features: tokens, vocabulary, FastText vectors and sentence embeddings, written to the store.

``build_caption_store`` does, for one split scheme (``meme.features.cub_files.SPLITS``):

1. tokenize every caption (``meme.features.text.tokenize``);
2. build the vocabulary on the **training** captions and encode every caption to 32 ids;
3. fit FastText on the training captions; word vectors and weights for the vocabulary;
4. embed every caption (frequency-weighted average, first principal component of the training
   embeddings removed);
5. write ``vocab.json``, ``words.parquet`` and ``captions.parquet``.

A store that is already up to date (same settings, split and source checksums) is left alone unless
``force``; the stages are quick (about a minute for all of CUB on one core), so there is nothing finer
to resume.

``write_standin_images`` writes a **stand-in** ``images.parquet`` for machines without the CUB images:
generated 2048-d features, a fixed random function of each image's captions. They are not image
features; a store holding them says so in its metadata and a warning is logged when it is loaded.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from meme.features.cub_files import Captions, CUBImages, sha256_file
from meme.errors import MemeError
from meme.features import store as st
from meme.features.text import (FastTextSettings, Vocab, fit_fasttext, fit_sentence_embedder, sif_weights, tokenize_all,
                                word_vectors)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionSettings:
    min_occ: int = 3              # a word enters the vocabulary when seen more than this many times
    max_len: int = 32             # tokens per caption, <eos> included
    a: float = 1e-3               # the weighting a / (a + p(w))
    fasttext: FastTextSettings = FastTextSettings()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _up_to_date(store: Path, settings: dict, sources: dict, scheme: str) -> bool:
    try:
        meta = st.read_meta(store / st.FILES["captions"])
        st.read_meta(store / st.FILES["words"])
        vocab = st.read_vocab(store)
    except MemeError:
        return False
    return (meta.get("settings") == settings and meta.get("sources") == sources and meta.get("split_scheme") == scheme
            and meta.get("vocab_sha256") == vocab.sha256)


def build_caption_store(images: CUBImages, captions: Captions, store, split_scheme: str = "classes",
                        settings: CaptionSettings = CaptionSettings(), split_seed: int = 0, test_fraction: float = 0.2,
                        force: bool = False, progress: bool = True) -> dict:
    """Write the caption side of the store; returns a summary (counts, vocabulary size, seconds per stage)."""
    from tqdm.auto import tqdm

    store = Path(store)
    splits = images.split(split_scheme, split_seed, test_fraction)
    per = captions.per_image
    img_rows = np.repeat(captions.image_index, per)
    cap_split = splits[img_rows]
    is_train = cap_split == "train"
    if not is_train.any():
        raise MemeError(f"no training captions under the {split_scheme!r} split (the vocabulary and FastText are fitted on "
                        f"them); add the train/val-class captions or use --split random")
    sdict = {**settings.to_dict(), "split_seed": split_seed if split_scheme == "random" else None,
             "test_fraction": test_fraction if split_scheme == "random" else None, "tokenizer": "meme treebank v1"}
    sources = dict(captions.sources)
    if not force and _up_to_date(store, sdict, sources, split_scheme):
        log.info("%s is up to date; pass force=True to rebuild", store / st.FILES["captions"])
        return {"skipped": True}
    times = {}
    stages = tqdm(total=4, desc="captions", unit="stage", disable=not progress)
    t0 = time.perf_counter()
    tokens = tokenize_all(captions.texts, progress)
    train_tokens = [t for t, k in zip(tokens, is_train) if k]
    vocab = Vocab.build(train_tokens, settings.min_occ, settings.max_len)
    ids = vocab.encode(tokens)
    times["tokenize_s"] = time.perf_counter() - t0
    stages.update()
    t0 = time.perf_counter()
    ft = fit_fasttext(train_tokens, settings.fasttext, progress)
    vectors = word_vectors(ft, vocab)
    times["fasttext_s"] = time.perf_counter() - t0
    stages.update()
    t0 = time.perf_counter()
    weights = sif_weights(vocab, settings.a)
    embedder = fit_sentence_embedder(ids[is_train], vectors, weights)
    emb = embedder(torch.from_numpy(ids)).numpy()
    times["embed_s"] = time.perf_counter() - t0
    stages.update()
    t0 = time.perf_counter()
    store.mkdir(parents=True, exist_ok=True)
    vocab.save(store / st.VOCAB_FILE)
    st.write_table(store / st.FILES["words"], "words", {
        "token_id": pa.array(np.arange(len(vocab)), pa.int32()), "word": pa.array(list(vocab.words), pa.string()),
        "count": pa.array(vocab.counts, pa.int64()), "weight": pa.array(weights, pa.float32()),
        "vector": st.vector_column(vectors, pa.float32())},
        st.make_meta("words", split_scheme, sdict, sources, vocab.sha256, pc=embedder.pc.tolist()))
    st.write_table(store / st.FILES["captions"], "captions", {
        "image_id": pa.array(images.image_ids[img_rows], pa.int64()),
        "caption_index": pa.array(np.tile(np.arange(per), len(captions.image_index)), pa.int8()),
        "label": pa.array(images.labels[img_rows], pa.int32()), "split": pa.array(cap_split.astype(str), pa.string()),
        "text": pa.array(captions.texts, pa.string()), "tokens": st.vector_column(ids.astype(np.int32), pa.int32()),
        "embedding": st.vector_column(emb, pa.float32())},
        st.make_meta("captions", split_scheme, sdict, sources, vocab.sha256))
    times["write_s"] = time.perf_counter() - t0
    stages.update()
    stages.close()
    truncated = int(sum(len(t) > settings.max_len - 1 for t in tokens))
    return {"captions": len(tokens), "train_captions": int(is_train.sum()), "vocab_size": len(vocab),
            "truncated": truncated, **times}


def write_standin_images(store, dim: int = 2048, seed: int = 0, noise: float = 0.5) -> Path:
    """A STAND-IN ``images.parquet`` for the images of ``captions.parquet``: per image,
    ``relu(standardised mean caption embedding @ W + noise * eps)`` with a fixed random ``W`` (E x dim,
    entries N(0, 1/E)) and eps ~ N(0, 1). Not image features: for trying the pipeline without CUB images."""
    store = Path(store)
    caps = st.read_captions(store)
    ids, inverse = torch.unique(caps.image_id, return_inverse=True)
    n, e = ids.numel(), caps.embedding.shape[1]
    mean = torch.zeros(n, e).index_add_(0, inverse, caps.embedding) / torch.bincount(inverse, minlength=n).unsqueeze(1)
    mean = (mean - mean.mean(0)) / mean.std(0).clamp_min(1e-8)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(e, dim, generator=g) / e ** 0.5
    feats = torch.relu(mean @ w + noise * torch.randn(n, dim, generator=g))
    first = torch.full((n,), len(inverse)).scatter_reduce_(0, inverse, torch.arange(len(inverse)), reduce="amin")
    split = caps.table.column("split").take(pa.array(first.numpy())).to_numpy(zero_copy_only=False).astype(str)
    settings = {"standin": "relu(standardised mean caption embedding @ random projection + noise)", "dim": dim,
                "seed": seed, "noise": noise}
    meta = st.make_meta("images", caps.meta.get("split_scheme"), settings,
                        {st.FILES["captions"]: sha256_file(store / st.FILES["captions"])}, standin=True)
    return st.write_table(store / st.FILES["images"], "images", {
        "image_id": pa.array(ids.numpy(), pa.int64()), "label": pa.array(caps.label[first].numpy(), pa.int32()),
        "split": pa.array(split, pa.string()), "path": pa.array([""] * n, pa.string()),
        "sha256": pa.array([bytes(32)] * n, pa.binary(32)), "features": st.vector_column(feats.numpy(), pa.float32())}, meta)
