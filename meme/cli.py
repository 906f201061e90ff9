"""The ``meme`` command: ``meme train``, ``meme data``, ``meme eval``.

Every ``TrainConfig`` key is a ``meme train`` option (``--latent-dim 32``, ``--paired-only``). User
mistakes print one line, ``meme: error: ...``, and exit with status 2.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
from pathlib import Path

from meme.checkpoint import CHECKPOINT
from meme.data.mnist_svhn import load_mnist, load_svhn, resolve_data_dir
from meme.data.polymnist import write_polymnist
from meme.data.synthetic import SVHN_SIZES, write_svhn_standin, write_synthetic_mnist_svhn
from meme.data.views import write_mnist_views
from meme.errors import MemeError, output_closed
from meme.eval.cli import add_eval_parser
from meme.features.cli import add_features_parser
from meme.models import TrainConfig
from meme.paths import check_dir_target, check_existing_dir
from meme.train import train

log = logging.getLogger("meme")


def _config_from_args(args):
    base = TrainConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
    given = {k: getattr(args, k) for k in TrainConfig.keys() if getattr(args, k, None) is not None}
    return TrainConfig.from_dict({**base, **given})


def cmd_train(args) -> int:
    cfg = _config_from_args(args)
    out = check_dir_target(args.out, "--out")
    last = None
    for metrics in train(cfg, out, resume=not args.no_resume, progress=not args.quiet):
        last = metrics
        print(f"epoch {metrics['epoch']:>4}  loss {metrics['loss']:.3f}  "
              f"{metrics['examples_per_s']:.0f} examples/s  ({metrics['epoch_time_s']:.1f}s)", flush=True)
    if last is not None:
        (out / "metrics.json").write_text(json.dumps(last, indent=2) + "\n")
    print(f"run written to {out}")
    return 0


def cmd_data(args) -> int:
    root = resolve_data_dir(args.data_dir)
    writes_out = ("mnist-views", "polymnist")
    reads_only = args.what in writes_out and (args.no_download or args.from_release)
    if not reads_only:  # mnist-views and polymnist with --no-download (or a release) only read the data dir
        check_dir_target(root, "--data-dir")
    for flag, n in (("--n-train", args.n_train), ("--n-test", args.n_test)):
        if n is not None and args.what in ("download", "mnist-views"):
            raise MemeError(f"{flag} applies to svhn-standin, synthetic and polymnist, not to {args.what}")
        if n is not None and n < 10:
            raise MemeError(f"{flag} {n}: give at least 10 examples (or leave it out for the default)")
    if args.force and args.what not in ("svhn-standin", "synthetic", "polymnist"):
        raise MemeError(f"--force applies to svhn-standin, synthetic and polymnist, not to {args.what}")
    if args.out is not None and args.what not in writes_out or args.out is None and args.what == "mnist-views":
        raise MemeError("--out goes with mnist-views and polymnist (where to write their tables), and only with them")
    if args.from_release and args.what != "polymnist":
        raise MemeError(f"--from-release goes with polymnist, not {args.what}")
    if args.plain_backgrounds and args.what != "polymnist":
        raise MemeError(f"--plain-backgrounds goes with polymnist, not {args.what}")
    if args.from_release and (args.n_train or args.n_test):
        raise MemeError("--n-train and --n-test build PolyMNIST from MNIST; a release (--from-release) is read whole")
    if args.what == "download":
        for split in ("train", "test"):
            x, _ = load_mnist(root, split, download=True)
            print(f"MNIST {split}: {x.shape[0]} images in {root / 'MNIST'}")
            x, _ = load_svhn(root, split, download=True)
            print(f"SVHN {split}: {x.shape[0]} images in {root / 'SVHN'}")
    elif args.what == "svhn-standin":
        sizes = {"train": args.n_train or SVHN_SIZES["train"], "test": args.n_test or SVHN_SIZES["test"]}
        for p in write_svhn_standin(root, sizes, seed=args.seed, force=args.force):
            print(f"wrote {p} (synthetic SVHN-format stand-in)")
    elif args.what == "mnist-views":
        for p in write_mnist_views(root, check_dir_target(args.out, "--out"), download=not args.no_download):
            print(f"wrote {p}")
    elif args.what == "polymnist":
        release = args.from_release and check_existing_dir(args.from_release, "--from-release")
        out = check_dir_target(args.out or root / "PolyMNIST", "--out")
        written = write_polymnist(out, root, args.n_train, args.n_test, args.seed,
                                  release=release, download=not args.no_download, force=args.force,
                                  plain=args.plain_backgrounds)
        if written:
            print(f"wrote PolyMNIST into {written[-1].parent}: train with --dataset {written[-1]}")
    elif args.what == "synthetic":
        write_synthetic_mnist_svhn(root, n_train=args.n_train or 600, n_test=args.n_test or 200, seed=args.seed,
                                   force=args.force)
        print(f"wrote a synthetic MNIST-format + SVHN-format dataset into {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meme", description="MEME: mutually supervised multimodal VAEs.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model", description=(
        "Train a model. Example: meme train --dataset mnist_svhn --supervision 0.25 --observed mnist "
        "--epochs 100 --out runs/x. Writes config.json, checkpoint.pt, metrics.jsonl, metrics.json and eval/ "
        "into --out; an existing run there with the same config is resumed."))
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--config", help="a config.json to start from (options given here override it)")
    t.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    TrainConfig.add_options(t)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("data", help="download data, or generate stand-ins", description=(
        "download: fetch MNIST and SVHN into the data dir. svhn-standin: generate the synthetic SVHN-format "
        "stand-in (same files and sizes as SVHN) for machines without SVHN. synthetic: a tiny generated "
        "MNIST-format + SVHN-format dataset for tests and first tries. mnist-views: two views of real MNIST "
        "(top halves as images, bottom halves as vectors) written into --out as your own data would be: Parquet and "
        "NumPy tables, a dataset file (data.yaml) and a four-trial study (study.yaml). polymnist: PolyMNIST's five "
        "modalities (MNIST digits over crops of five background photos, the published recipe) built from MNIST, or "
        "converted from the official release (--from-release), into --out: tables and a dataset file (polymnist.yaml)."))
    d.add_argument("what", choices=["download", "svhn-standin", "synthetic", "mnist-views", "polymnist"])
    d.add_argument("--out", default=None, help="mnist-views and polymnist: the folder to write the tables and the "
                   "dataset file (polymnist: default <data dir>/PolyMNIST, where --dataset polymnist reads it)")
    d.add_argument("--no-download", action="store_true", help="mnist-views and polymnist: fail instead of downloading MNIST")
    d.add_argument("--plain-backgrounds", action="store_true", help="polymnist: each modality's background one colour "
                   "(its photo's mean, at full contrast) instead of crops of the photo, and the image networks by shape "
                   "instead of the PolyMNIST ones: a reduced PolyMNIST that a CPU learns in a few epochs "
                   "(polymnist_reduced), not the benchmark")
    d.add_argument("--from-release", default=None, metavar="DIR", help="polymnist: the official PolyMNIST release "
                   "(DIR/train/m0..m4/<index>.<label>.png and DIR/test/...) instead of building it from MNIST")
    d.add_argument("--data-dir", default="", help="data directory (default: $MEME_DATA_DIR or ~/.cache/meme)")
    d.add_argument("--n-train", type=int, default=None, help="generated training examples, at least 10 "
                   "(default: 600 for synthetic, SVHN's 73,257 for svhn-standin, MNIST's 60,000 for polymnist)")
    d.add_argument("--n-test", type=int, default=None, help="generated test examples, at least 10 "
                   "(default: 200 for synthetic, SVHN's 26,032 for svhn-standin, MNIST's 10,000 for polymnist)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--force", action="store_true", help="svhn-standin, synthetic and polymnist: replace files that "
                   "they did not write (by default those are refused, and nothing is written)")
    d.set_defaults(func=cmd_data)
    add_features_parser(sub)
    add_eval_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MemeError as e:
        print(f"meme: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return output_closed()
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        kept = _checkpoint_note(args)
        print(f"meme: error: disk full writing {e.filename or 'the output'}{kept}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = _checkpoint_note(args) or "; no checkpoint was written yet"
        print(f"meme: interrupted{note}", file=sys.stderr)
        return 130


def _checkpoint_note(args) -> str:
    """Where a run stopped early can resume from: its checkpoint, if one was written."""
    out = getattr(args, "out", None)
    if getattr(args, "command", None) != "train" or not out:
        return ""
    ckpt = Path(out) / CHECKPOINT
    return f"; the last checkpoint ({ckpt}) is kept and the run resumes from it" if ckpt.exists() else ""


if __name__ == "__main__":
    sys.exit(main())
