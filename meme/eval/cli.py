"""``meme eval``: evaluate a trained run, and ``meme eval classifiers``: (re)train the digit classifiers.

    meme eval --checkpoint runs/x --out runs/x/eval          # metrics.json + figures
    meme eval classifiers --data-dir D                       # D/classifiers/{mnist,svhn}.pt (+ .json)
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from meme.checkpoint import CHECKPOINT
from meme.data import get_dataset
from meme.device import resolve_device
from meme.errors import MemeError, check_choice
from meme.eval.classifiers import CLASSIFIERS, classifier_dir, ensure_classifiers, load_classifiers
from meme.eval.config import EvalConfig
from meme.eval.evaluator import Evaluator, run_classifiers
from meme.models import MODELS
from meme.paths import check_dir_target
from meme.runs import load_run

log = logging.getLogger(__name__)


def cmd_eval(args) -> int:
    if not args.checkpoint:
        raise MemeError("meme eval needs --checkpoint RUN_DIR (or the subcommand `classifiers`)")
    if args.model:
        check_choice("model", args.model, MODELS)
    if args.out:
        check_dir_target(args.out, "--out")
        if (Path(args.out) / CHECKPOINT).exists() or (Path(args.out) / "metrics.jsonl").exists():
            raise MemeError(f"--out {args.out} is a training run's folder: its metrics.json would be overwritten; "
                            f"give another --out (the default is <run dir>/eval)")
    given = {k: getattr(args, k) for k in EvalConfig.keys() if getattr(args, k, None) is not None}
    ecfg = EvalConfig.from_dict(given)
    model, cfg, train_data, test_data = load_run(args.checkpoint, args.data_dir, args.model)
    device = resolve_device(ecfg.device)
    ecfg = ecfg.replace(device=str(device))
    if args.no_coherence:
        classifiers = {}
    elif get_dataset(cfg.dataset).file is not None:  # a dataset file: classifiers trained on its tables (cached)
        classifiers = run_classifiers(cfg, device, progress=not args.quiet)
    else:
        clf_dir = Path(args.classifier_dir) if args.classifier_dir else classifier_dir(cfg.data_dir)
        classifiers = load_classifiers(model.names, clf_dir, device)
    ckpt = Path(args.checkpoint)
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / "eval"
    evaluator = Evaluator(cfg, model, train_data, test_data, device, classifiers)
    metrics, files = evaluator(ecfg, out_dir=out, figures=not args.no_figures, progress=not args.quiet)
    width = max(map(len, metrics))
    for k in sorted(metrics):
        print(f"{k:<{width}}  {metrics[k]:.4f}")
    (out / "eval_config.json").write_text(json.dumps(ecfg.to_dict(), indent=2) + "\n")
    print(f"wrote {len(files)} files to {out}")
    return 0


def cmd_classifiers(args) -> int:
    names = args.modality or list(CLASSIFIERS)
    records = ensure_classifiers(names, data_dir=args.data_dir or None, directory=args.out or None,
                                 retrain=not args.reuse, device=resolve_device(args.device), epochs=args.epochs,
                                 progress=not args.quiet, download=not args.no_download, max_train=args.max_train)
    for name, r in records.items():
        print(f"{name}: test accuracy {r['test_accuracy']:.4f} ({r['n_train']} training images, {r['epochs']} epochs)")
    return 0


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    e = subparsers.add_parser("eval", help="evaluate a trained run (or train the digit classifiers)", description=(
        "Evaluate a run: meme eval --checkpoint runs/x --out runs/x/eval writes metrics.json, relatedness.json "
        "and the figures. Coherence needs the digit classifiers of <data dir>/classifiers: train them once "
        "with `meme eval classifiers --data-dir D`; runs on a dataset file train their own classifiers on its "
        "tables (cached by content)."))
    e.add_argument("--checkpoint", help="a run directory (holding checkpoint.pt) or a checkpoint file")
    e.add_argument("--out", help="output directory (default: <run dir>/eval)")
    e.add_argument("--data-dir", help="where the data lies, if not where the run was trained")
    e.add_argument("--classifier-dir", help="digit classifiers (default: <data dir>/classifiers; not used for dataset files)")
    e.add_argument("--model", help="refuse a checkpoint of any other model (e.g. meme)")
    e.add_argument("--no-coherence", action="store_true", help="skip coherence (no classifiers needed)")
    e.add_argument("--no-figures", action="store_true", help="metrics only")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    EvalConfig.add_options(e)
    e.set_defaults(func=cmd_eval)
    sub = e.add_subparsers(dest="eval_command", required=False)
    c = sub.add_parser("classifiers", help="train the digit classifiers on the real training sets", description=(
        "Train the MNIST and SVHN digit classifiers used by cross-coherence, on the real training sets in "
        "--data-dir; writes <data dir>/classifiers/<modality>.pt and .json (with the test accuracy)."))
    c.add_argument("--data-dir", default="", help="data directory (default: $MEME_DATA_DIR or ~/.cache/meme)")
    c.add_argument("--out", default="", help="where to write them (default: <data dir>/classifiers)")
    c.add_argument("--modality", nargs="+", help="which classifiers (default: all)")
    c.add_argument("--epochs", type=int, default=None, help="training epochs (default: per modality)")
    c.add_argument("--max-train", type=int, default=0, help="train on the first N training images only (0 = all)")
    c.add_argument("--reuse", action="store_true", help="keep classifiers that already exist")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    c.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_classifiers)
    return e
