"""Digit classifiers for cross-coherence, trained by the project on the real training sets.

One small two-conv LeNet per image modality (conv 3x3 -> BatchNorm -> ReLU -> max-pool, twice; FC 256;
dropout; FC 10). It takes float images in [0, 1] of the modality's shape, which is what the decoders
output, so generated images are classified exactly like real ones.

Files: ``<data_dir>/classifiers/<modality>.pt`` (a plain state dict, loaded with ``weights_only=True``)
and ``<modality>.json`` beside it (modality, architecture, test accuracy, epochs, seed). They are reused
when present; ``meme eval classifiers --data-dir D`` (re)trains them.

``CLASSIFIERS`` maps a modality name to its ``ClassifierSpec``; a modality without an entry (CUB's
features and captions) simply has no coherence metrics.
"""
from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from meme.data.mnist_svhn import load_mnist, load_svhn, resolve_data_dir
from meme.device import resolve_precision, tune_allocator
from meme.errors import MemeError, check_choice
from meme.nets.base import as_float
from meme.progress import bar as progress_bar

log = logging.getLogger(__name__)

ARCH = "lenet2-v1"


class DigitClassifier(nn.Module):
    """Two conv stages and two FC layers; input (B, C, H, W) floats in [0, 1], output (B, n_classes) logits."""

    def __init__(self, in_shape: tuple[int, int, int], channels: tuple[int, int] = (32, 64), hidden: int = 256,
                 n_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        c, h, w = in_shape
        self.in_shape = tuple(in_shape)
        layers, prev = [], c
        for ch in channels:
            layers += [nn.Conv2d(prev, ch, 3, padding=1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            prev = ch
        self.features = nn.Sequential(*layers)
        flat = prev * (h // 4) * (w // 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                  nn.Linear(hidden, n_classes))
        self.features.to(memory_format=torch.channels_last)  # faster convolutions on CPU (oneDNN)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise MemeError(f"the classifier takes images of shape {self.in_shape}, got {tuple(x.shape[1:])}")
        x = ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
        return self.head(self.features(x))

    def for_inference(self) -> "DigitClassifier":
        """An eval-mode copy that judges faster: each BatchNorm folded into its conv, and the max-pool taken before
        the ReLU (they commute), so the elementwise passes run on a quarter of the pixels. Its logits equal this
        classifier's to about 1e-7 in fp32 (not bit for bit), so the evaluation uses it only where it runs in
        bf16 (``EvalConfig.precision``), where a batch of 256 PolyMNIST images takes 5.8 ms against 8.0 (this
        machine's 2 cores). Attributes such as ``test_accuracy`` are kept."""
        fast = copy.deepcopy(self).eval()
        layers = []
        for i in range(0, len(fast.features), 4):
            conv, bn, relu, pool = fast.features[i:i + 4]
            layers += [fuse_conv_bn_eval(conv, bn), pool, relu]
        fast.features = nn.Sequential(*layers).to(memory_format=torch.channels_last)
        return fast


@dataclass(frozen=True)
class ClassifierSpec:
    in_shape: tuple[int, int, int]
    #: (data_dir, split, download) -> (uint8 images (N, C, H, W), labels (N,))
    load: Callable
    epochs: int
    channels: tuple[int, int] = (32, 64)


def _load_mnist(data_dir, split, download):
    x, y = load_mnist(data_dir, split, download)
    return x.unsqueeze(1), y


CLASSIFIERS: dict[str, ClassifierSpec] = {
    "mnist": ClassifierSpec((1, 28, 28), _load_mnist, epochs=3, channels=(16, 32)),
    "svhn": ClassifierSpec((3, 32, 32), load_svhn, epochs=4, channels=(32, 64)),
}


def build_classifier(modality: str) -> DigitClassifier:
    check_choice("classifier modality", modality, CLASSIFIERS)
    spec = CLASSIFIERS[modality]
    return DigitClassifier(spec.in_shape, spec.channels)


def classifier_dir(data_dir) -> Path:
    return resolve_data_dir(data_dir) / "classifiers"


@torch.no_grad()
def predict(clf: nn.Module, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Predicted labels of images ``x`` (uint8 or float in [0, 1]) on the classifier's device."""
    dev = next(iter([*clf.parameters(), *clf.buffers()]), torch.empty(0)).device
    out = [clf(as_float(x[i:i + batch_size].to(dev))).argmax(1) for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=dev)


def accuracy(clf: nn.Module, x: Tensor, y: Tensor) -> float:
    clf.eval()
    return float((predict(clf, x).cpu() == y.cpu()).float().mean()) if y.numel() else float("nan")


def train_classifier(modality: str, data_dir=None, epochs: int | None = None, batch_size: int = 256, lr: float = 2e-3,
                     seed: int = 0, device: str | torch.device = "cpu", download: bool = True,
                     progress: bool = True, max_train: int = 0) -> tuple[DigitClassifier, dict]:
    """Train the digit classifier of ``modality`` on its real training split; returns it and its record."""
    check_choice("classifier modality", modality, CLASSIFIERS)
    spec = CLASSIFIERS[modality]
    epochs = spec.epochs if epochs is None else epochs
    if epochs < 1:
        raise MemeError(f"epochs={epochs} must be a positive integer")
    x_tr, y_tr = spec.load(data_dir, "train", download)
    x_te, y_te = spec.load(data_dir, "test", download)
    if max_train:
        x_tr, y_tr = x_tr[:max_train], y_tr[:max_train]
    if x_tr.shape[0] == 0 or x_te.shape[0] == 0:
        raise MemeError(f"{modality}: the training or test split in {resolve_data_dir(data_dir)} is empty")
    clf, seconds = fit_classifier(lambda: build_classifier(modality), x_tr, y_tr, epochs, batch_size, lr, seed,
                                  device, progress, f"classifier {modality}")
    clf.eval()
    record = {"modality": modality, "arch": ARCH, "test_accuracy": accuracy(clf, x_te, y_te),
              "epochs": epochs, "seed": seed, "n_train": int(x_tr.shape[0]), "n_test": int(x_te.shape[0]),
              "train_time_s": round(seconds, 1), "data_dir": str(resolve_data_dir(data_dir))}
    return clf, record


#: early stopping (``fit_classifier(early_stop=...)``): held-out rows, how often they are scored, what counts as a gain
HOLDOUT_ROWS, HOLDOUT_FRACTION = 5000, 0.1
CHECK_EVERY, MIN_GAIN = 50, 1e-3


@dataclass(frozen=True)
class EarlyStop:
    """Stop on held-out accuracy: after ``patience`` scores (every ``CHECK_EVERY`` steps) without a gain of
    ``MIN_GAIN``, the learning rate falls linearly to 0 over ``anneal`` steps (the end of a one-cycle schedule), and
    training stops."""
    patience: int
    anneal: int


def fit_classifier(build: Callable[[], nn.Module], x_tr: Tensor, y_tr: Tensor, epochs: int, batch_size: int = 256,
                   lr: float = 2e-3, seed: int = 0, device="cpu", progress: bool = True,
                   desc: str = "classifier", early_stop: EarlyStop | None = None) -> tuple[nn.Module, float]:
    """Train the classifier ``build()`` makes (under ``seed``) with Adam and a one-cycle schedule on rows ``x_tr``
    (converted by ``as_float`` batch by batch) and labels ``y_tr``; returns it in eval mode and the seconds taken.

    ``early_stop``: hold out ``HOLDOUT_FRACTION`` of the rows (at most ``HOLDOUT_ROWS``), train at a constant rate,
    score them every ``CHECK_EVERY`` steps, and at a plateau anneal and stop (``EarlyStop``; ``epochs`` is then the
    most it runs). Where bf16 is native (``resolve_precision("auto")``) the forward pass runs in bf16 autocast.
    ``benchmarks/classifier_speed.py`` measures it against the one-cycle schedule on MNIST."""
    tune_allocator()
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x_val = y_val = None
    if early_stop is not None:
        n_val = min(HOLDOUT_ROWS, int(len(x_tr) * HOLDOUT_FRACTION))
        order = torch.randperm(len(x_tr), generator=g)
        x_val, y_val, x_tr, y_tr = x_tr[order[:n_val]], y_tr[order[:n_val]], x_tr[order[n_val:]], y_tr[order[n_val:]]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        clf = build().to(device)
        opt = torch.optim.Adam(clf.parameters(), lr=lr)
        steps = epochs * -(-x_tr.shape[0] // batch_size)
        t0 = time.perf_counter()
        bar = progress_bar(total=steps, desc=desc, progress=progress, fine=True, unit="batch")
        clf.train()
        batches = _batches(x_tr, y_tr, epochs, batch_size, g, device)
        if early_stop is None:
            _one_cycle(clf, opt, batches, steps, lr, bar)
        else:
            _early_stopping(clf, opt, batches, lr, x_val, y_val, early_stop, device, bar)
        bar.close()
    return clf.eval(), time.perf_counter() - t0


def _batches(x: Tensor, y: Tensor, epochs: int, batch_size: int, g: torch.Generator, device):
    """The training batches of ``epochs`` passes, each in a fresh order drawn from ``g``, as float rows on ``device``."""
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, perm.numel(), batch_size):
            idx = perm[i:i + batch_size]
            yield as_float(x[idx].to(device)), y[idx].to(device)


def _one_cycle(clf: nn.Module, opt, batches, steps: int, lr: float, bar) -> None:
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for xb, yb in batches:
        loss = F.cross_entropy(clf(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def _early_stopping(clf: nn.Module, opt, batches, lr: float, x_val: Tensor, y_val: Tensor, rule: EarlyStop,
                    device: torch.device, bar) -> None:
    bf16 = resolve_precision("auto", device) == "bf16"
    best, stale, anneal_from = -1.0, 0, None
    for step, (xb, yb) in enumerate(batches, start=1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = clf(xb)
        loss = F.cross_entropy(logits.float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.update(1)
        if anneal_from is not None:   # the plateau was reached: the rate falls to 0, then training stops
            frac = (step - anneal_from) / rule.anneal
            for group in opt.param_groups:
                group["lr"] = lr * max(0.0, 1.0 - frac)
            if frac >= 1.0:
                return
        elif len(x_val) and step % CHECK_EVERY == 0:
            score = accuracy(clf, x_val, y_val)
            clf.train()
            best, stale = (score, 0) if score > best + MIN_GAIN else (best, stale + 1)
            if stale >= rule.patience:
                anneal_from = step


def save_classifier(clf: nn.Module, record: dict, directory) -> Path:
    return write_classifier(Path(directory) / f"{record['modality']}.pt", clf, record)


def write_classifier(path: Path, clf: nn.Module, record: dict) -> Path:
    """``path`` (the state dict, written atomically) and ``path`` with ``.json`` (the record) beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.cpu() for k, v in clf.state_dict().items()}, tmp)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return path


def load_classifier(modality: str, directory, device="cpu") -> tuple[DigitClassifier, dict]:
    """The saved classifier of ``modality`` in ``directory`` and its record (with the test accuracy)."""
    check_choice("classifier modality", modality, CLASSIFIERS)
    directory = Path(directory)
    path, meta = directory / f"{modality}.pt", directory / f"{modality}.json"
    hint = f"train it with `meme eval classifiers --data-dir <data dir> --modality {modality}`"
    if not path.exists() or not meta.exists():
        raise MemeError(f"no {modality} classifier at {path if not path.exists() else meta}; {hint}")
    try:
        record = json.loads(meta.read_text())
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MemeError(f"classifier file {path} or {meta} is corrupt ({type(e).__name__}: {e}); {hint}") from None
    if not isinstance(record, dict) or record.get("modality") != modality:
        got = record.get("modality") if isinstance(record, dict) else None
        raise MemeError(f"{meta} describes a classifier for {got!r}, not {modality!r}; {hint}")
    if record.get("arch") != ARCH:
        raise MemeError(f"{path} has architecture {record.get('arch')!r}, this version uses {ARCH!r}; {hint}")
    clf = build_classifier(modality)
    try:
        clf.load_state_dict(state)
    except Exception as e:
        raise MemeError(f"{path} does not fit the {modality} classifier ({type(e).__name__}); {hint}") from None
    clf.test_accuracy = record.get("test_accuracy")  # the run's metrics report it (classifier_acc_<modality>)
    return clf.to(device).eval(), record


def load_classifiers(names, directory, device="cpu", missing: str = "error") -> dict[str, nn.Module]:
    """Classifiers for those of ``names`` that have one in ``CLASSIFIERS``.

    ``missing="error"`` raises ``MemeError`` when such a file is absent; ``"skip"`` leaves it out (its
    coherence metrics are then absent).
    """
    check_choice("missing", missing, ["error", "skip"])
    out = {}
    for name in names:
        if name not in CLASSIFIERS:
            continue
        try:
            out[name], record = load_classifier(name, directory, device)
        except MemeError:
            if missing == "error":
                raise
            log.warning("no usable %s classifier in %s: its coherence metrics are skipped", name, directory)
            continue
        log.info("%s classifier: test accuracy %.4f", name, record["test_accuracy"])
    return out


def ensure_classifiers(names, data_dir=None, directory=None, retrain: bool = False, device="cpu",
                       epochs: int | None = None, progress: bool = True, download: bool = True,
                       max_train: int = 0) -> dict[str, dict]:
    """Train (or with ``retrain``, re-train) the classifiers of ``names`` that are missing; return their records."""
    directory = Path(directory) if directory else classifier_dir(data_dir)
    records = {}
    for name in names:
        check_choice("classifier modality", name, CLASSIFIERS)
        if not retrain:
            try:
                records[name] = load_classifier(name, directory)[1]
                continue
            except MemeError:
                pass
        clf, record = train_classifier(name, data_dir, epochs=epochs, device=device, progress=progress,
                                       download=download, max_train=max_train)
        save_classifier(clf, record, directory)
        records[name] = record
    return records
