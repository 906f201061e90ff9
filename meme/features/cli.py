"""``meme features``: build and inspect the CUB feature store.

    meme features images   --cub-dir DIR --out STORE [--weights imagenet|none|PATH] [--preprocess weights|mmvae]
    meme features captions --cub-dir DIR --captions DIR --out STORE [--layout auto|c10|flat]
    meme features captions --captions text_testclasses.txt --split random --out STORE   (no images needed)
    meme features standin-images --out STORE      (generated stand-in image features; not CUB images)
    meme features info --out STORE
"""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn.functional as F

from meme.errors import MemeError
from meme.features import store as st
from meme.features.captions import CaptionSettings, build_caption_store, write_standin_images
from meme.features.cub_files import FLAT_CAPTION_FILES, SPLITS, read_captions, read_cub_images, read_flat_captions_only
from meme.features.resnet import extract_image_features
from meme.features.text import FastTextSettings
from meme.paths import check_existing_dir


def _images(args) -> int:
    images = read_cub_images(args.cub_dir)
    path = extract_image_features(images, args.out, args.split, args.weights, args.preprocess, args.image_size,
                                  args.batch_size, args.device, args.workers, args.seed, args.split_seed,
                                  args.test_fraction, progress=not args.quiet, max_images=args.max_images)
    print(f"wrote {path}" if path.suffix == ".parquet" else f"partial features kept in {path}; run again to continue")
    return 0


def _caption_sources(args):
    paths = [Path(p).expanduser() for p in args.captions]
    if args.cub_dir:
        if len(paths) != 1 or not paths[0].is_dir():
            raise MemeError("with --cub-dir, --captions is one folder holding text_c10/ or the flat caption files")
        images = read_cub_images(args.cub_dir, check_files=False)
        return images, read_captions(paths[0], images, args.layout)
    if len(paths) == 1 and paths[0].is_dir():
        paths = [paths[0] / f for f in FLAT_CAPTION_FILES.values() if (paths[0] / f).is_file()]
        if not paths:
            raise MemeError(f"no {' or '.join(FLAT_CAPTION_FILES.values())} in {args.captions[0]}; text_c10/ needs --cub-dir")
    return read_flat_captions_only(paths)


def _captions(args) -> int:
    images, captions = _caption_sources(args)
    settings = CaptionSettings(args.min_occ, args.max_len, args.a, FastTextSettings(
        args.dim, args.window, args.min_count, args.epochs, args.bucket, args.seed, args.workers))
    summary = build_caption_store(images, captions, args.out, args.split, settings, args.split_seed, args.test_fraction,
                                  force=args.force, progress=not args.quiet)
    if summary.get("skipped"):
        print(f"{args.out} is up to date (use --force to rebuild)")
    else:
        print(json.dumps(summary, indent=2))
    return 0


def _standin(args) -> int:
    path = write_standin_images(args.out, seed=args.seed)
    print(f"wrote {path} (STAND-IN image features generated from the captions, not CUB images)")
    return 0


def _info(args) -> int:
    check_existing_dir(args.out, "--out")
    for kind, name in st.FILES.items():
        path = Path(args.out) / name
        if not path.is_file():
            print(f"{name}: absent")
            continue
        table, meta = st.read_table(path, kind)
        counts = {s: int(st.split_mask(table, s).sum()) for s in ("train", "test")} if "split" in table.column_names else {}
        short = {k: meta[k] for k in ("split_scheme", "standin", "created", "vocab_sha256") if meta.get(k) is not None}
        print(f"{name}: {table.num_rows} rows {counts} {json.dumps(short)}")
        print(f"  settings: {json.dumps(meta.get('settings'))}")
    for word in args.neighbours:
        near = nearest_words(args.out, word, 3)
        print(f"nearest to {word!r}: " + ", ".join(f"{w} ({c:.3f})" for w, c in near))
    return 0


def nearest_words(store, word: str, n: int = 3) -> list[tuple[str, float]]:
    """The ``n`` vocabulary words whose FastText vectors are closest (cosine) to ``word``'s."""
    table, _ = st.read_table(Path(store) / st.FILES["words"], "words")
    words = table.column("word").to_pylist()
    if word not in words:
        raise MemeError(f"{word!r} is not in the vocabulary of {store}")
    vec = F.normalize(st.vector_tensor(table, "vector"), dim=1)
    sims = vec @ vec[words.index(word)]
    sims[:3] = -2  # <exc>, <pad>, <eos>
    sims[words.index(word)] = -2
    top = sims.topk(n)
    return [(words[i], float(c)) for c, i in zip(top.values, top.indices)]


def add_features_parser(sub) -> None:
    f = sub.add_parser("features", help="CUB feature extraction (ResNet-101, FastText) into the Parquet store",
                       description="Build the CUB feature store that `meme train --dataset cub` reads. "
                                   "The CUB images and captions must be downloaded by hand: see the README's CUB section.")
    fsub = f.add_subparsers(dest="features_command", required=True)

    def common(p, out_help="the feature store folder"):
        p.add_argument("--out", required=True, help=out_help)
        p.add_argument("--split", default="classes", choices=SPLITS,
                       help="classes: MMVAE's 150 train/val vs 50 test classes; official: train_test_split.txt; "
                            "random: seeded image-level split (default: classes)")
        p.add_argument("--split-seed", type=int, default=0, help="seed of --split random")
        p.add_argument("--test-fraction", type=float, default=0.2, help="test share of --split random")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    i = fsub.add_parser("images", help="ResNet-101 features of every CUB image (resumable)")
    i.add_argument("--cub-dir", required=True, help="the CUB_200_2011 folder (or the folder holding it)")
    common(i)
    i.add_argument("--weights", default="imagenet",
                   help="imagenet (torchvision IMAGENET1K_V1, downloaded), none (random), or a state dict file")
    i.add_argument("--preprocess", default="weights", choices=["weights", "mmvae"],
                   help="weights: the weights' transforms (resize 256, crop 224, normalise); "
                        "mmvae: resize to --image-size, no crop, no normalisation")
    i.add_argument("--image-size", type=int, default=224, help="short side for --preprocess mmvae")
    i.add_argument("--batch-size", type=int, default=64)
    i.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    i.add_argument("--workers", type=int, default=2, help="image decoding processes")
    i.add_argument("--max-images", type=int, default=0, help="stop after this many new images (0 = all)")
    i.set_defaults(func=_images)

    c = fsub.add_parser("captions", help="vocabulary, FastText vectors and sentence embeddings of the captions")
    c.add_argument("--captions", required=True, nargs="+",
                   help="with --cub-dir: the folder holding text_c10/ or the flat files; without: flat caption files")
    c.add_argument("--cub-dir", default="", help="the CUB_200_2011 folder (pairs captions with image ids and classes)")
    c.add_argument("--layout", default="auto", choices=["auto", "c10", "flat"])
    common(c)
    c.add_argument("--min-occ", type=int, default=3, help="vocabulary: words seen more than this many times")
    c.add_argument("--max-len", type=int, default=32, help="tokens per caption, <eos> included")
    c.add_argument("--a", type=float, default=1e-3, help="sentence embedding weight a / (a + p(w))")
    c.add_argument("--dim", type=int, default=300, help="FastText dimensions")
    c.add_argument("--window", type=int, default=3)
    c.add_argument("--min-count", type=int, default=3, help="FastText min count")
    c.add_argument("--epochs", type=int, default=10, help="FastText epochs")
    c.add_argument("--bucket", type=int, default=20_000, help="FastText n-gram buckets (gensim's default needs GBs)")
    c.add_argument("--workers", type=int, default=1, help="FastText threads (1 = reproducible)")
    c.add_argument("--force", action="store_true", help="rebuild even if the store is up to date")
    c.set_defaults(func=_captions)

    s = fsub.add_parser("standin-images", help="STAND-IN image features generated from the captions (no CUB images)")
    s.add_argument("--out", required=True, help="a store that holds captions.parquet")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_standin)

    n = fsub.add_parser("info", help="what a store holds")
    n.add_argument("--out", required=True, help="the feature store folder")
    n.add_argument("--neighbours", nargs="*", default=[], metavar="WORD",
                   help="print the 3 nearest vocabulary words (FastText cosine) of each WORD")
    n.set_defaults(func=_info)


__all__ = ["add_features_parser", "nearest_words"]
