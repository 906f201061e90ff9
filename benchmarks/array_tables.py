"""Loading array tables: Parquet (``meme.data.paired.read_array_table``) against ``numpy.load`` of the same
arrays, side by side in one run.

    python benchmarks/array_tables.py [--repeats 5] [--dir DIR]

Full-size MNIST-like (60,000 x 1 x 28 x 28 uint8) and SVHN-like (73,257 x 3 x 32 x 32 uint8) arrays of
random pixels with labels, each written three ways: ``write_array_table`` (a fixed-size list column and
the shape in the schema metadata), pyarrow's ``fixed_shape_tensor`` written by pyarrow directly, and a
``.npy`` file. Prints the median load time of each (after one warm-up load, so the files are in the page
cache) and the ratio to ``numpy.load`` (target: at most 1.2x), and the memory one load leaves resident
(the resident memory a child process holds after one load, over what it held before: about the data's
size when it is held once).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from meme.data.paired import read_array_table, write_array_table

SIZES = {"mnist": (60000, 1, 28, 28), "svhn": (73257, 3, 32, 32)}


def write_all(d: Path) -> dict[str, dict[str, Path]]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in SIZES.items():
        x = rng.integers(0, 256, shape, dtype=np.uint8)
        y = rng.integers(0, 10, shape[0])
        paths = {"npy": d / f"{name}.npy", "meme": d / f"{name}.parquet", "tensor": d / f"{name}_tensor.parquet"}
        np.save(paths["npy"], x)
        write_array_table(paths["meme"], x, y)
        tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.uint8(), shape[1:]),
                                                pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x[0].size))
        pq.write_table(pa.table({"x": tensor, "label": pa.array(y)}), paths["tensor"])
        out[name] = paths
    return out


def load(kind: str, path: Path):
    if kind == "npy":
        return np.load(path)
    return read_array_table(path)[0]


def timed(kind: str, path: Path, repeats: int) -> float:
    load(kind, path)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        load(kind, path)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def resident_growth(kind: str, path: Path) -> float:
    """Resident memory (MiB) a child process holds after loading ``path`` once, over what it held before."""
    r = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True, check=True)
    return float(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dir", help="where to write the files (default: a temporary folder)")
    p.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        before = rss_mib()
        x = load(args.child[0], Path(args.child[1]))
        print(rss_mib() - before, x.shape[0] and "")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(args.dir or tmp)
        d.mkdir(parents=True, exist_ok=True)
        files = write_all(d)
        for name, paths in files.items():
            base = timed("npy", paths["npy"], args.repeats)
            mib = paths["npy"].stat().st_size / 2**20
            print(f"{name}: numpy.load {base * 1000:7.1f} ms ({mib:.0f} MiB)", flush=True)
            for kind in ("meme", "tensor"):
                t = timed(kind, paths[kind], args.repeats)
                print(f"{name}: parquet {kind:6s} {t * 1000:7.1f} ms  = {t / base:.2f}x numpy.load (target <= 1.20x); "
                      f"resident after the load: + {resident_growth(kind, paths[kind]):.0f} MiB for {mib:.0f} MiB of data", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
