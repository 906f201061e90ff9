"""Training throughput: pairs/s of each model's training step, and MEME's fast path against a literal reference.

    python benchmarks/train_throughput.py [--steps 10] [--batch-size 128] [--device cpu] [--models meme,mvae]
                                          [--nets published,appendix_k]

Measured side by side in one run, for each network family (``--nets``, both by default) of the MNIST-SVHN
networks (latent 64), batch 128, K = 10:

* every registered model: a paired step and an unpaired step (pairs/s = batch / step time), through the
  project's trainer (``Trainer.step``: autocast per ``--precision``, channels-last SVHN nets, on the
  CPU the SVHN decoder run on cache-sized chunks of latents);
* for MEME, the same steps computed by ``meme.models.reference.reference_meme_loss`` (fp32, each term as
  written: encoders per direction, one decoder call per sample) and the ratio fast / reference;
* the peak resident memory of a separate training process: full-size MNIST-SVHN tables (60,000 MNIST and
  73,257 SVHN uint8 images of random pixels), the MEME model and Adam, a few paired and unpaired steps.
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import torch

from meme.models import TrainConfig
from meme.data import PairedData
from meme.data.batch import gather
from meme.models import MODELS
from meme.models.reference import reference_meme_loss
from meme.train import Trainer


def full_size_tables(seed: int = 0) -> PairedData:
    g = torch.Generator().manual_seed(seed)
    mnist = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=g)
    svhn = torch.randint(0, 256, (73257, 3, 32, 32), dtype=torch.uint8, generator=g)
    n = 60000
    return PairedData(("mnist", "svhn"), (mnist, svhn),
                      (torch.arange(n), torch.randint(0, 73257, (n,), generator=g)), torch.randint(0, 10, (n,), generator=g))


def time_steps(step, batches, steps: int) -> float:
    """Median seconds per step over ``steps`` timed steps after two warm-up steps."""
    for b in batches[:2]:
        step(b)
    times = []
    for i in range(steps):
        t = time.perf_counter()
        step(batches[i % len(batches)])
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def train_a_few_steps(steps: int = 6) -> None:
    data = full_size_tables()
    tr = Trainer(TrainConfig(device="cpu", supervision=0.5), train_data=data, test_data=data)
    for _, batch in zip(range(steps), tr.loader.epoch(1)):
        tr.step(batch)


def training_process_peak_mib() -> float:
    """Peak RSS (MiB) of a child process that trains MEME on full-size tables for a few steps."""
    subprocess.run([sys.executable, __file__, "--memory-child"], check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (for the trainer; the reference is fp32)")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated models to time")
    p.add_argument("--nets", default="published,appendix_k", help="comma-separated network families to time")
    p.add_argument("--compile", action="store_true", help="also torch.compile the trainer step")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        train_a_few_steps()
        return 0

    data = full_size_tables()
    B = args.batch_size
    base = dict(device=args.device, batch_size=B, K=10, latent_dim=64, precision=args.precision,
                compile=args.compile, supervision=0.5, observed="split")
    rows = []
    print(f"device={args.device} threads={torch.get_num_threads()} cpu={torch.backends.cpu.get_cpu_capability()} "
          f"batch={B} K=10 latent=64", flush=True)
    for nets, name in ((n, m) for n in args.nets.split(",") for m in args.models.split(",")):
        cfg = TrainConfig(model=name, nets=nets, **base)
        tr = Trainer(cfg, train_data=data, test_data=data)
        g = torch.Generator().manual_seed(1)
        pairs = [torch.randint(0, len(data), (B,), generator=g) for _ in range(4)]
        paired = [gather(data, p, (True, True), tr.device) for p in pairs]
        unpaired = [gather(data, p, obs, tr.device) for p in pairs for obs in ((True, False), (False, True))]
        t_pair = time_steps(tr.step, paired, args.steps)
        t_unp = time_steps(tr.step, unpaired, args.steps) if tr.model.learns_from_unpaired else float("nan")
        rows.append((nets, name, tr.precision, B / t_pair, B / t_unp))
        unp = f"{B / t_unp:8.1f} examples/s" if tr.model.learns_from_unpaired else "     n/a (paired data only)"
        print(f"{nets:10s} {name:8s} trainer ({tr.precision}): paired {B / t_pair:8.1f} pairs/s   unpaired {unp}", flush=True)
        if name == "meme":
            ref_tr = Trainer(cfg.replace(precision="fp32", compile=False), train_data=data, test_data=data)

            def ref_step(batch, model=ref_tr.model, opt=ref_tr.optimizer):
                loss = reference_meme_loss(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            r_pair = time_steps(ref_step, paired, args.steps)
            r_unp = time_steps(ref_step, unpaired, args.steps)
            print(f"{nets:10s} {'meme':8s} reference (fp32): paired {B / r_pair:8.1f} pairs/s   unpaired {B / r_unp:8.1f} examples/s",
                  flush=True)
            print(f"{nets:10s} meme speed-up trainer/reference: paired {r_pair / t_pair:.2f}x   unpaired {r_unp / t_unp:.2f}x", flush=True)
    peak = training_process_peak_mib()
    print(f"peak resident memory of a MEME training process on full-size MNIST-SVHN tables: {peak:.0f} MiB "
          f"(target < 2048 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
