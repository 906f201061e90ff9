"""The evaluation suite: coherence, latent accuracy, relatedness, likelihoods and figures.

Contract (one entry point, for the CLI, the trainer and the orchestrator)::

    from meme.eval import EvalConfig, evaluate, load_classifiers
    classifiers = load_classifiers(model.names, "<data_dir>/classifiers", missing="skip")
    metrics, files = evaluate(model, train_data, test_data, classifiers, EvalConfig(likelihood_k=0),
                              out_dir="runs/x/eval", figures=True)

* ``model``: any ``meme.models.base.MultimodalModel`` (``names``, ``encode``, ``decode``,
  ``log_likelihood``, ``loss``, ``sample_prior``). It is put in eval mode and restored afterwards; with
  ``cfg.device="auto"`` it stays on its device, otherwise it is moved there.
* ``train_data`` / ``test_data``: ``meme.data.PairedData`` with the model's modality names. The test set is
  evaluated whole (or a seeded subset of ``cfg.max_test_pairs``), in batches, under ``torch.no_grad``.
  ``train_data`` only feeds the latent probe (``None`` skips it).
* ``classifiers``: modality name -> digit classifier (images in [0, 1] -> logits). Coherence metrics
  exist only for the modalities that have one, so datasets without digit classifiers (CUB) get none.
* Same model + same ``cfg.seed`` gives the same numbers; the caller's RNG state is left untouched.
* With ``out_dir``: ``metrics.json``, ``relatedness.json`` and (``figures=True``) the PNG figures are
  written there; ``files`` lists their paths (empty without ``out_dir``).

Metrics (flat ``str -> float``; ``<s>``, ``<t>`` are the model's modality names, e.g. mnist, svhn):

=================================  =====================================================================
``n_test_pairs``                   test pairs evaluated
``coherence_<s>_to_<t>``           cross-coherence s -> t (and ``coherence_<t>_to_<s>``), in [0, 1]
``coherence_joint``                prior samples decoded into both modalities: fraction the classifiers agree
``latent_acc_<m>``                 linear probe (logistic regression) fitted on train latent means of m,
                                   accuracy on the test latent means of m
``w2_paired_mean``                 mean W2 between q(z|s_i) and q(z|t_j) over related (i, j) in a batch
                                   (``cfg.related_by``: same label for digits; same row of s, e.g. the
                                   same CUB image, for unlabelled or many-class data)
``w2_unpaired_mean``               the same over unrelated (i, j)
``w2_gap``                         ``w2_unpaired_mean - w2_paired_mean`` (higher = more related; to maximise)
``w2_auroc``                       AUROC of W2 separating unrelated from related (i, j); 0.5 = none, 1 = perfect
``w2_class_diag_mean``             mean of the class matrix's diagonal (relatedness by label)
``w2_class_offdiag_mean``          mean of its off-diagonal
``loglik_<s>_given_<t>``           importance-sampled log p(s | t), K = ``cfg.likelihood_k`` (and ``<t>_given_<s>``)
``elbo_test``                      the model's own objective on the test pairs (= -loss)
``test_<metric>``                  the model's loss metrics on the test pairs (model-specific names)
=================================  =====================================================================

Figures: ``cross_<s>_to_<t>.png``, ``cross_<t>_to_<s>.png`` (image modalities), ``tsne.png``,
``w2_histogram.png``, ``class_matrix.png`` (the matrix and its dendrogram).

The modules: ``classifiers`` (the digit classifiers, trained and stored under ``<data_dir>/classifiers``),
``coherence``, ``latents`` (encoding, the latent probe), ``relatedness`` (W2), ``likelihood``, ``plots``,
``suite`` (``evaluate``), ``cli`` (``meme eval``).
"""
from __future__ import annotations

from meme.eval.classifiers import CLASSIFIERS, ensure_classifiers, load_classifiers
from meme.eval.config import EvalConfig
from meme.eval.suite import evaluate

__all__ = ["CLASSIFIERS", "EvalConfig", "ensure_classifiers", "evaluate", "load_classifiers"]
