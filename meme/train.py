"""The training loop: a config in, per-epoch metrics out, checkpoints on disk.

Reads top to bottom:

    trainer = Trainer(cfg)                 # data, observation plan, model (meme.runs.build_run), optimiser
    trainer.load(ckpt)                     # optional: resume (bit-identical continuation on CPU)
    for metrics in trainer.epochs(evaluate):   # each epoch: one pass over the interleaved batches,
        if trainer.save_due():                 # evaluated every eval_every epochs and after the last
            trainer.save(ckpt)

``train(cfg, out_dir)`` does exactly that, writing ``config.json``, ``checkpoint.pt`` and
``metrics.jsonl`` into ``out_dir`` and yielding each epoch's metrics; the orchestrator's trials drive
the same ``Trainer.epochs`` loop (``orchestration/trainable.py``).

Every epoch reseeds torch from ``(seed, epoch)`` and the loader's order depends only on
``(seed, epoch)``, so resuming from a checkpoint replays the remaining epochs exactly.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch
from filelock import FileLock, Timeout

from meme.checkpoint import CHECKPOINT, CHECKPOINT_VERSION, check_checkpoint, load_checkpoint, stored_config
from meme.models import TrainConfig
from meme.device import resolve_device, resolve_precision, tune_allocator
from meme.data import BatchLoader, get_dataset, latent_size
from meme.data.batch import gather
from meme.errors import MemeError
from meme.eval.evaluator import Evaluator
from meme.nets import modality_class
from meme.runs import build_run
from meme.progress import bar as progress_bar

log = logging.getLogger(__name__)



class NonFiniteLoss(MemeError):
    """Training produced a NaN or infinite loss; the run stops with this reason."""


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


class Trainer:
    def __init__(self, cfg: TrainConfig, device: str | torch.device | None = None, train_data=None, test_data=None):
        self.cfg = cfg
        self.device = resolve_device(cfg.device) if device is None else torch.device(device)
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        tune_allocator()
        run = build_run(cfg, train_data)
        self.train_data, self.observation, self.model = run.train_data, run.observation, run.model.to(self.device)
        self._test_data = test_data
        # compiled on CUDA, the step runs as CUDA graphs, where a fused Adam (one kernel) pays (benchmarks/gpu_check.py)
        fused = {"fused": True} if cfg.compile and self.device.type == "cuda" else {}
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **fused)
        if self.device.type == "cuda":  # keep the uint8 tables on the GPU; batches are sliced there
            self.train_data = self.train_data.to(self.device)
        batchnorm = tuple(any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in mod.modules())
                          for mod in self.model.mods)
        self.loader = BatchLoader(self.train_data, self.observation, cfg.batch_size, self.device, cfg.seed, batchnorm)
        self.loss_fn = self._loss_fn()
        self.epoch = 0
        #: the run's evaluation (``evaluator(eval_cfg, out_dir, figures)``): the suite, the dataset's extras, the
        #: classifiers found once (set ``evaluator.classifiers`` to judge with others)
        self.evaluator = Evaluator(cfg, self.model, self.train_data, lambda: self.test_data, self.device)

    # ----------------------------------------------------------------- data
    @property
    def test_data(self):
        if self._test_data is None:
            self._test_data = get_dataset(self.cfg.dataset).load(self.cfg, "test")
            if self.cfg.max_test_pairs:
                self._test_data = self._test_data.sample(self.cfg.max_test_pairs, self.cfg.data_seed)
        return self._test_data

    def metadata(self) -> dict:
        """Facts about the run that are not config: observation counts, what the model learns from."""
        return {**{f"n_{k}": v for k, v in self.observation.counts().items()},
                "learns_from_unpaired": self.model.learns_from_unpaired,
                "n_parameters": sum(p.numel() for p in self.model.parameters())}

    # ----------------------------------------------------------------- step
    def autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _loss_fn(self):
        """The model's loss, compiled where ``cfg.compile`` says. On CUDA it runs as CUDA graphs ("reduce-overhead"):
        at these sizes a step is bound by kernel launches (MEME's paired step, H200, fp32: eager 12,055 pairs/s,
        default compile 16,044, CUDA graphs with a fused Adam 43,698); one graph per batch shape (paired, each
        modality alone, the last batch of each)."""
        if not self.cfg.compile:
            return self.model.loss
        if self.device.type == "cuda":
            return torch.compile(self.model.loss, mode="reduce-overhead")
        return torch.compile(self.model.loss, dynamic=True)

    def step(self, batch) -> dict:
        """One optimiser step on one batch; returns the batch's metrics (tensors on the device, not read)."""
        with self.autocast():
            loss, metrics = self.loss_fn(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return metrics

    def run_epoch(self, progress: bool = False) -> dict[str, float]:
        """One pass over the training batches; returns the epoch's mean metrics and throughput."""
        self.epoch += 1
        torch.manual_seed(epoch_seed(self.cfg.seed, self.epoch))
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        n_pairs = n_examples = 0
        t0 = time.perf_counter()
        plan = self.loader.plan(self.epoch)
        bar = progress_bar(plan, desc=f"epoch {self.epoch}/{self.cfg.epochs}", leave=False, progress=progress, fine=True,
                           unit="batch")
        for pairs, observed in bar:
            batch = gather(self.train_data, pairs, observed, self.device)
            metrics = self.step(batch)
            b = len(batch)
            metrics[f"loss_{batch.kind}"] = metrics["loss"]
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v.float() * b
                counts[k] = counts.get(k, 0) + b
            n_examples += b
            n_pairs += b if batch.kind == "paired" else 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        totals = torch.stack([sums[k].float() for k in sums]).tolist() if sums else []   # one device read per epoch
        out = {k: total / counts[k] for k, total in zip(sums, totals)}
        out.update(epoch=self.epoch, epoch_time_s=dt, examples_per_s=n_examples / dt, pairs_per_s=n_pairs / dt)
        bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise NonFiniteLoss(f"non-finite {', '.join(bad)} at epoch {self.epoch} of {self.cfg.model} "
                                f"(lr={self.cfg.lr}); the trial stops here")
        return out

    def eval_due(self) -> bool:
        """Whether the epoch just run is evaluated: every ``eval_every`` epochs, and always the last one."""
        every = self.cfg.eval_every
        return self.epoch == self.cfg.epochs or bool(every and self.epoch % every == 0)

    def save_due(self) -> bool:
        """Whether the epoch just run is checkpointed: every ``checkpoint_every`` epochs, and always the last one."""
        return self.epoch == self.cfg.epochs or self.epoch % self.cfg.checkpoint_every == 0

    def epochs(self, evaluate: Callable[[bool], dict] | None = None, progress: bool = False,
               checkpoint: Callable[[], None] | None = None) -> Iterator[dict]:
        """The training loop, for every caller (``train`` here, the orchestrator's trials): run the epochs left
        up to ``cfg.epochs`` and yield each one's metrics, with ``evaluate(final)``'s merged in where
        ``eval_due``. ``checkpoint()``, where given, runs where ``save_due``, before the evaluation, so that an
        evaluation that fails (a full disk) loses no training; otherwise the caller checkpoints what it is given."""
        while self.epoch < self.cfg.epochs:
            metrics = self.run_epoch(progress=progress)
            if checkpoint is not None and self.save_due():
                checkpoint()
            if evaluate is not None and self.eval_due():
                metrics.update(evaluate(self.epoch == self.cfg.epochs))
            yield metrics

    # ------------------------------------------------------------- evaluation
    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"version": CHECKPOINT_VERSION, "model_name": self.cfg.model, "modalities": list(self.model.names),
                "epoch": self.epoch, "config": self.cfg.to_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        check_checkpoint(state, self.cfg.model, self.model.names, source="checkpoint", nets=self.cfg.nets)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(path)  # atomic: a kill mid-save never leaves a truncated checkpoint
        return path

    def load(self, path) -> None:
        self.load_state_dict(load_checkpoint(path))


def _resumable(cfg: TrainConfig) -> dict:
    """What must match for a run to resume: the config less ``epochs``, with ``sigma_floor`` as the floor each
    modality gets (0 means the family's own: appendix K's 1e-3 equals an explicit 1e-3) and ``latent_dim`` as
    the size it gets (0 means the dataset's own: 64 equals an explicit 64)."""
    d = {k: v for k, v in cfg.to_dict().items() if k != "epochs"}
    spec = get_dataset(cfg.dataset)
    d["sigma_floor"] = tuple(cfg.sigma_floor or modality_class(cfg.nets, n).default_sigma_floor
                             for n in spec.network_keys or spec.names)
    d["latent_dim"] = latent_size(cfg)
    return d


def keep_logged_epochs(path: Path, last: int) -> None:
    """Drop the lines of ``metrics.jsonl`` after epoch ``last`` (epochs run after the last checkpoint, which a
    resumed run runs and logs again)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("epoch", 0) <= last]
    if len(kept) != len(lines):
        path.write_text("".join(ln + "\n" for ln in kept))


def train(cfg: TrainConfig, out_dir=None, resume: bool = True, progress: bool = True, eval_cfg=None) -> Iterator[dict]:
    """Train ``cfg``; yield each epoch's metrics (the evaluations' as ``eval_<name>``, with ``eval_cfg``: an
    ``EvalConfig``, default ``Evaluator``'s: ``meme.eval.evaluator``). With ``out_dir``: config, checkpoints, metrics.jsonl there."""
    out = Path(out_dir) if out_dir else None
    trainer = Trainer(cfg)   # the data and the model first: a bad input leaves no run folder behind
    with RunLock(out):
        yield from _train(trainer, out, resume, progress, eval_cfg)


class RunLock:
    """An exclusive lock on a run folder (``<out>/.lock``, ``filelock``; released when the process ends, however it
    ends): a second run into a folder that one is writing is refused in one line naming the holder's PID."""

    def __init__(self, out: Path | None):
        self.out, self.lock = out, None

    def __enter__(self):
        if self.out is None:
            return self
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MemeError(f"cannot create the run folder {self.out} ({e.strerror}); give an --out you can write to") from None
        self.lock = FileLock(self.out / ".lock")
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            try:
                pid = (self.out / ".lock.pid").read_text().strip()
            except OSError:
                pid = "unknown"
            raise MemeError(f"{self.out} is in use by another run (PID {pid}); wait for it to finish or give another --out") from None
        (self.out / ".lock.pid").write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            (self.out / ".lock.pid").unlink(missing_ok=True)
            self.lock.release()
        return False


def _train(trainer: Trainer, out: Path | None, resume: bool, progress: bool, eval_cfg) -> Iterator[dict]:
    cfg = trainer.cfg
    if out is not None:
        ckpt = out / CHECKPOINT
        if resume and ckpt.exists():
            state = load_checkpoint(ckpt)
            check_checkpoint(state, None, None, source=f"{out}", nets=cfg.nets)
            # keys added to TrainConfig since the checkpoint was written count as that run had them
            old, new = _resumable(stored_config(state)), _resumable(cfg)
            if old != new:
                diff = sorted(k for k in new if old.get(k) != new[k])
                raise MemeError(f"{out} holds a run with a different config ({', '.join(diff)}); "
                                f"use another --out or pass --no-resume to overwrite it")
            trainer.load_state_dict(state)
            keep_logged_epochs(out / "metrics.jsonl", trainer.epoch)
            log.info("resuming %s from epoch %d", out, trainer.epoch)
        elif (out / "metrics.jsonl").exists():
            (out / "metrics.jsonl").unlink()
        cfg.save(out / "config.json")
        (out / "metadata.json").write_text(json.dumps(trainer.metadata(), indent=2) + "\n")

    def evaluate(final: bool) -> dict:
        if out is None or not final:
            evals, _ = trainer.evaluator(eval_cfg, figures=final)
        else:  # written into a fresh folder, then moved in whole: eval/ never mixes two evaluations
            tmp = out / f".eval.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                evals, _ = trainer.evaluator(eval_cfg, out_dir=tmp, figures=True)
                old = out / f".eval.old-{os.getpid()}"
                if (out / "eval").exists():
                    (out / "eval").rename(old)
                tmp.rename(out / "eval")
                shutil.rmtree(old, ignore_errors=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return {f"eval_{k}": v for k, v in evals.items()}

    def checkpoint() -> None:
        trainer.save(out / CHECKPOINT)

    for metrics in trainer.epochs(evaluate, progress=progress, checkpoint=checkpoint if out is not None else None):
        if out is not None:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        log.info("epoch %d: %s", trainer.epoch, {k: round(v, 4) for k, v in metrics.items()})
        yield metrics
