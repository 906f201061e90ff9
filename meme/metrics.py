"""The names of the metrics a training run and a study trial report, so that a study's ``metric`` can be
checked before any trial starts (a misspelt name would otherwise rank every trial as missing).

``<s>``, ``<t>`` and ``<m>`` stand for the dataset's modality names (any two different ones, with M modalities). Per epoch (``meme.train``): ``loss``,
``loss_<batch kind>``, the model's terms (``recon_*``, ``kl_*``, and those each model declares:
``metric_prefixes`` and ``metric_names`` of ``meme.models.base.MultimodalModel``; MEME's ``cls_*``, ``log_q_*``,
``w_*``, MMVAE's ``elbo``/``iwae``/``dreg``, mmJSD's ``js``),
``epoch``, ``epoch_time_s``, ``examples_per_s``, ``pairs_per_s``. From the evaluation (``meme.eval``, its
table of metrics; in a trial every ``eval_every`` epochs and at the last): ``coherence_<s>_to_<t>``,
``coherence_cross_mean`` (the mean over every direction), ``coherence_given_<k>`` for k = 1 .. M-1 (the mean
over the input subsets of size k and their targets; with M > 2 also ``coherence_given_<k>_to_<m>``),
``coherence_joint``, ``latent_acc_<m>``, ``latent_acc_joint``, ``classifier_acc_<m>`` (the test accuracy of
the classifier that judges coherence), ``w2_*`` (with M > 2 the mean over the pairs, and
``w2_<what>_<s>_<t>`` per pair), ``loglik_<s>_given_<t>`` (with M > 2 also ``loglik_<m>_given_rest``,
``loglik_given_1`` and ``loglik_given_<M-1>``), ``elbo_test``, ``test_*``, ``n_test_pairs``,
``eval_time_s``, and for CUB ``cca_*``.
"""
from __future__ import annotations

import difflib
import itertools
import re

from meme.models import MODELS

_W2 = ("w2_paired_mean", "w2_unpaired_mean", "w2_gap", "w2_auroc", "w2_class_diag_mean", "w2_class_offdiag_mean")
_FIXED = ("loss", "epoch", "epoch_time_s", "examples_per_s", "pairs_per_s", "coherence_cross_mean",
          "coherence_joint", "elbo_test", "n_test_pairs", "eval_time_s", "latent_acc_joint", *_W2)
_PREFIXES = ("loss_", "recon_", "kl_", "test_", "cca_", "classifier_acc_",
             *dict.fromkeys(p for model in MODELS.values() for p in model.metric_prefixes))
_MODEL_NAMES = tuple(dict.fromkeys(n for model in MODELS.values() for n in model.metric_names))


def examples(names: tuple[str, ...]) -> list[str]:
    """Every metric name a trial on a dataset with these modalities can report, the common ones first."""
    M, (s, t) = len(names), names[:2]
    out = ["coherence_cross_mean", f"coherence_{s}_to_{t}", f"coherence_{t}_to_{s}", f"latent_acc_{s}",
           f"latent_acc_{t}", "w2_gap", *_FIXED, f"loglik_{s}_given_{t}", f"loglik_{t}_given_{s}"]
    out += [f"coherence_given_{k}" for k in range(1, M)]
    out += [f"coherence_{a}_to_{b}" for a, b in itertools.permutations(names, 2)]
    out += [f"latent_acc_{m}" for m in names] + [f"loglik_{a}_given_{b}" for a, b in itertools.permutations(names, 2)]
    if M > 2:
        out += [f"coherence_given_{k}_to_{m}" for k in range(1, M) for m in names]
        out += [f"loglik_{m}_given_rest" for m in names] + ["loglik_given_1", f"loglik_given_{M - 1}"]
        out += [f"{w}_{a}_{b}" for w in _W2 for a, b in itertools.combinations(names, 2)]
    return list(dict.fromkeys(out))


def is_known(metric: str, names: tuple[str, ...]) -> bool:
    if metric in examples(names) or metric in _MODEL_NAMES:
        return True
    return any(metric.startswith(p) and len(metric) > len(p) for p in _PREFIXES)


def unknown_message(metric: str, names: tuple[str, ...]) -> str:
    given = re.fullmatch(r"coherence_given_(\d+)(_to_.*)?", metric)
    if given and int(given.group(1)) >= len(names) or given and int(given.group(1)) == 0:
        return (f"unknown metric {metric!r}: the dataset has {len(names)} modalities, so coherence is given 1 to "
                f"{len(names) - 1} of them; valid: " + ", ".join(f"coherence_given_{k}" for k in range(1, len(names))))
    close = difflib.get_close_matches(metric, examples(names), n=1, cutoff=0.7)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"unknown metric {metric!r}; {hint}trials report e.g. " + ", ".join([*examples(names)[:6], "loss"])
            + " (the full list: meme/metrics.py)")


