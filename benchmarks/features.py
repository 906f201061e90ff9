"""CUB features: extraction speed, and loading the feature table from Parquet vs numpy.load, side by side.

    python benchmarks/features.py                      # CPU or the GPU, random-weight ResNet-101
    python benchmarks/features.py --images 256 --batch-size 64 --image-size 224 --device cuda
    python benchmarks/features.py --captions ../shared/data/cub/text_testclasses.txt   # + the text pipeline

1. **Extraction**: images/s of ``meme.features.resnet.extract_image_features`` on generated JPEGs in the
   CUB layout (``--images`` of them, ``--image-size`` square; random weights: the speed does not depend on
   them), end to end (decode, preprocess, network, write).
2. **Loading**: the full feature table (``--rows`` x 2048 float32; 11,788 = all of CUB) written once as
   the store's ``images.parquet`` and once with ``numpy.save``; then, alternating, the time to get a torch
   tensor from each (``meme.features.store.read_images`` with page-checksum verification, and
   ``torch.from_numpy(numpy.load(...))``), best and median of ``--repeats``. Both read from the page cache.
   The reader verifies page checksums on a process's first read of a file; that read is printed apart.
3. **Text** (with ``--captions``): tokenize, build the vocabulary and fit FastText (300-d, window 3,
   10 epochs) on all the given captions; time, peak memory (RSS) and the nearest words of a few queries.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch


def bench_extraction(tmp: Path, n: int, size: int, batch_size: int, device: str, workers: int) -> float:
    from PIL import Image

    from meme.features.cub_files import read_cub_images, write_synthetic_cub
    from meme.features.resnet import extract_image_features

    per_class = max(1, n // 5)
    cub = write_synthetic_cub(tmp / "cub", per_class=per_class, size=(size, size))
    images = read_cub_images(cub)
    for p in images.paths:  # re-encode at full size with detail, like a photograph
        path = cub / "CUB_200_2011" / "images" / p
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    t0 = time.perf_counter()
    extract_image_features(images, tmp / "store", weights="none", preprocess="mmvae", image_size=size,
                           batch_size=batch_size, device=device, num_workers=workers, progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t0)


def bench_loading(tmp: Path, rows: int, repeats: int) -> dict:
    from meme.features import store as st

    feats = np.random.default_rng(0).random((rows, 2048), dtype=np.float32)
    cols = {"image_id": pa.array(np.arange(rows), pa.int64()), "label": pa.array(np.zeros(rows, np.int32)),
            "split": pa.array(["train"] * rows), "path": pa.array([""] * rows), "sha256": pa.array([bytes(32)] * rows, pa.binary(32)),
            "features": st.vector_column(feats, pa.float32())}
    store = tmp / "load"
    st.write_table(store / st.FILES["images"], "images", cols, st.make_meta("images", "classes", {}, {}))
    np.save(tmp / "features.npy", feats)
    t0 = time.perf_counter()
    st.read_images(store)
    first = time.perf_counter() - t0  # the process's first read of the file also verifies its page checksums
    times = {"parquet": [], "numpy": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        a = st.read_images(store).features
        times["parquet"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = torch.from_numpy(np.load(tmp / "features.npy"))
        times["numpy"].append(time.perf_counter() - t0)
        assert torch.equal(a, b), "store reader"
    out = {k: (min(v), statistics.median(v)) for k, v in times.items()}
    out["mb"] = feats.nbytes / 2**20
    out["first"] = first
    return out


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def bench_text(path: Path, queries: list[str]) -> None:
    from meme.features.text import FastTextSettings, Vocab, fit_fasttext, tokenize_all

    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    rss0 = _rss_mib()
    t0 = time.perf_counter()
    tokens = tokenize_all(lines)
    vocab = Vocab.build(tokens, min_occ=3)
    t1 = time.perf_counter()
    model = fit_fasttext(tokens, FastTextSettings())
    t2 = time.perf_counter()
    print(f"text: {len(lines)} captions, vocabulary {len(vocab)} entries (words seen > 3 times + 3 specials)")
    print(f"text: tokenize + vocabulary {t1 - t0:.2f} s, FastText fit {t2 - t1:.2f} s (1 thread); process RSS "
          f"{rss0:.0f} MiB before, {_rss_mib():.0f} MiB after (+{_rss_mib() - rss0:.0f} MiB)")
    for q in queries:
        near = model.wv.most_similar(q, topn=3)
        print(f"text: nearest to {q!r}: " + ", ".join(f"{w} ({s:.3f})" for w, s in near))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=40)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rows", type=int, default=11_788)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--captions", type=Path, default=None)
    p.add_argument("--queries", nargs="*", default=["beak", "wings", "red"])
    p.add_argument("--skip-extraction", action="store_true")
    p.add_argument("--text-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.text_only:
        bench_text(args.captions, args.queries)
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_extraction:
            ips = bench_extraction(tmp, args.images, args.image_size, args.batch_size, device, args.workers)
            print(f"extraction: {ips:.2f} images/s ({args.images} images {args.image_size}x{args.image_size}, "
                  f"batch {args.batch_size}, {device}, torch threads {torch.get_num_threads()})")
        r = bench_loading(tmp, args.rows, args.repeats)
        (pb, pm), (nb, nm) = r["parquet"], r["numpy"]
        print(f"loading {args.rows} x 2048 float32 ({r['mb']:.0f} MiB) into a torch tensor, best / median of {args.repeats}:")
        print(f"  Parquet (store reader) {pb * 1e3:.1f} / {pm * 1e3:.1f} ms  (the process's first read, which also "
              f"verifies the page checksums: {r['first'] * 1e3:.1f} ms)")
        print(f"  numpy.load             {nb * 1e3:.1f} / {nm * 1e3:.1f} ms")
        print(f"  ratio Parquet / numpy  {pb / nb:.2f}x best, {pm / nm:.2f}x median (target <= 1.5x)")
    if args.captions is not None:  # in a fresh process, so that its peak memory is the text pipeline's own
        subprocess.run([sys.executable, __file__, "--text-only", "--captions", str(args.captions),
                        "--queries", *args.queries], check=True)


if __name__ == "__main__":
    main()
