"""MEME's training step with M = 5 modalities (PolyMNIST-shaped, batch 256) against MoPoE's, side by side in one run.

    python benchmarks/meme_m_speed.py [--steps 6] [--threads 2] [--K 10 1]

Each step is the project's trainer step (``Trainer.step``: loss, backward, Adam) on random uint8 PolyMNIST
images with the published PolyMNIST networks (latent 512, Laplace scale 0.75), every example observing all five
modalities (MEME's heaviest pattern), in fp32 and at the run's default precision (``auto``: bf16 autocast on
CPUs with native bf16). MEME runs with both combinations of the conditional prior (``meme_combine``) and each
``--K``; MoPoE with its defaults. Printed: examples/s, the median step time, and MEME's time per step as a
multiple of MoPoE's at the same precision, beside the decoder evaluations per example each objective needs
(MEME: M(M-1)(K+1) + M, the K+1 classifier samples of every direction; MoPoE: M). Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.polymnist_speed import B, M, median_step, polymnist_like  # noqa: E402
from meme.models import TrainConfig  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--K", type=int, nargs="+", default=[10], help="MEME's K values to time (10: the published)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    root = polymnist_like(Path(tempfile.mkdtemp()))
    base = dict(dataset="polymnist", data_dir=str(root), batch_size=B, device="cpu", num_threads=args.threads)
    print(f"M = {M}, batch {B}, {args.threads} threads, median of {args.steps} steps after 2 warm-up steps")
    print(f"{'model':<20} {'precision':<10} {'ex/s':>8} {'s/step':>8} {'x MoPoE time':>13} {'decodes/example':>16}")
    for precision in ("fp32", "auto"):
        mopoe, used = median_step(TrainConfig(model="mopoe", precision=precision, **base), args.steps)
        print(f"{'mopoe':<20} {used:<10} {B / mopoe:8.1f} {mopoe:8.3f} {1.0:13.2f} {M:16d}")
        for K in args.K:
            for combine in ("product", "mixture"):
                t, used = median_step(TrainConfig(model="meme", K=K, meme_combine=combine, precision=precision, **base),
                                      args.steps)
                print(f"{f'meme {combine} K={K}':<20} {used:<10} {B / t:8.1f} {t:8.3f} {t / mopoe:13.2f} "
                      f"{M * (M - 1) * (K + 1) + M:16d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
