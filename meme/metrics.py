"""The names of the metrics a training run and a study trial report, so that a study's ``metric`` can be
checked before any trial starts (a misspelt name would otherwise rank every trial as missing).

``<s>``, ``<t>`` and ``<m>`` stand for the dataset's modality names. Per epoch (``meme.train``): ``loss``,
``loss_<batch kind>``, the model's terms (``recon_*``, ``kl_*``, ``cls_*``, ``log_q_*``, ``w_*``, ``js_*``),
``epoch``, ``epoch_time_s``, ``examples_per_s``, ``pairs_per_s``. From the evaluation (``meme.eval``, its
table of metrics; in a trial every ``eval_every`` epochs and at the last): ``coherence_<s>_to_<t>``,
``coherence_cross_mean`` (the mean of both directions), ``coherence_joint``, ``latent_acc_<m>``,
``classifier_acc_<m>`` (the test accuracy of the classifier that judges coherence),
``w2_*``, ``loglik_<s>_given_<t>``, ``elbo_test``, ``test_*``, ``n_test_pairs``, ``eval_time_s``, and
for CUB ``cca_*``.
"""
from __future__ import annotations

import difflib

_FIXED = ("loss", "epoch", "epoch_time_s", "examples_per_s", "pairs_per_s", "coherence_cross_mean",
          "coherence_joint", "elbo_test", "n_test_pairs", "eval_time_s", "w2_paired_mean", "w2_unpaired_mean",
          "w2_gap", "w2_auroc", "w2_class_diag_mean", "w2_class_offdiag_mean")
_PREFIXES = ("loss_", "recon_", "kl_", "cls_", "log_q_", "w_", "js_", "test_", "cca_", "classifier_acc_")


def examples(names: tuple[str, str]) -> list[str]:
    s, t = names
    return ["coherence_cross_mean", f"coherence_{s}_to_{t}", f"coherence_{t}_to_{s}", f"latent_acc_{s}",
            f"latent_acc_{t}", "w2_gap", *_FIXED, f"loglik_{s}_given_{t}", f"loglik_{t}_given_{s}"]


def is_known(metric: str, names: tuple[str, str]) -> bool:
    if metric in examples(names):
        return True
    return any(metric.startswith(p) and len(metric) > len(p) for p in _PREFIXES)


def unknown_message(metric: str, names: tuple[str, str]) -> str:
    close = difflib.get_close_matches(metric, examples(names), n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"unknown metric {metric!r}; {hint}trials report e.g. " + ", ".join([*examples(names)[:6], "loss"])
            + " (the full list: meme/metrics.py)")


