"""Training-step speed on PolyMNIST-shaped data (M = 5, batch 256) against MultiVae, and two-modality speed before
and after the data model took M modalities, side by side in one run.

    python -m venv .venv-multivae && .venv-multivae/bin/pip install multivae "torch==2.14.1"   # once: the peer
    python benchmarks/polymnist_speed.py --multivae-python .venv-multivae/bin/python [--steps 8] [--before REV]

* **M = 5**: MVAE, MMVAE, MoPoE and mmJSD, each a training step (loss, backward, Adam) through the project's
  trainer (``Trainer.step``) on random uint8 PolyMNIST images, the published PolyMNIST networks (latent 512,
  Laplace scale 0.75), every example fully observed, in fp32 and at the run's default precision (``auto``:
  bf16 autocast on CPUs with native bf16). MultiVae (PyPI ``multivae``, in its own virtual environment, never a
  dependency of this project) times the same step of its MVAE, MMVAE and MoPoE (it has no mmJSD) with its own
  PolyMNIST networks (``EncoderConvMMNIST`` / ``DecoderConvMMNIST``: the same layers, its heads without bias),
  the same latent size, batch, likelihood and Adam, in fp32. Like for like: MultiVae's MVAE with no extra
  sub-sampled subsets (k = 0: the joint and unimodal ELBOs, as here) and no KL warm-up; its MMVAE with K = 1,
  Gaussian posteriors and a fixed prior (the IWAE bound at K = 1 is the ELBO, as here). This project's runs keep
  freed tensor memory in the process (``meme.device.tune_allocator``); MultiVae is timed as it ships, and again
  with the same glibc settings (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), so the ratios show both.
* **M = 2** (``--before REV``, default the commit before M modalities): each model's paired and unpaired
  MNIST-SVHN steps (published networks, batch 128) at REV and at the working tree, in separate processes.

Both sides use the same number of torch threads (``--threads``, default 2) and the median of ``--steps`` steps
after two warm-up steps. Run it on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from meme.device import MMAP_THRESHOLDS, TRIM_THRESHOLD  # noqa: E402
BEFORE = "6f81f7e"   # the last commit with two modalities only
MODELS = ("mvae", "mmvae", "mopoe", "mmjsd")
B, L, M = 256, 512, 5

OURS = textwrap.dedent("""
    import json, tempfile
    from pathlib import Path
    import torch
    torch.set_num_threads({threads})
    from benchmarks.polymnist_speed import median_step, polymnist_like
    from meme.models import TrainConfig

    root = polymnist_like(Path(tempfile.mkdtemp()))
    out = {{}}
    for model in {models}:
        for precision in ("fp32", "auto"):
            cfg = TrainConfig(dataset="polymnist", data_dir=str(root), model=model, batch_size={B},
                              precision=precision, device="cpu", num_threads={threads})
            out[f"{{model}}/{{precision}}"] = list(median_step(cfg, {steps}))
    print(json.dumps(out))
""")


def polymnist_like(root: Path) -> Path:
    """Random uint8 images in PolyMNIST's shape as the built-in dataset's folder ``root/PolyMNIST``; returns ``root``
    (the data dir). Shared by this script's step timing and ``meme_m_speed.py``."""
    import numpy as np

    from meme.data.polymnist import DATASET, NAMES

    d = root / "PolyMNIST"
    d.mkdir()
    g = np.random.default_rng(0)
    for n in NAMES:
        for split in ("train", "test"):
            np.savez(d / f"{n}_{split}.npz", x=g.integers(0, 256, (2 * B, 3, 28, 28), dtype=np.uint8),
                     label=np.arange(2 * B) % 10)
    mods = "".join(f"  - {{name: {n}, train: {n}_train.npz, test: {n}_test.npz, kind: image, "
                   f"networks: {{preset: polymnist, likelihood: laplace, scale: 0.75}}}}\n" for n in NAMES)
    (d / "polymnist.yaml").write_text(DATASET.format(source="benchmark", modalities=mods, note=""))
    return root


def median_step(cfg, steps: int) -> tuple[float, str]:
    """The median time of ``steps`` training steps (``Trainer.step``) on one fully observed batch of ``B``, after two
    warm-up steps, and the precision the run resolved to."""
    import time

    import torch

    from meme.data.batch import gather
    from meme.train import Trainer

    tr = Trainer(cfg)
    batch = gather(tr.train_data, torch.arange(B), (True,) * M, "cpu")
    for _ in range(2):
        tr.step(batch)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        tr.step(batch)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2], tr.precision


THEIRS = textwrap.dedent("""
    import json, time
    import torch
    torch.set_num_threads({threads})
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.models import MMVAE, MMVAEConfig, MoPoE, MoPoEConfig, MVAE, MVAEConfig
    from multivae.models.nn.mmnist import DecoderConvMMNIST, EncoderConvMMNIST
    from pythae.models.base.base_config import BaseAEConfig

    names = [f"m{{k}}" for k in range({M})]
    common = dict(n_modalities={M}, latent_dim={L}, input_dims={{n: (3, 28, 28) for n in names}},
                  decoders_dist={{n: "laplace" for n in names}},
                  decoder_dist_params={{n: {{"scale": 0.75}} for n in names}})
    configs = {{
        "mvae": (MVAE, MVAEConfig(**common, k=0, warmup=0)),
        "mmvae": (MMVAE, MMVAEConfig(**common, K=1, prior_and_posterior_dist="normal", learn_prior=False,
                                     loss="iwae_looser")),
        "mopoe": (MoPoE, MoPoEConfig(**common)),
    }}
    g = torch.Generator().manual_seed(0)
    data = {{n: torch.randint(0, 256, ({B}, 3, 28, 28), generator=g).float() / 255 for n in names}}
    batch = MultimodalBaseDataset(data=data, labels=torch.arange({B}) % 10)
    out = {{}}
    for name, (cls, cfg) in configs.items():
        torch.manual_seed(0)
        arch = BaseAEConfig(input_dim=(3, 28, 28), latent_dim={L})
        model = cls(cfg, encoders={{n: EncoderConvMMNIST(arch) for n in names}},
                    decoders={{n: DecoderConvMMNIST(arch) for n in names}})
        opt = torch.optim.Adam(model.parameters(), lr=5e-4)
        def step():
            loss = model(batch, epoch=20).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for _ in range(2):
            step()
        times = []
        for _ in range({steps}):
            t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
        out[name] = sorted(times)[len(times) // 2]
    print(json.dumps(out))
""")

TWO = textwrap.dedent("""
    import json, time
    import torch
    torch.set_num_threads({threads})
    from meme.data import PairedData
    from meme.data.batch import gather
    from meme.train import Trainer, TrainConfig   # where both revisions have it

    g = torch.Generator().manual_seed(0)
    n = 512
    data = PairedData(("mnist", "svhn"), (torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                                          torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)),
                      (torch.arange(n), torch.arange(n)), torch.randint(0, 10, (n,), generator=g))
    out = {{}}
    for model in ("meme", "mvae", "mmvae", "mopoe", "mmjsd"):
        tr = Trainer(TrainConfig(device="cpu", model=model, supervision=1.0, num_threads={threads}),
                     train_data=data, test_data=data)
        for kind, observed in (("paired", (True, True)), ("unpaired", (True, False))):
            if kind == "unpaired" and model == "mmvae":
                continue
            batch = gather(data, torch.arange(128), observed, "cpu")
            for _ in range(2):
                tr.step(batch)
            times = []
            for _ in range({steps}):
                t = time.perf_counter(); tr.step(batch); times.append(time.perf_counter() - t)
            out[f"{{model}}/{{kind}}"] = 128 / sorted(times)[len(times) // 2]
    import meme
    out["source"] = meme.__file__
    print(json.dumps(out))
""")


def run_script(python: str, code: str, cwd: Path, pythonpath: Path | None = None, extra_env: dict | None = None) -> dict:
    env = {**os.environ, **(extra_env or {})}
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    else:
        env.pop("PYTHONPATH", None)
    proc = subprocess.run([python, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{python} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--multivae-python", help="the Python of a virtual environment with multivae installed "
                                             "(the M = 5 comparison is skipped without it)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before", default=BEFORE, help="the revision to compare two-modality speed with ('' to skip)")
    args = p.parse_args(argv)
    if args.multivae_python:   # absolute (not resolved: a venv's python is a link), since the peer runs elsewhere
        args.multivae_python = os.path.abspath(os.path.expanduser(args.multivae_python))
        if not os.access(args.multivae_python, os.X_OK):
            p.error(f"--multivae-python {args.multivae_python}: no such Python; make the peer's environment first: "
                    f"python -m venv .venv-multivae && .venv-multivae/bin/pip install multivae \"torch==2.14.1\"")
    print(f"load average at the start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs); {args.threads} threads")

    fmt = dict(threads=args.threads, steps=args.steps, B=B, L=L, M=M)
    ours = run_script(sys.executable, OURS.format(models=list(MODELS), **fmt), REPO, REPO)
    theirs = run_script(args.multivae_python, THEIRS.format(**fmt), Path(tempfile.gettempdir())) \
        if args.multivae_python else {}
    # MultiVae again with the allocator settings this project applies to itself (meme.device.tune_allocator), through
    # glibc's environment variables: the like-for-like comparison of the code alone
    tuned = run_script(args.multivae_python, THEIRS.format(**fmt), Path(tempfile.gettempdir()), extra_env={
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLDS[0]), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}) \
        if args.multivae_python else {}
    print(f"\nM = 5 (PolyMNIST shapes, published networks, latent {L}), batch {B}: examples/s of a training step")
    print(f"{'':<8}{'ours':>12}{'ours':>16}{'MultiVae':>12}{'MultiVae fp32,':>16}{'ratio':>8}{'ratio':>8}"
          f"{'ratio, same allocator':>24}")
    print(f"{'model':<8}{'fp32':>12}{'auto':>16}{'fp32':>12}{'same allocator':>16}{'fp32':>8}{'auto':>8}"
          f"{'fp32':>12}{'auto':>12}")
    for m in MODELS:
        (f32, _), (auto, prec) = ours[f"{m}/fp32"], ours[f"{m}/auto"]
        t, tt = theirs.get(m), tuned.get(m)
        line = f"{m:<8}{B / f32:>12.1f}{B / auto:>11.1f} ({prec})"
        line += (f"{B / t:>12.1f}{B / tt:>16.1f}{t / f32:>7.2f}x{t / auto:>7.2f}x{tt / f32:>11.2f}x{tt / auto:>11.2f}x"
                 if t else f"{'n/a':>12}")
        print(line)
    if theirs:
        print("(ratio = MultiVae's step time / ours: above 1, ours is faster; target >= 1.5 for mvae, mmvae, mopoe;"
              " 'same allocator': MultiVae run with this project's glibc settings too)")

    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "worktree", "add", "-q", "--detach", tmp + "/before", args.before], cwd=REPO,
                           check=True)
            try:
                before = run_script(sys.executable, TWO.format(**fmt), Path(tmp), Path(tmp) / "before")
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", tmp + "/before"], cwd=REPO, check=False)
        now = run_script(sys.executable, TWO.format(**fmt), REPO, REPO)
        print(f"\nM = 2 (MNIST-SVHN, published networks), batch 128: pairs/s of a training step, at {args.before} "
              f"(before M modalities) and now")
        print(f"{'model/batch':<18}{'before':>10}{'now':>10}{'now/before':>12}")
        print(f"(the code measured: {before.pop('source')} and {now.pop('source')})")
        for k in now:
            print(f"{k:<18}{before[k]:>10.1f}{now[k]:>10.1f}{now[k] / before[k]:>11.3f}x")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
