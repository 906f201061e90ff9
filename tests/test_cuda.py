"""Tests that need a CUDA GPU (``pytest -m cuda``); skipped where none is visible.

``benchmarks/gpu_check.py`` runs them on a GPU machine, next to the GPU figures.
"""
from __future__ import annotations

import copy

import pytest
import torch

from meme.models import TrainConfig
from meme.batch import Batch
from meme.models.meme import MEME
from meme.models.reference import reference_meme_loss
from meme.nets import FAMILIES

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run benchmarks/gpu_check.py there)")]

L, B, K, N = 8, 16, 4, 5


@pytest.fixture(autouse=True)
def _exact_fp32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("nets", ["published", "appendix_k"])
@pytest.mark.parametrize("kind", ["paired", "s", "t"])
def test_fast_path_equals_reference_on_the_gpu(nets, kind):
    torch.manual_seed(0)
    mods = (FAMILIES[nets]["mnist"](L), FAMILIES[nets]["svhn"](L))
    model = MEME(mods, K=K, n_pseudo=N, pseudo_init=(torch.rand(N, 1, 28, 28), torch.rand(N, 3, 32, 32))).cuda()
    ref_model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    xs, xt = torch.rand(B, 1, 28, 28, generator=g).cuda(), torch.rand(B, 3, 32, 32, generator=g).cuda()
    y = torch.zeros(B, dtype=torch.long, device="cuda")
    batch = {"paired": Batch((xs, xt), (True, True), y), "s": Batch((xs, None), (True, False), y),
             "t": Batch((None, xt), (False, True), y)}[kind]
    torch.manual_seed(42)
    fast, _ = model.loss(batch)
    torch.manual_seed(42)
    ref = reference_meme_loss(ref_model, batch)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-4)
    gf = torch.autograd.grad(fast, list(model.parameters()), allow_unused=True)
    gr = torch.autograd.grad(ref, list(ref_model.parameters()), allow_unused=True)
    scale = max(g.abs().max().item() for g in gr if g is not None)
    for a, b in zip(gf, gr):
        if a is not None and b is not None:
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("compile", [False, True])
def test_trainer_trains_and_evaluates_on_the_gpu(synth_dir, precision, compile):
    from meme.train import Trainer

    cfg = TrainConfig(data_dir=str(synth_dir), download=False, device="cuda", precision=precision, compile=compile,
                      max_train_pairs=256, latent_dim=8, K=3, n_pseudo=8, batch_size=64, epochs=2, supervision=0.5)
    tr = Trainer(cfg)
    assert tr.precision == precision and tr.train_data.tables[0].device.type == "cuda"   # tables live on the GPU
    first, second = tr.run_epoch(), tr.run_epoch()
    assert all(torch.isfinite(torch.tensor(v)) for v in (*first.values(), *second.values()))
    from meme.eval import EvalConfig

    metrics, _ = tr.evaluator(EvalConfig(likelihood_k=4, likelihood_pairs=8, n_joint=64, n_latent_train=128,
                                        max_test_pairs=64, n_tsne=50), classifiers={})
    assert 0.0 <= metrics["latent_acc_mnist"] <= 1.0 and metrics["w2_paired_mean"] >= 0


def test_auto_precision_on_the_gpu_is_fp32():
    from meme.train import resolve_precision

    assert resolve_precision("auto", torch.device("cuda")) == "fp32"


@pytest.mark.parametrize("model", ["meme", "mvae", "mmvae", "mopoe", "mmjsd"])
def test_a_training_step_never_waits_for_the_gpu(synth_dir, model):
    """No host sync inside a step (the loader's indices, the batch gather, the loss, the optimiser): CUDA's sync
    debug mode raises at the first synchronising call. A Laplace scale made on the GPU at every likelihood
    call was one (2 to 3 per step, measured by benchmarks/gpu_check.py)."""
    from meme.train import Trainer

    cfg = TrainConfig(data_dir=str(synth_dir), download=False, device="cuda", model=model, max_train_pairs=256,
                      latent_dim=8, K=3, n_pseudo=8, batch_size=64, epochs=1, supervision=0.5)
    tr = Trainer(cfg)
    plan = tr.loader.plan(1)
    assert all(pairs.device.type == "cuda" for pairs, _ in plan)       # the epoch's indices are on the GPU
    from meme.data.batch import gather

    batches = [gather(tr.train_data, pairs, observed, tr.device) for pairs, observed in plan]
    tr.step(batches[0])                                                # lazy initialisation may sync once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches:
            tr.step(b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
