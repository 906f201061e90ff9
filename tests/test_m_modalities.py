"""M >= 2 modalities: the observation schemes, the batches they make, and each baseline's objective against a
literal reference written term by term (torch.distributions, loops over subsets) for M = 2 and M = 3, full and
partial patterns: the loss and every gradient, and exactly zero gradient for a missing modality."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Laplace, Normal, kl_divergence

from meme.batch import Batch
from meme.data.batch import BatchLoader
from meme.data.observation import Observation, make_observation, shares
from meme.data.paired import PairedData
from meme.errors import MemeError
from meme.models import MMJSD, MMVAE, MVAE, MoPoE
from meme.models.experts import component_of
from meme.nets.shaped import VectorModality

L = 4
DIMS = (5, 7, 3)


# ------------------------------------------------------------------ observation schemes
def test_split_gives_each_modality_an_equal_share_and_subsets_share_by_weight_exactly():
    names = ("a", "b", "c")
    obs = make_observation(100, 0.25, "split", names, seed=3)
    assert obs.paired.numel() == 25
    assert [obs.of(p).numel() for p in ((True, False, False), (False, True, False), (False, False, True))] == [25, 25, 25]
    obs = make_observation(100, 0.1, "a+b:2, c:1", names, seed=3)
    assert (obs.paired.numel(), obs.of((True, True, False)).numel(), obs.of((False, False, True)).numel()) == (10, 60, 30)
    # 7 left for weights 1, 1, 1: 3, 2, 2 (the remainder to the earlier subset)
    assert shares(7, [1, 1, 1]) == [3, 2, 2] and shares(10, [2, 1]) == [7, 3] and shares(5, [0, 1]) == [0, 5]
    mask = obs.mask(100)
    assert mask.sum(0).tolist() == [70, 70, 40] and mask.any(1).all()   # every example once, each observes something
    assert Observation.from_mask(names, mask).groups.keys() == obs.groups.keys()
    for p, idx in Observation.from_mask(names, mask).groups.items():
        assert torch.equal(idx, obs.of(p))
    # the patterns in their fixed order: the full one first, then by size, earlier modalities first
    assert list(obs.groups) == [(True, True, True), (True, True, False), (False, False, True)]
    assert obs.counts() == {"paired": 10, "observed_a+b": 60, "observed_c": 30}


def test_two_modality_schemes_are_what_they_always_were():
    names = ("s", "t")
    for observed in ("split", "s", "t"):
        obs = make_observation(11, 3 / 11, observed, names, seed=5)
        perm = torch.randperm(11, generator=torch.Generator().manual_seed(5))
        rest = perm[3:]
        assert torch.equal(obs.paired, perm[:3].sort().values)
        s_only = {"split": rest[:4], "s": rest, "t": rest[:0]}[observed].sort().values
        t_only = {"split": rest[4:], "s": rest[:0], "t": rest}[observed].sort().values
        assert torch.equal(obs.s_only, s_only) and torch.equal(obs.t_only, t_only)
        assert obs.counts() == {"paired": 3, "s_only": s_only.numel(), "t_only": t_only.numel()}


def test_random_observation_keeps_each_modality_with_its_probability_and_never_none():
    names = tuple("abcde")
    obs = make_observation(20_000, 0.5, "random", names, seed=0, p_observed=0.3)
    mask = obs.mask(20_000)
    rest = mask[~mask.all(1)]
    assert mask.any(1).all() and len(obs.groups) == 31
    # P(kept | at least one kept) = p / (1 - (1 - p)^5)
    expected = 0.3 / (1 - 0.7 ** 5)
    full_rest = (mask.all(1).sum() - 10_000).item()   # the rest's draws that kept all five
    kept = (rest.float().sum(0) + full_rest) / 10_000
    assert torch.allclose(kept, torch.full((5,), expected), atol=0.02)
    again = make_observation(20_000, 0.5, "random", names, seed=0, p_observed=0.3)
    assert all(torch.equal(again.of(p), idx) for p, idx in obs.groups.items())


@pytest.mark.parametrize("observed, p, message", [
    ("a+x", 0.5, "observed 'a+x': unknown modality 'x'; valid: a, b, c, split, random, or subsets with weights"),
    ("x", 0.5, "unknown observed 'x'; valid: a, b, c, split, random"),
    ("random", 0.0, "p_observed=0.0 is outside (0, 1]"),
    ("random", 1.5, "p_observed=1.5 is outside (0, 1]"),
    ("a:0, b:0", 0.5, "observed 'a:0, b:0': the subset weights sum to 0; they must sum to a positive number"),
    ("a:-1, b", 0.5, "weight -1 of 'a' must be a finite number >= 0"),
    ("a:x", 0.5, "weight 'x' of 'a' is not a number"),
    ("a+a", 0.5, "subset 'a+a' names a modality twice"),
    ("a,,b", 0.5, "an empty subset"),
])
def test_a_bad_observation_scheme_is_named_with_what_is_valid(observed, p, message):
    with pytest.raises(MemeError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        make_observation(10, 0.5, observed, ("a", "b", "c"), p_observed=p)


def test_batches_follow_pattern_sizes_without_slivers_and_cover_every_example_once():
    names = ("a", "b", "c")
    data = PairedData.from_tables({n: torch.rand(203, d) for n, d in zip(names, DIMS)}, torch.arange(203) % 10)
    obs = make_observation(203, 0.5, "a+b:3, c:1", names, seed=1)
    loader = BatchLoader(data, obs, 32, seed=4)
    plan = loader.plan(1)
    seen = torch.cat([idx for idx, _ in plan])
    assert sorted(seen.tolist()) == list(range(203))
    for pattern, idx in obs.groups.items():
        sizes = [b.numel() for b, p in plan if p == pattern]
        assert len(sizes) == math.ceil(idx.numel() / 32) and max(sizes) - min(sizes) <= 1   # 102 -> 4 x 25/26
    assert [p for _, p in plan] != sorted((p for _, p in plan), key=str)   # the patterns interleave
    assert all(torch.equal(a, b) and p == q for (a, p), (b, q) in zip(plan, loader.plan(1)))
    batch = next(loader.epoch(1))
    assert len(batch.x) == 3 and all((x is None) != o for x, o in zip(batch.x, batch.observed))


# ------------------------------------------------------------------ the baselines against literal references
def models_for(cls, M, seed=0, **kw):
    torch.manual_seed(seed)
    mods = tuple(VectorModality(L, shape=(DIMS[m],), name=f"m{m}", hidden=[16]) for m in range(M))
    return cls(mods, **kw)


def data_for(M, B):
    g = torch.Generator().manual_seed(2)
    return [torch.rand(B, DIMS[m], generator=g) for m in range(M)], torch.arange(B) % 10


def batch_of(xs, y, observed):
    return Batch(tuple(x if o else None for x, o in zip(xs, observed)), tuple(observed), y)


def log_lik(model, m, x, z):
    """log p(x_m | z), literally: Laplace(decoder(z), scale 1), summed over the features."""
    return Laplace(model.mods[m].decode(z), 1.0).log_prob(x).sum(-1)


def expert(model, m, x):
    mu, sigma = model.mods[m].encode(x)
    return mu, sigma


def product(experts, prior: bool):
    """A product of Gaussian experts, literally: precisions add, the mean is precision-weighted."""
    precision = sum(s ** -2 for _, s in experts) + (1.0 if prior else 0.0)
    mean = sum(m * s ** -2 for m, s in experts) / precision
    return mean, precision ** -0.5


def kl_std(mu, sigma):
    return kl_divergence(Normal(mu, sigma), Normal(torch.zeros_like(mu), torch.ones_like(sigma))).sum(-1)


def ref_mvae(model, xs, obs, beta):
    """ELBO(all observed) + each observed alone; noise in that order."""
    e = {m: expert(model, m, xs[m]) for m in obs}
    subsets = [tuple(obs)] + ([(m,) for m in obs] if len(obs) > 1 else [])
    total = 0
    for S in subsets:
        mu, sig = product([e[m] for m in S], prior=True)
        z = mu + sig * torch.randn_like(mu)
        total = total + sum(log_lik(model, m, xs[m], z) for m in S) - beta * kl_std(mu, sig)
    return -total.mean()


def ref_mopoe(model, xs, obs, beta):
    """A mixture over every non-empty subset of the observed (singletons bare, products with the prior expert);
    example blocks by subset; the mean of the subsets' KLs."""
    e = {m: expert(model, m, xs[m]) for m in obs}
    subsets = [S for k in range(1, len(obs) + 1) for S in itertools.combinations(obs, k)]
    post = [e[S[0]] if len(S) == 1 else product([e[m] for m in S], prior=True) for S in subsets]
    B = xs[obs[0]].shape[0]
    comp = component_of(B, len(subsets))
    mu = torch.stack([post[c][0][i] for i, c in enumerate(comp.tolist())])
    sig = torch.stack([post[c][1][i] for i, c in enumerate(comp.tolist())])
    z = mu + sig * torch.randn_like(mu)
    kl = sum(kl_std(*p) for p in post) / len(post)
    return -(sum(log_lik(model, m, xs[m], z) for m in obs) - beta * kl).mean()


def ref_mmjsd(model, xs, obs, beta):
    """JS among the observed experts and N(0, I), uniform weights, towards their weighted geometric mean."""
    dists = [Normal(*expert(model, m, xs[m])) for m in obs]
    dists.append(Normal(torch.zeros_like(dists[0].loc), torch.ones_like(dists[0].scale)))
    n = len(dists)
    precision = sum(d.scale ** -2 / n for d in dists)
    p_f = Normal(sum(d.loc * d.scale ** -2 / n for d in dists) / precision, precision ** -0.5)
    js = sum(kl_divergence(d, p_f).sum(-1) for d in dists) / n
    B = xs[obs[0]].shape[0]
    comp = component_of(B, len(obs)).tolist()
    mu = torch.stack([dists[c].loc[i] for i, c in enumerate(comp)])
    sig = torch.stack([dists[c].scale[i] for i, c in enumerate(comp)])
    z = mu + sig * torch.randn_like(mu)
    return -(sum(log_lik(model, m, xs[m], z) for m in obs) - beta * js).mean()


def ref_mmvae(model, xs, obs, K, estimator):
    """K samples from each observed expert, scored by the prior, every observed decoder and the mixture."""
    q = [Normal(*expert(model, m, xs[m])) for m in obs]
    B = xs[obs[0]].shape[0]
    eps = torch.randn(len(obs), K, B, L)
    rows = []
    for i in range(len(obs)):
        per_k = []
        for k in range(K):
            z = q[i].loc + q[i].scale * eps[i, k]
            log_q = torch.logsumexp(torch.stack([d.log_prob(z).sum(-1) for d in q]), 0) - math.log(len(obs))
            log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
            per_k.append(log_p + sum(log_lik(model, m, xs[m], z) for m in obs) - log_q)
        rows.append(torch.stack(per_k))
    lw = torch.stack(rows)
    per_modality = lw.mean(1) if estimator == "elbo" else torch.logsumexp(lw, 1) - math.log(K)
    return -per_modality.mean(0).mean()


CASES = {
    "mvae": (MVAE, {"beta": 0.7}, lambda m, xs, obs: ref_mvae(m, xs, obs, 0.7)),
    "mopoe": (MoPoE, {"beta": 1.5}, lambda m, xs, obs: ref_mopoe(m, xs, obs, 1.5)),
    "mmjsd": (MMJSD, {"beta": 2.0}, lambda m, xs, obs: ref_mmjsd(m, xs, obs, 2.0)),
    "mmvae_elbo": (MMVAE, {"K": 2}, lambda m, xs, obs: ref_mmvae(m, xs, obs, 2, "elbo")),
    "mmvae_iwae": (MMVAE, {"K": 3, "estimator": "iwae"}, lambda m, xs, obs: ref_mmvae(m, xs, obs, 3, "iwae")),
}
PATTERNS = [(True, True), (True, False), (False, True), (True, True, True), (True, True, False), (True, False, True),
            (False, True, True), (False, True, False)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: "".join("1" if o else "0" for o in p))
@pytest.mark.parametrize("case", CASES)
def test_each_baseline_equals_its_literal_reference_in_loss_and_every_gradient(case, pattern):
    cls, kw, reference = CASES[case]
    M, obs = len(pattern), [m for m, o in enumerate(pattern) if o]
    if cls is MMVAE and len(obs) < 2:
        pytest.skip("MMVAE has no term for one modality (tested below)")
    model = models_for(cls, M, **kw)
    xs, y = data_for(M, 14)   # 14 examples: every one of the 7 subsets of three gets two in MoPoE
    params = [p for p in model.parameters()]
    torch.manual_seed(5)
    loss, _ = model.loss(batch_of(xs, y, pattern))
    g_fast = torch.autograd.grad(loss, params, allow_unused=True)
    torch.manual_seed(5)
    ref = reference(model, xs, obs)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), g_fast, g_ref):
        if b is None:
            assert a is None or not a.any(), name
        else:
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * max(1.0, b.abs().max().item())), name
    for m in range(M):   # a missing modality's encoder and decoder get exactly zero gradient
        grads = [g for (name, _), g in zip(model.named_parameters(), g_fast) if name.startswith(f"mods.{m}.")]
        if m in obs:
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None or not g.any() for g in grads), f"modality {m} is missing but learns"


def test_mmvae_learns_from_patterns_of_two_or_more_and_refuses_one():
    model = models_for(MMVAE, 3)
    assert [model.learns_from(p) for p in ((True, False, False), (True, True, False), (True, True, True))] == \
        [False, True, True]
    assert model.learns_from_unpaired and not models_for(MMVAE, 2).learns_from_unpaired
    xs, y = data_for(3, 6)
    with pytest.raises(MemeError, match="no objective for singly observed examples"):
        model.loss(batch_of(xs, y, (False, True, False)))


# ------------------------------------------------------------------ evaluation with M modalities
def test_coherence_given_a_subset_is_the_fused_posterior_decoded_and_judged():
    """``subset_coherence`` against a literal loop: MVAE's product with the prior expert and MMVAE's mixture
    (a component drawn per example), decoded into each target outside S and judged."""
    from meme.eval.coherence import subset_coherence
    from meme.eval.latents import encode_pairs

    names = ("m0", "m1", "m2")
    data = PairedData.from_tables({n: torch.rand(40, d) for n, d in zip(names, DIMS)}, torch.arange(40) % 3)
    pairs = torch.arange(40)
    torch.manual_seed(1)
    judges = {m: torch.nn.Linear(DIMS[m], 3) for m in range(3)}
    for cls in (MVAE, MMVAE):
        model = models_for(cls, 3).eval()
        torch.manual_seed(9)
        enc = encode_pairs(model, data, pairs, 64, "cpu", experts=True)
        got = subset_coherence(model, enc, [(0, 1), (0, 2), (1, 2)], judges, 64, "cpu")
        torch.manual_seed(9)
        xs = [data.tables[m] for m in range(3)]
        with torch.no_grad():
            for S in [(0, 1), (0, 2), (1, 2)]:
                bare = [model.mods[m].encode(xs[m]) for m in S]
                if cls is MVAE:
                    mu, sig = product(bare, prior=True)
                else:
                    pick = torch.randint(2, (40,))
                    mu = torch.where((pick == 0)[:, None], bare[0][0], bare[1][0])
                    sig = torch.where((pick == 0)[:, None], bare[0][1], bare[1][1])
                z = mu + sig * torch.randn_like(mu)
                (t,) = [m for m in range(3) if m not in S]
                want = (judges[t](model.mods[t].decode(z)).argmax(-1) == data.labels).float().mean().item()
                assert got[(S, t)] == pytest.approx(want, abs=1e-6), (cls.name, S)   # a count over 40, in float32 or not


@pytest.mark.parametrize("cls", [MVAE, MoPoE, MMVAE])
def test_encoding_for_the_evaluation_runs_each_encoder_once_per_batch_and_gives_what_separate_calls_give(cls):
    """``encode_pairs`` takes the unimodal posterior, the expert and the joint posterior from one pass of each
    encoder network per batch, equal to ``model.encode``, ``model.expert`` and ``model.fuse`` called apart."""
    from meme.eval.latents import encode_pairs

    names = ("m0", "m1", "m2")
    data = PairedData.from_tables({n: torch.rand(40, d) for n, d in zip(names, DIMS)}, torch.arange(40) % 3)
    model = models_for(cls, 3).eval()
    calls = [0, 0, 0]

    def counted(m, encode):
        def run(x):
            calls[m] += 1
            return encode(x)
        return run

    for m, mod in enumerate(model.mods):
        mod.encode = counted(m, mod.encode)
    enc = encode_pairs(model, data, torch.arange(40), 16, "cpu", joint=True, experts=True)
    assert calls == [3, 3, 3]   # 40 examples in batches of 16
    xs = [data.tables[m] for m in range(3)]
    with torch.no_grad():
        for m in range(3):
            assert torch.equal(enc.mu[m], model.encode(xs[m], m)[0]) and torch.equal(enc.sigma[m], model.encode(xs[m], m)[1])
            assert all(torch.equal(a, b) for a, b in zip(enc.expert(m), model.expert(xs[m], m)))
        assert torch.equal(enc.joint_mu, model.fuse([model.expert(xs[m], m) for m in range(3)])[0].mean(0))
    # MVAE's experts are not its unimodal posteriors (those include the prior expert); the others' are
    assert (enc.experts is not None) == (cls is MVAE)


def three_modalities(d, n_train=240, n_test=60, rows=None, names=("a", "b", "c"), dup=False):
    """A dataset file of three vector modalities whose rows show their class (4 classes)."""
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    centres = [g.random((4, k)) for k in DIMS]
    for split, n in (("train", n_train), ("test", n_test)):
        y = g.integers(0, 4, n)
        for i, (name, c) in enumerate(zip(names, centres)):
            k = (rows or {}).get((name, split), n)
            x = np.clip(c[y[:k]] + 0.1 * g.standard_normal((k, c.shape[1])), 0, 1).astype(np.float32)
            np.savez(d / f"{name}_{split}.npz", x=x, label=y[:k])
    mods = "".join(f"  - {{name: {'a' if dup and i == 1 else name}, train: {name}_train.npz, test: {name}_test.npz, "
                   f"networks: {{hidden: [16], scale: 0.05}}}}\n" for i, name in enumerate(names))
    (d / "data.yaml").write_text(f"labels: label\nlatent_dim: 4\nmodalities:\n{mods}")
    return d / "data.yaml"


@pytest.mark.parametrize("model", ["mvae", "mmvae", "mopoe", "mmjsd", "meme", "meme_mixture"])
def test_every_model_trains_and_evaluates_on_a_three_modality_dataset_file(tmp_path, capsys, model):
    import json

    from meme.cli import main

    data = three_modalities(tmp_path / "d")
    out = tmp_path / "run"
    extra = ["--meme-combine", "mixture", "--n-pseudo", "8"] if model == "meme_mixture" else []
    model = model.split("_")[0]
    assert main(["train", "--dataset", str(data), "--model", model, "--epochs", "2", "--batch-size", "32",
                 "--supervision", "0.5", "--observed", "random", "--p-observed", "0.6", "--out", str(out),
                 "--quiet", *extra]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    counts = {k: v for k, v in meta.items() if k.startswith("n_") and k != "n_parameters"}
    assert counts["n_paired"] >= 120 and {"n_observed_a+b", "n_observed_b+c"} <= set(counts)
    if model == "mmvae":   # no term for one modality: those examples are left out
        assert not any(f"n_observed_{m}" in meta for m in "abc") and sum(counts.values()) < 240
    else:
        assert {"n_observed_a", "n_observed_c"} <= set(counts) and sum(counts.values()) == 240
    assert main(["eval", "--checkpoint", str(out), "--out", str(tmp_path / "ev"), "--quiet", "--no-figures",
                 "--likelihood-k", "4"]) == 0
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    table = json.loads((tmp_path / "ev" / "coherence.json").read_text())
    assert sorted(table) == sorted(["a->b", "a->c", "b->a", "b->c", "c->a", "c->b", "a+b->c", "a+c->b", "b+c->a"])
    assert m["coherence_given_2"] == pytest.approx((table["a+b->c"] + table["a+c->b"] + table["b+c->a"]) / 3)
    assert m["coherence_given_1"] == pytest.approx(m["coherence_cross_mean"]) == pytest.approx(
        sum(v for k, v in table.items() if "+" not in k) / 6)
    assert m["coherence_given_2_to_c"] == pytest.approx(table["a+b->c"])
    for key in ("latent_acc_a", "latent_acc_b", "latent_acc_c", "latent_acc_joint", "coherence_joint",
                "w2_gap", "w2_gap_a_b", "w2_gap_a_c", "w2_gap_b_c", "loglik_a_given_b", "loglik_c_given_rest",
                "loglik_given_1", "loglik_given_2", "elbo_test"):
        assert key in m and math.isfinite(m[key]), key
    assert m["w2_gap"] == pytest.approx((m["w2_gap_a_b"] + m["w2_gap_a_c"] + m["w2_gap_b_c"]) / 3)
    assert m["latent_acc_joint"] > 0.5   # the classes are separable: the probe on the joint posterior sees them
    capsys.readouterr()


# ------------------------------------------------------------------ bad input
def _md5s(root):
    import hashlib

    return {p: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, argv, words", [
    ("one", [], ["modalities: must be a list of two or more modalities"]),
    ("dup", [], ["modalities[1].name: 'a' is the name of modalities[0] too; each modality needs its own name"]),
    ("rows", [], ["a_train.npz has 240 rows but", "b_train.npz has 200;", "the train tables need equal row counts"]),
    ("ok", ["--observed", "a+x"], ["observed 'a+x': unknown modality 'x'; valid: a, b, c, split, random"]),
    ("ok", ["--observed", "random", "--p-observed", "0"], ["p_observed=0.0 is outside (0, 1]"]),
    ("ok", ["--observed", "random", "--p-observed", "1.2"], ["p_observed=1.2 is outside (0, 1]"]),
    ("ok", ["--observed", "a:0,b+c:0"], ["the subset weights sum to 0; they must sum to a positive number"]),
    ("ok", ["--model", "meme", "--meme-combine", "sum"], ["unknown meme_combine 'sum'; valid: product, mixture"]),
    ("ok", ["--model", "meme", "--n-pseudo", "0"], ["n_pseudo=0 must be a positive integer"]),
    ("ok", ["--model", "mopoe", "--meme-combine", "mixture"],
     ["meme_combine='mixture' is a key of model meme only; model 'mopoe' has no such part"]),
    ("ok", ["--model", "mvae", "--no-meme-pseudo"], ["meme_pseudo=False is a key of model meme only"]),
    ("ok", ["--model", "meme", "--direction", "s_supervises_t"],
     ["direction='s_supervises_t' names one of two modalities' directions; with 3 modalities", "use 'both'"]),
])
def test_bad_m_modality_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, argv, words):
    from meme.cli import main

    d = tmp_path / "d"
    if case == "one":
        data = three_modalities(d)
        data.write_text("labels: label\nmodalities:\n  - {name: a, train: a_train.npz, test: a_test.npz}\n")
    else:
        data = three_modalities(d, rows={("b", "train"): 200} if case == "rows" else None, dup=case == "dup")
    before = _md5s(tmp_path)
    code = main(["train", "--dataset", str(data), "--epochs", "1", "--out", str(tmp_path / "run"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("meme: error: ") and all(w in err for w in words), err
    assert _md5s(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_study_metric_beyond_the_subsets_is_refused_naming_the_most(tmp_path, capsys):
    from orchestration import sweep

    data = three_modalities(tmp_path / "d")
    study = tmp_path / "s.yaml"
    study.write_text(f"description: x\nmetric: coherence_given_3\nmode: max\nepochs: 1\nbase: {{dataset: {data}, "
                     f"model: mvae}}\n")
    before = _md5s(tmp_path)
    assert sweep.main(["--study", str(study), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"sweep.py: error: {study}: metric: unknown metric 'coherence_given_3': the dataset "
                                f"has 3 modalities, so coherence is given 1 to 2 of them; valid: coherence_given_1, "
                                f"coherence_given_2"]
    assert _md5s(tmp_path) == before
    study.write_text(study.read_text().replace("given_3", "given_2"))
    assert sweep.main(["--study", str(study), "--dry-run"]) == 0


def test_the_polymnist_figure_puts_the_number_of_inputs_on_x_one_line_per_model(tmp_path):
    from orchestration.report import RunRecord, draw_figure, points_by_inputs
    from orchestration.study_schema import FigureSpec

    spec = FigureSpec(name="pm", x="inputs", y=("coherence_given_1", "coherence_given_2"), series=("model",))
    runs = [RunRecord(f"r{i}", "FINISHED", {"model": model, "seed": i % 2},
                      {"coherence_given_1": c1, "coherence_given_2": c2})
            for i, (model, c1, c2) in enumerate([("mvae", 0.5, 0.6), ("mvae", 0.7, 0.8), ("mopoe", 0.4, 0.9)])]
    pts = points_by_inputs(spec, runs)
    assert pts[("mopoe",)] == [(1, 0.4, 0.0, 1), (2, 0.9, 0.0, 1)]
    (k1, m1, s1, n1), (k2, m2, s2, n2) = pts[("mvae",)]
    assert (k1, n1, k2, n2) == (1, 2, 2, 2) and (m1, m2) == pytest.approx((0.6, 0.7))
    assert s1 == pytest.approx(math.sqrt(0.02)) and s2 == pytest.approx(math.sqrt(0.02))   # std over the 2 seeds
    path = draw_figure(spec, runs, tmp_path)
    assert path == tmp_path / "pm.png" and path.stat().st_size > 1000
    with pytest.raises(Exception, match="unknown config key 'input'; valid: inputs"):
        FigureSpec(name="pm", x="input", y=("coherence_given_1",))


def test_a_study_on_three_modalities_runs_through_sweep_and_reports_coherence_by_inputs(tmp_path, capsys, ray_session):
    import io
    from contextlib import redirect_stdout

    from orchestration import report, sweep, tracking

    data = three_modalities(tmp_path / "d")
    study = tmp_path / "three.yaml"
    study.write_text(f"""\
description: every model on three modalities, tiny
base: {{dataset: {data}, batch_size: 32, observed: random, supervision: 0.5}}
grid:
  - model: [meme]
    meme_combine: [product, mixture]
    n_pseudo: [8]
  - model: [mvae, mmvae, mopoe, mmjsd]
metric: coherence_given_2
mode: max
epochs: 1
resources: {{cpu: 1}}
eval: {{n_latent_train: 120, n_joint: 50, likelihood_k: 0, n_tsne: 0}}
report:
  figures:
    - {{name: by_inputs, x: inputs, y: [coherence_given_1, coherence_given_2], series: [model]}}
""")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with redirect_stdout(io.StringIO()):
        rc = sweep.main(["--study", str(study), "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    client = tracking.client_for(uri)
    exp = client.get_experiment_by_name("three")
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(tracking.TAG_ROLE) != "study"]
    assert sorted((r.data.params["model"], r.data.params["meme_combine"]) for r in runs) == [
        ("meme", "mixture"), ("meme", "product"), ("mmjsd", ""), ("mmvae", ""), ("mopoe", ""), ("mvae", "")]
    for r in runs:
        assert r.info.status == "FINISHED"
        m = r.data.metrics
        assert 0 <= m["coherence_given_1"] <= 1 and 0 <= m["coherence_given_2"] <= 1 and "latent_acc_joint" in m
    with redirect_stdout(io.StringIO()):
        assert report.main(["--study", str(study), "--tracking-uri", uri, "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "by_inputs.png").stat().st_size > 1000
    capsys.readouterr()


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_the_evaluation_runs_its_networks_at_the_precision_it_is_given(precision, dtype):
    from meme.eval import EvalConfig, evaluate

    names = ("m0", "m1", "m2")
    train = PairedData.from_tables({n: torch.rand(64, d) for n, d in zip(names, DIMS)}, torch.arange(64) % 3)
    test = PairedData.from_tables({n: torch.rand(32, d) for n, d in zip(names, DIMS)}, torch.arange(32) % 3)
    model = models_for(MoPoE, 3)
    seen = []
    model.mods[2].dec.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    judges = {n: torch.nn.Linear(d, 3) for n, d in zip(names, DIMS)}
    metrics, _ = evaluate(model, train, test, judges, EvalConfig(device="cpu", precision=precision, likelihood_k=0,
                                                                 n_joint=16, n_tsne=0), figures=False)
    assert seen and set(seen) == {dtype} and 0 <= metrics["coherence_given_2"] <= 1
    with pytest.raises(MemeError, match="unknown precision 'fp16'; valid: auto, fp32, bf16"):
        EvalConfig(precision="fp16")
