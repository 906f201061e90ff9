"""One run's evaluation: ``Evaluator``.

It owns what every evaluation of a trained run needs, so that ``meme train`` (``Trainer.evaluator``), the
orchestrator's trials and ``meme eval`` evaluate the same way:

* the judging classifiers: given, or found once on first use (``run_classifiers``: those
  stored under ``<data_dir>/classifiers``, missing ones skipped with their coherence metrics; for a dataset file
  the ones trained on its tables);
* the evaluation suite (``meme.eval.suite.evaluate``) and then the dataset's extras (``meme.eval.datasets``,
  such as CUB's CCA);
* the metrics file: ``<out_dir>/metrics.json``, written once with both.

    evaluator = Evaluator(cfg, model, train_data, test_data, device)
    metrics, files = evaluator(EvalConfig(...), out_dir="runs/x/eval", figures=True)

``meme.eval.evaluate`` stays the suite on its own, for any model and data.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from meme.data import PairedData, get_dataset
from meme.eval.classifiers import classifier_dir, load_classifiers
from meme.eval.config import EvalConfig
from meme.eval.datasets import dataset_evaluation
from meme.eval.suite import evaluate, write_metrics
from meme.eval.table_classifiers import table_classifiers


def run_classifiers(cfg, device="cpu", progress: bool = False, directory=None) -> dict[str, nn.Module]:
    """The classifiers that judge the coherence of runs of ``cfg.dataset``, by modality name.

    For a dataset file (the user's own data): one per modality, trained on its real training table and cached
    by the tables' content (``meme.eval.table_classifiers``; trained here when missing). For the built-in
    datasets: the digit classifiers stored in ``directory`` (default ``<data dir>/classifiers``); a missing
    one is skipped, and so are its coherence metrics."""
    spec = get_dataset(cfg.dataset)
    if spec.file is not None:
        return {n: c.to(device) for n, (c, _) in table_classifiers(spec.file(cfg), progress=progress).items()}
    directory = directory or classifier_dir(cfg.data_dir or None)
    return load_classifiers(spec.names, directory, device=device, missing="skip")


class Evaluator:
    def __init__(self, cfg, model: nn.Module, train_data: PairedData,
                 test_data: PairedData | Callable[[], PairedData], device: torch.device, classifiers: dict | None = None):
        """``test_data`` may be a function that loads it, called at the first evaluation."""
        self.cfg, self.model, self.train_data, self.device = cfg, model, train_data, device
        self._test_data, self._classifiers = test_data, classifiers

    @property
    def test_data(self) -> PairedData:
        if callable(self._test_data):
            self._test_data = self._test_data()
        return self._test_data

    @property
    def classifiers(self) -> dict:
        """Modality -> judging classifier; found (for a dataset file: hashed, loaded or trained) once."""
        if self._classifiers is None:
            self._classifiers = run_classifiers(self.cfg, device=self.device)
        return self._classifiers

    @classifiers.setter
    def classifiers(self, value: dict) -> None:
        self._classifiers = value

    def __call__(self, eval_cfg: EvalConfig | None = None, out_dir=None, figures: bool = False,
                 progress: bool = False) -> tuple[dict[str, float], list[Path]]:
        """The suite and the dataset's extras on the model as it is now; ``eval_cfg`` defaults to
        ``EvalConfig(likelihood_k=0, seed=cfg.seed)``. Returns (metrics, files written under ``out_dir``)."""
        eval_cfg = eval_cfg or EvalConfig(likelihood_k=0, seed=self.cfg.seed)
        metrics, files = evaluate(self.model, self.train_data, self.test_data, self.classifiers, eval_cfg,
                                  out_dir=out_dir, figures=figures, progress=progress, metrics_file=False)
        extra, extra_files = dataset_evaluation(self.cfg, self.model, self.train_data, self.test_data, eval_cfg,
                                                out_dir, figures)
        metrics = {**metrics, **extra}
        if out_dir is not None:
            files = [*files, *extra_files, write_metrics(out_dir, metrics)]
        return metrics, files
