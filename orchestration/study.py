"""Studies: one YAML file per study in ``search_spaces/``, validated on load.

A study file states (``?`` marks optional keys)::

    description: "Fig. 5: ..."        # which figure/table of the paper it reproduces
    base: {model: meme, ...}          # ? TrainConfig keys shared by every trial (not epochs)
    grid:                             # ? TrainConfig key -> non-empty list; the cartesian product
      supervision: [1.0, 0.5]         #   (a list of such mappings: the union of their products)
      seed: [0, 1, 2]                 #   seeds are an explicit axis
    search:                           # ? TrainConfig key -> one distribution
      lr: {loguniform: [1.0e-4, 3.0e-3]}   # uniform [lo, hi] | loguniform [lo, hi] | randint [lo, hi) | choice [..]
    searcher: {name: optuna, seed: 0, num_samples: 16}   # ? optuna (TPE, seeded) | random
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}  # ? asha | fifo
    metric: coherence_mnist_to_svhn   # what the summary ranks by (and the searcher/scheduler optimise)
    mode: max                         # max | min
    epochs: 100                       # per trial (``sweep.py --epochs`` overrides it)
    resources: {cpu: 1, gpu: 0.25}    # ? per trial; fractional GPUs pack trials on one GPU
    eval: {max_test_pairs: 0}         # ? EvalConfig keys (meme.eval)
    synthetic_data: {n_train: 300, n_test: 200, seed: 0}   # ? generated MNIST/SVHN-format data
    report:                           # ? what report.py regenerates
      figures: [{name: fig5, x: supervision, y: [coherence_mnist_to_svhn], series: [observed], logx: true}]
      tables: [{name: appendix_h, rows: [observed, supervision], columns: [coherence_mnist_to_svhn]}]
      # figures and tables take ``where: {key: value}`` to use only the runs with those config values
      claims:                         # ? a relative claim: mean of a > mean of b, in every group of ``per``
        - {name: meme_beats_mvae, text: "MEME beats MVAE at every f", per: [supervision],
           a: {where: {model: meme}, metric: coherence_cross_mean},
           b: {where: {model: mvae}, metric: coherence_cross_mean}}   # b may be {value: 0}; a metric may
                                      #   be a difference of two: "latent_acc_mnist - latent_acc_svhn"

The shape (keys, types, bounds, choices, defaults) is declared once, as the pydantic dataclasses below
(``StudyFile`` and its parts; ``sweep.py --study-schema`` prints it as JSON Schema for editors). What spans
several keys is checked after it (``_Semantics``): model and dataset names against the registries
(``meme.models.MODELS``, ``meme.data.DATASETS``) by building the ``TrainConfig`` of every grid point and every
end of every search range, the metric against the datasets, unique report names. Every mistake is one
``MemeError`` line naming the file, the key and what is valid.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import asdict as dataclasses_asdict
from dataclasses import dataclass, field
from pathlib import Path

from meme import metrics
from meme.data import get_dataset
from meme.errors import MemeError
from meme.eval import EvalConfig
from meme.models import TrainConfig
from meme.runs import check_config
from meme.yamlio import load_yaml

#: where ``--study NAME`` looks (``$MEME_STUDIES_DIR`` overrides it)
STUDIES_DIR = Path(os.environ.get("MEME_STUDIES_DIR", Path(__file__).resolve().parents[1] / "search_spaces"))

MAX_POINTS = 10_000
_FIELD_TYPES = TrainConfig.types()


@dataclass(frozen=True)
class SearchParam:
    dist: str
    args: tuple


@dataclass(frozen=True)
class Study:
    name: str
    path: str
    text: str                                # the YAML as written (logged as an artifact, frozen for --resume)
    description: str
    metric: str
    mode: str
    epochs: int
    base: dict = field(default_factory=dict)
    grid: tuple = ()                         # tuple of {key: tuple(values)}: the union of their products
    search: dict = field(default_factory=dict)   # key -> SearchParam
    searcher: dict | None = None             # {"name", "seed", "num_samples"}
    scheduler: dict | None = None            # {"name", "grace_period", "reduction_factor"}
    resources: dict = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    eval: dict = field(default_factory=dict)
    synthetic_data: dict | None = None       # {"n_train", "n_test", "seed"}
    figures: tuple = ()
    tables: tuple = ()
    claims: tuple = ()

    # ------------------------------------------------------------ trials
    def points(self) -> list[dict]:
        """The grid points in order (one empty point when the study has no grid)."""
        return grid_points(self.grid)

    def varying_keys(self) -> tuple[str, ...]:
        """The config keys that differ between trials (grid axes with more than one value, then search keys)."""
        pts = self.points()
        keys = {k for p in pts for k in p if len({repr(q.get(k)) for q in pts}) > 1} | set(self.search)
        return tuple(k for k in TrainConfig.keys() if k in keys)

    def num_trials(self) -> int:
        """Trials the study runs: grid points x num_samples."""
        return len(self.points()) * (self.searcher["num_samples"] if self.searcher else 1)

    def base_config(self, **overrides) -> dict:
        """The full TrainConfig dict shared by every trial (defaults filled in), with ``overrides``."""
        return TrainConfig.from_dict({**self.base, "epochs": self.epochs, **overrides}).to_dict()

    def per_epoch_metric(self) -> bool:
        return is_per_epoch_metric(self.metric, int(self.base.get("eval_every", 0)))


def is_per_epoch_metric(metric: str, eval_every: int) -> bool:
    """True when every epoch's result holds ``metric``: a training loss, or evaluations every epoch."""
    return metric == "loss" or metric.startswith("loss_") or eval_every == 1


def grid_points(grid) -> list[dict]:
    points = []
    for g in grid:
        keys = list(g)
        points += [dict(zip(keys, combo)) for combo in itertools.product(*(g[k] for k in keys))]
    return points or [{}]


# ----------------------------------------------------------------- naming
def name_part(k: str, v) -> str:
    """How a trial name shows key ``k`` at value ``v``: the key's own ``name`` (``meme.config.key``: a format, a
    (true, false) pair or a function), else the value of a string key, else ``<key><value>``."""
    fmt = TrainConfig.__dataclass_fields__[k].metadata.get("name")
    if isinstance(fmt, tuple):
        return fmt[0] if v else fmt[1]
    if isinstance(fmt, str):
        return fmt.format(v)
    if fmt is not None:
        return fmt(v)
    if isinstance(v, str):
        return v
    return f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"


ALWAYS_NAMED = ("model", "supervision", "observed")


def trial_name(config: dict, varying=(), index: int | None = None) -> str:
    """A readable run name, e.g. ``meme-f0.25-mnist-p10-s0``: the model, f, observed, the varying keys, the seed."""
    keys = [k for k in TrainConfig.keys() if (k in ALWAYS_NAMED or k in varying) and k != "seed"] + ["seed"]
    parts = []
    for k in keys:
        v = config.get(k)
        if v is None:   # not known yet: drawn by the searcher when the trial starts
            parts.append(f"{k}?")
        elif v == "":   # a key left at its empty default (meme_combine of a model without one)
            continue
        else:
            parts.append(name_part(k, v))
    if index is not None:
        parts.append(f"t{index}")
    return "-".join(parts)


# ---------------------------------------------------------------- loading
def study_names(directory=None) -> list[str]:
    d = Path(directory) if directory else STUDIES_DIR
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def study_path(name_or_path, directory=None) -> Path:
    """``name`` -> ``search_spaces/name.yaml``; a path to a ``.yaml`` file is taken as is."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or os.sep in s:
        p = Path(s).expanduser()
        if not p.is_file():
            raise MemeError(f"no study file {p}")
        return p
    d = Path(directory) if directory else STUDIES_DIR
    p = d / f"{s}.yaml"
    if not p.is_file():
        names = study_names(d)
        raise MemeError(f"unknown study {s!r}; valid: {', '.join(names) if names else f'(no studies in {d})'}")
    return p


def load_study(name_or_path, directory=None) -> Study:
    path = study_path(name_or_path, directory)
    try:
        text = path.read_text()
    except OSError as e:
        raise MemeError(f"cannot read study file {path}: {e}") from None
    except UnicodeDecodeError:
        raise MemeError(f"cannot read study file {path}: it is not UTF-8 text (a study is a YAML file)") from None
    return parse_study(text, path.stem, str(path))


def parse_study(text: str, name: str, path: str = "<study>") -> Study:
    """A study from its YAML text: the schema first (``study_schema``), then the checks across keys."""
    from orchestration.study_schema import validate_study_file   # pydantic: the orchestrate extra

    return _Semantics(path).study(validate_study_file(load_yaml(text, path), path), name, text)


# ------------------------------------------------ checks across keys
class _Semantics:
    """What the schema cannot say alone: every grid point and search end is a valid TrainConfig, the metric is
    one the study's datasets report, names are unique, and keys set in one place only."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, msg: str):
        raise MemeError(f"{self.path}: {key}: {msg}")

    def config(self, key, d: dict) -> TrainConfig:
        try:
            cfg = TrainConfig.from_dict(d)
            check_config(cfg)
            return cfg
        except MemeError as e:
            self.fail(key, str(e))

    def study(self, f, name: str, text: str) -> Study:
        """``f``: the ``study_schema.StudyFile`` as read."""
        base = dict(f.base or {})
        if "epochs" in base:
            self.fail("base.epochs", "set epochs at the top level of the study (epochs: N), not in base")
        synthetic = None
        if f.synthetic_data is not None:
            if "data_dir" in base:
                self.fail("base.data_dir", "cannot be set together with synthetic_data (the generated data has its "
                                           "own folder)")
            synthetic = dataclasses_asdict(f.synthetic_data)
        self.config("base", {**base, "epochs": f.epochs})
        grid = self.grid(f.grid, base, f.epochs)
        search = self.search(f.search or {}, base, grid, f.epochs)
        self.known_metric(f.metric, base, grid)
        searcher = self.searcher(f.searcher, search, grid)
        scheduler = self.scheduler(f.scheduler)
        if (searcher or scheduler) and not is_per_epoch_metric(f.metric, int(base.get("eval_every", 0))):
            self.fail("metric", f"{f.metric!r} is an evaluation metric, reported only every base.eval_every epochs; "
                                f"a searcher or scheduler needs it every epoch: set base.eval_every: 1 or use "
                                f"metric: loss")
        cpu, gpu = (f.resources.cpu, f.resources.gpu) if f.resources else (1.0, 0.0)
        figures, tables, claims = self.report(f.report)
        return Study(name=name, path=self.path, text=text, description=f.description, metric=f.metric, mode=f.mode,
                     epochs=f.epochs, base=base, grid=grid, search=search, searcher=searcher, scheduler=scheduler,
                     resources={"cpu": float(cpu), "gpu": float(gpu)}, eval=self.eval(f.eval),
                     synthetic_data=synthetic, figures=figures, tables=tables, claims=claims)

    def known_metric(self, metric: str, base: dict, grid: tuple) -> None:
        """``metric`` is one that trials of every dataset in the study report (``meme.metrics``)."""
        datasets = {base.get("dataset", TrainConfig.dataset)} | {d for g in grid for d in g.get("dataset", ())}
        for ds in sorted(datasets):
            names = get_dataset(ds).names
            if not metrics.is_known(metric, names):
                self.fail("metric", metrics.unknown_message(metric, names))

    def grid(self, v, base, epochs) -> tuple:
        """``grid``: {config key: [values]}, or a list of such mappings (the union of their products)."""
        if v is None:
            return ()
        grids = v if isinstance(v, list) else [v]
        if not grids:
            self.fail("grid", "is an empty list; give a mapping of config key -> list of values")
        out = []
        for gi, g in enumerate(grids):
            gkey = "grid" if not isinstance(v, list) else f"grid[{gi}]"
            if not isinstance(g, dict):
                self.fail(gkey, f"must be a mapping, got {type(g).__name__} {g!r}")
            if not g:
                self.fail(gkey, "is empty; give at least one axis (config key -> list of values)")
            axes = {}
            for k, values in g.items():
                key = f"{gkey}.{k}"
                if k == "epochs":
                    self.fail(key, "epochs is set at the top level of the study, not as a grid axis")
                if k not in _FIELD_TYPES:
                    self.fail(key, f"unknown config key; valid keys: {', '.join(TrainConfig.keys())}")
                if k in base:
                    self.fail(key, f"also set in base ({base[k]!r}); keep it in one place")
                if not isinstance(values, list):
                    self.fail(key, f"must be a list of values (e.g. [{values!r}]), got {values!r}")
                if not values:
                    self.fail(key, "is an empty list; give at least one value")
                if len({repr(x) for x in values}) != len(values):
                    self.fail(key, f"repeats a value: {values!r}")
                # a dataset file is recorded as its absolute path (trials run in other directories)
                values = [self.config(f"{key}[{i}]", {**base, "epochs": epochs, k: x}).to_dict()[k]
                          for i, x in enumerate(values)]
                axes[k] = tuple(values)
            out.append(axes)
        size = sum(math.prod(len(v) for v in axes.values()) for axes in out)   # counted before any point is built
        if size > MAX_POINTS:
            self.fail("grid", f"expands to {size:,} trials; at most {MAX_POINTS:,}")
        points = grid_points(out)
        seen = set()
        for p in points:
            sig = repr(sorted(p.items()))
            if sig in seen:
                self.fail("grid", f"the point {p} appears twice (the union of the grids overlaps)")
            seen.add(sig)
            self.config(f"grid point {p}", {**base, "epochs": epochs, **p})
        return tuple(out)

    def search(self, v: dict, base, grid, epochs) -> dict:
        out = {}
        grid_keys = {k for g in grid for k in g}
        for k, spec in v.items():
            key = f"search.{k}"
            if k not in _FIELD_TYPES or k == "epochs":
                self.fail(key, f"unknown config key; valid keys: {', '.join(x for x in TrainConfig.keys() if x != 'epochs')}")
            if k in base or k in grid_keys:
                self.fail(key, "also set in base or grid; keep it in one place")
            dist, args = spec.dist
            typ = _FIELD_TYPES[k]
            if dist == "choice":
                if len(args) == 1:
                    self.fail(f"{key}.choice", f"{list(args)} is one value, so there is nothing to search (each sample "
                                               f"would train the same trial); set {k}: {args[0]!r} in base")
                probes = args
            elif dist == "randint":
                if typ != "int":
                    self.fail(f"{key}.randint", f"{k} is a {typ}; randint draws integers (use uniform or loguniform)")
                probes = [args[0], args[1] - 1]
            else:
                if typ != "float":
                    self.fail(f"{key}.{dist}", f"{k} is a {typ}; {dist} draws floats (use randint or choice)")
                probes = [float(args[0]), float(args[1])]
            for i, x in enumerate(probes):
                self.config(f"{key}.{dist}[{i}]", {**base, "epochs": epochs, k: x})
            out[k] = SearchParam(dist, args)
        return out

    def searcher(self, s, search, grid):
        if s is None:
            if search:
                self.fail("searcher", "missing: a search space needs a searcher, e.g. "
                                      "{name: optuna, seed: 0, num_samples: 16}")
            return None
        if s.name == "optuna" and not search:
            self.fail("searcher", "optuna needs a search space (search: ...)")
        if s.name == "optuna" and grid:
            self.fail("grid", "cannot be combined with the optuna searcher (Optuna does not take grid axes); "
                              "fix those values in base, or use searcher: {name: random}")
        return dataclasses_asdict(s)

    @staticmethod
    def scheduler(s):
        if s is None:
            return None
        return {"name": "fifo"} if s.name == "fifo" else dataclasses_asdict(s)

    def eval(self, v) -> dict:
        if v is None:
            return {}
        try:
            return EvalConfig.from_dict(v).to_dict()
        except MemeError as e:
            self.fail("eval", str(e))

    def report(self, r):
        if r is None:
            return (), (), ()
        items = {"figures": r.figures or (), "tables": r.tables or (), "claims": r.claims or ()}
        names = set()
        for kind, specs in items.items():
            for i, spec in enumerate(specs):
                if spec.name in names:
                    self.fail(f"report.{kind}[{i}].name",
                              f"{spec.name!r} is used twice; figure, table and claim names must be unique")
                names.add(spec.name)
        return tuple(items["figures"]), tuple(items["tables"]), tuple(items["claims"])
