"""``evaluate``: the whole evaluation of one model, as flat float metrics plus figure files."""
from __future__ import annotations

import itertools
import json
import logging
import math
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from meme.data.batch import gather
from meme.data.paired import PairedData
from meme.device import resolve_device, resolve_precision, tune_allocator
from meme.errors import MemeError
from meme.eval import plots
from meme.eval.coherence import cross_coherence, joint_coherence, latent_sample, subset_coherence
from meme.eval.config import MAX_LABEL_CLASSES, EvalConfig
from meme.eval.latents import Encoded, encode_pairs, has_labels, latent_accuracies
from meme.eval.likelihood import conditional_log_likelihoods, test_objective
from meme.eval.relatedness import Relatedness, class_linkage, relatedness

log = logging.getLogger(__name__)

STAGES = ("encode", "coherence", "joint_coherence", "latent_probe", "relatedness", "likelihood",
          "elbo", "figures")


def _device(model: nn.Module, name: str) -> torch.device:
    if name == "auto":
        p = next(model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    return resolve_device(name)


def _check_inputs(model, train_data, test_data, classifiers) -> None:
    if test_data is None or len(test_data) == 0:
        raise MemeError("the test set is empty: there is nothing to evaluate (check --data-dir and max_test_pairs)")
    if tuple(test_data.names) != tuple(model.names):
        raise MemeError(f"the model is for modalities {tuple(model.names)} but the test data holds {tuple(test_data.names)}")
    if train_data is not None and tuple(train_data.names) != tuple(model.names):
        raise MemeError(f"the model is for modalities {tuple(model.names)} but the training data holds {tuple(train_data.names)}")
    unknown = sorted(set(classifiers) - set(model.names))
    if unknown:
        raise MemeError(f"classifiers for {', '.join(map(repr, unknown))} do not match the model's modalities "
                        f"{', '.join(map(repr, model.names))}")


def evaluate(model, train_data: PairedData | None, test_data: PairedData, classifiers: dict[str, nn.Module],
             cfg: EvalConfig = EvalConfig(), out_dir=None, figures: bool = True, progress: bool = False,
             timings: dict[str, float] | None = None, metrics_file: bool = True) -> tuple[dict[str, float], list[Path]]:
    """Evaluate ``model``; see the contract in ``meme.eval``'s docstring. Returns (metrics, files written).
    ``metrics_file``: write ``<out_dir>/metrics.json`` (``meme.eval.evaluator.Evaluator`` writes its own, with the
    dataset's extras).

    ``timings``, when given, receives the wall-clock seconds spent in each of ``STAGES`` (``<stage>``) and
    this process's CPU seconds (``<stage>_cpu``).
    """
    _check_inputs(model, train_data, test_data, classifiers)
    tune_allocator()
    device = _device(model, cfg.device)
    model.to(device)
    classifiers = {k: c.to(device).eval() for k, c in classifiers.items()}
    fast = resolve_precision(cfg.precision, device) == "bf16"   # fp32 keeps every number as it was
    if fast:
        classifiers = {k: c.for_inference() if hasattr(c, "for_inference") else c for k, c in classifiers.items()}
    was_training = model.training
    model.eval()
    out = Path(out_dir) if out_dir is not None else None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                _autocast(fast, device):
            torch.manual_seed(cfg.seed)
            metrics, files = _evaluate(model, train_data, test_data, classifiers, cfg, device, out,
                                       figures and out is not None, progress, {} if timings is None else timings,
                                       exact=not fast)
    finally:
        model.train(was_training)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if metrics_file:
            files.append(write_metrics(out, metrics))
    return metrics, files


def _autocast(bf16: bool, device: torch.device):
    """bf16 autocast where the evaluation's precision resolved to bf16 (``meme.device.resolve_precision``), else
    nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def write_metrics(out_dir, metrics: dict) -> Path:
    """``<out_dir>/metrics.json``: the metrics, sorted, indented."""
    path = Path(out_dir) / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return path


def _evaluate(model, train_data, test_data, classifiers, cfg: EvalConfig, device, out: Path | None, figures: bool,
              progress: bool, timings: dict[str, float], exact: bool = True) -> tuple[dict[str, float], list[Path]]:
    """The stages of ``evaluate``. ``exact`` (fp32): W2 from exact differences and the probe fitted in float64;
    else (bf16) W2 from one float64 matrix product and the probe fitted in float32."""
    names = model.names
    g = torch.Generator().manual_seed(cfg.seed)
    test_pairs = torch.randperm(len(test_data), generator=g)
    if cfg.max_test_pairs:
        test_pairs = test_pairs[:cfg.max_test_pairs]
    metrics: dict[str, float] = {"n_test_pairs": float(test_pairs.numel())}
    files: list[Path] = []
    bar = tqdm(total=len(STAGES), desc="evaluate", disable=not progress, unit="stage")

    @contextmanager
    def stage(name):
        bar.set_postfix_str(name)
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[name] = time.perf_counter() - t0
        timings[f"{name}_cpu"] = time.process_time() - c0
        bar.update(1)

    M = len(names)
    probe = train_data is not None and len(train_data) > 0 and has_labels(test_data.labels[test_pairs]) \
        and has_labels(train_data.labels)
    with stage("encode"):   # with the joint posterior's mean where the probe takes it: the test set is encoded once
        enc = encode_pairs(model, test_data, test_pairs, cfg.batch_size, device, joint=probe, experts=M > 2)

    with stage("coherence"):
        for name, clf in classifiers.items():  # how far the judges themselves can be trusted
            if getattr(clf, "test_accuracy", None) is not None:
                metrics[f"classifier_acc_{name}"] = float(clf.test_accuracy)
        coherence_table = {}
        if has_labels(enc.labels):
            found, coherence_table = _coherence(model, enc, classifiers, cfg, device)
            metrics.update(found)

    with stage("joint_coherence"):
        if cfg.n_joint and all(n in classifiers for n in names):
            metrics["coherence_joint"] = joint_coherence(model, tuple(classifiers[n] for n in names),
                                                         cfg.n_joint, cfg.batch_size)

    with stage("latent_probe"):
        if probe:
            train_pairs = torch.randperm(len(train_data), generator=g)
            if cfg.n_latent_train:
                train_pairs = train_pairs[:cfg.n_latent_train]
            enc_train = encode_pairs(model, train_data, train_pairs, cfg.batch_size, device, joint=True)
            joint_test = enc.joint_mu
            train_y, test_y = enc_train.labels.numpy(), enc.labels.numpy()
            fits = [(enc_train.mu[m].numpy(), enc.mu[m].numpy()) for m in range(M)]
            fits.append((enc_train.joint_mu.numpy(), joint_test.numpy()))
            # exact: float64, one fit at a time, as every evaluation before; else float32 with BLAS on one thread,
            # as many fits at a time as the evaluation has torch threads
            accs = latent_accuracies(fits, train_y, test_y, cfg.seed, dtype=np.float64 if exact else np.float32,
                                     workers=None if exact else torch.get_num_threads())
            for name, acc in zip([*names, "joint"], accs):
                metrics[f"latent_acc_{name}"] = acc

    with stage("relatedness"):
        by = cfg.related_by
        if by == "auto":
            by = "label" if has_labels(enc.labels) and int(enc.labels.max()) < MAX_LABEL_CLASSES else "pair"
        rel = relatedness(enc, cfg.batch_size, by, exact=exact)   # modalities 0 and 1: the figures' pair
        if M == 2:
            metrics.update(rel.summary())
        else:   # every pair: each as w2_<name>_<a>_<b>, and the mean over the pairs under the two-modality names
            per_pair = {(a, b): (rel if (a, b) == (0, 1) else relatedness(enc.pair(a, b), cfg.batch_size, by,
                                                                                   exact=exact)).summary()
                        for a, b in itertools.combinations(range(M), 2)}
            for (a, b), summary in per_pair.items():
                metrics.update({f"{k}_{names[a]}_{names[b]}": v for k, v in summary.items()})
            for k in next(iter(per_pair.values())):
                metrics[k] = float(np.mean([s[k] for s in per_pair.values()]))

    with stage("likelihood"):
        if cfg.likelihood_k:
            lik_pairs = test_pairs[:cfg.likelihood_pairs] if cfg.likelihood_pairs else test_pairs
            metrics.update(conditional_log_likelihoods(model, test_data, lik_pairs, cfg.likelihood_k,
                                                       max(1, cfg.batch_size // 4), device))

    with stage("elbo"):
        if cfg.elbo:
            metrics.update(test_objective(model, test_data, test_pairs, cfg.batch_size, device))

    with stage("figures"):
        if out is not None:
            files.append(_write_relatedness(out, rel, names))
            if M > 2 and coherence_table:
                (out / "coherence.json").write_text(json.dumps(coherence_table, indent=1) + "\n")
                files.append(out / "coherence.json")
        if figures:
            files += _figures(model, test_data, test_pairs, enc, rel, cfg, device, out)
    bar.close()
    log.info("evaluation times (s): %s", {k: round(v, 2) for k, v in timings.items() if not k.endswith("_cpu")})
    bad = [k for k, v in metrics.items() if not math.isfinite(v) and not k.startswith("w2_")]
    if bad:
        log.warning("non-finite evaluation metrics: %s", ", ".join(bad))
    return metrics, files


def _coherence(model, enc: Encoded, classifiers, cfg: EvalConfig, device) -> tuple[dict[str, float], dict[str, float]]:
    """Conditional coherence for every non-empty proper subset S and target t outside S that has a classifier
    (``meme.eval.coherence``): ``coherence_<a>_to_<b>`` for |S| = 1, ``coherence_given_<k>`` (the mean over the
    subsets of size k and their targets), ``coherence_given_<k>_to_<t>`` per target where M > 2, and
    ``coherence_cross_mean`` (the mean over |S| = 1); and the whole table, "S->t": coherence (``coherence.json``)."""
    names, M = model.names, len(model.names)
    out, table = {}, {}
    for a, b in itertools.permutations(range(M), 2):   # |S| = 1, from the encodings at hand
        if names[b] in classifiers:
            table[((a,), b)] = out[f"coherence_{names[a]}_to_{names[b]}"] = cross_coherence(
                model, enc, a, b, classifiers[names[b]], cfg.batch_size, device, cfg.use_mean)
    larger = [S for k in range(2, M) for S in itertools.combinations(range(M), k)]
    if larger:
        judges = {m: classifiers[n] for m, n in enumerate(names) if n in classifiers}
        table.update(subset_coherence(model, enc, larger, judges, cfg.batch_size, device, cfg.use_mean))
    singles = [v for (S, _), v in table.items() if len(S) == 1]
    if len(singles) == M * (M - 1):   # one number to rank runs by: the mean over every direction
        out["coherence_cross_mean"] = sum(singles) / len(singles)
    for k in range(1, M):
        cells = {key: v for key, v in table.items() if len(key[0]) == k}
        if cells:
            out[f"coherence_given_{k}"] = sum(cells.values()) / len(cells)
            if M > 2:
                for t in sorted({t for _, t in cells}):
                    vals = [v for (_, tt), v in cells.items() if tt == t]
                    out[f"coherence_given_{k}_to_{names[t]}"] = sum(vals) / len(vals)
    return out, {"+".join(names[m] for m in S) + f"->{names[t]}": v for (S, t), v in table.items()}


def _write_relatedness(out: Path, rel: Relatedness, names) -> Path:
    """The class matrix, the dendrogram's leaf order and the W2 histograms, as JSON beside the figures."""
    from scipy.cluster.hierarchy import leaves_list

    both = np.concatenate([rel.related, rel.unrelated])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 101)
    doc = {"modalities": list(names), "bins": bins.tolist(),
           "related_counts": np.histogram(rel.related, bins)[0].tolist(),
           "unrelated_counts": np.histogram(rel.unrelated, bins)[0].tolist(),
           "class_matrix": None, "dendrogram_leaves": None}
    if rel.class_matrix is not None:
        m = rel.class_matrix
        doc["class_matrix"] = [[None if not np.isfinite(v) else float(v) for v in row] for row in m]
        if np.isfinite(m).all() and m.shape[0] > 1:
            doc["dendrogram_leaves"] = leaves_list(class_linkage(m)).tolist()
    out.mkdir(parents=True, exist_ok=True)
    path = out / "relatedness.json"
    path.write_text(json.dumps(doc) + "\n")
    return path


def _figures(model, test_data, test_pairs, enc: Encoded, rel: Relatedness, cfg: EvalConfig, device, out: Path) -> list[Path]:
    names = model.names
    files = []
    g = torch.Generator().manual_seed(cfg.seed + 1)
    pick = plots.pick_grid_examples(enc.labels, cfg.n_grid, g)
    M = len(names)
    batch = gather(test_data, test_pairs[pick], (True,) * M, device)
    for a, b in ((a, b) for a, b in itertools.permutations(range(M), 2) if 0 in (a, b)):   # into and out of the first
        mu, sigma = enc.mu[a][pick].to(device), enc.sigma[a][pick].to(device)
        outputs = torch.stack([model.decode(latent_sample(mu, sigma, False), b).float() for _ in range(cfg.grid_samples)])
        if plots.is_image(batch.x[a]) and plots.is_image(outputs[0]):
            files.append(plots.cross_generation_grid(out / f"cross_{names[a]}_to_{names[b]}.png", batch.x[a],
                                                     outputs, names[a], names[b], enc.labels[pick]))
    if cfg.n_tsne >= 10:
        n = min(cfg.n_tsne // M, len(enc))
        sel = torch.randperm(len(enc), generator=g)[:n]
        points = torch.cat([enc.mu[m][sel] for m in range(M)]).numpy()
        labels = torch.cat([enc.labels[sel]] * M).numpy()
        modality = np.repeat(np.arange(M), n)
        files.append(plots.tsne_figure(out / "tsne.png", points, labels, modality, names, cfg.seed))
    if rel.related.size and rel.unrelated.size:
        files.append(plots.w2_histogram(out / "w2_histogram.png", rel.related, rel.unrelated, names,
                                        rel.class_matrix is not None))
    if rel.class_matrix is not None and rel.class_matrix.shape[0] > 1:
        m = rel.class_matrix
        link = class_linkage(m) if np.isfinite(m).all() else None
        files.append(plots.class_matrix_figure(out / "class_matrix.png", m, link, names))
    return files
