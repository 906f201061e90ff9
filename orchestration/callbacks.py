"""Tune callbacks on the driver: progress on the console, and the terminal status of each trial's child run.

Both are pickled with the Tuner (``tuner.pkl``) and come back on ``--resume``, so their live state (the
progress bar, the MLflow client) is built lazily and left out of the pickle.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from ray import tune
from tqdm.auto import tqdm

from orchestration.study import trial_name
from orchestration.tracking import (TAG_FAILURE, TAG_RESTARTS, TAG_STOPPED_EARLY, TrackingInfo, client_for, find_child,
                                    set_trial_status)
from orchestration.trainable import train_config

log = logging.getLogger(__name__)


def trial_label(trial, varying, numbered: bool) -> str:
    """The trial's readable name (the same as its MLflow run name)."""
    return config_label(trial.config, trial.trial_id, varying, numbered)


def config_label(config: dict, trial_id: str, varying, numbered: bool) -> str:
    """The readable name of the trial ``trial_id`` with ``config``; the id where the config cannot be read."""
    try:
        cfg = train_config(config).to_dict()
    except Exception:  # a config Tune could not resolve: fall back to the id
        return trial_id
    tail = str(trial_id).rsplit("_", 1)[-1]
    return trial_name(cfg, varying, int(tail) if numbered and tail.isdigit() else None)


def trial_error_text(trial) -> str:
    """The last line of a trial's error file (``ExcType: message``), or a generic reason."""
    return error_file_text(trial.error_file)


def error_file_text(path, error: BaseException | None = None) -> str:
    """The last line (``ExcType: message``) of a trial's error file at ``path``; else of ``error``'s text; else a
    generic reason."""
    text = Path(path).read_text(errors="replace") if path and Path(path).exists() else str(error or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if not ln.startswith(("Failure #", "File ", "^", "~")):
            return ln[:4000]
    return "the trial's worker failed (see the trial's error.txt in the Ray results folder)"


class _PicklesWithoutHandles(tune.Callback):
    """A Tune callback whose open handles (``_transient``: a progress bar, an MLflow client) are left out when
    Tune pickles its state; they are made again on first use."""

    _transient: tuple[str, ...] = ()

    def __getstate__(self):
        return {k: (None if k in self._transient else v) for k, v in self.__dict__.items()}


class ProgressCallback(_PicklesWithoutHandles):
    """One progress bar over all the study's epochs, and one line per trial event."""

    _transient = ("_bar",)

    def __init__(self, study: str, n_trials: int, epochs: int, metric: str, varying, numbered: bool, enabled=True):
        self.study, self.n_trials, self.epochs, self.metric = study, n_trials, epochs, metric
        self.varying, self.numbered, self.enabled = tuple(varying), numbered, enabled
        self._bar = None
        self._seen: dict[str, int] = {}
        self._counts = {"running": 0, "done": 0, "failed": 0}

    def _write(self, msg: str) -> None:
        if self.enabled:
            tqdm.write(msg)

    def _progress(self):
        if self._bar is None:
            self._bar = tqdm(total=self.n_trials * self.epochs, unit="epoch", desc=self.study,
                             disable=not self.enabled, dynamic_ncols=True)
            self._bar.update(sum(self._seen.values()))
        return self._bar

    def _label(self, trial) -> str:
        return trial_label(trial, self.varying, self.numbered)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._counts["running"] = sum(t.status == "RUNNING" for t in trials) or 1
        self._write(f"[{self.study}] start   {self._label(trial)}")
        self._progress().set_postfix(self._counts, refresh=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        new = max(0, epoch - self._seen.get(trial.trial_id, 0))
        self._seen[trial.trial_id] = max(epoch, self._seen.get(trial.trial_id, 0))
        bar = self._progress()
        bar.update(new)
        self._counts["running"] = sum(t.status == "RUNNING" for t in trials)
        bar.set_postfix(self._counts, refresh=False)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._counts["done"] += 1
        res = trial.last_result or {}
        value = res.get(self.metric)
        shown = f"{self.metric}={value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else ""
        epoch = int(res.get("epoch", 0))
        stopped = f"  (stopped early by the scheduler after epoch {epoch})" if 0 < epoch < self.epochs else ""
        self._write(f"[{self.study}] done    {self._label(trial)}  {shown}{stopped}")

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._write(f"[{self.study}] retry   {self._label(trial)}: restarting from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._counts["failed"] += 1
        self._write(f"[{self.study}] FAILED  {self._label(trial)}: {trial_error_text(trial)}")

    def on_experiment_end(self, trials, **info):
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class TrackingCallback(_PicklesWithoutHandles):
    """Sets each child run's terminal status from the driver: FINISHED (with ``meme.stopped_early`` when a
    scheduler stopped it), FAILED (with the reason) and the number of restarts. A tracking hiccup is
    logged, never fatal to the study."""

    _transient = ("_client",)

    def __init__(self, info: TrackingInfo, epochs: int, varying, numbered: bool):
        self.info, self.epochs, self.varying, self.numbered = info, epochs, tuple(varying), numbered
        self._client = None

    def _set(self, trial, status, tags):
        try:
            if self._client is None:
                self._client = client_for(self.info.uri)
            set_trial_status(self.info, trial.trial_id, status, tags,
                             run_name=trial_label(trial, self.varying, self.numbered), client=self._client)
        except Exception as e:  # noqa: BLE001 (MLflow raises many types; tracking must not end the study)
            log.warning("could not set the MLflow status of trial %s: %s", trial.trial_id, e)

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = int((trial.last_result or {}).get("epoch", 0))
        self._set(trial, "FINISHED", {TAG_STOPPED_EARLY: str(epoch < self.epochs).lower()})

    def on_trial_error(self, iteration, trials, trial, **info):
        self._set(trial, "FAILED", {TAG_FAILURE: trial_error_text(trial)})

    def on_trial_recover(self, iteration, trials, trial, **info):
        try:
            from mlflow.entities import RunTag

            self._client = self._client or client_for(self.info.uri)
            run = find_child(self._client, self.info, trial.trial_id)
            if run is not None:
                self._client.log_batch(run.info.run_id, tags=[RunTag(TAG_RESTARTS, str(trial.num_failures))])
        except Exception as e:  # noqa: BLE001
            log.warning("could not tag the restart of trial %s: %s", trial.trial_id, e)
