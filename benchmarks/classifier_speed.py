"""The judging classifiers of a user's dataset: time and test accuracy with early stopping against the fixed
one-cycle schedule they had before, side by side in one run.

    python benchmarks/classifier_speed.py [--data-dir DIR] [--threads 2]

Real MNIST (60,000 training and 10,000 test rows) as a dataset file's two tables would hold it: flat vectors of
784 values and 1 x 28 x 28 images. Each table's classifier (``meme.eval.table_classifiers``) is trained the old way
(a one-cycle schedule over 8 epochs for vectors, 4 for images) and the new way (``EARLY_STOP``: stop on held-out
accuracy), from the same seed. Target: both tables under 60 s together, accuracy within 0.5
point of the old way's. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meme.data.dataset_file import Resolved  # noqa: E402
from meme.data.mnist_svhn import load_mnist  # noqa: E402
from meme.device import resolve_precision  # noqa: E402
from meme.eval.classifiers import accuracy, fit_classifier  # noqa: E402
from meme.eval.table_classifiers import BATCH_SIZE, EARLY_STOP, EPOCHS, build_table_classifier  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shared = ROOT.parent / "shared" / "data"
    p.add_argument("--data-dir", default=str(shared) if (shared / "MNIST").is_dir() else "",
                   help="holds MNIST/raw (default: ../shared/data where it exists, else $MEME_DATA_DIR or ~/.cache/meme, "
                        "downloading MNIST there if missing)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x_tr, y_tr = load_mnist(args.data_dir, "train", download=True)
    x_te, y_te = load_mnist(args.data_dir, "test", download=True)
    tables = {"vector": (Resolved("vector", (784,)), x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)),
              "image": (Resolved("image", (1, 28, 28)), x_tr[:, None], x_te[:, None])}
    print(f"MNIST {len(x_tr)} / {len(x_te)} rows; {args.threads} threads; early stopping's forward pass in "
          f"{resolve_precision('auto', torch.device('cpu'))}")
    rows, totals = [], {False: 0.0, True: 0.0}
    for kind, (res, tr, te) in tables.items():
        accs = {}
        for early in (False, True):
            t = time.perf_counter()
            clf, _ = fit_classifier(lambda: build_table_classifier(res, 10, None, tr), tr, y_tr, EPOCHS[kind], BATCH_SIZE,
                                    seed=0, progress=False, early_stop=EARLY_STOP[kind] if early else None)
            dt = time.perf_counter() - t
            accs[early] = accuracy(clf, te, y_te)
            totals[early] += dt
            rows.append((kind, "early stopping" if early else "one-cycle (before)", dt, accs[early]))
            print(f"  {kind:6s} {rows[-1][1]:20s} {dt:6.1f} s  test accuracy {accs[early]:.4f}", flush=True)
        rows.append((kind, "difference", None, accs[True] - accs[False]))
    print("\n| table | training | seconds | test accuracy |\n|---|---|---|---|")
    for kind, how, dt, acc in rows:
        print(f"| {kind} | {how} | {'' if dt is None else f'{dt:.1f}'} | {acc:+.4f} |" if dt is None else
              f"| {kind} | {how} | {dt:.1f} | {acc:.4f} |")
    print(f"\nboth tables: {totals[False]:.1f} s before, {totals[True]:.1f} s with early stopping "
          f"({totals[False] / totals[True]:.2f}x faster); target < 60 s: {'met' if totals[True] < 60 else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
