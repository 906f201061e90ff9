"""MLflow tracking of a study: one parent run per study invocation, one child run per trial.

* The driver creates the experiment and the parent run before any trial starts (``start_parent``). The
  parent is tagged with the study, the git commit and the package versions, and holds the study YAML
  (``study.yaml``) as an artifact. ``--resume`` reopens the same parent (``reopen_parent``).
* Each trial finds or creates its child run (``TrialTracker.open``) by a deterministic trial key (the
  Tune trial id, which survives worker restarts and ``Tuner.restore``) under the parent, so a restarted
  or resumed trial continues the SAME child run. Metrics are logged with ``step = epoch``, and a restart
  skips the epochs the child already holds, so no epoch is logged twice.
* Child runs carry every config value as a param, per-epoch metrics, and the evaluation's final
  figures as artifacts; their terminal status is set by the driver (``set_trial_status``), which also
  sees trials stopped early by a scheduler and workers that died.

Workers talk to MLflow directly, so the tracking URI must reach every node: a local SQLite file
(the default, ``sqlite:///<cwd>/mlflow.db``) serves one machine; a cluster needs an MLflow server.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from meme.errors import MemeError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
TAG_STUDY = "meme.study"
TAG_ROLE = "meme.role"            # "study" (the parent) | "trial"
TAG_TRIAL_KEY = "meme.trial_key"
TAG_RAY_PATH = "meme.ray_experiment_path"
TAG_FAILURE = "meme.failure"      # why a trial failed (exception type and message)
TAG_FATAL = "meme.fatal_invocation"   # the invocation in which a deterministic error (MemeError) occurred
TAG_STOPPED_EARLY = "meme.stopped_early"
TAG_RESTARTS = "meme.restarts"
STUDY_ARTIFACT = "study.yaml"
TERMINAL = ("FINISHED", "FAILED", "KILLED")
PACKAGES = ("meme", "torch", "torchvision", "ray", "mlflow", "optuna", "numpy")


def default_tracking_uri() -> str:
    """A local SQLite MLflow database in the working directory."""
    return f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def is_local_uri(uri: str) -> bool:
    """True for backends that only this machine sees (a SQLite file or a local folder)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite backend go to ``mlruns/`` beside the database; servers choose their own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


def client_for(uri: str):
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


#: database URI schemes MLflow takes, and the driver each needs (module, pip package)
DB_DRIVERS = {"mysql": ("MySQLdb", "mysqlclient"), "mysql+pymysql": ("pymysql", "pymysql"),
              "postgresql": ("psycopg2", "psycopg2-binary"), "postgresql+psycopg2": ("psycopg2", "psycopg2-binary"),
              "mssql": ("pyodbc", "pyodbc"), "mssql+pyodbc": ("pyodbc", "pyodbc")}
SQLITE_HEADER = b"SQLite format 3\x00"


def check_backend(uri: str) -> None:
    """One line, before anything is opened, for a tracking URI whose backend cannot work here: a SQLite path that
    holds another kind of file, or a database whose Python driver is not installed."""
    import importlib.util

    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///"))
        if path.is_dir():
            raise MemeError(f"--tracking-uri {uri}: {path} is a folder; give an SQLite database file (new or MLflow's)")
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:
                if f.read(16) != SQLITE_HEADER:
                    raise MemeError(f"--tracking-uri {uri}: {path} is not an SQLite database; give MLflow's database "
                                    f"(mlflow.db where the study ran) or a new file")
    elif scheme in DB_DRIVERS:
        module, package = DB_DRIVERS[scheme]
        if importlib.util.find_spec(module) is None:
            raise MemeError(f"--tracking-uri {uri}: the {scheme} driver is not installed; pip install {package}")


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """A clear error, before any trial starts, when an MLflow server does not answer (or a database backend
    cannot be opened here: ``check_backend``)."""
    check_backend(uri)
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (the user's own server)
            if r.status != 200:
                raise MemeError(f"MLflow tracking server {uri} answered {r.status} at /health")
    except (urllib.error.URLError, OSError) as e:
        raise MemeError(f"cannot reach the MLflow tracking server {uri} ({e}); start it (mlflow server ...) "
                        f"or pass another --tracking-uri") from None


def git_commit() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = "absent"
    return out


@dataclass(frozen=True)
class TrackingInfo:
    """What a trial needs to find its child run (picklable, passed to the trainable)."""
    uri: str
    experiment_id: str
    parent_run_id: str
    study: str
    invocation: str            # one id per sweep.py invocation (a resume is a new invocation)


def get_or_create_experiment(client, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise MemeError(f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                            f"or pass another --experiment")
        if EXPERIMENT_KIND not in exp.tags:   # made elsewhere (or by an older version): open it on runs too
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
        return exp.experiment_id
    # the experiment kind makes the MLflow UI open on the runs table (model training), not on traces
    return client.create_experiment(name, artifact_location=_artifact_root(uri), tags={EXPERIMENT_KIND: TRAINING_KIND})


EXPERIMENT_KIND, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


def runs_page(uri: str, experiment_id: str) -> str:
    """Where the experiment's runs table (the parent run and its trials) opens in the MLflow UI."""
    page = f"/#/experiments/{experiment_id}/runs"
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + page
    return f"mlflow server --backend-store-uri {uri}, then open http://127.0.0.1:5000{page}"


def start_parent(uri: str, experiment: str, study, run_name: str, ray_path: str, params: dict) -> TrackingInfo:
    """Create the experiment (if needed) and the study's parent run; return what trials need."""
    client = client_for(uri)
    exp_id = get_or_create_experiment(client, experiment, uri)
    commit = git_commit()
    tags = {TAG_STUDY: study.name, TAG_ROLE: "study", TAG_RAY_PATH: ray_path, "meme.git_commit": commit,
            "mlflow.source.git.commit": commit.removesuffix("+dirty"), "mlflow.source.name": "orchestration/sweep.py",
            "mlflow.note.content": study.description,
            **{f"meme.version.{k}": v for k, v in package_versions().items()}}
    run = client.create_run(exp_id, tags=tags, run_name=run_name)
    rid = run.info.run_id
    from mlflow.entities import Param

    client.log_batch(rid, params=[Param(k, str(v)) for k, v in params.items()])
    client.log_text(rid, study.text, STUDY_ARTIFACT)
    return TrackingInfo(uri, exp_id, rid, study.name, uuid.uuid4().hex)


def reopen_parent(uri: str, parent_run_id: str, study_name: str) -> TrackingInfo:
    client = client_for(uri)
    try:
        run = client.get_run(parent_run_id)
    except Exception as e:  # mlflow raises its own exception types for a missing run
        raise MemeError(f"the study's parent run {parent_run_id} is not in {uri} ({type(e).__name__}); "
                        f"resume with the --tracking-uri the study was started with") from None
    client.update_run(parent_run_id, status="RUNNING")
    return TrackingInfo(uri, run.info.experiment_id, parent_run_id, study_name, uuid.uuid4().hex)


def end_parent(info: TrackingInfo, status: str) -> None:
    client_for(info.uri).set_terminated(info.parent_run_id, status=status)


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """The active child runs of a parent (all pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def find_child(client, info: TrackingInfo, trial_key: str):
    runs = client.search_runs([info.experiment_id], filter_string=(
        f"tags.`{PARENT_TAG}` = '{info.parent_run_id}' and tags.`{TAG_TRIAL_KEY}` = '{trial_key}'"))
    if len(runs) > 1:
        log.warning("%d child runs hold trial key %s; using the oldest", len(runs), trial_key)
    return min(runs, key=lambda r: r.info.start_time) if runs else None


def _last_step(client, run_id: str) -> int:
    hist = client.get_metric_history(run_id, "epoch")
    return max((m.step for m in hist), default=0)


def failure_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:4000]


class TrialTracker:
    """The child run of one trial, seen from the worker."""

    def __init__(self, client, info: TrackingInfo, run_id: str, last_step: int, tags: dict):
        self.client, self.info, self.run_id, self.last_step = client, info, run_id, last_step
        self.fatal_tag = tags.get(TAG_FATAL)
        self.previous_failure = tags.get(TAG_FAILURE) or ""

    @classmethod
    def open(cls, info: TrackingInfo, trial_key: str, run_name: str, params: dict, from_epoch: int) -> "TrialTracker":
        """Find the trial's child run (or create it); ``from_epoch`` is the epoch the trial resumes after."""
        from mlflow.entities import Param

        client = client_for(info.uri)
        run = find_child(client, info, trial_key)
        last = _last_step(client, run.info.run_id) if run is not None else 0
        if run is not None and from_epoch == 0 and last > 0:
            # restarted from scratch (no checkpoint): a fresh child replaces the old one, so no epoch repeats
            log.info("trial %s restarts from scratch: replacing its child run %s", trial_key, run.info.run_id)
            client.delete_run(run.info.run_id)
            run, last = None, 0
        if run is None:
            tags = {PARENT_TAG: info.parent_run_id, TAG_TRIAL_KEY: trial_key, TAG_STUDY: info.study, TAG_ROLE: "trial"}
            run = client.create_run(info.experiment_id, tags=tags, run_name=run_name)
            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        return cls(client, info, run.info.run_id, last, dict(run.data.tags))

    def failed_before_in_this_invocation(self) -> bool:
        """A deterministic error already stopped this trial in this invocation (retrying cannot help)."""
        return self.fatal_tag == self.info.invocation

    def mark_running(self) -> None:
        """The trial (re)starts training: RUNNING, and no failure reason."""
        from mlflow.entities import RunTag

        if self.previous_failure:
            self.client.log_batch(self.run_id, tags=[RunTag(TAG_FAILURE, "")])
            self.previous_failure = ""
        self.client.update_run(self.run_id, status="RUNNING")

    def log_epoch(self, metrics: dict, step: int) -> None:
        """Log an epoch's metrics at ``step``; epochs the run already holds (a restart's replay) are skipped."""
        if step <= self.last_step:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i:i + 1000])
        self.last_step = step

    def log_artifacts(self, directory, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(directory), artifact_path)

    def fail(self, exc: BaseException, fatal: bool) -> None:
        from mlflow.entities import RunTag

        tags = [RunTag(TAG_FAILURE, failure_text(exc))]
        if fatal:
            tags.append(RunTag(TAG_FATAL, self.info.invocation))
        self.client.log_batch(self.run_id, tags=tags)
        self.client.set_terminated(self.run_id, status="FAILED")


def set_trial_status(info: TrackingInfo, trial_key: str, status: str, tags: dict | None = None,
                     run_name: str | None = None, client=None) -> None:
    """Driver side: the terminal status of a trial's child run (created FAILED if the worker never got to it)."""
    client = client or client_for(info.uri)
    run = find_child(client, info, trial_key)
    if run is None:
        if status != "FAILED":
            return
        run = client.create_run(info.experiment_id, run_name=run_name, tags={
            PARENT_TAG: info.parent_run_id, TAG_TRIAL_KEY: trial_key, TAG_STUDY: info.study, TAG_ROLE: "trial"})
    from mlflow.entities import RunTag

    tags = {k: v for k, v in (tags or {}).items() if not (k == TAG_FAILURE and run.data.tags.get(TAG_FAILURE))}
    if tags:
        client.log_batch(run.info.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.set_terminated(run.info.run_id, status=status)
