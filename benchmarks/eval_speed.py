"""Evaluation speed: the full MNIST-SVHN test-set evaluation, stage by stage.

    python benchmarks/eval_speed.py [--checkpoint runs/x --classifier-dir D/classifiers] [--device cpu]
                                    [--likelihood-k 1000 --likelihood-pairs 100] [--figures]

Without ``--checkpoint`` it times an untrained MEME model (latent 64, the paper's networks) and untrained
digit classifiers on full-size generated tables (10,000 test pairs, 60,000 training pairs of random
pixels): the time of every stage depends on the sizes, not on the weights. With ``--checkpoint`` it
rebuilds the run and loads its data and classifiers, as ``meme eval`` does.

Printed side by side: the core evaluation (encoding the test set, cross-coherence both ways, the latent
probe on ``--n-latent-train`` training latents, W2 over all (i, j) of every test batch) against the
target of 60 s; then, separately, joint coherence, the test objective,
the figures and the importance-sampled likelihoods (timed on ``--likelihood-pairs`` pairs and scaled to
the whole test set).
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from meme.models import TrainConfig
from meme.data import PairedData, get_dataset, make_observation
from meme.eval import EvalConfig, evaluate
from meme.eval.classifiers import build_classifier
from meme.models import build_model

CORE = ("encode", "coherence", "latent_probe", "relatedness")
TARGET_S = 60.0


def generated(n: int, g: torch.Generator) -> PairedData:
    mnist = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
    svhn = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return PairedData.from_arrays("mnist", mnist, "svhn", svhn, torch.randperm(n, generator=g) % 10)


def untrained(n_train: int, n_test: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    train, test = generated(n_train, g), generated(n_test, g)
    cfg = TrainConfig(device="cpu")
    torch.manual_seed(seed)
    obs = make_observation(len(train), 1.0, "split", train.names, False, 0)
    model = build_model(cfg, get_dataset(cfg.dataset).build_modalities(cfg, train), train, obs)
    return model, train, test, {m: build_classifier(m).eval() for m in model.names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a run directory (default: an untrained model on generated tables)")
    ap.add_argument("--classifier-dir", help="digit classifiers of the run (default: <data dir>/classifiers)")
    ap.add_argument("--data-dir", help="where the run's data lies, if elsewhere")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--n-latent-train", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--likelihood-k", type=int, default=1000)
    ap.add_argument("--likelihood-pairs", type=int, default=100)
    ap.add_argument("--figures", action="store_true", help="time the figures too (t-SNE of 2,000 latents)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    if args.checkpoint:
        from meme.eval import load_classifiers
        from meme.eval.classifiers import classifier_dir
        from meme.runs import load_run

        model, cfg, train, test = load_run(args.checkpoint, args.data_dir)
        classifiers = load_classifiers(model.names, args.classifier_dir or classifier_dir(cfg.data_dir))
        what = f"run {args.checkpoint}"
    else:
        model, train, test, classifiers = untrained(60_000, args.n_test)
        what = "untrained MEME + classifiers, generated full-size tables"
    setup = time.perf_counter() - t0
    cfg = EvalConfig(batch_size=args.batch_size, n_latent_train=args.n_latent_train, max_test_pairs=args.n_test,
                     likelihood_k=args.likelihood_k, likelihood_pairs=args.likelihood_pairs, device=args.device)
    timings: dict[str, float] = {}
    load_before, cpu0, wall0 = os.getloadavg()[0], time.process_time(), time.perf_counter()
    out = None
    if args.figures:
        import tempfile

        out = tempfile.mkdtemp(prefix="eval_speed_")
    metrics, _ = evaluate(model, train, test, classifiers, cfg, out_dir=out, figures=args.figures, timings=timings)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0

    n = int(metrics["n_test_pairs"])
    print(f"evaluation speed: {what}; device {args.device}, {torch.get_num_threads()} threads; "
          f"{n} test pairs, {args.n_latent_train} probe latents, batch {args.batch_size}; setup {setup:.1f}s")
    print(f"  machine load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} CPUs; "
          f"this process used {cpu:.0f} s of CPU in {wall:.0f} s (other work on the machine slows every stage)")
    core = sum(timings[k] for k in CORE)
    core_cpu = sum(timings[f"{k}_cpu"] for k in CORE)
    print(f"  {'stage':<16} {'wall':>9} {'CPU':>9}")
    for k in CORE:
        print(f"  {k:<16} {timings[k]:7.2f} s {timings[k + '_cpu']:7.2f} s")
    print(f"  {'core total':<16} {core:7.2f} s {core_cpu:7.2f} s   target {TARGET_S:.0f} s wall: ratio {core / TARGET_S:.2f} "
          f"({'met' if core < TARGET_S else 'NOT met'}); CPU-seconds / target {core_cpu / TARGET_S:.2f}")
    print("separately:")
    for k in ("joint_coherence", "elbo", "figures"):
        print(f"  {k:<16} {timings[k]:7.2f} s {timings[k + '_cpu']:7.2f} s")
    if args.likelihood_k:
        pairs = min(args.likelihood_pairs or n, n)
        per_pair = timings["likelihood"] / pairs
        print(f"  likelihood       {timings['likelihood']:7.2f} s   K={args.likelihood_k}, both directions, {pairs} pairs "
              f"({per_pair * 1000:.1f} ms/pair; the full {n} pairs: ~{per_pair * n / 60:.1f} min)")
    for k in ("coherence_mnist_to_svhn", "coherence_svhn_to_mnist", "latent_acc_mnist", "latent_acc_svhn", "w2_gap"):
        if k in metrics:
            print(f"  {k} = {metrics[k]:.4f}")


if __name__ == "__main__":
    main()
