"""One trial: the core trainer as a Ray Tune function trainable.

``run_trial(config, settings, session)`` reads top to bottom::

    cfg = TrainConfig from the trial's config        # seeds, data, model: all from the config
    state = session.checkpoint()                     # resume: the last Tune checkpoint, if any
    tracker = the trial's MLflow child run           # found again after a restart (same trial key)
    trainer = Trainer(cfg); trainer.load_state_dict(state)
    for metrics in trainer.epochs(evaluate):         # meme train's loop: training metrics every epoch, the
        tracker.log_epoch(metrics, step=epoch)       # evaluation every cfg.eval_every epochs and at the end
        session.report(metrics, checkpoint=trainer)  # every cfg.checkpoint_every epochs and at the end

``TuneSession`` reports through ``ray.tune.report`` with a ``tune.Checkpoint`` (the trainer's plain state
dict) and resumes from ``ray.tune.get_checkpoint()``, so a trial whose worker dies restarts from its
last checkpoint and still ends after ``cfg.epochs`` epochs. ``LocalSession`` runs the same code in one
process without Ray (tests, the overhead benchmark).

Failures: a ``MemeError`` (a bad config or data, or ``meme.train.NonFiniteLoss`` for a NaN/inf loss) is
deterministic, so the child run records it and a retry within the same invocation fails at once instead
of training again; any other exception (a lost worker, out of memory) is retried by Tune from the last
checkpoint, up to ``FailureConfig(max_failures)``.
"""
from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from meme.models import TrainConfig
from meme.errors import MemeError
from meme.eval import EvalConfig
from meme.train import CHECKPOINT, Trainer, load_checkpoint
from orchestration.study import trial_name
from orchestration.tracking import TrackingInfo, TrialTracker

log = logging.getLogger(__name__)

GRID_KEY = "grid"   # a trial config holds its grid point under this key (grids may be unions of products)


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs besides its config; passed to the trainable with ``tune.with_parameters``."""
    study: str
    eval: dict                              # EvalConfig keys
    varying: tuple[str, ...] = ()           # config keys in the run name
    numbered: bool = False                  # append the trial number to the run name (searched studies)
    tracking: TrackingInfo | None = None
    classifiers: dict | None = None         # modality -> classifier module (loaded or trained once by the driver)
    threads: int = 1                        # torch threads (the trial's CPUs)


def train_config(config: dict) -> TrainConfig:
    """The trial's TrainConfig: the flat keys, with the grid point's keys merged in. A trial of a study started
    before a key existed (resumed from Tune's saved state) gets the value that study ran with
    (``TrainConfig.from_stored``: ``nets`` was appendix_k); new studies give every key."""
    flat = {k: v for k, v in config.items() if k != GRID_KEY}
    flat.update(config.get(GRID_KEY) or {})
    return TrainConfig.from_stored(flat)


# ------------------------------------------------------------------ sessions
class TuneSession:
    """Reports and checkpoints through Ray Tune (inside a Tune trial)."""

    def __init__(self):
        from ray import tune

        self._tune = tune
        self.trial_key = tune.get_context().get_trial_id()

    @property
    def trial_index(self) -> int | None:
        tail = self.trial_key.rsplit("_", 1)[-1]
        return int(tail) if tail.isdigit() else None

    def checkpoint(self) -> dict | None:
        ckpt = self._tune.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return load_checkpoint(Path(d) / CHECKPOINT)

    def report(self, metrics: dict, trainer: Trainer | None) -> None:
        if trainer is None:
            self._tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="meme-ckpt-") as d:
            trainer.save(Path(d) / CHECKPOINT)
            self._tune.report(metrics, checkpoint=self._tune.Checkpoint.from_directory(d))


class LocalSession:
    """The same trial in this process, without Ray: reports are kept, checkpoints are state dicts in memory."""

    def __init__(self, trial_key: str = "local", state: dict | None = None, trial_index: int | None = None):
        self.trial_key, self.trial_index, self.state = trial_key, trial_index, state
        self.reports: list[dict] = []

    def checkpoint(self) -> dict | None:
        return self.state

    def report(self, metrics: dict, trainer: Trainer | None) -> None:
        self.reports.append(dict(metrics))
        if trainer is not None:
            self.state = trainer.state_dict()


# --------------------------------------------------------------- evaluation
def load_classifiers(sent: dict | None, names, device) -> dict:
    """This trial's copies of the classifiers the driver sent (only for this model's modalities)."""
    if not sent:
        return {}
    return {name: copy.deepcopy(sent[name]).to(device).eval() for name in names if name in sent}


# --------------------------------------------------------------------- trial
def run_trial(config: dict, settings: TrialSettings, session) -> dict:
    """Train one trial to ``cfg.epochs`` (resuming from the session's checkpoint); return the last metrics."""
    cfg = train_config(config)
    if not cfg.num_threads:
        torch.set_num_threads(max(1, settings.threads))
    state = session.checkpoint()
    from_epoch = int(state["epoch"]) if state is not None else 0
    tracker = None
    if settings.tracking is not None:
        name = trial_name(cfg.to_dict(), settings.varying, session.trial_index if settings.numbered else None)
        tracker = TrialTracker.open(settings.tracking, session.trial_key, name, cfg.to_dict(), from_epoch)
        if tracker.failed_before_in_this_invocation():
            raise MemeError(f"{tracker.previous_failure} (not retried: a deterministic error recurs)")
        tracker.mark_running()
    try:
        return _train(cfg, settings, session, state, tracker)
    except MemeError as e:
        if tracker is not None:
            tracker.fail(e, fatal=True)
        raise
    except Exception as e:
        if tracker is not None:
            tracker.fail(e, fatal=False)
        raise


def _train(cfg: TrainConfig, settings: TrialSettings, session, state, tracker) -> dict:
    trainer = Trainer(cfg)
    if state is not None:
        trainer.load_state_dict(state)
        log.info("trial %s resumes after epoch %d", session.trial_key, trainer.epoch)
    trainer.evaluator.classifiers = load_classifiers(settings.classifiers, trainer.model.names, trainer.device)
    eval_cfg = EvalConfig.from_dict(settings.eval)

    def evaluate(final: bool) -> dict:
        """The run's evaluation (``meme.eval.evaluator``: coherence, latent accuracy, W2 and more, and CUB's CCA),
        its time as ``eval_time_s``; the last one's files go to MLflow."""
        with tempfile.TemporaryDirectory(prefix="meme-eval-") as d:
            t0 = time.perf_counter()
            metrics, _ = trainer.evaluator(eval_cfg, out_dir=d if final else None, figures=final)
            metrics["eval_time_s"] = time.perf_counter() - t0
            if final and tracker is not None:
                tracker.log_artifacts(d, "eval")
        return metrics

    last: dict = {}
    for metrics in trainer.epochs(evaluate):
        if tracker is not None:
            tracker.log_epoch(metrics, trainer.epoch)
        session.report(metrics, trainer if trainer.save_due() else None)
        last = metrics
    return last


def tune_trainable(config: dict, settings: TrialSettings) -> None:
    """The Ray Tune function trainable (bind ``settings`` with ``tune.with_parameters``)."""
    run_trial(config, settings, TuneSession())
