"""The two network families: the published code's networks computed by hand, BatchNorm's behaviour,
the sigma floors, the family a config builds, and runs written before the family was a config key."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from meme.models import TrainConfig
from meme.runs import check_config
from meme.batch import Batch
from meme.errors import MemeError
from meme.models.meme import MEME
from meme.nets import FAMILIES, check_family
from meme.nets.base import batchnorm_passes
from meme.nets.cub import PublishedCUBCaptionModality, PublishedCUBImageModality
from meme.nets.mnist import MNISTModality, PublishedMNISTModality
from meme.nets.svhn import PublishedSVHNModality, SVHNModality

L = 6
FIXTURE = Path(__file__).parent / "fixtures" / "checkpoint_v1_manifest.json"


def test_published_mnist_is_the_published_mlp_by_hand():
    torch.manual_seed(0)
    m = PublishedMNISTModality(L).train()
    lin = [l for l in m.enc_hidden if isinstance(l, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in lin] == [(784, 512), (512, 512)]
    assert [(l.in_features, l.out_features) for l in m.dec if isinstance(l, nn.Linear)] == [(L, 512), (512, 512), (512, 784)]
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        m.enc_sigma.bias[:3] = -30.0   # softplus ~ 1e-13: below the floor
    h = F.softplus(F.linear(F.elu(F.linear(x.view(5, 784), lin[0].weight, lin[0].bias)), lin[1].weight, lin[1].bias))
    mu, sigma = m.encode(x)
    assert torch.allclose(mu, F.linear(h, m.enc_mu.weight, m.enc_mu.bias), atol=1e-6)
    expected = torch.clamp(F.softplus(F.linear(h, m.enc_sigma.weight, m.enc_sigma.bias)), min=1e-3)
    assert torch.allclose(sigma, expected, atol=1e-7)
    assert (sigma[:, :3] == 1e-3).all()          # clamped, not 1e-3 + softplus
    z = torch.randn(2, 5, L)
    d = [l for l in m.dec if isinstance(l, nn.Linear)]
    by_hand = torch.sigmoid(F.linear(F.relu(F.linear(F.relu(F.linear(z, d[0].weight, d[0].bias)), d[1].weight, d[1].bias)),
                                     d[2].weight, d[2].bias))
    assert torch.allclose(m.decode(z), by_hand.view(2, 5, 1, 28, 28), atol=1e-6)


def test_clamped_sigma_passes_no_gradient_below_the_floor_and_added_floor_does():
    pub, app = PublishedMNISTModality(L), MNISTModality(L)
    for m in (pub, app):
        with torch.no_grad():
            m.enc_sigma.weight.zero_()
            m.enc_sigma.bias.fill_(-8.0)     # softplus(-8) = 3.35e-4, below the floor
    x = torch.rand(3, 1, 28, 28)
    s_pub, s_app = pub.encode(x)[1], app.encode(x)[1]
    assert torch.equal(s_pub, torch.full_like(s_pub, 1e-3))
    assert torch.allclose(s_app, torch.full_like(s_app, 1e-3 + 3.3541e-4), rtol=1e-4)
    g_pub = torch.autograd.grad(s_pub.sum(), pub.enc_sigma.bias)[0]
    g_app = torch.autograd.grad(s_app.sum(), app.enc_sigma.bias)[0]
    assert torch.equal(g_pub, torch.zeros_like(g_pub))   # torch.clamp: exactly zero below the floor
    assert (g_app > 0).all()


def _svhn_by_hand(m: PublishedSVHNModality, x, training: bool):
    """The published MSEncoder, written out with functional ops (F.batch_norm on the module's buffers)."""
    convs = [l for l in m.enc if isinstance(l, nn.Conv2d)]
    bns = [l for l in m.enc if isinstance(l, nn.BatchNorm2d)]
    h = x
    for i, (c, b) in enumerate(zip(convs, bns)):
        h = F.conv2d(h, c.weight, c.bias, c.stride, c.padding)
        h = F.batch_norm(h, b.running_mean.clone(), b.running_var.clone(), b.weight, b.bias, training, 0.1, 1e-5)
        if i < 3:
            h = F.relu(h)
    h = h.flatten(1)
    return F.linear(h, m.enc_mu.weight, m.enc_mu.bias), torch.clamp(F.softplus(F.linear(h, m.enc_sigma.weight, m.enc_sigma.bias)), min=1e-4)


def test_published_svhn_encoder_by_hand_in_train_and_eval_mode():
    torch.manual_seed(0)
    m = PublishedSVHNModality(L)
    convs = [l for l in m.enc if isinstance(l, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (3, 32, (4, 4), (2, 2), (1, 1)), (32, 64, (4, 4), (2, 2), (1, 1)), (64, 128, (4, 4), (2, 2), (1, 1)),
        (128, 512, (4, 4), (1, 1), (0, 0))]
    assert len([l for l in m.enc if isinstance(l, nn.BatchNorm2d)]) == 4 and len([l for l in m.enc if isinstance(l, nn.ReLU)]) == 3
    assert (m.enc_mu.in_features, m.enc_mu.out_features) == (512, L)
    # the decoder is appendix K's
    assert [tuple(p.shape) for p in m.dec.parameters()] == [tuple(p.shape) for p in SVHNModality(L).dec.parameters()]
    x = torch.rand(7, 3, 32, 32)
    m.train()
    mu, sigma = m.encode(x)
    mu_h, sigma_h = _svhn_by_hand(m, x, training=True)
    assert torch.allclose(mu, mu_h, atol=1e-5) and torch.allclose(sigma, sigma_h, atol=1e-6)
    # eval mode uses the running averages: give them values far from the batch's and compare again
    for b in m.enc:
        if isinstance(b, nn.BatchNorm2d):
            b.running_mean.uniform_(-1, 1)
            b.running_var.uniform_(0.5, 2)
    m.eval()
    mu_e, sigma_e = m.encode(x)
    mu_eh, sigma_eh = _svhn_by_hand(m, x, training=False)
    assert torch.allclose(mu_e, mu_eh, atol=1e-5) and torch.allclose(sigma_e, sigma_eh, atol=1e-6)
    assert not torch.allclose(mu_e, mu, atol=1e-2)
    # one example alone in eval mode is the same as inside the batch (no batch statistics)
    assert torch.allclose(m.encode(x[:1])[0], mu_e[:1], atol=1e-5)


def test_batchnorm_passes_equal_repeated_passes():
    torch.manual_seed(0)
    a = PublishedSVHNModality(L).train()
    b = copy.deepcopy(a)
    x = torch.rand(9, 3, 32, 32)
    with batchnorm_passes(a, 3):
        a.encode(x)
    for _ in range(3):
        b.encode(x)
    for (n, ba), bb in zip(a.named_buffers(), b.buffers()):
        assert torch.allclose(ba.float(), bb.float(), rtol=1e-5, atol=1e-7), n
    assert int(a.enc[1].num_batches_tracked) == 3 and a.enc[1].momentum == 0.1   # restored
    # the pseudo-samples of a missing SVHN: their own batch statistics move the running averages
    torch.manual_seed(1)
    model = MEME((PublishedMNISTModality(L), PublishedSVHNModality(L)), K=2, n_pseudo=8,
                 pseudo_init=(torch.rand(8, 1, 28, 28), torch.rand(8, 3, 32, 32))).train()
    bn = model.mods[1].enc[1]
    with torch.no_grad():
        pre = F.conv2d(model.pseudo[1], model.mods[1].enc[0].weight, model.mods[1].enc[0].bias, 2, 1)
    model.loss(Batch((torch.rand(4, 1, 28, 28), None), (True, False), torch.zeros(4, dtype=torch.long)))
    assert torch.allclose(bn.running_mean, 0.1 * pre.mean((0, 2, 3)), atol=1e-6)


def test_published_cub_networks():
    img = PublishedCUBImageModality(latent_dim=L)
    assert img.sigma_rule == "clamp" and img.sigma_floor == 1e-4
    cap = PublishedCUBCaptionModality(latent_dim=L, vocab_size=40, pad_index=1)
    convs = [c for c in cap.enc if isinstance(c, nn.Conv2d)] + [cap.enc_mu]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 128, L]
    assert all(c.bias is None for c in convs)
    ups = [c for c in cap.dec if isinstance(c, nn.ConvTranspose2d)]
    assert [c.out_channels for c in ups] == [128, 128, 128, 64, 32, 1] and all(c.bias is None for c in ups)
    assert isinstance(cap.dec[1], nn.BatchNorm2d)                # BatchNorm after the first upconv too
    assert (cap.to_vocab.in_features, cap.to_vocab.out_features) == (128, 40)
    assert cap.to_vocab.weight.data_ptr() != cap.embedding.weight.data_ptr()   # untied
    assert torch.equal(cap.embedding.weight[1], torch.zeros(128))               # <pad> embeds to zero
    tokens = torch.randint(0, 40, (3, 32))
    mu, sigma = cap.eval().encode(tokens)
    assert mu.shape == (3, L) and (sigma >= 1e-3).all()
    assert cap.decode(torch.randn(2, 3, L)).shape == (2, 3, 32, 40)


# ------------------------------------------------------------------ config
def test_config_chooses_the_family_and_rejects_unknown_ones(monkeypatch):
    """The family is checked against the dataset's modalities where a run is built (``check_config``)."""
    assert TrainConfig().nets == "published"
    with pytest.raises(MemeError, match=r"unknown nets 'appendix-k'; valid: published, appendix_k"):
        check_config(TrainConfig(nets="appendix-k"))
    monkeypatch.setitem(FAMILIES, "mnist_only", {"mnist": MNISTModality})
    with pytest.raises(MemeError, match=r"nets 'mnist_only' has no networks for modality 'svhn'; valid for mnist, svhn: "
                                        r"published, appendix_k"):
        check_config(TrainConfig(nets="mnist_only"))
    with pytest.raises(MemeError, match="sigma_floor=-1.0 must be >= 0"):
        TrainConfig(sigma_floor=-1.0)
    check_family("appendix_k", ("cub_image", "cub_caption"))


@pytest.mark.parametrize("model", ["meme", "mvae", "mmvae", "mopoe", "mmjsd"])
@pytest.mark.parametrize("nets", ["published", "appendix_k"])
def test_every_model_builds_the_chosen_family(synth_dir, model, nets):
    from meme.train import Trainer

    cfg = TrainConfig(model=model, nets=nets, data_dir=str(synth_dir), download=False, max_train_pairs=64,
                      latent_dim=4, K=2, n_pseudo=4, batch_size=32, epochs=1, device="cpu")
    tr = Trainer(cfg)
    assert tuple(type(m) for m in tr.model.mods) == (FAMILIES[nets]["mnist"], FAMILIES[nets]["svhn"])
    floors = (1e-3, 1e-4) if nets == "published" else (1e-3, 1e-3)
    assert tuple(m.sigma_floor for m in tr.model.mods) == floors
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.run_epoch().values())
    assert TrainConfig(nets=nets, sigma_floor=0.01).sigma_floor == 0.01


# --------------------------------------------------- runs from before 'nets'
def write_v1_checkpoint(path: Path, data_dir) -> dict:
    """A checkpoint exactly as the code before the ``nets`` key wrote it: the manifest of a real one (its
    config, every state-dict key with its shape, the optimiser's layout), with seeded values."""
    man = json.loads(FIXTURE.read_text())
    g = torch.Generator().manual_seed(0)
    mk = lambda shape, dtype: (torch.rand(shape, generator=g) * 0.1).to(getattr(torch, dtype))  # noqa: E731
    state = {k: man[k] for k in ("version", "model_name", "modalities", "epoch")}
    state["config"] = {**man["config"], "data_dir": str(data_dir)}
    state["model"] = {k: mk(*v) for k, v in man["model"].items()}
    state["optimizer"] = {"param_groups": man["optimizer"]["param_groups"],
                          "state": {int(i): {k: (torch.tensor(1.0) if k == "step" else mk(*v).abs()) for k, v in st.items()}
                                    for i, st in man["optimizer"]["state"].items()}}
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "checkpoint.pt")
    (path / "config.json").write_text(json.dumps(state["config"]))
    return state


def test_runs_written_before_the_family_key_load_evaluate_and_resume_as_appendix_k(tmp_path, synth_dir):
    from meme.runs import load_run
    from meme.train import train

    run = tmp_path / "old"
    state = write_v1_checkpoint(run, synth_dir)
    assert "nets" not in state["config"]
    model, cfg, train_data, test_data = load_run(run)
    assert cfg.nets == "appendix_k" and cfg.sigma_floor == 1e-3
    assert (type(model.mods[0]), type(model.mods[1])) == (MNISTModality, SVHNModality)
    assert torch.equal(model.state_dict()["mods.1.enc.4.weight"], state["model"]["mods.1.enc.4.weight"])
    # the evaluation suite runs on it
    from meme.eval import EvalConfig, evaluate

    metrics, _ = evaluate(model, train_data, test_data, {},
                          EvalConfig(likelihood_k=0, n_joint=0, n_latent_train=32, max_test_pairs=40), figures=False)
    assert "latent_acc_mnist" in metrics
    # resuming it with its own family continues from its epoch (the command line of then, plus --nets
    # appendix_k: the default sigma_floor 0 is appendix K's 1e-3); with the default family it is refused
    old = TrainConfig.from_stored(state["config"])
    cli = {k: v for k, v in old.to_dict().items() if k != "sigma_floor"}   # today's default floor (0)
    assert TrainConfig.from_dict(cli).sigma_floor == 0.0
    resumed = list(train(TrainConfig.from_dict({**cli, "epochs": 2}), run, progress=False))
    assert [m["epoch"] for m in resumed] == [2]
    with pytest.raises(MemeError, match=r"holds a run with a different config \(sigma_floor\)"):
        list(train(old.replace(epochs=3, sigma_floor=0.01), run, progress=False))
    with pytest.raises(MemeError, match=r"was trained with nets='appendix_k' and cannot continue as nets='published'; "
                                        r"resume it with --nets appendix_k"):
        list(train(old.replace(epochs=3, nets="published"), run, progress=False))


def test_a_resumed_trial_of_a_study_from_before_the_key_keeps_appendix_k():
    from orchestration.study import load_study
    from orchestration.trainable import GRID_KEY, train_config

    new = load_study("smoke").base_config()
    assert new["nets"] == "published"                      # new studies give every key: nothing is inferred
    assert train_config({**new, GRID_KEY: {"seed": 1}}).nets == "published"
    old = {k: v for k, v in new.items() if k != "nets"}     # a trial config Tune saved before 'nets' existed
    assert train_config({**old, GRID_KEY: {"seed": 1}}).nets == "appendix_k"
