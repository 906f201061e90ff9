"""``TrainConfig``: one frozen, flat dataclass for a training run.

It converts to and from a flat dict, which is what the CLI, Ray Tune's ``param_space`` and MLflow's
params see. An unknown key, a wrong type or an out-of-range value is a ``MemeError`` naming the key
and what is valid.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from meme.errors import MemeError, check_choice

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
        import argparse

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


def key(default, help: str):
    """A config field with its one line of help, written once: the CLI's ``--help`` and the docs read it."""
    return field(default=default, metadata={"help": help})


#: keys whose default changed after runs were written without them: the value such a run was trained with
#: (``nets``: before the network family became a key, every run used appendix K's networks)
#: (``vector_output``: before it existed, vector decoders had an identity output on the raw rows)
LEGACY_DEFAULTS = {"nets": "appendix_k", "vector_output": "linear"}
VECTOR_OUTPUT_CHOICES = ("auto", "linear")


@dataclass(frozen=True)
class TrainConfig(FlatConfig):
    # what to train
    model: str = key("meme", 'meme | mvae | mmvae | mopoe | mmjsd')
    dataset: str = key("mnist_svhn", 'mnist_svhn | cub | a dataset file (path/to/data.yaml: your own modalities, two or more)')
    # data
    data_dir: str = key("", '"" = $MEME_DATA_DIR or ~/.cache/meme')
    download: bool = key(True, 'download missing MNIST/SVHN files (--no-download: fail instead)')
    pairings: int = key(1, 'random matchings per digit (1 as in the MEME code; 20-30 as in MMVAE)')
    data_seed: int = key(0, 'seeds the pairing and which examples stay paired')
    max_train_pairs: int = key(0, '0 = all; otherwise a random N of the training pairs, seeded by data_seed (quick runs)')
    max_test_pairs: int = key(0, '0 = all; otherwise a random N of the test pairs, seeded by data_seed')
    features_dir: str = key("", 'CUB feature store written by `meme features` ("" = <data dir>/cub/features)')
    # partial observation (paper §4.1, appendix J.2)
    supervision: float = key(1.0, 'fraction f in (0, 1] of pairs observed together')
    observed: str = key("split", 'what the rest (not fully observed) keeps: a modality name; "split" (each keeps one '
                        'modality, equal shares); "random" (each modality kept with probability p_observed, at least one); '
                        'or subsets with weights, "a+b:2, c:1"')
    p_observed: float = key(0.5, 'with observed "random": the probability each modality is kept, in (0, 1]')
    paired_only: bool = key(False, 'drop the unpaired rest (ablation J.2)')
    # networks and objective
    nets: str = key("published", "network family: published (the published MEME code's, default) | appendix_k (the paper's appendix K table)")
    latent_dim: int = key(0, "latent size; 0 = the dataset's own (64, or the dataset file's latent_dim)")
    sigma_floor: float = key(0.0, "floor on the encoders' sigma; 0 = the network family's own (published: 1e-3 MNIST, 1e-4 SVHN; appendix_k: 1e-3)")
    llik_scale: float = key(1.0, 'fixed Laplace scale of image likelihoods (1.0 in the published MEME code)')
    vector_output: str = key("auto", "decoder output of a dataset file's vector modalities: auto (a sigmoid for rows in [0, 1], "
                             "as the image and published MNIST decoders; other rows standardised by the training table, "
                             "linear output, likelihood scale per feature) | linear (identity on the raw rows, as runs before this key)")
    K: int = key(10, 'extra posterior samples in the log q(t|s) estimate')
    lam: float = key(10.0, 'weight of log q(t|s)')
    n_pseudo: int = key(100, 'pseudo-samples per modality (mixture prior of a missing modality)')
    direction: str = key("both", 'both | t_supervises_s | s_supervises_t (two modalities; with more, every observed '
                         'modality supervises the rest: both)')
    meme_combine: str = key("", 'MEME with more than two modalities: how the conditional prior combines the other '
                            'observed modalities\' encoders, product (analytic KL) | mixture (KL estimated on the K+1 '
                            'posterior samples); "" = product')
    meme_pseudo: bool = key(True, "MEME: an example observing one modality alone gets the pseudo-sample mixture prior "
                            "(eq. 3-4; --no-meme-pseudo: the standard normal, the pseudo-samples unused, an ablation)")
    beta: float = key(1.0, 'weight of the KL / JS term of MVAE, MoPoE and mmJSD')
    mmvae_posterior: str = key("gaussian", 'posterior and prior family of MMVAE: gaussian (like-for-like) | laplace (original MMVAE)')
    mmvae_estimator: str = key("elbo", 'MMVAE objective: elbo (stratified, as published) | iwae | dreg')
    mmvae_samples: int = key(1, 'samples per modality (K) of the MMVAE estimators (30 with dreg in the MMVAE code)')
    # optimisation
    lr: float = key(5e-4, 'Adam learning rate (5e-4 in the paper)')
    beta1: float = key(0.9, "Adam's beta1")
    beta2: float = key(0.999, "Adam's beta2")
    batch_size: int = key(128, 'examples per batch (128 in the paper)')
    epochs: int = key(100, 'epochs to train (100 for MNIST-SVHN in the paper, 300 for CUB)')
    seed: int = key(0, 'seeds the initial weights, the batch order and the sampling')
    # execution
    device: str = key("auto", 'auto | cpu | cuda | cuda:N')
    precision: str = key("auto", 'auto: bf16 autocast on CPUs with native bf16 (AVX512-BF16 or AMX), else fp32 (CUDA too: '
                         'faster there at these sizes, measured)')
    compile: bool = key(False, 'torch.compile the loss (the networks and the objective in one graph); on CUDA with CUDA '
                        'graphs and a fused Adam (3.6x the eager step on an H200)')
    num_threads: int = key(0, "0 = torch's default")
    checkpoint_every: int = key(1, 'epochs between checkpoints (the last epoch is always saved)')
    eval_every: int = key(0, 'evaluate every N epochs and always after the last (0 = after the last only)')

    _legacy = LEGACY_DEFAULTS

    def __post_init__(self):
        self._check_types()
        from meme.data.observation import check_supervision

        check_supervision(self.supervision)
        _positive(self, "pairings", "K", "n_pseudo", "batch_size", "epochs", "checkpoint_every")
        if self.batch_size < 2:
            raise MemeError(f"batch_size={self.batch_size} must be at least 2 (BatchNorm cannot train on one example)")
        _non_negative(self, "max_train_pairs", "max_test_pairs", "num_threads", "eval_every", "lam", "latent_dim", "seed",
                      "data_seed")
        if not self.lr > 0:
            raise MemeError(f"lr={self.lr} must be > 0 (the paper uses 5e-4)")
        for b in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, b) < 1.0:
                raise MemeError(f"{b}={getattr(self, b)} must be in [0, 1)")
        if not self.sigma_floor >= 0 or not self.llik_scale > 0:
            raise MemeError(f"sigma_floor={self.sigma_floor} must be >= 0 (0 = the network family's own) "
                            f"and llik_scale={self.llik_scale} must be > 0")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("vector_output", self.vector_output, VECTOR_OUTPUT_CHOICES)
        from meme.data import get_dataset, is_dataset_file
        from meme.models import MODELS
        from meme.models.meme import DIRECTIONS

        check_choice("model", self.model, MODELS)
        from meme.nets import check_family

        if is_dataset_file(self.dataset):  # runs record where the file is, wherever they are resumed from
            from meme.paths import resolved

            object.__setattr__(self, "dataset", str(resolved(self.dataset, "dataset file")))
        spec = get_dataset(self.dataset)
        names = spec.names
        check_family(self.nets, spec.network_keys or names)
        from meme.data.observation import check_observed

        check_observed(self.observed, names, self.p_observed, f" for dataset {self.dataset}")
        check_choice("direction", self.direction, DIRECTIONS)
        self._check_meme_keys(len(names))
        from meme.models.mmvae import ESTIMATORS, FAMILIES

        _positive(self, "mmvae_samples")
        _non_negative(self, "beta")
        check_choice("mmvae_posterior", self.mmvae_posterior, FAMILIES)
        check_choice("mmvae_estimator", self.mmvae_estimator, ESTIMATORS)
        check_device_name(self.device)

    def _check_meme_keys(self, n_modalities: int) -> None:
        from meme.models.meme import COMBINES

        if self.meme_combine:
            check_choice("meme_combine", self.meme_combine, COMBINES)
        given = [f"{k}={v!r}" for k, v in (("meme_combine", self.meme_combine), ("meme_pseudo", self.meme_pseudo))
                 if v != TrainConfig.__dataclass_fields__[k].default]
        if given and self.model != "meme":
            raise MemeError(f"{', '.join(given)} is a key of model meme only; model {self.model!r} has no such part "
                            f"(leave it out, or use --model meme)")
        if self.direction != "both" and n_modalities > 2:
            raise MemeError(f"direction={self.direction!r} names one of two modalities' directions; with "
                            f"{n_modalities} modalities every observed modality supervises the rest: use 'both'")



_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def _positive(cfg, *names):
    for n in names:
        if getattr(cfg, n) < 1:
            raise MemeError(f"{n}={getattr(cfg, n)} must be a positive integer")


def _non_negative(cfg, *names):
    for n in names:
        if getattr(cfg, n) < 0:
            raise MemeError(f"{n}={getattr(cfg, n)} must be >= 0")
