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

Every mistake is a ``MemeError`` naming the file, the key and what is valid. Model and dataset names are
checked against the registries (``meme.models.MODELS``, ``meme.data.DATASETS``) at load time, by
building the ``TrainConfig`` of every grid point and every end of every search range.
"""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from meme.config import TrainConfig
from meme.errors import MemeError
from meme.yamlio import load_yaml

#: where ``--study NAME`` looks (``$MEME_STUDIES_DIR`` overrides it)
STUDIES_DIR = Path(os.environ.get("MEME_STUDIES_DIR", Path(__file__).resolve().parents[1] / "search_spaces"))

DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
SEARCHERS = ("optuna", "random")
SCHEDULERS = ("asha", "fifo")
MODES = ("min", "max")
MAX_POINTS = 10_000
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

TOP_KEYS = ("description", "base", "grid", "search", "searcher", "scheduler", "metric", "mode", "epochs",
            "resources", "eval", "synthetic_data", "report")
REQUIRED = ("description", "metric", "mode", "epochs")


@dataclass(frozen=True)
class SearchParam:
    dist: str
    args: tuple


@dataclass(frozen=True)
class FigureSpec:
    name: str
    x: str
    y: tuple[str, ...]
    series: tuple[str, ...] = ()
    title: str = ""
    logx: bool = False
    where: tuple = ()                        # ((config key, value), ...): only the runs with these values


@dataclass(frozen=True)
class TableSpec:
    name: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    title: str = ""
    where: tuple = ()


@dataclass(frozen=True)
class ClaimSide:
    where: tuple = ()                        # ((config key, value), ...)
    metric: str = ""                         # a metric, or "m1 - m2" (per run); "" with value
    value: float | None = None               # a constant instead of runs


@dataclass(frozen=True)
class ClaimSpec:
    """A relative claim of the paper: the mean of ``a`` exceeds the mean of ``b`` in every group of ``per``."""
    name: str
    text: str
    a: ClaimSide
    b: ClaimSide
    per: tuple[str, ...] = ()


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
def _fmt_flag(prefix_true, prefix_false):
    return lambda v: prefix_true if v else prefix_false


NAME_FORMAT = {
    "supervision": "f{:g}".format, "n_pseudo": "p{}".format, "seed": "s{}".format, "latent_dim": "z{}".format,
    "lr": "lr{:.2g}".format, "K": "K{}".format, "lam": "lam{:g}".format, "data_seed": "d{}".format,
    "batch_size": "b{}".format, "beta": "beta{:g}".format, "pairings": "pairings{}".format,
    "paired_only": _fmt_flag("pairedonly", "withunpaired"),
}
ALWAYS_NAMED = ("model", "supervision", "observed")


def trial_name(config: dict, varying=(), index: int | None = None) -> str:
    """A readable run name, e.g. ``meme-f0.25-mnist-p10-s0``: the model, f, observed, the varying keys, the seed."""
    keys = [k for k in TrainConfig.keys() if (k in ALWAYS_NAMED or k in varying) and k != "seed"] + ["seed"]
    parts = []
    for k in keys:
        v = config.get(k)
        if k in NAME_FORMAT:
            parts.append(NAME_FORMAT[k](v))
        elif isinstance(v, str):
            parts.append(v)
        else:
            parts.append(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}")
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
    return parse_study(text, path.stem, str(path))


def parse_study(text: str, name: str, path: str = "<study>") -> Study:
    return _Validator(path).study(load_yaml(text, path), name, text)


# -------------------------------------------------------------- validation
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_FIELD_TYPES = {f.name: (f.type if isinstance(f.type, str) else f.type.__name__) for f in fields(TrainConfig)}


class _Validator:
    def __init__(self, path: str):
        self.path = path

    def fail(self, key: str, msg: str):
        raise MemeError(f"{self.path}: {key}: {msg}")

    def mapping(self, key, v, allowed=None, required=()) -> dict:
        if not isinstance(v, dict):
            self.fail(key, f"must be a mapping, got {type(v).__name__} {v!r}")
        bad = [k for k in v if not isinstance(k, str)]
        if bad:
            self.fail(key, f"keys must be strings, got {bad[0]!r}")
        if allowed is not None:
            unknown = sorted(set(v) - set(allowed))
            if unknown:
                where = f"{key}.{unknown[0]}" if key else unknown[0]
                self.fail(where, f"unknown key; valid keys: {', '.join(allowed)}")
        for r in required:
            if r not in v:
                self.fail(f"{key}.{r}" if key else r, "missing (required)")
        return v

    def config(self, key, d: dict) -> TrainConfig:
        try:
            return TrainConfig.from_dict(d)
        except MemeError as e:
            self.fail(key, str(e))

    def int_(self, key, v, lo=None):
        if not _is_int(v) or (lo is not None and v < lo):
            self.fail(key, f"must be an integer{f' >= {lo}' if lo is not None else ''}, got {v!r}")
        return v

    def str_(self, key, v, choices=None, pattern=None):
        if not isinstance(v, str) or not v.strip():
            self.fail(key, f"must be a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            self.fail(key, f"unknown value {v!r}; valid: {', '.join(choices)}")
        if pattern is not None and not pattern.match(v):
            self.fail(key, f"{v!r} must use only letters, digits, '_', '-' and '.'")
        return v

    def config_keys(self, key, v, allow_empty=False) -> tuple[str, ...]:
        if not isinstance(v, list) or (not v and not allow_empty):
            self.fail(key, f"must be a {'' if allow_empty else 'non-empty '}list of config keys, got {v!r}")
        for i, k in enumerate(v):
            if k not in _FIELD_TYPES:
                self.fail(f"{key}[{i}]", f"unknown config key {k!r}; valid keys: {', '.join(TrainConfig.keys())}")
        return tuple(v)

    # ------------------------------------------------------------ study
    def study(self, doc, name: str, text: str) -> Study:
        if doc is None:
            self.fail("(file)", "is empty; a study needs at least: " + ", ".join(REQUIRED))
        doc = self.mapping("", doc, TOP_KEYS, REQUIRED)
        description = self.str_("description", doc["description"])
        epochs = self.int_("epochs", doc["epochs"], lo=1)
        mode = self.str_("mode", doc["mode"], MODES)
        metric = self.str_("metric", doc["metric"])
        base = dict(self.mapping("base", doc.get("base") or {}))
        if "epochs" in base:
            self.fail("base.epochs", "set epochs at the top level of the study (epochs: N), not in base")
        synthetic = self.synthetic(doc.get("synthetic_data"), base)
        self.config("base", {**base, "epochs": epochs})
        grid = self.grid(doc.get("grid"), base, epochs)
        search = self.search(doc.get("search") or {}, base, grid, epochs)
        self.known_metric(metric, base, grid)
        searcher = self.searcher(doc.get("searcher"), search, grid)
        scheduler = self.scheduler(doc.get("scheduler"))
        if (searcher or scheduler) and not is_per_epoch_metric(metric, int(base.get("eval_every", 0))):
            self.fail("metric", f"{metric!r} is an evaluation metric, reported only every base.eval_every epochs; "
                                f"a searcher or scheduler needs it every epoch: set base.eval_every: 1 or use "
                                f"metric: loss")
        resources = self.resources(doc.get("resources"))
        eval_cfg = self.eval(doc.get("eval"))
        figures, tables, claims = self.report(doc.get("report"))
        return Study(name=name, path=self.path, text=text, description=description, metric=metric, mode=mode,
                     epochs=epochs, base=base, grid=grid, search=search, searcher=searcher, scheduler=scheduler,
                     resources=resources, eval=eval_cfg, synthetic_data=synthetic, figures=figures, tables=tables,
                     claims=claims)

    def known_metric(self, metric: str, base: dict, grid: tuple) -> None:
        """``metric`` is one that trials of every dataset in the study report (``meme.metrics``)."""
        from meme import metrics
        from meme.data import get_dataset

        datasets = {base.get("dataset", TrainConfig.dataset)} | {d for g in grid for d in g.get("dataset", ())}
        for ds in sorted(datasets):
            names = get_dataset(ds).names
            if not metrics.is_known(metric, names):
                self.fail("metric", metrics.unknown_message(metric, names))

    def grid(self, v, base, epochs) -> tuple:
        if v is None:
            return ()
        grids = v if isinstance(v, list) else [v]
        if not grids:
            self.fail("grid", "is an empty list; give a mapping of config key -> list of values")
        out = []
        for gi, g in enumerate(grids):
            gkey = "grid" if not isinstance(v, list) else f"grid[{gi}]"
            g = self.mapping(gkey, g)
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
        points = grid_points(out)
        if len(points) > MAX_POINTS:
            self.fail("grid", f"expands to {len(points)} trials; at most {MAX_POINTS}")
        seen = set()
        for p in points:
            sig = repr(sorted(p.items()))
            if sig in seen:
                self.fail("grid", f"the point {p} appears twice (the union of the grids overlaps)")
            seen.add(sig)
            self.config(f"grid point {p}", {**base, "epochs": epochs, **p})
        return tuple(out)

    def search(self, v, base, grid, epochs) -> dict:
        v = self.mapping("search", v)
        out = {}
        grid_keys = {k for g in grid for k in g}
        for k, spec in v.items():
            key = f"search.{k}"
            if k not in _FIELD_TYPES or k == "epochs":
                self.fail(key, f"unknown config key; valid keys: {', '.join(x for x in TrainConfig.keys() if x != 'epochs')}")
            if k in base or k in grid_keys:
                self.fail(key, "also set in base or grid; keep it in one place")
            if not isinstance(spec, dict) or len(spec) != 1:
                self.fail(key, f"must be one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}; valid: "
                               f"{', '.join(DISTRIBUTIONS)}; got {spec!r}")
            (dist, args), = spec.items()
            if dist not in DISTRIBUTIONS:
                self.fail(f"{key}.{dist}", f"unknown distribution; valid: {', '.join(DISTRIBUTIONS)}")
            typ = _FIELD_TYPES[k]
            if dist == "choice":
                if not isinstance(args, list) or not args:
                    self.fail(f"{key}.choice", f"must be a non-empty list of values, got {args!r}")
                probes = args
            else:
                if not (isinstance(args, list) and len(args) == 2 and all(_is_num(a) for a in args)):
                    self.fail(f"{key}.{dist}", f"must be [low, high] (two numbers), got {args!r}")
                lo, hi = args
                if not lo < hi:
                    self.fail(f"{key}.{dist}", f"low={lo} must be < high={hi}")
                if dist == "loguniform" and lo <= 0:
                    self.fail(f"{key}.{dist}", f"low={lo} must be > 0 for a log-uniform range")
                if dist == "randint":
                    if not (_is_int(lo) and _is_int(hi)):
                        self.fail(f"{key}.randint", f"must be two integers [low, high) , got {args!r}")
                    if typ != "int":
                        self.fail(f"{key}.randint", f"{k} is a {typ}; randint draws integers (use uniform or loguniform)")
                    probes = [lo, hi - 1]
                else:
                    if typ != "float":
                        self.fail(f"{key}.{dist}", f"{k} is a {typ}; {dist} draws floats (use randint or choice)")
                    probes = [float(lo), float(hi)]
            for i, x in enumerate(probes):
                self.config(f"{key}.{dist}[{i}]", {**base, "epochs": epochs, k: x})
            out[k] = SearchParam(dist, tuple(args))
        return out

    def searcher(self, v, search, grid):
        if v is None:
            if search:
                self.fail("searcher", "missing: a search space needs a searcher, e.g. "
                                      "{name: optuna, seed: 0, num_samples: 16}")
            return None
        v = self.mapping("searcher", v, ("name", "seed", "num_samples"), ("name",))
        name = self.str_("searcher.name", v["name"], SEARCHERS)
        out = {"name": name, "seed": self.int_("searcher.seed", v.get("seed", 0), lo=0),
               "num_samples": self.int_("searcher.num_samples", v.get("num_samples", 1), lo=1)}
        if name == "optuna" and not search:
            self.fail("searcher", "optuna needs a search space (search: ...)")
        if name == "optuna" and grid:
            self.fail("grid", "cannot be combined with the optuna searcher (Optuna does not take grid axes); "
                              "fix those values in base, or use searcher: {name: random}")
        return out

    def scheduler(self, v):
        if v is None:
            return None
        v = self.mapping("scheduler", v, ("name", "grace_period", "reduction_factor"), ("name",))
        name = self.str_("scheduler.name", v["name"], SCHEDULERS)
        if name == "fifo":
            extra = sorted(set(v) - {"name"})
            if extra:
                self.fail(f"scheduler.{extra[0]}", "is an ASHA setting; fifo takes none")
            return {"name": "fifo"}
        rf = v.get("reduction_factor", 2)
        if not _is_num(rf) or rf <= 1:
            self.fail("scheduler.reduction_factor", f"must be a number > 1, got {rf!r}")
        return {"name": name, "grace_period": self.int_("scheduler.grace_period", v.get("grace_period", 1), lo=1),
                "reduction_factor": rf}

    def resources(self, v) -> dict:
        v = self.mapping("resources", v or {}, ("cpu", "gpu"))
        cpu, gpu = v.get("cpu", 1), v.get("gpu", 0)
        if not _is_num(cpu) or cpu <= 0:
            self.fail("resources.cpu", f"must be a number > 0, got {cpu!r}")
        check_gpus(gpu, lambda msg: self.fail("resources.gpu", msg))
        return {"cpu": float(cpu), "gpu": float(gpu)}

    def eval(self, v) -> dict:
        if v is None:
            return {}
        v = self.mapping("eval", v)
        from meme.eval import EvalConfig

        try:
            return EvalConfig.from_dict(v).to_dict()
        except MemeError as e:
            self.fail("eval", str(e))

    def synthetic(self, v, base):
        if v is None:
            return None
        v = self.mapping("synthetic_data", v, ("n_train", "n_test", "seed"), ("n_train", "n_test"))
        if "data_dir" in base:
            self.fail("base.data_dir", "cannot be set together with synthetic_data (the generated data has its own folder)")
        return {"n_train": self.int_("synthetic_data.n_train", v["n_train"], lo=10),
                "n_test": self.int_("synthetic_data.n_test", v["n_test"], lo=10),
                "seed": self.int_("synthetic_data.seed", v.get("seed", 0), lo=0)}

    def report(self, v):
        if v is None:
            return (), (), ()
        v = self.mapping("report", v, ("figures", "tables", "claims"))
        figures, tables, names = [], [], set()
        for kind, items in (("figures", v.get("figures") or []), ("tables", v.get("tables") or [])):
            if not isinstance(items, list):
                self.fail(f"report.{kind}", f"must be a list, got {items!r}")
            for i, item in enumerate(items):
                key = f"report.{kind}[{i}]"
                if kind == "figures":
                    item = self.mapping(key, item, ("name", "title", "x", "y", "series", "logx", "where"), ("name", "x", "y"))
                else:
                    item = self.mapping(key, item, ("name", "title", "rows", "columns", "where"), ("name", "rows", "columns"))
                name = self.unique_name(f"{key}.name", item["name"], names)
                title = item.get("title", "")
                if not isinstance(title, str):
                    self.fail(f"{key}.title", f"must be a string, got {title!r}")
                metrics_key = "y" if kind == "figures" else "columns"
                metrics = item[metrics_key]
                if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m for m in metrics):
                    self.fail(f"{key}.{metrics_key}", f"must be a non-empty list of metric names, got {metrics!r}")
                where = self.where(f"{key}.where", item.get("where"))
                if kind == "figures":
                    if item["x"] not in _FIELD_TYPES:
                        self.fail(f"{key}.x", f"unknown config key {item['x']!r}; valid keys: {', '.join(TrainConfig.keys())}")
                    logx = item.get("logx", False)
                    if not isinstance(logx, bool):
                        self.fail(f"{key}.logx", f"must be true or false, got {logx!r}")
                    figures.append(FigureSpec(name, item["x"], tuple(metrics),
                                              self.config_keys(f"{key}.series", item.get("series", []), True), title, logx,
                                              where))
                else:
                    tables.append(TableSpec(name, self.config_keys(f"{key}.rows", item["rows"]), tuple(metrics), title,
                                            where))
        claims = v.get("claims") or []
        if not isinstance(claims, list):
            self.fail("report.claims", f"must be a list, got {claims!r}")
        out = []
        for i, item in enumerate(claims):
            key = f"report.claims[{i}]"
            item = self.mapping(key, item, ("name", "text", "a", "b", "per"), ("name", "text", "a", "b"))
            name = self.unique_name(f"{key}.name", item["name"], names)
            text = self.str_(f"{key}.text", item["text"])
            per = self.config_keys(f"{key}.per", item.get("per", []), True)
            out.append(ClaimSpec(name, text, self.claim_side(f"{key}.a", item["a"], constant=False),
                                 self.claim_side(f"{key}.b", item["b"], constant=True), per))
        return tuple(figures), tuple(tables), tuple(out)

    def unique_name(self, key, v, names: set) -> str:
        name = self.str_(key, v, pattern=_NAME)
        if name in names:
            self.fail(key, f"{name!r} is used twice; figure, table and claim names must be unique")
        names.add(name)
        return name

    def where(self, key, v) -> tuple:
        if v is None:
            return ()
        v = self.mapping(key, v)
        for k in v:
            if k not in _FIELD_TYPES:
                self.fail(f"{key}.{k}", f"unknown config key; valid keys: {', '.join(TrainConfig.keys())}")
        return tuple(sorted(v.items()))

    def claim_side(self, key, v, constant: bool) -> ClaimSide:
        v = self.mapping(key, v, ("where", "metric", "value") if constant else ("where", "metric"))
        if "value" in v:
            if set(v) != {"value"} or not _is_num(v["value"]):
                self.fail(key, f"a constant side is {{value: NUMBER}} alone, got {v!r}")
            return ClaimSide(value=float(v["value"]))
        if "metric" not in v:
            self.fail(f"{key}.metric", "missing (required)")
        metric = self.str_(f"{key}.metric", v["metric"])
        parts = [p.strip() for p in metric.split(" - ")]
        if len(parts) > 2 or not all(parts):
            self.fail(f"{key}.metric", f"a metric name or 'METRIC - METRIC', got {metric!r}")
        return ClaimSide(where=self.where(f"{key}.where", v.get("where")), metric=metric)


def check_gpus(gpu, fail) -> None:
    """Ray takes a fraction of one GPU (0 < g < 1, packing trials on a GPU) or a whole number of GPUs."""
    if not _is_num(gpu) or gpu < 0:
        fail(f"must be a number >= 0, got {gpu!r}")
    if gpu > 1 and float(gpu) != int(gpu):
        fail(f"{gpu} GPUs: use a fraction of one GPU (e.g. 0.25 packs four trials on a GPU) or a whole number")
