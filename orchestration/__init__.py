"""The orchestrator: the paper's studies on Ray Tune, Optuna and MLflow, around ``meme.train``.

* ``study``: studies as YAML files in ``search_spaces/``, validated on load, expanded into trial configs;
  ``study_schema`` declares a study file's shape (pydantic) and words its errors.
* ``trainable``: one trial (the core trainer, per-epoch reports, evaluations, Tune checkpoints).
* ``tracking``: MLflow parent run per study invocation, one child run per trial.
* ``sweep``: ``python orchestration/sweep.py --study NAME``, the front door: the CLI, the Tuner, signals;
  ``run_state`` (storage and the state a run resumes from), ``prepare`` (data and classifiers, once, before
  any trial), ``cluster`` (Ray: address, start, resources, shared folders) and ``summary`` (the table that
  ends a study, from the public ``ResultGrid``) are its parts.
* ``report``: ``python orchestration/report.py --study NAME``, the paper's figures and tables from MLflow.

``meme`` never imports this package; this package imports ``meme``. Its dependencies (Ray Tune, Optuna,
MLflow; pydantic for the study schema) are the ``orchestrate`` extra: ``pip install -e '.[orchestrate]'`` (``.[dev]`` includes it).
"""
from __future__ import annotations

import importlib.util

from meme.errors import MemeError

ORCHESTRATION_MODULES = ("ray", "optuna", "mlflow", "pydantic")
SWEEP_PROG = "sweep.py"   # how sweep.py and the modules it runs name themselves in messages
#: a report figure's ``x`` that is not a config key: the number of input modalities k, read from each ``y``
#: metric's trailing ``_<k>`` (``coherence_given_1`` .. ``coherence_given_4``: the PolyMNIST figure)
INPUTS = "inputs"


def check_orchestration_installed() -> None:
    """A one-line ``MemeError`` naming what is missing when the orchestrator's dependencies are not installed."""
    missing = [m for m in ORCHESTRATION_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise MemeError(f"the orchestrator needs {', '.join(missing)}, which are not installed; install the "
                        f"orchestrate extra: pip install -e '.[orchestrate]' (the library alone: pip install -e .)")
