"""The shape of a study file, declared once: key names, types, bounds, choices and defaults.

pydantic checks it (``validate_study_file``); ``_message`` turns pydantic's first error into the project's one
line, which names the file, the key and what is valid. ``study_json_schema`` exports it for editors
(``sweep.py --study-schema``). What spans several keys (TrainConfig of every grid point, the metric against the
datasets, unique names) is checked after, in ``orchestration.study``.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (AfterValidator, BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr,
                      TypeAdapter, ValidationError, model_validator)
from pydantic import dataclasses as pyd
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from meme.models import TrainConfig
from meme.errors import MemeError
from orchestration import INPUTS

_FIELD_TYPES = TrainConfig.types()


# ------------------------------------------------------------------ schema
def _fail(msg: str, at: str = ""):
    """A schema error with the project's message; ``at`` names a key below the one being checked."""
    raise PydanticCustomError("meme", "{m}", {"m": msg, "at": at})


def _config_key(k: str) -> str:
    if k not in _FIELD_TYPES:
        _fail(f"unknown config key {k!r}; valid keys: {', '.join(TrainConfig.keys())}")
    return k


def _figure_x(k: str) -> str:
    if k == INPUTS:
        return k
    if k not in _FIELD_TYPES:
        _fail(f"unknown config key {k!r}; valid: {INPUTS} (the number of input modalities) or a config key: "
              f"{', '.join(TrainConfig.keys())}")
    return k


def _metric_expr(m: str) -> str:
    parts = [p.strip() for p in m.split(" - ")]
    if len(parts) > 2 or not all(parts):
        _fail(f"a metric name or 'METRIC - METRIC', got {m!r}")
    return m


def _gpus(gpu: float) -> float:
    check_gpus(gpu, _fail)
    return gpu


def _range(kind: str):
    def check(args):
        if not (isinstance(args, list) and len(args) == 2 and all(_is_num(a) for a in args)):
            _fail(f"must be [low, high] (two numbers), got {args!r}")
        lo, hi = args
        if not lo < hi:
            _fail(f"low={lo} must be < high={hi}")
        if kind == "loguniform" and lo <= 0:
            _fail(f"low={lo} must be > 0 for a log-uniform range")
        if kind == "randint" and not (_is_int(lo) and _is_int(hi)):
            _fail(f"must be two integers [low, high) , got {args!r}")
        return tuple(args)
    return Annotated[Any, AfterValidator(check)]


def _sorted_items(d: dict) -> tuple:
    return tuple(sorted(d.items()))


_NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
ConfigKey = Annotated[StrictStr, AfterValidator(_config_key)]
Text = Annotated[StrictStr, Field(pattern=r"\S")]                    # a non-empty string
Name = Annotated[StrictStr, Field(pattern=_NAME_PATTERN)]           # figure, table and claim names (file names)
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]   # an int or a float, never a bool
Metrics = Annotated[tuple[Text, ...], Field(min_length=1, description="metric names")]
ConfigKeys = Annotated[tuple[ConfigKey, ...], Field(description="config keys")]
#: ``where: {config key: value}``: only the runs with these values; kept as sorted ((key, value), ...)
Where = Annotated[dict[ConfigKey, Any], AfterValidator(_sorted_items)]
_STRICT = ConfigDict(extra="forbid")   # unknown keys refused; scalars are Strict* (no "10" for 10, no 1 for true)


@pyd.dataclass(frozen=True, config=_STRICT)
class Searcher:
    name: Literal["optuna", "random"]
    seed: Annotated[StrictInt, Field(ge=0)] = 0
    num_samples: Annotated[StrictInt, Field(ge=1)] = 1


@pyd.dataclass(frozen=True, config=_STRICT)
class Scheduler:
    name: Literal["asha", "fifo"]
    grace_period: Annotated[StrictInt, Field(ge=1)] = 1
    reduction_factor: Annotated[Number, Field(gt=1)] = 2

    @model_validator(mode="before")
    @classmethod
    def _fifo_takes_no_settings(cls, v):
        if isinstance(v, dict) and v.get("name") == "fifo":
            extra = sorted(set(v) - {"name"})
            if extra:
                _fail("is an ASHA setting; fifo takes none", at=extra[0])
        return v


@pyd.dataclass(frozen=True, config=_STRICT)
class Resources:
    """Per trial; Ray takes a fraction of one GPU (packing trials on it) or a whole number of GPUs."""
    cpu: Annotated[Number, Field(gt=0)] = 1.0
    gpu: Annotated[Number, Field(ge=0), AfterValidator(_gpus)] = 0.0


@pyd.dataclass(frozen=True, config=_STRICT)
class SyntheticData:
    """Generated MNIST/SVHN-format data for the study (tests, first tries)."""
    n_train: Annotated[StrictInt, Field(ge=10)]
    n_test: Annotated[StrictInt, Field(ge=10)]
    seed: Annotated[StrictInt, Field(ge=0)] = 0


@pyd.dataclass(frozen=True, config=_STRICT)
class Distribution:
    """One search distribution: uniform [lo, hi] | loguniform [lo, hi] | randint [lo, hi) | choice [..]."""
    unknown_key: ClassVar[str] = "unknown distribution; valid"
    uniform: _range("uniform") | None = None
    loguniform: _range("loguniform") | None = None
    randint: _range("randint") | None = None
    choice: Annotated[list, Field(min_length=1, description="values")] | None = None

    @property
    def dist(self) -> tuple[str, tuple]:
        (name, args), = ((f, getattr(self, f)) for f in _dataclass_fields(Distribution) if getattr(self, f) is not None)
        return name, tuple(args)


def _one_distribution(spec):
    if not isinstance(spec, dict) or len(spec) != 1:
        _fail(f"must be one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}}; valid: "
              f"{', '.join(_dataclass_fields(Distribution))}; got {spec!r}")
    return spec


@pyd.dataclass(frozen=True, config=_STRICT)
class FigureSpec:
    name: Name
    x: Annotated[StrictStr, AfterValidator(_figure_x)]
    y: Metrics
    series: ConfigKeys = ()
    title: StrictStr = ""
    logx: StrictBool = False
    where: Where = ()


@pyd.dataclass(frozen=True, config=_STRICT)
class TableSpec:
    name: Name
    rows: Annotated[ConfigKeys, Field(min_length=1)]
    columns: Metrics
    title: StrictStr = ""
    where: Where = ()


@pyd.dataclass(frozen=True, config=_STRICT)
class ClaimSide:
    where: Where = ()
    metric: Annotated[Text, AfterValidator(_metric_expr)] = ""   # a metric, or "m1 - m2" (per run); "" with value
    value: Number | None = None                                   # a constant instead of runs (side b only)


def _side(constant: bool):
    def check(v):
        if not isinstance(v, dict):
            return v
        if "value" in v:
            if not constant:
                _fail("unknown key; valid keys: where, metric (only side b may be a constant {value: NUMBER})",
                      at="value")
            if set(v) != {"value"} or not _is_num(v["value"]):
                _fail(f"a constant side is {{value: NUMBER}} alone, got {v!r}")
        elif "metric" not in v:
            _fail("missing (required)", at="metric")
        return v
    return Annotated[ClaimSide, BeforeValidator(check)]


@pyd.dataclass(frozen=True, config=_STRICT)
class ClaimSpec:
    """A relative claim of the paper: the mean of ``a`` exceeds the mean of ``b`` in every group of ``per``."""
    name: Name
    text: Text
    a: _side(constant=False)
    b: _side(constant=True)
    per: ConfigKeys = ()


@pyd.dataclass(frozen=True, config=_STRICT)
class Report:
    """What report.py regenerates."""
    figures: Annotated[tuple[FigureSpec, ...], Field(description="figures")] | None = ()
    tables: Annotated[tuple[TableSpec, ...], Field(description="tables")] | None = ()
    claims: Annotated[tuple[ClaimSpec, ...], Field(description="claims")] | None = ()


@pyd.dataclass(frozen=True, config=_STRICT, kw_only=True)
class StudyFile:
    """A study file as written (the order here is the order ``valid keys`` lists them in)."""
    description: Text = Field(description="what the study reproduces (which figure or table of the paper)")
    base: dict[str, Any] | None = Field(None, description="meme train keys shared by every trial (not epochs)")
    grid: Any = Field(None, description="{config key: [values]}, their cartesian product; a list of such mappings "
                                        "is the union of their products")
    search: dict[str, Annotated[Distribution, BeforeValidator(_one_distribution)]] | None = Field(
        None, description="config key -> one distribution (needs a searcher)")
    searcher: Searcher | None = None
    scheduler: Scheduler | None = None
    metric: Text = Field(description="what the summary ranks by and the searcher and scheduler optimise")
    mode: Literal["min", "max"]
    epochs: Annotated[StrictInt, Field(ge=1)] = Field(description="per trial (sweep.py --epochs overrides it)")
    resources: Resources | None = None
    eval: dict[str, Any] | None = Field(None, description="evaluation settings (meme.eval.EvalConfig keys)")
    synthetic_data: SyntheticData | None = None
    report: Report | None = None


def _dataclass_fields(cls) -> tuple[str, ...]:
    return tuple(cls.__pydantic_fields__)


REQUIRED = tuple(k for k, f in StudyFile.__pydantic_fields__.items() if f.is_required())
_STUDY_FILE = TypeAdapter(StudyFile)


def validate_study_file(doc, path: str) -> StudyFile:
    """``doc`` (the parsed YAML) checked against the schema; a ``MemeError`` line for the first mistake."""
    if doc is None:
        raise MemeError(f"{path}: (file): is empty; a study needs at least: " + ", ".join(REQUIRED))
    try:
        return _STUDY_FILE.validate_python(doc)
    except ValidationError as e:
        key, msg = _message(e)
        raise MemeError(f"{path}: {key}: {msg}") from None


def study_json_schema() -> dict:
    """The study file's JSON Schema (for editors: ``sweep.py --study-schema``)."""
    return _STUDY_FILE.json_schema()


# ------------------------------------------------------ schema errors, one line
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _unwrap(ann):
    """(bare type, constraints) of an annotation: Annotated and ``X | None`` taken apart; a ``Field(...)`` inside
    gives its constraints and its description (``{"description": ...}``)."""
    meta = []
    while True:
        if typing.get_origin(ann) is Annotated:
            ann, *extra = typing.get_args(ann)
            for m in extra:
                meta += [*m.metadata, {"description": m.description}] if isinstance(m, FieldInfo) else [m]
        elif typing.get_origin(ann) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann, meta
            ann = args[0]
        else:
            return ann, meta


def _walk(loc) -> tuple[Any, list]:
    """The type and constraints at ``loc`` in ``StudyFile`` (``Any`` where the schema leaves it open)."""
    ann, meta = StudyFile, []
    for part in loc:
        bare, _ = _unwrap(ann)
        if hasattr(bare, "__pydantic_fields__") and part in bare.__pydantic_fields__:
            info = bare.__pydantic_fields__[part]
            ann, meta = info.annotation, [*info.metadata, {"description": info.description}]
        elif typing.get_origin(bare) in (tuple, list) and isinstance(part, int):
            ann, meta = typing.get_args(bare)[0], []
        elif typing.get_origin(bare) is dict and isinstance(part, str):
            ann, meta = typing.get_args(bare)[1], []
        elif part != "[key]":
            return Any, []
    bare, more = _unwrap(ann)
    return bare, meta + more


def _bound(meta) -> str:
    for m in meta:
        for attr, sign in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                return f" {sign} {getattr(m, attr):g}"
    return ""


def _expected(bare, meta) -> str:
    """What a value of this type must be, in words: ``an integer >= 1``, ``a non-empty list of metric names``."""
    if bare is bool:
        return "true or false"
    if bare is int:
        return "an integer" + _bound(meta)
    if bare is float:
        return "a number" + _bound(meta)
    if bare is str:
        return "a non-empty string" if any(getattr(m, "pattern", None) or getattr(m, "min_length", None)
                                           for m in meta) else "a string"
    if typing.get_origin(bare) in (tuple, list) or bare is list:
        what = next((m["description"] for m in meta if isinstance(m, dict) and m["description"]), "values")
        return ("a non-empty list of " if any(getattr(m, "min_length", 0) for m in meta) else "a list of ") + what
    if typing.get_origin(bare) is dict or hasattr(bare, "__pydantic_fields__"):
        return "a mapping"
    return "valid"


def _dotted(loc) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: ValidationError) -> tuple[str, str]:
    """The key and the one-line message of a study file's first schema error (an unknown key before the rest)."""
    errors = err.errors(include_url=False)
    unknown = ("extra_forbidden", "unexpected_keyword_argument")
    e = next((x for x in errors if x["type"] in unknown), errors[0])
    loc, typ, got = e["loc"], e["type"], e.get("input")
    key = _dotted(loc)
    if typ == "meme":
        at = e["ctx"]["at"]
        return (f"{key}.{at}" if key and at else at or key), e["msg"]
    if typ in ("missing", "missing_keyword_argument"):
        return key, "missing (required)"
    if typ in unknown:
        holder = _walk(loc[:-1])[0]
        noun = getattr(holder, "unknown_key", "unknown key; valid keys")
        return key, f"{noun}: {', '.join(_dataclass_fields(holder))}"
    bare, meta = _walk(loc)
    if typ in ("dataclass_type", "dataclass_args_type", "dict_type", "model_type"):
        return key, f"must be a mapping, got {type(got).__name__} {got!r}"
    if typ == "literal_error":
        return key, f"unknown value {got!r}; valid: {', '.join(map(str, typing.get_args(bare)))}"
    if typ == "string_pattern_mismatch" and any(getattr(m, "pattern", "") == _NAME_PATTERN for m in meta):
        return key, f"{got!r} must use only letters, digits, '_', '-' and '.'"
    return key, f"must be {_expected(bare, meta)}, got {got!r}"



def check_gpus(gpu, fail) -> None:
    """Ray takes a fraction of one GPU (0 < g < 1, packing trials on a GPU) or a whole number of GPUs."""
    if not _is_num(gpu) or gpu < 0:
        fail(f"must be a number >= 0, got {gpu!r}")
    if gpu > 1 and float(gpu) != int(gpu):
        fail(f"{gpu} GPUs: use a fraction of one GPU (e.g. 0.25 packs four trials on a GPU) or a whole number")
