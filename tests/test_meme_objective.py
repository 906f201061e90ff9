"""The MEME objective: fast path against the literal reference, gradients, stop-gradient, symmetry."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from meme.batch import Batch
from meme.models.meme import MEME
from meme.models.reference import reference_direction, reference_meme_loss
from meme.nets import FAMILIES, MNISTModality, SVHNModality

L, B, K, N = 8, 6, 4, 5


def make_model(direction="both", seed=0, swap=False, nets="appendix_k") -> MEME:
    torch.manual_seed(seed)
    mods = (FAMILIES[nets]["mnist"](L), FAMILIES[nets]["svhn"](L))
    init = (torch.rand(N, 1, 28, 28), torch.rand(N, 3, 32, 32))
    if swap:
        mods, init = mods[::-1], init[::-1]
    return MEME(mods, K=K, lam=10.0, n_pseudo=N, direction=direction, pseudo_init=init)


def swapped(model: MEME) -> MEME:
    """The same networks and pseudo-samples with the roles of the two modalities exchanged."""
    sw = copy.deepcopy(model)
    sw.mods = torch.nn.ModuleList([sw.mods[1], sw.mods[0]])
    sw.pseudo = torch.nn.ParameterList([sw.pseudo[1], sw.pseudo[0]])
    sw.names = model.names[::-1]
    return sw


@pytest.fixture
def batch_data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g), torch.randint(0, 10, (B,), generator=g)


def batches(xs, xt, y):
    return {"paired": Batch((xs, xt), (True, True), y), "s": Batch((xs, None), (True, False), y),
            "t": Batch((None, xt), (False, True), y)}


@pytest.mark.parametrize("nets", ["published", "appendix_k"])
@pytest.mark.parametrize("chunk", [0, 7])
@pytest.mark.parametrize("kind", ["paired", "s", "t"])
@pytest.mark.parametrize("direction", ["both", "t_supervises_s", "s_supervises_t"])
def test_fast_loss_and_gradients_equal_reference(batch_data, kind, direction, chunk, nets):
    """chunk = 7: the fast path decodes its (K+2)*B SVHN latents 7 at a time (the CPU chunking). In training
    mode, with the published family's BatchNorm, the running averages also end where the reference (which
    encodes as often as the published code) leaves them."""
    model = make_model(direction, nets=nets)
    model.mods[1].cpu_decode_chunk = chunk
    ref_model = copy.deepcopy(model)
    b = batches(*batch_data)[kind]
    torch.manual_seed(42)
    fast, _ = model.loss(b)
    g_fast = torch.autograd.grad(fast, list(model.parameters()), allow_unused=True)
    torch.manual_seed(42)
    ref = reference_meme_loss(ref_model, b)
    g_ref = torch.autograd.grad(ref, list(ref_model.parameters()), allow_unused=True)
    buffers = dict(ref_model.named_buffers())
    assert bool(buffers) == (nets == "published")
    for name, buf in model.named_buffers():
        assert torch.allclose(buf.float(), buffers[name].float(), rtol=1e-5, atol=1e-6), name
        if name.endswith("running_mean") and kind != "s":   # the SVHN encoder ran: its averages moved
            assert buf.abs().sum() > 0
    assert torch.isfinite(fast)
    assert fast.item() == pytest.approx(ref.item(), rel=1e-5)
    before_bn = biases_before_batchnorm(model)
    assert bool(before_bn) == (nets == "published")
    for (name, _), gf, gr in zip(model.named_parameters(), g_fast, g_ref):
        if name in before_bn:   # BatchNorm removes a constant shift: the exact gradient is 0, both paths give rounding
            assert gf.abs().max() < 1e-3 and gr.abs().max() < 1e-3, name
        elif gf is None or gr is None:
            assert (gf is None or not gf.any()) and (gr is None or not gr.any())
        else:
            assert torch.allclose(gf, gr, rtol=1e-3, atol=1e-4 * gr.abs().max().item() + 1e-7)


def biases_before_batchnorm(model) -> set[str]:
    out = set()
    for prefix, seq in model.named_modules():
        if isinstance(seq, torch.nn.Sequential):
            for i, (a, b) in enumerate(zip(seq, list(seq)[1:])):
                if isinstance(a, torch.nn.Conv2d) and a.bias is not None and isinstance(b, torch.nn.BatchNorm2d):
                    out.add(f"{prefix}.{i}.bias")
    return out


def test_chunked_decode_equals_one_call():
    torch.manual_seed(0)
    mod = SVHNModality(L)
    z = torch.randn(3, 10, L)
    whole = mod.decode(z)
    mod.cpu_decode_chunk = 4  # 30 latents in chunks of 4, 4, ..., 2
    parts = mod.decode(z)
    assert parts.shape == whole.shape == (3, 10, 3, 32, 32)
    assert torch.allclose(parts, whole, atol=1e-6)
    assert SVHNModality.cpu_decode_chunk > 0 and MNISTModality.cpu_decode_chunk == 0


def test_logsumexp_estimate_includes_posterior_sample_and_bounds_weight(batch_data):
    xs, xt, _ = batch_data
    model = make_model()
    with torch.no_grad():  # a wide posterior and a z-sensitive decoder: the K+1 samples give different q(t|z_k)
        model.mods[0].enc_sigma.bias.fill_(3.0)
        model.mods[1].dec[0].weight.mul_(20.0)
    torch.manual_seed(7)
    terms = model.paired_terms((xs, xt))
    # recompute log q(t|s) by hand from the same noise: z_0 is the posterior sample, z_1..z_K the extras
    torch.manual_seed(7)
    mu, sigma = model.mods[0].encode(xs)
    eps = torch.randn(K + 1, B, L)
    lq = torch.stack([model.mods[1].log_likelihood(xt, model.mods[1].decode(mu + sigma * eps[k])) for k in range(K + 1)])
    by_hand = torch.log(torch.exp(lq - lq.max(0).values).mean(0)) + lq.max(0).values
    t = terms[(0, (1,))]
    err = (t["log_q"] - by_hand).abs().max()
    assert err < 2e-3
    assert (t["cls"] - lq[0]).abs().max() < 2e-3               # q(t|z) at the posterior sample itself
    # excluding z_0 gives a clearly different estimate, so the test would catch its omission
    assert (t["log_q"] - (torch.logsumexp(lq[1:], 0) - math.log(K))).abs().max() > max(10 * err, 0.05)
    for v in terms.values():
        assert (v["w"] <= K + 1 + 1e-4).all() and (v["w"] > 0).all()


def test_missing_t_gives_t_decoder_exactly_zero_gradient(batch_data):
    xs, xt, y = batch_data
    for kind, missing in (("s", 1), ("t", 0)):
        model = make_model()
        loss, _ = model.loss(batches(xs, xt, y)[kind])
        loss.backward()
        present = 1 - missing
        dec_missing = model.mods[missing].dec.parameters()
        assert all(p.grad is None or not p.grad.any() for p in dec_missing), "missing modality's decoder got gradient"
        # the missing modality's encoder and pseudo-samples do get gradient; the present one's pseudo-samples do not
        assert model.pseudo[missing].grad is not None and model.pseudo[missing].grad.abs().sum() > 0
        assert model.pseudo[present].grad is None or not model.pseudo[present].grad.any()
        enc_missing = [p for n, p in model.mods[missing].named_parameters() if n.startswith("enc")]
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc_missing)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mods[present].dec.parameters())


def test_stop_gradient_weight_acts_as_constant(batch_data):
    xs, xt, _ = batch_data
    model = make_model("t_supervises_s")
    enc = [p for n, p in model.mods[0].named_parameters() if n.startswith("enc")]
    eps = torch.randn(K + 1, B, L, generator=torch.Generator().manual_seed(5))

    def grads(objective):
        return torch.autograd.grad(objective, enc, retain_graph=True)

    # 1) the reference objective, whose weight is detached
    g_sg = grads(reference_direction(model, (xs, xt), 0, 1, eps).mean())
    # 2) the same expression with w computed first and plugged in as a plain constant tensor
    with torch.no_grad():
        mu, s = model.mods[0].encode(xs)
        lq = torch.stack([model.mods[1].log_likelihood(xt, model.mods[1].decode(mu + s * eps[k])) for k in range(K + 1)])
        w_const = torch.exp(lq[0] - (torch.logsumexp(lq, 0) - math.log(K + 1)))
    mu, s = model.mods[0].encode(xs)
    mu_t, s_t = model.mods[1].encode(xt)
    z = [mu + s * eps[k] for k in range(K + 1)]
    lq = torch.stack([model.mods[1].log_likelihood(xt, model.mods[1].decode(zk)) for zk in z])
    log_q_ts = torch.logsumexp(lq, 0) - math.log(K + 1)
    lp = model.mods[0].log_likelihood(xs, model.mods[0].decode(z[0]))
    from meme.dists import kl_normal

    kl = kl_normal(mu, s, mu_t, s_t)
    g_const = grads((w_const * (lp - lq[0] - kl) + model.lam * log_q_ts).mean())
    for a, b in zip(g_sg, g_const):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # and letting gradient flow through w changes the encoder gradient (the test can fail)
    w_live = torch.exp(lq[0] - log_q_ts)
    g_live = grads((w_live * (lp - lq[0] - kl) + model.lam * log_q_ts).mean())
    assert any(not torch.allclose(a, b, rtol=1e-3) for a, b in zip(g_sg, g_live))


def test_swapping_modalities_swaps_direction_terms(batch_data):
    xs, xt, _ = batch_data
    model = make_model()
    sw = swapped(model)
    eps = torch.randn(K + 1, B, L, generator=torch.Generator().manual_seed(9))
    a = reference_direction(model, (xs, xt), 0, 1, eps)       # L_{s<-t}
    b = reference_direction(sw, (xt, xs), 1, 0, eps)          # the same term in the swapped model
    assert torch.allclose(a, b)
    c = reference_direction(model, (xs, xt), 1, 0, eps)       # L_{t<-s}
    d = reference_direction(sw, (xt, xs), 0, 1, eps)
    assert torch.allclose(c, d)
    assert not torch.allclose(a, c)
    # the fast path agrees: its per-direction KL terms (noise-free) swap places
    t1 = model.paired_terms((xs, xt))
    t2 = sw.paired_terms((xt, xs))
    assert torch.allclose(t1[(0, (1,))]["kl"], t2[(1, (0,))]["kl"]) and torch.allclose(t1[(1, (0,))]["kl"], t2[(0, (1,))]["kl"])
    assert not torch.allclose(t1[(0, (1,))]["kl"], t1[(1, (0,))]["kl"])


def test_mixture_prior_uses_the_missing_modalitys_pseudo_samples(batch_data):
    xs, _, _ = batch_data
    model = make_model()
    torch.manual_seed(0)
    v = model.unpaired_terms(xs, 0)
    torch.manual_seed(0)
    mu, s = model.mods[0].encode(xs)
    z = mu + s * torch.randn_like(mu)
    mu_u, s_u = model.mods[1].encode(model.pseudo[1])
    from torch.distributions import Normal

    log_p = torch.logsumexp(torch.stack([Normal(mu_u[n], s_u[n]).log_prob(z).sum(-1) for n in range(N)]), 0) - math.log(N)
    log_q = Normal(mu, s).log_prob(z).sum(-1)
    assert torch.allclose(v["kl"], log_q - log_p, rtol=1e-5, atol=1e-4)


def test_bad_model_arguments():
    from meme.errors import MemeError

    mods = (MNISTModality(L), SVHNModality(L))
    with pytest.raises(MemeError, match="n_pseudo=0"):
        MEME(mods, n_pseudo=0)
    with pytest.raises(MemeError, match="unknown direction 'sideways'"):
        MEME(mods, direction="sideways")
    with pytest.raises(MemeError, match="K=0"):
        MEME(mods, K=0)


def test_bf16_autocast_keeps_the_loss_close_to_fp32(batch_data):
    model = make_model()
    b = batches(*batch_data)["paired"]
    torch.manual_seed(0)
    fp32, _ = model.loss(b)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16, _ = model.loss(b)
    assert bf16.dtype == torch.float32  # likelihoods and the objective are summed in fp32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.01)
