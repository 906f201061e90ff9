"""Orchestration overhead: the same N trials through ``sweep.py`` (Ray Tune + MLflow) and back to back in one
plain Python process (``Trainer`` + the evaluation, no Ray, no MLflow).

    python benchmarks/orchestration_overhead.py [--trials 3] [--epochs 2] [--pairs 1024] [--cpus 2] [--repeats 1]

Both run the same trials (MEME, the MNIST-SVHN networks, a grid over the seed) on generated MNIST-format +
SVHN-format data, one at a time with the same number of torch threads, each evaluated at its end with the
same settings; the digit classifiers are prepared beforehand (not timed). Printed:

* the plain process's wall time, per trial and in all;
* sweep.py's wall time as the user sees it (the whole command: interpreter start, local Ray, MLflow
  database, trials, summary), and the per-trial time Tune measured;
* the overhead split into a fixed part (start-up and shutdown, per study), the first trial's worker start
  (once per study: Tune reuses the worker) and a per-trial part (the other trials against the same seeds
  in the plain process), their ratio to the study's wall time, and the same extrapolated to 3 and 8 trials
  of 60 s (``--target-trial-s``), against the targets: at most 12 % of the study's wall time for 3 trials, at
  most 5 % for 8.

With ``--repeats R`` the two are run R times, alternately, and the fastest of each is compared (the
machine's load average is printed: on a shared machine, other work inflates either side).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

STUDY = """\
description: Overhead benchmark ({trials} seeds of a short MEME trial).
synthetic_data: {{n_train: {pairs}, n_test: 256, seed: 0}}
base: {{model: meme, dataset: mnist_svhn, max_train_pairs: {pairs}, supervision: 0.5, observed: split,
       batch_size: 128}}
grid:
  seed: [{seeds}]
metric: coherence_cross_mean
mode: max
epochs: {epochs}
resources: {{cpu: {cpus}, gpu: 0}}
eval: {{max_test_pairs: 256, n_latent_train: 1024, n_joint: 256, likelihood_k: 0, n_tsne: 0}}
"""


def plain(study, data_dir: str, cpus: int) -> list[float]:
    """The trials back to back in this process: Trainer, run_epoch, the evaluation at the end. Seconds per trial."""
    from meme.models import TrainConfig
    from meme.eval import load_classifiers
    from meme.eval.classifiers import classifier_dir
    from meme.train import Trainer
    from meme.eval import EvalConfig

    torch.set_num_threads(cpus)
    times = []
    for point in study.points():
        t0 = time.perf_counter()
        cfg = TrainConfig.from_dict(study.base_config(**point, data_dir=data_dir, download=False))
        trainer = Trainer(cfg)
        trainer.evaluator.classifiers = load_classifiers(trainer.model.names, classifier_dir(data_dir), device=trainer.device)
        while trainer.epoch < cfg.epochs:
            trainer.run_epoch()
        with tempfile.TemporaryDirectory() as d:
            metrics, _ = trainer.evaluator(EvalConfig.from_dict(study.eval), out_dir=d, figures=True)
        times.append(time.perf_counter() - t0)
        print(f"  plain  seed {point['seed']}: {times[-1]:6.1f} s  coherence_cross_mean "
              f"{metrics.get('coherence_cross_mean', float('nan')):.4f}", flush=True)
    return times


def via_sweep(study_path: Path, work: Path, data_root: Path, cpus: int) -> tuple[float, list[float]]:
    """The whole ``sweep.py`` command (its own local Ray); wall seconds and Tune's seconds per trial."""
    for old in (work / "ray").glob("overhead-*"):
        shutil.rmtree(old)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cmd = [sys.executable, str(REPO / "orchestration" / "sweep.py"), "--study", str(study_path), "--data-dir",
           str(data_root), "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--storage", str(work / "ray"),
           "--max-concurrent", "1", "--num-cpus", str(cpus), "--cpus-per-trial", str(cpus), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    times = []   # Tune's own measure of each trial: time_total_s of its last result
    for result in sorted((work / "ray").glob("overhead-*/*/result.json")):
        lines = result.read_text().splitlines()
        if lines:
            times.append(float(json.loads(lines[-1])["time_total_s"]))
    return wall, times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--pairs", type=int, default=1024, help="training pairs per trial (sets a trial's length)")
    p.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="torch threads / CPUs per trial")
    p.add_argument("--target-trial-s", type=float, default=60.0)
    p.add_argument("--repeats", type=int, default=1, help="run both R times, alternately; compare the fastest")
    p.add_argument("--work-dir", help="where data, MLflow and Ray results go (default: a temporary folder)")
    args = p.parse_args(argv)

    from meme.eval import ensure_classifiers
    from orchestration.study import parse_study
    from orchestration.prepare import data_dir_for, prepare_data_dir

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="meme-overhead-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    text = STUDY.format(trials=args.trials, pairs=args.pairs, seeds=", ".join(map(str, range(args.trials))),
                        epochs=args.epochs, cpus=args.cpus)
    study_path = work / "overhead.yaml"
    study_path.write_text(text)
    study = parse_study(text, "overhead", str(study_path))
    data_root = work / "data"
    data_dir = data_dir_for(study, str(data_root))
    prepare_data_dir(study, data_dir)
    ensure_classifiers(["mnist", "svhn"], data_dir=data_dir, download=False, progress=False)   # not timed
    print(f"{args.trials} trials x {args.epochs} epochs x {args.pairs} pairs, {args.cpus} CPU(s); work dir {work}")

    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    plains, sweeps = [], []
    for r in range(args.repeats):
        print(f"plain Python process (run {r + 1}):", flush=True)
        t0 = time.perf_counter()
        per_trial_plain = plain(study, data_dir, args.cpus)
        plains.append((time.perf_counter() - t0, per_trial_plain))
        print(f"  {plains[-1][0]:.1f} s\nsweep.py, Ray Tune + MLflow (run {r + 1}):", flush=True)
        sweeps.append(via_sweep(study_path, work, data_root, args.cpus))
        print(f"  {sweeps[-1][0]:.1f} s (Tune's trial times: {', '.join(f'{t:.1f}' for t in sweeps[-1][1])} s)",
              flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    plain_wall, plain_times = min(plains)
    sweep_wall, trial_times = min(sweeps)
    if len(trial_times) != args.trials:
        trial_times = []

    n = args.trials
    overhead = sweep_wall - plain_wall
    print(f"\nplain:    {plain_wall:7.1f} s  ({plain_wall / n:.1f} s per trial)")
    print(f"sweep.py: {sweep_wall:7.1f} s  (the whole command)")
    print(f"ratio sweep.py / plain: {sweep_wall / plain_wall:.3f}; overhead {overhead:.1f} s = "
          f"{100 * overhead / sweep_wall:.1f} % of the study's wall time")
    if trial_times:
        per_trial = (sum(trial_times) - plain_wall) / n
        fixed = sweep_wall - sum(trial_times)
        # trial by trial (both run the seeds in order): the first trial also pays for starting its worker
        # process, once per study (the worker is reused: reuse_actors); the others show the per-trial cost
        diffs = [t - p for t, p in zip(trial_times, plain_times)]
        first = diffs[0]
        steady = sum(diffs[1:]) / (n - 1) if n > 1 else 0.0
        print(f"  Tune's trial time {sum(trial_times):.1f} s: per-trial overhead {per_trial:+.1f} s on average "
              f"({100 * per_trial / (plain_wall / n):+.1f} %), fixed (start-up, shutdown) {fixed:.1f} s")
        print(f"  trial by trial against the plain process: {', '.join(f'{d:+.1f}' for d in diffs)} s; the first "
              f"trial's worker start {first:+.1f} s (once per study), then {steady:+.1f} s per trial")
        for k, target in ((3, 12.0), (8, 5.0), (10 * n, None)):
            study_s = k * args.target_trial_s
            over = fixed + max(first, 0.0) + (k - 1) * max(steady, 0.0)
            share = 100 * over / (study_s + over)
            verdict = "" if target is None else f" (target <= {target:.0f} %: {'met' if share <= target else 'missed'})"
            print(f"  extrapolated to {k} trials of {args.target_trial_s:.0f} s: overhead {over:.1f} s = "
                  f"{share:.1f} % of the study's wall time{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
