"""Evaluation speed against the number of modalities: the core evaluation of 10,000 PolyMNIST-shaped test examples
for M = 2 .. 5, stage by stage.

    python benchmarks/eval_speed_m.py [--modalities 2,3,4,5] [--n-test 10000] [--threads 2]

An untrained MoPoE with the published PolyMNIST networks (latent 512) and an untrained classifier per modality,
on random 3 x 28 x 28 images (the time of every stage depends on the sizes, not on the weights): encoding
the test set, conditional coherence for every non-empty proper subset and target (M (2^(M-1) - 1) cells: 2, 9,
28, 75), the latent probes (one per modality and the joint posterior, ``--n-latent-train`` training latents),
and W2 for every pair. Printed against the target of 60 s for 10,000 examples.
"""
from __future__ import annotations

import argparse
import itertools
import os

import torch

from meme.data import PairedData
from meme.eval import EvalConfig, evaluate
from meme.eval.classifiers import DigitClassifier
from meme.models import MoPoE
from meme.nets.polymnist import PublishedPolyMNISTModality

CORE = ("encode", "coherence", "latent_probe", "relatedness")
TARGET_S = 60.0


def setup(M: int, n_train: int, n_test: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def tables(n):
        y = torch.randperm(n, generator=g) % 10
        return PairedData.from_tables({f"m{k}": torch.randint(0, 256, (n, 3, 28, 28), dtype=torch.uint8, generator=g)
                                       for k in range(M)}, y)

    torch.manual_seed(seed)
    model = MoPoE(tuple(PublishedPolyMNISTModality(512, name=f"m{k}", scale=0.75) for k in range(M)))
    judges = {f"m{k}": DigitClassifier((3, 28, 28), (32, 64), n_classes=10).eval() for k in range(M)}
    return model, tables(n_train), tables(n_test), judges


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modalities", default="2,3,4,5")
    ap.add_argument("--n-test", type=int, default=10_000)
    ap.add_argument("--n-latent-train", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--precision", default="fp32,auto", help="the evaluation's precision(s) to time (EvalConfig)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs); {torch.get_num_threads()} "
          f"threads; {args.n_test} test examples, {args.n_latent_train} probe training latents")
    print(f"{'M':>2}{'cells':>7}{'precision':>11}{'encode':>9}{'coherence':>11}{'probe':>8}{'W2':>7}{'core':>8}  "
          f"target {TARGET_S:.0f} s")
    for M in (int(m) for m in args.modalities.split(",")):
        model, train, test, judges = setup(M, args.n_latent_train, args.n_test)
        for precision in args.precision.split(","):
            cfg = EvalConfig(device="cpu", n_latent_train=args.n_latent_train, n_joint=0, likelihood_k=0, elbo=False,
                             n_tsne=0, batch_size=args.batch_size, precision=precision)
            timings: dict[str, float] = {}
            metrics, _ = evaluate(model, train, test, judges, cfg, figures=False, timings=timings)
            cells = sum(M - k for k in range(1, M) for _ in itertools.combinations(range(M), k))
            assert f"coherence_given_{M - 1}" in metrics and "latent_acc_joint" in metrics
            core = sum(timings[s] for s in CORE)
            print(f"{M:>2}{cells:>7}{precision:>11}{timings['encode']:>9.1f}{timings['coherence']:>11.1f}"
                  f"{timings['latent_probe']:>8.1f}{timings['relatedness']:>7.1f}{core:>8.1f}  "
                  f"{'met' if core <= TARGET_S else 'MISSED'}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
