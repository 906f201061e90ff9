"""Evaluations a dataset adds to the evaluation suite, for every caller (``meme eval``, ``meme train``, the
orchestrator's trials) alike, through ``meme.eval.evaluator.Evaluator``.

``dataset_evaluation(cfg, model, train_data, test_data, eval_cfg, out_dir, figures)`` returns the extra
metrics (and writes the extra files) for ``cfg.dataset``; datasets without extras return nothing.

* ``cub``: the correlation under CCA of paper appendix G (``cca_ground_truth``, ``cca_image_to_caption``,
  ``cca_caption_to_image``, ``cca_top_correlation``; :mod:`meme.eval.cca`), and with figures the caption
  examples of appendix H (``caption_examples.md`` / ``.png``: captions generated from images, decoded back
  to words, and the image nearest to the features generated from a caption). The CCA depends on the data
  only, so it is fitted once per process and feature store and reused for every model evaluated on it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from meme.data.cub import default_features_dir
from meme.eval.cca import caption_examples, cub_cca_metrics, fit_cub_cca, write_caption_examples
from meme.features.store import read_sentence_embedder, read_vocab

_CCA_CACHE: dict = {}


def _cub(cfg, model, train_data, test_data, eval_cfg, out: Path | None, figures: bool) -> tuple[dict, list[Path]]:
    store = default_features_dir(cfg)
    pairs = hashlib.sha256(b"".join(i.cpu().numpy().tobytes() for i in train_data.index)).hexdigest()
    key = (str(Path(store).resolve()), pairs)  # the CCA is fitted on exactly these training pairs
    if key not in _CCA_CACHE:
        embedder = read_sentence_embedder(store)
        _CCA_CACHE.clear()
        _CCA_CACHE[key] = embedder, fit_cub_cca(train_data, embedder)
    embedder, cca = _CCA_CACHE[key]
    device = next(model.parameters()).device  # the suite has put the model where eval_cfg.device says
    metrics = cub_cca_metrics(model, train_data, test_data, embedder, cca=cca, batch_size=eval_cfg.batch_size,
                              device=device, use_mean=eval_cfg.use_mean, max_test_pairs=eval_cfg.max_test_pairs,
                              seed=eval_cfg.seed)
    files: list[Path] = []
    if out is not None and figures:
        examples = caption_examples(model, test_data, read_vocab(store), train_data=train_data,
                                    n=eval_cfg.n_grid, seed=eval_cfg.seed, device=device)
        files = write_caption_examples(out / "caption_examples", examples)
    return metrics, files


#: dataset name -> its extra evaluation
DATASET_EVALS = {"cub": _cub}


def dataset_evaluation(cfg, model, train_data, test_data, eval_cfg, out_dir=None,
                       figures: bool = False) -> tuple[dict[str, float], list[Path]]:
    """The extra metrics and files of ``cfg.dataset`` (none for datasets without extras)."""
    fn = DATASET_EVALS.get(cfg.dataset)
    if fn is None:
        return {}, []
    return fn(cfg, model, train_data, test_data, eval_cfg, Path(out_dir) if out_dir is not None else None, figures)
