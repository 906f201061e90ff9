"""The project's flat configs: ``FlatConfig`` (their shared behaviour), ``key`` (a field with its help) and the
keys every training run has (``SharedKeys``). ``TrainConfig`` joins those with each model's own keys; the model
registry builds it (``meme.models.TrainConfig``, by ``train_config``), so this module knows no model.

A config converts to and from a flat dict, which is what the CLI, Ray Tune's ``param_space`` and MLflow's
params see. An unknown key, a wrong type or an out-of-range value is a ``MemeError`` naming the key
and what is valid.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields, make_dataclass
from pathlib import Path
from typing import Any

from meme.errors import MemeError, check_choice
from meme.paths import is_dataset_file, resolved

PRECISIONS = ("auto", "fp32", "bf16")


class FlatConfig:
    """Shared behaviour of the project's frozen, flat config dataclasses: dict round trip, strict keys, types."""

    _what = "config"

    def _check_types(self) -> None:
        """Every field holds its annotated type (ints are accepted for floats and converted; bools are not ints)."""
        types = self.types()
        for f in fields(self):
            v = getattr(self, f.name)
            typ = types[f.name]
            if typ == "float" and isinstance(v, int) and not isinstance(v, bool):
                object.__setattr__(self, f.name, float(v))
                continue
            if not isinstance(v, _TYPES[typ]) or (isinstance(v, bool) and typ != "bool"):
                raise MemeError(f"{self._what} key {f.name!r} must be of type {typ}, got {v!r}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def types(cls) -> dict[str, str]:
        """Each key's type name: ``{"lr": "float", "seed": "int", "model": "str", ...}``."""
        return {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in fields(cls)}

    @classmethod
    def add_options(cls, parser) -> None:
        """One command-line option per key (``--max-train-pairs``; booleans as ``--x`` / ``--no-x``), default
        None so that only the options given count; each key's help is its field's (``key``)."""
        types = cls.types()
        for f in fields(cls):
            flag = "--" + f.name.replace("_", "-")
            typ = types[f.name]
            text = f"{f.metadata.get('help', '')} (default: {f.default!r})"
            if typ == "bool":
                parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=text)
            else:
                parser.add_argument(flag, dest=f.name, type=_TYPES[typ], default=None, help=text)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        unknown = sorted(set(d) - set(cls.keys()))
        if unknown:
            raise MemeError(f"unknown {cls._what} key(s) {', '.join(map(repr, unknown))}; valid keys: {', '.join(cls.keys())}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes):
        return self.from_dict({**self.to_dict(), **changes})

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_stored(cls, d: dict[str, Any]):
        """A config as a run stored it: keys added since then take the value that reproduces what that
        run did (``LEGACY_DEFAULTS``), or else their default."""
        return cls.from_dict(cls.with_legacy(d))

    @classmethod
    def with_legacy(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` with the keys it lacks that changed default since (``LEGACY_DEFAULTS``) at their old value."""
        return {**getattr(cls, "_legacy", {}), **d}

    @classmethod
    def load(cls, path):
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise MemeError(f"cannot read {cls._what} {path}: {e}") from None


def check_device_name(device: str) -> None:
    """The one check of a ``device`` key (run and evaluation configs alike)."""
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        raise MemeError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")


def key(default, help: str, name=None, only: bool = False):
    """A config field with its one line of help, written once: the CLI's ``--help`` and the docs read it.

    ``name``: how a study's trial name shows the key's value (``"K{}"``, a (true, false) pair of words, or a
    function; by default ``<key><value>``). ``only``: a key of the models that declare it alone; any other
    model given a value other than its default refuses it."""
    return field(default=default, metadata={"help": help, "name": name, "only": only})


#: keys whose default changed after runs were written without them: the value such a run was trained with
#: (``nets``: before the network family became a key, every run used appendix K's networks)
#: (``vector_output``: before it existed, vector decoders had an identity output on the raw rows)
LEGACY_DEFAULTS = {"nets": "appendix_k", "vector_output": "linear"}
VECTOR_OUTPUT_CHOICES = ("auto", "linear")
#: the models' own keys (``MultimodalModel.Keys``) stand after this shared key, before the optimisation keys
MODEL_KEYS_AFTER = "vector_output"


@dataclass(frozen=True)
class SharedKeys:
    """The keys every run has, whatever its model. Each model declares its own keys next to its code (a frozen
    dataclass ``Keys`` on the model class, written with ``key``); ``train_config`` joins them into ``TrainConfig``.
    Checks here read the values alone: those against the dataset (its modalities, the network family, the
    observation scheme) are made where a run is built (``meme.runs.check_config``)."""

    # what to train
    model: str = key("meme", 'meme | mvae | mmvae | mopoe | mmjsd')
    dataset: str = key("mnist_svhn", 'mnist_svhn | cub | a dataset file (path/to/data.yaml: your own modalities, two or more)')
    # data
    data_dir: str = key("", '"" = $MEME_DATA_DIR or ~/.cache/meme')
    download: bool = key(True, 'download missing MNIST/SVHN files (--no-download: fail instead)')
    pairings: int = key(1, 'random matchings per digit (1 as in the MEME code; 20-30 as in MMVAE)')
    data_seed: int = key(0, 'seeds the pairing and which examples stay paired', name="d{}")
    max_train_pairs: int = key(0, '0 = all; otherwise a random N of the training pairs, seeded by data_seed (quick runs)')
    max_test_pairs: int = key(0, '0 = all; otherwise a random N of the test pairs, seeded by data_seed')
    features_dir: str = key("", 'CUB feature store written by `meme features` ("" = <data dir>/cub/features)')
    # partial observation (paper §4.1, appendix J.2)
    supervision: float = key(1.0, 'fraction f in (0, 1] of pairs observed together', name="f{:g}")
    observed: str = key("split", 'what the rest (not fully observed) keeps: a modality name; "split" (each keeps one '
                        'modality, equal shares); "random" (each modality kept with probability p_observed, at least one); '
                        'or subsets with weights, "a+b:2, c:1"',
                        # subsets "a+b:2, c:1" -> a+bx2_cx1
                        name=lambda v: v.replace(" ", "").replace(":", "x").replace(",", "_"))
    p_observed: float = key(0.5, 'with observed "random": the probability each modality is kept, in (0, 1]')
    paired_only: bool = key(False, 'drop the unpaired rest (ablation J.2)', name=("pairedonly", "withunpaired"))
    # networks
    nets: str = key("published", "network family: published (the published MEME code's, default) | appendix_k (the paper's appendix K table)")
    latent_dim: int = key(0, "latent size; 0 = the dataset's own (64, or the dataset file's latent_dim)", name="z{}")
    sigma_floor: float = key(0.0, "floor on the encoders' sigma; 0 = the network family's own (published: 1e-3 MNIST, 1e-4 SVHN; appendix_k: 1e-3)")
    llik_scale: float = key(1.0, 'fixed Laplace scale of image likelihoods (1.0 in the published MEME code)')
    vector_output: str = key("auto", "decoder output of a dataset file's vector modalities: auto (a sigmoid for rows in [0, 1], "
                             "as the image and published MNIST decoders; other rows standardised by the training table, "
                             "linear output, likelihood scale per feature) | linear (identity on the raw rows, as runs before this key)")
    # (the models' own keys stand here: MODEL_KEYS_AFTER)
    # optimisation
    lr: float = key(5e-4, 'Adam learning rate (5e-4 in the paper)', name="lr{:.2g}")
    beta1: float = key(0.9, "Adam's beta1")
    beta2: float = key(0.999, "Adam's beta2")
    batch_size: int = key(128, 'examples per batch (128 in the paper)', name="b{}")
    epochs: int = key(100, 'epochs to train (100 for MNIST-SVHN in the paper, 300 for CUB)')
    seed: int = key(0, 'seeds the initial weights, the batch order and the sampling', name="s{}")
    # execution
    device: str = key("auto", 'auto | cpu | cuda | cuda:N')
    precision: str = key("auto", 'auto: bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32 (CUDA too: '
                         'faster there at these sizes, measured)')
    compile: bool = key(False, 'torch.compile the loss (the networks and the objective in one graph); on CUDA with CUDA '
                        'graphs and a fused Adam (3.6x the eager step on an H200)')
    num_threads: int = key(0, "0 = torch's default")
    checkpoint_every: int = key(1, 'epochs between checkpoints (the last epoch is always saved)')
    eval_every: int = key(0, 'evaluate every N epochs and always after the last (0 = after the last only)')

    @staticmethod
    def check(cfg) -> None:
        check_supervision(cfg.supervision)
        positive(cfg, "pairings", "batch_size", "epochs", "checkpoint_every")
        if cfg.batch_size < 2:
            raise MemeError(f"batch_size={cfg.batch_size} must be at least 2 (BatchNorm cannot train on one example)")
        non_negative(cfg, "max_train_pairs", "max_test_pairs", "num_threads", "eval_every", "latent_dim", "seed",
                     "data_seed")
        if not cfg.lr > 0:
            raise MemeError(f"lr={cfg.lr} must be > 0 (the paper uses 5e-4)")
        for b in ("beta1", "beta2"):
            if not 0.0 <= getattr(cfg, b) < 1.0:
                raise MemeError(f"{b}={getattr(cfg, b)} must be in [0, 1)")
        if not cfg.sigma_floor >= 0 or not cfg.llik_scale > 0:
            raise MemeError(f"sigma_floor={cfg.sigma_floor} must be >= 0 (0 = the network family's own) "
                            f"and llik_scale={cfg.llik_scale} must be > 0")
        check_choice("precision", cfg.precision, PRECISIONS)
        check_choice("vector_output", cfg.vector_output, VECTOR_OUTPUT_CHOICES)
        check_device_name(cfg.device)
        if is_dataset_file(cfg.dataset):  # runs record where the file is, wherever they are resumed from
            object.__setattr__(cfg, "dataset", str(resolved(cfg.dataset, "dataset file")))


def train_config(models: dict, module: str) -> type:
    """``TrainConfig``: one frozen, flat dataclass of the shared keys and every model's own keys (``models``: the
    registry, name -> model class with a ``Keys`` dataclass; a key several models share is declared once, on a
    common base class). Its checks: the shared ones, each model's ``Keys.check``, the model's name, and no key
    marked ``only`` given to a model that lacks it."""
    parts = list(dict.fromkeys(m.Keys for m in models.values()))
    shared = fields(SharedKeys)
    at = [f.name for f in shared].index(MODEL_KEYS_AFTER) + 1
    own = {name: {f.name for f in fields(m.Keys)} for name, m in models.items()}
    spec = []
    for f in [*shared[:at], *(f for p in parts for f in fields(p)), *shared[at:]]:
        if f.name in (s[0] for s in spec):
            raise TypeError(f"config key {f.name!r} is declared twice; declare a shared key once, on a common base")
        spec.append((f.name, f.type, field(default=f.default, metadata=f.metadata)))

    def __post_init__(self):
        self._check_types()
        SharedKeys.check(self)
        for part in parts:
            part.check(self)
        check_choice("model", self.model, models)
        given = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.metadata.get("only")
                 and f.name not in own[self.model] and getattr(self, f.name) != f.default]
        if given:
            owners = sorted({m for m, keys in own.items() for g in given if g.split("=")[0] in keys})
            raise MemeError(f"{', '.join(given)} is a key of model {' and '.join(owners)} only; model {self.model!r} has "
                            f"no such part (leave it out, or use --model {owners[0]})")

    return make_dataclass("TrainConfig", spec, bases=(FlatConfig,), frozen=True,
                          namespace={"__post_init__": __post_init__, "_legacy": LEGACY_DEFAULTS, "__module__": module,
                                     "__doc__": "One training run's keys: ``meme.config.SharedKeys`` and each model's "
                                                "``Keys`` (see ``meme.config.train_config``)."})


def check_supervision(f: float) -> None:
    if not isinstance(f, (int, float)) or not (0.0 < float(f) <= 1.0):
        raise MemeError(f"supervision fraction f={f!r} is outside (0, 1]; e.g. 1, 0.5, 0.25, 0.125, 0.0625")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def positive(cfg, *names):
    for n in names:
        if getattr(cfg, n) < 1:
            raise MemeError(f"{n}={getattr(cfg, n)} must be a positive integer")


def non_negative(cfg, *names):
    for n in names:
        if getattr(cfg, n) < 0:
            raise MemeError(f"{n}={getattr(cfg, n)} must be >= 0")
