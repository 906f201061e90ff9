"""The GPU figures in one run: CUDA tests, trainer throughput, fast path vs reference, one real-size epoch,
trial packing, and the projected hours of the paper's studies.

    PYTHONPATH=. python3 benchmarks/gpu_check.py [--quick] [--budget-s 420] [--out DIR]

Made for a GPU machine that has torch but neither Ray nor MLflow: it runs the library from the tree
(``PYTHONPATH=.``), and packing is measured as concurrent training processes on one GPU, which is what
Ray Tune's fractional GPUs (``--gpus-per-trial 1, 0.5, 0.25, 0.125``) amount to. Every figure is printed
as one table at the end (and written to ``--out``/gpu_check.md and .json); the exit code is 1 if any
figure is missing. ``--quick`` shrinks every step (for a dry run on a CPU: ``--device cpu``).

Steps, with what each measures (the tests run last, so that every timing runs on an idle GPU and a run cut
short keeps them; the tables are written after every step):

1. ``pytest -m cuda``: the tests that need a GPU (``tests/test_cuda.py``), last;
2. throughput of every model's paired and unpaired training step, batch 128, K = 10, latent 64, for
   both network families, fp32 and bf16 (TF32 on for fp32 matmuls, as torch's default for cuDNN);
   MEME also under ``torch.compile`` (the Trainer's ``compile``: on CUDA, CUDA graphs and a fused Adam);
3. MEME's paired step against the literal reference (``meme.models.reference``) on the same GPU;
4. one real-size epoch: full-size MNIST-SVHN tables generated on the device (60,000 pairs, pairings 1,
   uint8 tables moved to the GPU), timed end to end from the Trainer's construction;
5. packing: 1, 2, 4 and 8 concurrent training processes, each timing the same steps; aggregate pairs/s
   and peak GPU memory per process;
6. the projected wall time of ``supervision_mnist_svhn`` (45 trials x 100 epochs) and
   ``ablation_pseudo`` (60 x 100) at the best packing;
7. host syncs per training step of every model, counted by CUDA's sync debug mode over whole
   ``Trainer.run_epoch`` passes (the loader, the batch gather, the step and the metric sums);
8. the networks by shape of a dataset file (a vector modality of 784 values in [0, 1] and a 3 x 32 x 32
   image modality, written as ``.npy`` tables): every model's paired step.

The table ends with the targets (MEME's paired bf16 step >= 20,000 pairs/s at batch 128; 4 trials
per GPU >= 3x the aggregate of one; a 60,000-pair epoch under 10 s), each with its verdict, and the
``--gpus-per-trial`` the packing figures recommend.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from meme.models import TrainConfig  # noqa: E402
from meme.data import PairedData  # noqa: E402
from meme.data.batch import gather  # noqa: E402
from meme.device import cpu_has_native_bf16  # noqa: E402
from meme.models import MODELS  # noqa: E402
from meme.models.reference import reference_meme_loss  # noqa: E402
from meme.train import Trainer  # noqa: E402

FAMILIES = ("published", "appendix_k")
PACKING = (1, 2, 4, 8)
STUDIES = {"supervision_mnist_svhn": (45, 100), "ablation_pseudo": (60, 100)}
PAIRS_PER_EPOCH = 60000   # MNIST-SVHN at pairings 1 (the published code's pairing)
TARGETS = {"meme_pairs_per_s": 20000, "packing_4_over_1": 3.0, "epoch_s": 10.0}


def tables(n_mnist: int, n_svhn: int, n_pairs: int, seed: int = 0) -> PairedData:
    g = torch.Generator().manual_seed(seed)
    mnist = torch.randint(0, 256, (n_mnist, 1, 28, 28), dtype=torch.uint8, generator=g)
    svhn = torch.randint(0, 256, (n_svhn, 3, 32, 32), dtype=torch.uint8, generator=g)
    return PairedData(("mnist", "svhn"), (mnist, svhn), (torch.arange(n_pairs) % n_mnist,
                      torch.randint(0, n_svhn, (n_pairs,), generator=g)), torch.randint(0, 10, (n_pairs,), generator=g))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(step, batches, steps: int, device) -> float:
    """Median seconds per step (each step synchronised) after three warm-up steps."""
    for b in batches[:3]:
        step(b)
    sync(device)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(batches[i % len(batches)])
        sync(device)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def precisions(args) -> tuple[str, ...]:
    """fp32 and bf16 on a GPU or a CPU with native bf16; fp32 alone on other CPUs (bf16 there is emulated and slow)."""
    return ("fp32", "bf16") if torch.device(args.device).type == "cuda" or cpu_has_native_bf16() else ("fp32",)


def cfg_for(args, **kw) -> TrainConfig:
    return TrainConfig(**{"device": args.device, "batch_size": 128, "K": 10, "latent_dim": 64, "supervision": 0.5,
                          "observed": "split", **kw})


# ------------------------------------------------------------------ steps
def step_tests(args, fig: dict) -> None:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                        str(ROOT / "tests" / "test_cuda.py")], cwd=ROOT, capture_output=True, text=True,
                       timeout=args.budget_s)
    last = (r.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(r.stdout[-3000:], r.stderr[-2000:], sep="\n", flush=True)
    fig["cuda tests"] = f"{last} (exit {r.returncode}, {time.perf_counter() - t:.0f} s)"
    fig["_tests_ok"] = r.returncode == 0


def step_throughput(args, fig: dict, data: PairedData) -> None:
    steps = 5 if args.quick else 20
    g = torch.Generator().manual_seed(1)
    idx = [torch.randint(0, len(data), (128,), generator=g) for _ in range(4)]
    device = torch.device(args.device)
    models = ["meme"] if args.quick else list(MODELS)
    runs = [(n, m, p, False) for n in args.families for m in models for p in precisions(args)]
    runs += [] if args.quick else [("published", "meme", p, True) for p in precisions(args)]
    for nets, model, precision, compiled in runs:
        tr = Trainer(cfg_for(args, model=model, nets=nets, precision=precision, compile=compiled),
                     train_data=data, test_data=data)
        paired = [gather(tr.train_data, p.to(tr.train_data.tables[0].device), (True, True), tr.device) for p in idx]
        unpaired = [gather(tr.train_data, p.to(tr.train_data.tables[0].device), o, tr.device)
                    for p in idx for o in ((True, False), (False, True))]
        tag = f"{model} {nets} {precision}{' compile' if compiled else ''}"
        t_p = time_step(tr.step, paired, steps, device)
        fig[f"paired pairs/s: {tag}"] = round(128 / t_p, 1)
        if tr.model.learns_from_unpaired:
            fig[f"unpaired examples/s: {tag}"] = round(128 / time_step(tr.step, unpaired, steps, device), 1)
        if model == "meme" and not compiled and precision == "fp32":
            ref_tr = Trainer(cfg_for(args, model="meme", nets=nets, precision="fp32"), train_data=data, test_data=data)

            def ref_step(batch, model=ref_tr.model, opt=ref_tr.optimizer):
                loss = reference_meme_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            t_r = time_step(ref_step, paired, steps, device)
            fig[f"paired pairs/s: meme {nets} reference fp32"] = round(128 / t_r, 1)
            fig[f"meme {nets} fast/reference, paired fp32"] = f"{t_r / t_p:.2f}x"
        print(f"  {tag}: paired {128 / t_p:.0f} pairs/s", flush=True)
        del tr


def step_epoch(args, fig: dict) -> None:
    n = 2000 if args.quick else PAIRS_PER_EPOCH
    for precision in precisions(args):
        t = time.perf_counter()
        data = tables(6000, 7000, n, seed=2) if args.quick else tables(60000, 73257, n, seed=2)
        tr = Trainer(cfg_for(args, precision=precision, supervision=1.0, epochs=1), train_data=data, test_data=data)
        out = tr.run_epoch()
        sync(tr.device)
        fig[f"one epoch, {n} pairs, meme published {precision}: wall s (end to end)"] = round(time.perf_counter() - t, 2)
        fig[f"one epoch, {n} pairs, meme published {precision}: epoch s (loop only)"] = round(out["epoch_time_s"], 2)
        del tr


def step_syncs(args, fig: dict) -> None:
    """Host syncs per step: CUDA's sync debug mode warns at every synchronising call; count them over one
    epoch of ``Trainer.run_epoch`` (paired and unpaired batches) per model."""
    device = torch.device(args.device)
    if device.type != "cuda":
        fig["host syncs per step"] = "n/a (no CUDA device)"
        return
    data = tables(2000, 2000, 1280, seed=5)
    for model in MODELS:
        tr = Trainer(cfg_for(args, model=model, precision=precisions(args)[-1], epochs=2), train_data=data, test_data=data)
        tr.run_epoch()            # warm-up: cuDNN autotuning and lazy inits sync once
        torch.cuda.synchronize(device)
        n_steps = len(tr.loader)
        syncs: list[str] = []

        def record(message, category, filename, lineno, file=None, line=None):
            if "synchronizing CUDA operation" in str(message):  # where in the project's code it was called
                frames = [f for f in traceback.extract_stack()[:-1] if str(ROOT) in f.filename and "gpu_check" not in f.filename]
                syncs.append(f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].line}" if frames else "?")

        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                tr.run_epoch()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        # run_epoch synchronises once at its end (the epoch's wall time) and reads its sums once: not per step
        where = ", ".join(f"{n}x {w}" for w, n in sorted(((w, syncs.count(w)) for w in set(syncs)), key=lambda t: -t[1])[:3])
        fig[f"host syncs per step: {model}"] = f"{len(syncs) / n_steps:.2f} ({len(syncs)} in {n_steps} steps{'; ' + where if where else ''})"
        print(f"  {model}: {fig[f'host syncs per step: {model}']}", flush=True)
        del tr


def write_dataset_file(root: Path) -> Path:
    """A dataset file of two modalities as a user writes one: 784 values in [0, 1] (vector) and 3 x 32 x 32 uint8 images."""
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 6000), ("test", 1000)):
        np.save(root / f"vec_{split}.npy", rng.random((n, 784), dtype=np.float32))
        np.save(root / f"img_{split}.npy", rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8))
    path = root / "data.yaml"
    path.write_text("name: gpu_check\nmodalities:\n"
                    + "".join(f"  - {{name: {m}, train: {m}_train.npy, test: {m}_test.npy}}\n" for m in ("vec", "img")))
    return path


def step_dataset_file(args, fig: dict) -> None:
    steps = 5 if args.quick else 20
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset_file(Path(tmp))
        for model in (["meme"] if args.quick else list(MODELS)):
            precision = precisions(args)[-1]
            tr = Trainer(cfg_for(args, model=model, dataset=str(path), precision=precision))
            g = torch.Generator().manual_seed(6)
            idx = [torch.randint(0, len(tr.train_data), (128,), generator=g) for _ in range(4)]
            paired = [gather(tr.train_data, p.to(tr.train_data.tables[0].device), (True, True), tr.device) for p in idx]
            t = time_step(tr.step, paired, steps, device)
            fig[f"dataset file (vector 784 + image 3x32x32) paired pairs/s: {model} published {precision}"] = round(128 / t, 1)
            print(f"  dataset file {model}: {128 / t:.0f} pairs/s", flush=True)
            del tr


def step_targets(fig: dict, agg: dict[int, float], precision: str) -> None:
    """The issue's targets, each with its verdict, and the recommended ``--gpus-per-trial``."""
    meme = {k: v for k, v in fig.items() if k.startswith("paired pairs/s: meme published") and "reference" not in k}
    if "paired pairs/s: meme published bf16" in meme:
        v = meme["paired pairs/s: meme published bf16"]
        fig[f"target: MEME paired bf16 >= {TARGETS['meme_pairs_per_s']} pairs/s"] = f"{v} ({'met' if v >= TARGETS['meme_pairs_per_s'] else 'not met'})"
    if meme:
        k = max(meme, key=meme.get)
        fig["fastest MEME paired step"] = f"{meme[k]} pairs/s ({k.removeprefix('paired pairs/s: ')})"
    if 4 in agg:
        r = agg[4] / agg[1]
        fig[f"target: 4 per GPU >= {TARGETS['packing_4_over_1']}x one"] = f"{r:.2f}x ({'met' if r >= TARGETS['packing_4_over_1'] else 'not met'})"
    epoch = fig.get(f"one epoch, {PAIRS_PER_EPOCH} pairs, meme published {precision}: wall s (end to end)")
    if epoch is not None:
        fig[f"target: 60,000-pair epoch < {TARGETS['epoch_s']:g} s ({precision})"] = f"{epoch} ({'met' if epoch < TARGETS['epoch_s'] else 'not met'})"
    # the fewest trials per GPU whose aggregate is within 10 % of the best packing's (as fast, less memory)
    best = max(agg.values())
    k = min(k for k in agg if agg[k] >= 0.9 * best)
    fig["recommended --gpus-per-trial"] = f"{1 / k:g} ({k} trials per GPU: {agg[k]:.0f} pairs/s aggregate, {agg[k] / agg[1]:.2f}x one)"


def pack_child(args) -> None:
    """One of k concurrent trainers: time ``--steps`` paired steps after warm-up; print a JSON line."""
    data = tables(6000, 7000, 6000, seed=3)
    tr = Trainer(cfg_for(args, precision=args.precision, supervision=1.0), train_data=data, test_data=data)
    g = torch.Generator().manual_seed(4)
    idx = [torch.randint(0, len(data), (128,), generator=g) for _ in range(4)]
    batches = [gather(tr.train_data, p.to(tr.train_data.tables[0].device), (True, True), tr.device) for p in idx]
    for b in batches[:3]:
        tr.step(b)
    sync(tr.device)
    Path(args.ready).touch()
    while not Path(args.go).exists():       # all k processes start timing together
        time.sleep(0.01)
    t = time.perf_counter()
    for i in range(args.steps):
        tr.step(batches[i % len(batches)])
    sync(tr.device)
    dt = time.perf_counter() - t
    mem = torch.cuda.max_memory_allocated(tr.device) / 2**20 if tr.device.type == "cuda" else 0.0
    print(json.dumps({"pairs_per_s": 128 * args.steps / dt, "peak_mib": mem}), flush=True)


def step_packing(args, fig: dict, out: Path, precision: str) -> dict[int, float]:
    steps = 10 if args.quick else 150
    agg = {}
    for k in args.packing[:2] if args.quick else args.packing:
        go = out / f"go-{k}"
        go.unlink(missing_ok=True)
        ready = [out / f"ready-{k}-{i}" for i in range(k)]
        for r in ready:
            r.unlink(missing_ok=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, __file__, "--pack-child", "--device", args.device, "--precision",
                                   precision, "--steps", str(steps), "--ready", str(r), "--go", str(go)],
                                  stdout=subprocess.PIPE, text=True, env=env) for r in ready]
        t0 = time.time()
        while not all(r.exists() for r in ready) and time.time() - t0 < 300:
            time.sleep(0.05)
        go.touch()
        results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
        agg[k] = sum(r["pairs_per_s"] for r in results)
        fig[f"packing {k} per GPU ({precision}): aggregate pairs/s"] = round(agg[k], 1)
        fig[f"packing {k} per GPU ({precision}): peak GPU MiB per process"] = round(max(r["peak_mib"] for r in results))
        print(f"  packing {k}: {agg[k]:.0f} pairs/s", flush=True)
    fig[f"packing best/1 ({precision})"] = f"{max(agg.values()) / agg[1]:.2f}x at {max(agg, key=agg.get)} per GPU"
    return agg


def step_projection(fig: dict, agg: dict[int, float], precision: str) -> None:
    k = max(agg, key=agg.get)
    for name, (trials, epochs) in STUDIES.items():
        # every pair of every epoch at the paired rate (f < 1 trials are faster: an upper bound)
        hours = trials * epochs * PAIRS_PER_EPOCH / agg[k] / 3600
        fig[f"projected {name} ({trials} x {epochs} epochs), {k} per GPU, {precision}: hours"] = round(hours, 1)


def write_tables(out: Path, fig: dict) -> str:
    """gpu_check.md and .json as they stand (written after every step, so a run cut short keeps its figures)."""
    rows = ["| figure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in fig.items() if not k.startswith("_")]
    (out / "gpu_check.md").write_text("\n".join(rows) + "\n")
    (out / "gpu_check.json").write_text(json.dumps({k: v for k, v in fig.items() if not k.startswith("_")}, indent=1) + "\n")
    return "\n".join(rows)


# ------------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="shrink every step (a dry run, e.g. on a CPU)")
    p.add_argument("--budget-s", type=int, default=420, help="time limit of the CUDA tests step")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip", type=lambda v: v.split(","), default=[], help="steps to leave out: dataset_file")
    p.add_argument("--families", type=lambda v: v.split(","), default=list(FAMILIES),
                   help=f"network families whose steps are timed (default: {','.join(FAMILIES)})")
    p.add_argument("--packing", type=lambda v: [int(k) for k in v.split(",")], default=list(PACKING),
                   help=f"trials per GPU to time (default: {','.join(map(str, PACKING))}; 1 is always included)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="where gpu_check.md/.json go ($OUT on the device)")
    for a in ("--pack-child",):
        p.add_argument(a, action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="bf16", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=150, help=argparse.SUPPRESS)
    p.add_argument("--ready", help=argparse.SUPPRESS)
    p.add_argument("--go", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.packing = sorted({1, *args.packing})
    if args.pack_child:
        pack_child(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig: dict = {}
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    fig["device"] = f"{name}; torch {torch.__version__}"
    print(fig["device"], flush=True)
    best = precisions(args)[-1]
    agg: dict[int, float] = {}

    def run(name, fn, *a):
        """One step; a failure is recorded as that step's figure and the rest still run."""
        print(name, flush=True)
        try:
            return fn(*a)
        except Exception as e:  # noqa: BLE001 - every other figure is still worth having
            traceback.print_exc()
            fig[f"{name}: FAILED"] = None
            print(f"{name} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        finally:
            write_tables(out, fig)

    run("throughput", step_throughput, args, fig, tables(6000, 7000, 6000) if args.quick else tables(60000, 73257, 60000))
    run("host syncs", step_syncs, args, fig)
    if "dataset_file" not in args.skip:
        run("dataset file", step_dataset_file, args, fig)
    run("one epoch", step_epoch, args, fig)
    # packing at the faster precision of MEME's paired step
    rates = {p: fig.get(f"paired pairs/s: meme published {p}") or 0 for p in precisions(args)}
    best = max(rates, key=rates.get) if any(rates.values()) else best
    agg = run("packing", step_packing, args, fig, out, best) or {}
    if agg:
        step_projection(fig, agg, best)
        step_targets(fig, agg, best)
    if not args.skip_tests:   # last: the timings above run on an otherwise idle GPU first
        run("cuda tests", step_tests, args, fig)
    fig["total s"] = round(time.perf_counter() - t0)
    tests_ok = fig.pop("_tests_ok", args.skip_tests)
    print(write_tables(out, fig), flush=True)
    missing = [k for k, v in fig.items() if v is None or (isinstance(v, float) and not math.isfinite(v))]
    if missing or not tests_ok:
        print(f"missing figures: {missing}; CUDA tests passed: {tests_ok}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
