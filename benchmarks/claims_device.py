"""A study's trials on a machine with torch but neither Ray, MLflow nor pydantic (the lent GPU machine), as
``meme train`` run directories that ``report.py --runs`` turns into the study's tables and claims.

Two steps, because the study file is read where the orchestrator is installed:

    # here (the orchestrate extra): the trials of a study, with its evaluation settings, as one JSON file
    python benchmarks/claims_device.py plan --study claims_reduced --out device/plan.json
    # there (torch only; the data folder holds real MNIST, the SVHN-format stand-in is generated if missing):
    PYTHONPATH=. python3 benchmarks/claims_device.py run --plan device/plan.json --data-dir device/data \
        --out $OUT/runs --parallel 8 --budget-s 500
    # here again, on the run directories that came back:
    python orchestration/report.py --study claims_reduced --runs RUNS

``run`` starts the trials in a process pool (``--parallel`` at once on the one device, as Ray Tune's
fractional GPUs would pack them), each one ``meme.train.train`` with the study's evaluation settings, and
starts no new trial once ``--budget-s`` has passed; a second ``run`` into the same ``--out`` resumes the
unfinished trials from their checkpoints and skips the finished ones. Checkpoints are removed from finished
runs (``--keep-checkpoints`` keeps them), so that what comes back is config.json, metrics.jsonl and eval/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def plan(study_name: str, out: str) -> Path:
    """The study's trials (name, full TrainConfig dict) and evaluation settings, as JSON."""
    from orchestration.study import load_study, trial_name

    study = load_study(study_name)
    if study.search:
        raise SystemExit(f"{study.name} has a search space; this runs grids only")
    base, varying = study.base_config(), study.varying_keys()
    trials = [{"name": trial_name({**base, **p}, varying), "config": {**base, **p}} for p in study.points()]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"study": study.name, "eval": study.eval, "trials": trials}, indent=1) + "\n")
    print(f"wrote {path}: {len(trials)} trials of {study.name} x {study.epochs} epochs")
    return path


def _trial(config: dict, eval_cfg: dict, run: str, threads: int, keep_checkpoint: bool) -> tuple[str, float]:
    """One trial in its own process: ``meme.train.train`` into ``run`` (resuming a checkpoint there)."""
    import torch

    from meme.models import TrainConfig
    from meme.eval import EvalConfig
    from meme.checkpoint import CHECKPOINT
    from meme.train import train

    torch.set_num_threads(threads)
    t = time.perf_counter()
    for _ in train(TrainConfig.from_dict(config), run, progress=False, eval_cfg=EvalConfig.from_dict(eval_cfg)):
        pass
    if not keep_checkpoint:
        (Path(run) / CHECKPOINT).unlink(missing_ok=True)
    return run, time.perf_counter() - t


def prepare_data(data_dir: Path, device: str) -> None:
    """The SVHN-format stand-in (generated when missing) and the digit classifiers (trained when missing)."""
    from meme.data.mnist_svhn import SVHN_FILES
    from meme.data.synthetic import write_svhn_standin
    from meme.eval import ensure_classifiers

    if not all((data_dir / "SVHN" / SVHN_FILES[s]).is_file() for s in ("train", "test")):
        t = time.perf_counter()
        write_svhn_standin(data_dir)
        print(f"generated the SVHN-format stand-in in {time.perf_counter() - t:.0f} s", flush=True)
    t = time.perf_counter()
    ensure_classifiers(["mnist", "svhn"], data_dir=data_dir, device=device, progress=False, download=False)
    print(f"classifiers ready in {time.perf_counter() - t:.0f} s", flush=True)


def run(plan_path: str, data_dir: str, out: str, parallel: int, budget_s: float, device: str,
        keep_checkpoints: bool) -> int:
    t0 = time.perf_counter()
    spec = json.loads(Path(plan_path).read_text())
    data = Path(data_dir).resolve()
    prepare_data(data, "cuda" if device.startswith("cuda") else "cpu")
    from orchestration.report import load_run_dirs   # no Ray, MLflow or pydantic needed

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    finished = {r.name for r in load_run_dirs(out_dir)[0]}   # logged up to the last epoch, so evaluated too
    todo = [(t["name"], {**t["config"], "data_dir": str(data), "download": False, "device": device})
            for t in spec["trials"] if t["name"] not in finished]
    done = len(spec["trials"]) - len(todo)
    print(f"{spec['study']}: {len(todo)} trials to run ({done} finished before), {parallel} at once", flush=True)
    threads = max(1, (os.cpu_count() or 2) // parallel)
    failed = 0
    with ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
        running = {}
        while todo or running:
            while todo and len(running) < parallel and time.perf_counter() - t0 < budget_s:
                name, cfg = todo.pop(0)
                running[pool.submit(_trial, cfg, spec["eval"], str(out_dir / name), threads, keep_checkpoints)] = name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                name = running.pop(f)
                try:
                    _, secs = f.result()
                    done += 1
                    print(f"[{time.perf_counter() - t0:6.0f} s] {name}: {secs:.0f} s", flush=True)
                except Exception as e:  # a failed trial is reported, the others go on
                    failed += 1
                    print(f"[{time.perf_counter() - t0:6.0f} s] {name}: FAILED {type(e).__name__}: {e}", flush=True)
    left = len(todo)
    print(f"{done} of {len(spec['trials'])} trials finished, {failed} failed, {left} not started "
          f"(run again into {out_dir} to go on); {time.perf_counter() - t0:.0f} s", flush=True)
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("plan", help="write a study's trials as JSON (needs the orchestrate extra)")
    a.add_argument("--study", required=True)
    a.add_argument("--out", required=True)
    b = sub.add_parser("run", help="run the trials of a plan (torch only)")
    b.add_argument("--plan", required=True)
    b.add_argument("--data-dir", required=True, help="holds MNIST/raw; the SVHN stand-in is generated there if missing")
    b.add_argument("--out", required=True, help="one run directory per trial")
    b.add_argument("--parallel", type=int, default=4, help="trials at once (default 4)")
    b.add_argument("--budget-s", type=float, default=float("inf"), help="start no trial after this many seconds")
    b.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    b.add_argument("--keep-checkpoints", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "plan":
        plan(args.study, args.out)
        return 0
    return run(args.plan, args.data_dir, args.out, args.parallel, args.budget_s, args.device, args.keep_checkpoints)


if __name__ == "__main__":
    sys.exit(main())
