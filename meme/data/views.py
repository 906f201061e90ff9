"""Two views of real MNIST written as the user's own data would be: an example dataset file to start from.

``write_mnist_views(data_dir, out)`` splits every MNIST digit into its top half, an image (1, 14, 28) in a
Parquet table with the labels, and its bottom half, a vector of 392 pixels in a ``.npy`` file (no labels:
the dataset file's ``labels`` column comes from the Parquet tables), then writes ``data.yaml`` describing
them and ``study.yaml``, a four-trial study (MEME and MVAE at f = 1 and 1/4) over that dataset file. Nothing
in ``out`` is overwritten.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from meme.data.mnist_svhn import load_mnist
from meme.data.paired import write_array_table
from meme.errors import MemeError

FILES = ("top_train.parquet", "top_test.parquet", "bottom_train.npy", "bottom_test.npy", "data.yaml", "study.yaml")

DATASET = """# Two views of MNIST: the top half of each digit (an image) and its bottom half (a vector of pixels).
name: mnist_halves
labels: label
modalities:
  - name: top
    train: top_train.parquet
    test: top_test.parquet
    column: x
  - name: bottom
    train: bottom_train.npy
    test: bottom_test.npy
"""

STUDY = """description: >-
  MEME and MVAE on two views of real MNIST (top half as an image, bottom half as a vector), f = 1 and 1/4
  (split), reduced to run on a laptop CPU in minutes: 20,000 training pairs, 3 epochs, one seed.
base:
  dataset: {dataset}
  max_train_pairs: 20000
  max_test_pairs: 2000
  observed: split
grid:
  model: [meme, mvae]
  supervision: [1.0, 0.25]
metric: coherence_cross_mean
mode: max
epochs: 3
resources: {{cpu: 1, gpu: 0}}
eval: {{n_latent_train: 5000, n_joint: 1000, likelihood_k: 0}}
report:
  tables:
    - {{name: summary, rows: [model, supervision],
       columns: [coherence_top_to_bottom, coherence_bottom_to_top, latent_acc_top, latent_acc_bottom, w2_gap]}}
"""


def write_mnist_views(data_dir, out, download: bool = True) -> list[Path]:
    out = Path(out).expanduser().resolve()
    taken = [out / f for f in FILES if (out / f).exists()]
    if taken:
        raise MemeError(f"{taken[0]} exists; give another --out (nothing is overwritten)")
    arrays = {split: load_mnist(data_dir, split, download) for split in ("train", "test")}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (x, y) in arrays.items():
        x = x.numpy()
        written.append(write_array_table(out / f"top_{split}.parquet", x[:, None, :14, :], y.numpy()))
        np.save(out / f"bottom_{split}.npy", np.ascontiguousarray(x[:, 14:, :].reshape(len(x), -1)))
        written.append(out / f"bottom_{split}.npy")
    (out / "data.yaml").write_text(DATASET)
    (out / "study.yaml").write_text(STUDY.format(dataset=out / "data.yaml"))
    return written + [out / "data.yaml", out / "study.yaml"]
