"""The orchestrator: the paper's studies on Ray Tune, Optuna and MLflow, around ``meme.train``.

* ``study``: studies as YAML files in ``search_spaces/``, validated on load, expanded into trial configs.
* ``trainable``: one trial (the core trainer, per-epoch reports, evaluations, Tune checkpoints).
* ``tracking``: MLflow parent run per study invocation, one child run per trial.
* ``sweep``: ``python orchestration/sweep.py --study NAME``, the front door.
* ``report``: ``python orchestration/report.py --study NAME``, the paper's figures and tables from MLflow.

``meme`` never imports this package; this package imports ``meme``.
"""
