"""Classifiers for the user's own data (a dataset file), which judge cross-coherence as the digit
classifiers do for MNIST-SVHN.

One per modality, trained on its real training table with the file's labels:

* ``image``: the digit classifiers' small conv net (two conv stages, FC 256, dropout), with the
  dataset's number of classes;
* ``vector``: an MLP (D -> 256 -> 256 -> classes) on the rows standardised by the training table's
  per-feature mean and spread;
* ``tokens``: a word embedding (64) flattened into the same MLP. It also takes (N, T, vocab) scores,
  which is what token decoders output, and reads the most likely id at each position.

Each trains with early stopping on held-out rows (``EARLY_STOP``; at most a few epochs, at
least 300 steps of 256 rows for small tables), and is cached as ``<cache dir>/classifiers/<dataset>-<modality>-<hash>.pt`` (+ ``.json`` with its test
accuracy), where the hash covers the modality's train and test rows and both label vectors: a changed
table trains a new one. The cache dir is ``$MEME_CACHE_DIR`` or ``~/.cache/meme/cache``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from meme.data.dataset_file import DatasetFile, Resolved
from meme.data.mnist_svhn import cache_dir
from meme.errors import MemeError
from meme.eval.classifiers import DigitClassifier, EarlyStop, accuracy, fit_classifier, write_classifier
from meme.eval.latents import has_labels
from meme.nets.base import as_float

log = logging.getLogger(__name__)

ARCH = "table-v2"   # v2: trained with early stopping on held-out rows (v1 caches are trained again)
EPOCHS = {"image": 4, "vector": 8, "tokens": 8}   # the most each trains (early stopping ends it sooner)
#: per kind, as measured on MNIST (benchmarks/classifier_speed.py): a conv step costs ~20 MLP steps, so images stop
#: at the first plateau; the MLPs wait longer, which keeps their accuracy at the one-cycle schedule's
EARLY_STOP = {"image": EarlyStop(patience=2, anneal=150), "vector": EarlyStop(patience=4, anneal=300),
              "tokens": EarlyStop(patience=4, anneal=300)}
MIN_STEPS = 300    # small tables get more epochs: at least this many optimiser steps
BATCH_SIZE = 256
HIDDEN = 256


class VectorClassifier(nn.Module):
    """(N, D) rows -> logits; the rows are standardised by the training table's statistics (buffers)."""

    def __init__(self, dim: int, n_classes: int, mean: Tensor | None = None, std: Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.float())
        self.register_buffer("std", torch.ones(dim) if std is None else std.float())
        self.net = nn.Sequential(nn.Linear(dim, HIDDEN), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                 nn.Linear(HIDDEN, HIDDEN), nn.ReLU(inplace=True), nn.Linear(HIDDEN, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x.float() - self.mean) / self.std)


class TokensClassifier(nn.Module):
    """(N, T) ids, or (N, T, vocab) scores (their most likely id per position), -> logits."""

    def __init__(self, length: int, vocab: int, n_classes: int, pad: int | None = None):
        super().__init__()
        self.vocab = vocab
        self.embedding = nn.Embedding(vocab, 64, padding_idx=pad)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(length * 64, HIDDEN), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                 nn.Linear(HIDDEN, n_classes))

    def forward(self, x: Tensor) -> Tensor:
        ids = x.argmax(-1) if x.is_floating_point() else x.long()
        return self.net(self.embedding(ids))


def build_table_classifier(res: Resolved, n_classes: int, pad: int | None = None,
                           train_rows: Tensor | None = None) -> nn.Module:
    if res.kind == "image":
        return DigitClassifier(res.shape, (32, 64), n_classes=n_classes)
    if res.kind == "tokens":
        return TokensClassifier(res.shape[0], res.vocab, n_classes, pad)
    mean = std = None
    if train_rows is not None:
        x = as_float(train_rows).float()
        mean, std = x.mean(0), x.std(0).clamp(min=1e-3)
    return VectorClassifier(res.shape[0], n_classes, mean, std)


def content_hash(*tensors: Tensor) -> str:
    h = hashlib.sha256(ARCH.encode())
    for t in tensors:
        t = t.contiguous().cpu()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def table_classifiers(ds: DatasetFile, progress: bool = False, directory=None,
                      seed: int = 0) -> dict[str, tuple[nn.Module, dict]]:
    """modality -> (classifier on the CPU, its record); trained and cached when missing. Empty, with one log
    line, when the dataset has no labels."""
    train, test = ds.load("train"), ds.load("test")
    if not (has_labels(train.labels) and has_labels(test.labels)):
        log.info("dataset %s has no labels: coherence, latent accuracy and the class matrix are skipped", ds.name)
        return {}
    n_classes = int(max(train.labels.max(), test.labels.max())) + 1
    directory = Path(directory) if directory else cache_dir() / "classifiers"
    out = {}
    for m, (entry, res) in enumerate(zip(ds.modalities, ds.resolved())):
        x_tr, x_te = train.rows(m), test.rows(m)
        key = content_hash(x_tr, train.labels, x_te, test.labels)
        path = directory / f"{ds.name}-{entry.name}-{key}.pt"
        cached = _load(path, res, n_classes, entry.pad)
        if cached is not None:
            out[entry.name] = cached
        else:
            def build():
                return build_table_classifier(res, n_classes, entry.pad, x_tr)
            epochs = max(EPOCHS[res.kind], math.ceil(MIN_STEPS / math.ceil(len(train) / BATCH_SIZE)))
            clf, seconds = fit_classifier(build, x_tr, train.labels, epochs, BATCH_SIZE, seed=seed, progress=progress,
                                          early_stop=EARLY_STOP[res.kind],
                                          desc=f"classifier {entry.name}")
            record = {"dataset": ds.name, "modality": entry.name, "kind": res.kind, "arch": ARCH,
                      "n_classes": n_classes, "test_accuracy": accuracy(clf, x_te, test.labels),
                      "epochs": epochs, "seed": seed, "n_train": len(train), "n_test": len(test),
                      "train_time_s": round(seconds, 1), "content_hash": key}
            chance = at_chance(record["test_accuracy"], test.labels, n_classes)
            if chance:   # a judge no better than guessing is never cached, and every run that uses it says so
                record["warning"] = chance
            else:
                _save(path, clf, record)
                log.info("trained the %s classifier of %s: test accuracy %.4f", entry.name, ds.name, record["test_accuracy"])
            out[entry.name] = (clf.cpu(), record)
    for clf, record in out.values():
        clf.test_accuracy = record["test_accuracy"]  # the run's metrics report it (classifier_acc_<modality>)
        if record.get("warning"):
            log.warning("%s", record["warning"])
    return out


def at_chance(accuracy: float, labels: Tensor, n_classes: int, margin: float = 0.02) -> str:
    """A warning (not cached) where a classifier's test accuracy is within ``margin`` of guessing (the larger of
    1 / classes and the most frequent class's share); '' otherwise."""
    guess = max(1.0 / n_classes, float(torch.bincount(labels.long(), minlength=n_classes).max()) / max(len(labels), 1))
    if accuracy > guess + margin:
        return ""
    return (f"the judging classifier reaches {accuracy:.4f} test accuracy, at chance ({guess:.4f}): it is not cached and "
            f"the coherence it judges means nothing; check the table and its labels")


def _load(path: Path, res: Resolved, n_classes: int, pad) -> tuple[nn.Module, dict] | None:
    meta = path.with_suffix(".json")
    if not (path.exists() and meta.exists()):
        return None
    try:
        record = json.loads(meta.read_text())
        clf = build_table_classifier(res, n_classes, pad)
        clf.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # a corrupt cache entry is retrained, never trusted
        log.warning("classifier cache %s is unusable (%s); training it again", path, type(e).__name__)
        return None
    return (clf.eval(), record) if record.get("arch") == ARCH else None


def _save(path: Path, clf: nn.Module, record: dict) -> None:
    try:
        write_classifier(path, clf, record)
    except OSError as e:
        raise MemeError(f"cannot write the classifier cache {path} ({e.strerror}); set MEME_CACHE_DIR to a writable "
                        f"directory") from None
