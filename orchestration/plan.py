"""What one ``sweep.py`` invocation will do, decided before anything starts: ``plan(args) -> StudyPlan``.

A plan is a frozen value. It reads the study file (or, with ``--resume``, the interrupted run's saved plan) and
checks the options, but writes nothing, starts nothing and trains nothing: ``sweep.prepare`` does that from it
(data, classifiers, Ray, MLflow), then ``sweep.fit`` runs the trials. The part of a plan that outlives the
invocation is saved beside Ray Tune's state as the run's resume state (``meme_study.json``), and ``--resume``
reads it back into a plan. A state file written before plans existed (the same keys, without ``plan``) reads
the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from meme.errors import MemeError
from orchestration.prepare import data_dir_for
from orchestration.run_state import find_resumable, resolve_storage
from orchestration.study import Study, load_study, parse_study
from orchestration.tracking import default_tracking_uri

PLAN_FORMAT = 1   # the saved plan's format; a state file without the key was written before plans (format 0)


@dataclass(frozen=True)
class Invocation:
    """How this invocation runs: options that are given again on every call, never saved."""
    address: str | None = None
    num_cpus: int | None = None
    dashboard: bool = False
    shared_storage: bool = False
    verbose: bool = False
    quiet: bool = False
    max_concurrent: int = 0
    max_failures: int = 2
    retry_errored: bool = False
    restart_errored: bool = False


@dataclass(frozen=True)
class StudyPlan:
    """One study run. The fields down to ``created`` are saved as the run's resume state; ``parent_run_id``
    is filled in by ``prepare``, when MLflow's parent run exists."""
    study: Study
    run_name: str
    storage: str
    epochs: int
    tracking_uri: str
    data_dir: str                  # every trial's data dir (a generated-data study's folder is filled by prepare)
    data_dir_option: str | None    # --data-dir as given (resolved), checked against a resumed run's
    experiment: str
    created: str
    parent_run_id: str | None = None
    # not saved: given on each invocation
    cpu: float = 1.0
    gpu: float = 0.0
    resume: bool = False
    invocation: Invocation = Invocation()

    SAVED = ("epochs", "data_dir", "tracking_uri", "data_dir_option", "experiment", "parent_run_id", "created")

    @property
    def ray_path(self) -> str:
        return f"{self.storage}/{self.run_name}"

    def base_config(self) -> dict:
        """The TrainConfig dict every trial starts from."""
        overrides = {"epochs": self.epochs, "data_dir": self.data_dir}
        if self.study.synthetic_data:
            overrides["download"] = False
        return self.study.base_config(**overrides)

    def with_parent(self, parent_run_id: str) -> StudyPlan:
        return replace(self, parent_run_id=parent_run_id)

    # ------------------------------------------------------------ the resume state
    def state(self) -> dict:
        """The saved plan: the study as written (name, path, text) and the fields that outlive the invocation."""
        return {"plan": PLAN_FORMAT, "study": self.study.name, "study_path": self.study.path,
                "study_text": self.study.text, "run_name": self.run_name,
                **{k: getattr(self, k) for k in self.SAVED}}

    @classmethod
    def from_state(cls, state: dict, run_name: str, storage: str, **given) -> StudyPlan:
        """A saved plan (any format) read back, with this invocation's ``given`` fields."""
        fmt = state.get("plan", 0)
        if not isinstance(fmt, int) or fmt > PLAN_FORMAT:
            raise MemeError(f"run {run_name}'s saved plan has format {fmt!r}; this version reads formats 0 to "
                            f"{PLAN_FORMAT} (resume it with the version that started it)")
        missing = [k for k in ("study", "study_path", "study_text", *cls.SAVED) if k not in state]
        if missing:
            raise MemeError(f"run {run_name}'s saved plan lacks {', '.join(missing)}; it cannot be resumed")
        study = parse_study(state["study_text"], state["study"], state["study_path"])
        return cls(study=study, run_name=run_name, storage=storage, **{k: state[k] for k in cls.SAVED}, **given)


def _check_args(args) -> None:
    if not args.study and args.resume in (None, ""):
        raise MemeError("--study NAME is required (--list shows the studies)")
    if (args.retry_errored or args.restart_errored) and args.resume is None:
        raise MemeError("--retry-errored and --restart-errored go with --resume")
    for opt in ("max_concurrent", "epochs"):
        v = getattr(args, opt)
        if v is not None and v < (0 if opt == "max_concurrent" else 1):
            raise MemeError(f"--{opt.replace('_', '-')}={v} must be {'>= 0' if opt == 'max_concurrent' else '>= 1'}")


def _resources(args, study: Study) -> tuple[float, float]:
    from orchestration.study_schema import check_gpus   # pydantic: checked installed by sweep.main

    cpu = args.cpus_per_trial if args.cpus_per_trial is not None else study.resources["cpu"]
    gpu = args.gpus_per_trial if args.gpus_per_trial is not None else study.resources["gpu"]
    if not cpu > 0:
        raise MemeError(f"--cpus-per-trial={cpu} must be > 0")
    check_gpus(gpu, lambda msg: (_ for _ in ()).throw(MemeError(f"--gpus-per-trial: {msg}")))
    return cpu, gpu


def plan(args) -> StudyPlan:
    """The study run that ``args`` (``sweep.py``'s parsed options) ask for; refuses what is wrong in one line."""
    _check_args(args)
    storage = resolve_storage(args.storage)
    data_dir_option = args.data_dir and str(Path(args.data_dir).expanduser().resolve())
    invocation = Invocation(address=args.address, num_cpus=args.num_cpus, dashboard=args.dashboard,
                            shared_storage=args.shared_storage,
                            verbose=args.verbose, quiet=args.quiet, max_concurrent=args.max_concurrent,
                            max_failures=args.max_failures, retry_errored=args.retry_errored,
                            restart_errored=args.restart_errored)
    if args.resume is not None:
        name = Path(args.study).stem if args.study and args.study.endswith((".yaml", ".yml")) else args.study
        run_name, state = find_resumable(storage, name, args.resume or None)
        saved = StudyPlan.from_state(state, run_name, storage, resume=True, invocation=invocation)
        given = {"epochs": args.epochs, "data_dir_option": data_dir_option}
        for key, value in given.items():
            if value and value != state.get(key):
                raise MemeError(f"--{key.removesuffix('_option').replace('_', '-')} {value} differs from the interrupted "
                                f"run's {state.get(key)}; a resumed study keeps its settings")
        cpu, gpu = _resources(args, saved.study)
        return replace(saved, tracking_uri=args.tracking_uri or saved.tracking_uri, cpu=cpu, gpu=gpu)
    study = load_study(args.study)
    cpu, gpu = _resources(args, study)
    return StudyPlan(study=study, run_name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}", storage=storage,
                     epochs=args.epochs or study.epochs, tracking_uri=args.tracking_uri or default_tracking_uri(),
                     data_dir=data_dir_for(study, args.data_dir), data_dir_option=data_dir_option,
                     experiment=args.experiment or study.name, created=time.strftime("%Y-%m-%d %H:%M:%S"),
                     cpu=cpu, gpu=gpu, invocation=invocation)
