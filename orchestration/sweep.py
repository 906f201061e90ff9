"""Run a study of the paper: ``python orchestration/sweep.py --study NAME``.

One command: the study's trials run on Ray Tune (grid, or an Optuna search with ASHA), each trial trains
and evaluates a model (``orchestration.trainable``), MLflow records one parent run for the invocation
and one child run per trial (``orchestration.tracking``), progress shows while it runs and a summary
table ends it. ``report.py --study NAME`` then regenerates the paper's figures from MLflow.

An invocation is three steps: ``plan(args)`` decides everything and writes nothing (``orchestration.plan``),
``prepare(plan)`` makes the data, classifiers, Ray and MLflow's parent run ready and saves the plan as the run's
resume state, and ``fit(prepared)`` runs the trials on Ray Tune.

Where things go (defaults, relative to the working directory): MLflow in ``mlflow.db`` (artifacts in
``mlruns/``), Ray Tune's results and checkpoints in ``runs/studies/<study>-<timestamp>/``.

Interrupting (Ctrl+C, SIGINT or SIGTERM) saves the study's state; ``--resume`` continues the latest
interrupted run of the study: unfinished trials resume from their last checkpoints, finished ones are
kept, and their MLflow child runs are continued, never duplicated. Exit status: 0 all trials finished,
1 some trials failed, 2 a usage error, 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from meme.errors import MemeError, output_closed
from orchestration import SWEEP_PROG, check_orchestration_installed, tracking
from orchestration.cluster import check_ray_reachable, check_resources, check_shared_paths, init_ray, ray_address
from orchestration.plan import StudyPlan, plan
from orchestration.prepare import prepare_classifiers, prepare_data_dir
from orchestration.run_state import write_state
from orchestration.study import Study, load_study, study_names, trial_name
from orchestration.summary import finish
from orchestration.trainable import GRID_KEY, TrialSettings, tune_trainable

log = logging.getLogger("orchestration.sweep")

PROG = SWEEP_PROG
KEEP_CHECKPOINTS = 2


@contextlib.contextmanager
def stop_signals(flag: threading.Event):
    """SIGINT (Ctrl+C) and SIGTERM end the study gracefully: Tune saves its state, the running trials keep
    their checkpoints, and ``--resume`` continues. (Tune ends a run on SIGUSR1, which it handles while
    fitting; we relay the signal so that we also know the run was interrupted.) A second signal stops at once."""
    old_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"

    def handler(sig, frame):
        if flag.is_set() or signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt
        flag.set()
        print(f"{PROG}: {signal.Signals(sig).name}: stopping the study and saving its state (signal again to "
              f"stop at once)", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if old_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = old_env


def trial_dirname(trial, varying, numbered: bool) -> str:
    from orchestration.callbacks import trial_label   # Ray: checked installed in main

    return f"{trial_label(trial, varying, numbered)}_{trial.trial_id}"[:120]


def param_space(study: Study, base_cfg: dict) -> dict:
    from ray import tune

    grid_keys = {k for g in study.grid for k in g}
    fixed = set(study.search) | grid_keys
    space = {k: v for k, v in base_cfg.items() if k not in fixed}
    if study.grid:
        # A key one block of a union sets is out of the flat space, so every point carries it: the points of
        # the other blocks take base_cfg's value, i.e. the default, since a study's base may not set a grid key
        # (else a trial would read the key as missing, i.e. as stored before it existed: nets = appendix_k).
        defaults = {k: base_cfg[k] for k in sorted(grid_keys)}
        space[GRID_KEY] = tune.grid_search([{**defaults, **p} for p in study.points()])
    dists = {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}
    for k, p in study.search.items():
        space[k] = tune.choice(list(p.args)) if p.dist == "choice" else dists[p.dist](*p.args)
    return space


def make_tuner(study: Study, trainable, base_cfg: dict, run_name: str, storage: str, callbacks,
               max_concurrent: int = 0, max_failures: int = 2, verbose: bool = False):
    """The Tuner of a new study run: its searcher and scheduler, one trial directory per readable trial name,
    Tune checkpoints kept per trial, ``max_failures`` restarts of a failed trial from its last checkpoint."""
    from ray import tune

    numbered = bool(study.search)
    searcher = scheduler = None
    if study.searcher and study.searcher["name"] == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=study.searcher["seed"])
    elif study.searcher:
        from ray.tune.search.basic_variant import BasicVariantGenerator

        searcher = BasicVariantGenerator(random_state=study.searcher["seed"])
    if study.scheduler and study.scheduler["name"] == "asha":
        from ray.tune.schedulers import ASHAScheduler

        grace = min(study.scheduler["grace_period"], base_cfg["epochs"])
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=base_cfg["epochs"], grace_period=grace,
                                  reduction_factor=study.scheduler["reduction_factor"])
    needs_metric = (searcher is not None and study.searcher["name"] == "optuna") or scheduler is not None
    tune_config = tune.TuneConfig(
        metric=study.metric if needs_metric else None, mode=study.mode if needs_metric else None,
        search_alg=searcher, scheduler=scheduler,
        num_samples=study.searcher["num_samples"] if study.searcher else 1,
        max_concurrent_trials=max_concurrent or None, reuse_actors=True,   # no process start per trial
        trial_dirname_creator=partial(trial_dirname, varying=study.varying_keys(), numbered=numbered))
    run_config = tune.RunConfig(
        name=run_name, storage_path=storage, callbacks=callbacks, verbose=1 if verbose else 0,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS), log_to_file=True)
    return tune.Tuner(trainable, param_space=param_space(study, base_cfg), tune_config=tune_config,
                      run_config=run_config)


# ------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    names = study_names()
    p = argparse.ArgumentParser(prog=PROG, description=(
        "Run a study of the paper on Ray Tune (+ Optuna, ASHA), tracked in MLflow. Studies are YAML files in "
        "search_spaces/; --list describes them."), formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python orchestration/sweep.py --study smoke\n"
               "  python orchestration/sweep.py --study supervision_mnist_svhn --gpus-per-trial 0.25\n"
               "  python orchestration/sweep.py --study supervision_mnist_svhn --resume\n"
               "  python orchestration/report.py --study smoke")
    p.add_argument("--study", help=f"a study name ({', '.join(names)}) or a path to a study YAML")
    p.add_argument("--list", action="store_true", help="list the studies with what each reproduces, and exit")
    p.add_argument("--dry-run", action="store_true", help="print the trials the study would run, and exit")
    p.add_argument("--study-schema", action="store_true",
                   help="print the study files' JSON Schema (for an editor's YAML checks and completion), and exit")
    p.add_argument("--data-dir", help="data directory of every trial (default: the study's, else $MEME_DATA_DIR "
                                      "or ~/.cache/meme); generated data goes to <data dir>/synthetic/")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<cwd>/mlflow.db); "
                                          "a cluster needs an MLflow server, http://...")
    p.add_argument("--experiment", help="MLflow experiment name (default: the study name)")
    p.add_argument("--storage", help="Ray Tune results and checkpoints: a local path or s3://bucket/path "
                                     "(default: <cwd>/runs/studies)")
    p.add_argument("--shared-storage", action="store_true",
                   help="--storage (and a SQLite --tracking-uri) is mounted at the same path on every node "
                        "(checked); needed for local paths on a multi-node cluster")
    p.add_argument("--address", help="Ray address: default is $RAY_ADDRESS when set (as in a Ray Jobs "
                                     "entrypoint), else a new local Ray; 'auto' joins the running cluster; "
                                     "ray://host:10001 connects a Ray client")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard with the local Ray")
    p.add_argument("--max-concurrent", type=int, default=0, help="trials running at once (default: as resources allow)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the study's resources.cpu)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractional packs trials: 0.25 runs four trials per GPU (default: the study's)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default: the study's)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="restarts of a trial after a failure, from its last checkpoint (Tune FailureConfig; "
                        "default 2; -1 = forever); deterministic errors (bad config, NaN loss) are not retried")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue an interrupted study: the latest run of --study, or the run named RUN "
                        "(a folder under --storage)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--retry-errored", action="store_true", help="with --resume: retry failed trials from their checkpoints")
    g.add_argument("--restart-errored", action="store_true", help="with --resume: restart failed trials from scratch")
    p.add_argument("--quiet", action="store_true", help="no progress output (the summary is still printed)")
    p.add_argument("-v", "--verbose", action="store_true", help="Ray Tune's own status output and trial logs")
    return p


def list_studies() -> str:
    lines = []
    for n in study_names():
        try:
            s = load_study(n)
            what = f"{s.num_trials():>4} trials  {s.description}"
        except MemeError as e:
            what = f"   unavailable: {e}"
        lines.append(f"{n:<24}{what}")
    return "\n".join(lines)


def dry_run(study: Study, base_cfg: dict, cpu: float, gpu: float) -> str:
    out = [f"study {study.name}: {study.description}", f"  file: {study.path}",
           f"  {study.num_trials()} trials x {base_cfg['epochs']} epochs; {cpu:g} CPU, {gpu:g} GPU per trial; "
           f"metric {study.metric} ({study.mode})"]
    if study.searcher:
        out.append(f"  searcher: {study.searcher}" + (f"; scheduler: {study.scheduler}" if study.scheduler else ""))
        out += [f"  search {k}: {p.dist}{list(p.args)}" for k, p in study.search.items()]
    elif study.scheduler:
        out.append(f"  scheduler: {study.scheduler}")
    shared = {k: v for k, v in base_cfg.items() if k in study.base or k in ("epochs", "data_dir")}
    out.append(f"  base: {shared}")
    varying = study.varying_keys()
    for i, point in enumerate(study.points()):
        cfg = {**base_cfg, **point, **{k: None for k in study.search}}   # drawn per trial: named k?
        out.append(f"  [{i:>3}] {trial_name(cfg, varying)}  {point}")
    if study.search:
        out.append(f"  (each grid point x {study.searcher['num_samples']} samples from the search space)")
    return "\n".join(out)


def run(args) -> int:
    """``plan``, then ``prepare``, then ``fit``."""
    if args.list:
        print(list_studies())
        return 0
    from orchestration.study_schema import study_json_schema   # pydantic: checked installed in main

    if args.study_schema:
        print(json.dumps(study_json_schema(), indent=2))
        return 0
    the_plan = plan(args)
    if args.dry_run:
        study = the_plan.study
        shown = "(generated under <data dir>/synthetic/)" if study.synthetic_data else (
            the_plan.data_dir_option or study.base.get("data_dir", ""))
        base_cfg = study.base_config(epochs=the_plan.epochs, data_dir=shown)
        print(dry_run(study, base_cfg, the_plan.cpu, the_plan.gpu))
        return 0
    with prepare(the_plan) as prepared:
        return fit(prepared)


@dataclass(frozen=True)
class Prepared:
    """A plan made ready: its data and classifiers, Ray connected, MLflow's parent run open (``plan`` now holds
    its id), the resume state saved."""
    plan: StudyPlan
    classifiers: dict
    tracking: object      # tracking.TrackingInfo


def check_before_preparing(the_plan: StudyPlan) -> None:
    """What can be refused in a moment, before data is generated or classifiers are trained."""
    tracking.check_reachable(the_plan.tracking_uri)
    address = the_plan.invocation.address
    check_ray_reachable(ray_address(address))
    if address is None and the_plan.gpu > 0:
        import torch

        if torch.cuda.device_count() == 0:
            raise MemeError(f"--gpus-per-trial {the_plan.gpu:g} but this machine has no CUDA GPU (trials would wait "
                            f"forever); give --gpus-per-trial 0, or run on a GPU machine or cluster (--address)")


@contextlib.contextmanager
def prepare(the_plan: StudyPlan):
    """Data, classifiers, Ray and MLflow for ``the_plan``; yields ``Prepared``. Ray (when this call started it)
    stops on the way out, and MLflow's parent run is ended as failed or killed when the study ends abnormally."""
    check_before_preparing(the_plan)
    run = the_plan.invocation
    base_cfg = the_plan.base_config()

    def data_and_classifiers() -> dict:   # beside Ray's start-up, which mostly waits on its processes
        prepare_data_dir(the_plan.study, the_plan.data_dir)
        classifiers = prepare_classifiers(the_plan.study, base_cfg, progress=not run.quiet)   # checks the data first
        tracking.client_for(the_plan.tracking_uri).search_experiments(max_results=1)   # creates a new MLflow database
        return classifiers

    with ThreadPoolExecutor(1, thread_name_prefix="meme-prepare") as pool:
        prepared = pool.submit(data_and_classifiers)
        started = init_ray(run.address, run.num_cpus, run.dashboard, run.verbose)
        try:
            classifiers = prepared.result()
        except BaseException:
            if started:
                import ray

                ray.shutdown()
            raise
    try:
        check_resources(the_plan.cpu, the_plan.gpu, local=run.address is None)
        check_shared_paths(the_plan.storage, the_plan.tracking_uri, run.shared_storage)
        if the_plan.resume:
            info = tracking.reopen_parent(the_plan.tracking_uri, the_plan.parent_run_id, the_plan.study.name)
        else:
            study = the_plan.study
            params = {"metric": study.metric, "mode": study.mode, "epochs": the_plan.epochs,
                      "n_trials": study.num_trials(), "cpus_per_trial": the_plan.cpu, "gpus_per_trial": the_plan.gpu,
                      "max_failures": run.max_failures, "searcher": study.searcher, "scheduler": study.scheduler}
            info = tracking.start_parent(the_plan.tracking_uri, the_plan.experiment, study, the_plan.run_name,
                                         the_plan.ray_path, params)
            the_plan = the_plan.with_parent(info.parent_run_id)
            write_state(the_plan.storage, the_plan.run_name, the_plan.state())
        try:
            yield Prepared(the_plan, classifiers, info)
        except BaseException as e:   # the parent run must not stay RUNNING when the study ends abnormally
            with contextlib.suppress(Exception):
                tracking.end_parent(info, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
    finally:
        if started:
            import ray

            ray.shutdown()


def fit(prepared: Prepared) -> int:
    """Run (or resume) the plan's trials on Ray Tune; print and log the summary; the exit status."""
    from ray import tune

    from orchestration.callbacks import ProgressCallback, TrackingCallback   # Ray: checked installed in main

    the_plan, info, run = prepared.plan, prepared.tracking, prepared.plan.invocation
    study, epochs, cpu, gpu = the_plan.study, the_plan.epochs, the_plan.cpu, the_plan.gpu
    numbered = bool(study.search)
    settings = TrialSettings(study=study.name, eval=study.eval, varying=study.varying_keys(), numbered=numbered,
                             tracking=info, classifiers=prepared.classifiers, threads=max(1, int(cpu)))
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, settings=settings),
                                    {"cpu": cpu, "gpu": gpu})
    ray_path = the_plan.ray_path
    if the_plan.resume:
        if not tune.Tuner.can_restore(ray_path):
            raise MemeError(f"{ray_path} holds no restorable Ray Tune state (was the study interrupted before "
                            f"its first trial started?); start it again without --resume")
        tuner = tune.Tuner.restore(ray_path, trainable, resume_unfinished=True,
                                   resume_errored=run.retry_errored, restart_errored=run.restart_errored)
        print(f"{PROG}: resuming {ray_path}", flush=True)
    else:
        callbacks = [ProgressCallback(study.name, study.num_trials(), epochs, study.metric,
                                      study.varying_keys(), numbered, enabled=not run.quiet),
                     TrackingCallback(info, epochs, study.varying_keys(), numbered)]
        tuner = make_tuner(study, trainable, the_plan.base_config(), the_plan.run_name, the_plan.storage, callbacks,
                           max_concurrent=run.max_concurrent, max_failures=run.max_failures, verbose=run.verbose)
    print(f"{PROG}: study {study.name}: {study.num_trials()} trials x {epochs} epochs, "
          f"{cpu:g} CPU / {gpu:g} GPU per trial; MLflow {the_plan.tracking_uri} (experiment "
          f"{the_plan.experiment!r}, parent run {info.parent_run_id}); results in {ray_path}", flush=True)
    t0 = time.perf_counter()
    with stop_signals(threading.Event()) as interrupted:
        results = tuner.fit()
    wall = time.perf_counter() - t0
    return finish(study, info, results, epochs, wall, the_plan.run_name, interrupted.is_set())


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        check_orchestration_installed()
        return run(args)
    except MemeError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return output_closed()
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before the study's state was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":  # run as a file: use the package's module, so pickled callables name it
    from orchestration.sweep import main as _main

    sys.exit(_main())
