"""CUB networks (appendix K), the caption likelihood, MEME's caption pseudo-samples, and training on CUB."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from meme.models import TrainConfig
from meme.features.cub_files import read_captions, read_cub_images, write_synthetic_cub
from meme.errors import MemeError
from meme.features.captions import CaptionSettings, build_caption_store, write_standin_images
from meme.features.text import FastTextSettings
from meme.models.meme import MEME
from meme.nets import FAMILIES
from meme.nets.cub import CUBCaptionModality, CUBImageModality


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cub = write_synthetic_cub(tmp_path_factory.mktemp("cub"), per_class=4)
    images = read_cub_images(cub)
    out = tmp_path_factory.mktemp("store")
    build_caption_store(images, read_captions(cub, images), out, "classes",
                        CaptionSettings(fasttext=FastTextSettings(dim=16, epochs=2, bucket=1000)), progress=False)
    write_standin_images(out)
    return out


def _layers(seq, kind):
    return [m for m in seq if isinstance(m, kind)]


def test_image_feature_networks_follow_the_table():
    m = CUBImageModality(latent_dim=16)
    assert FAMILIES["appendix_k"]["cub_image"] is CUBImageModality
    assert [(l.in_features, l.out_features) for l in _layers(m.enc, nn.Linear)] == [(2048, 1024), (1024, 512), (512, 256)]
    assert len(_layers(m.enc, nn.ELU)) == 3
    assert (m.enc_mu.in_features, m.enc_mu.out_features) == (m.enc_sigma.in_features, m.enc_sigma.out_features) == (256, 16)
    assert [(l.in_features, l.out_features) for l in _layers(m.dec, nn.Linear)] == [(16, 256), (256, 512), (512, 1024), (1024, 2048)]
    assert len(_layers(m.dec, nn.ELU)) == 3 and isinstance(m.dec[-1], nn.Linear)   # no activation on the location
    x = torch.rand(5, 2048)
    mu, sigma = m.encode(x)
    assert mu.shape == sigma.shape == (5, 16) and (sigma > 1e-3).all()
    loc = m.decode(torch.randn(3, 5, 16))
    assert loc.shape == (3, 5, 2048)
    # Laplace log-likelihood with the fixed scale, by hand
    s = CUBImageModality(latent_dim=16, llik_scale=0.5)
    expected = (-(x - loc[0]).abs() / 0.5 - torch.log(torch.tensor(1.0))).sum(-1)
    assert torch.allclose(s.log_likelihood(x, loc[0]), expected, rtol=1e-5)


def test_caption_networks_follow_the_table():
    m = CUBCaptionModality(latent_dim=16, vocab_size=50)
    assert FAMILIES["appendix_k"]["cub_caption"] is CUBCaptionModality
    convs = _layers(m.enc, nn.Conv2d)
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (32, (4, 4), (2, 2), (1, 1)), (64, (4, 4), (2, 2), (1, 1)), (128, (4, 4), (2, 2), (1, 1)),
        (256, (1, 4), (1, 2), (0, 1)), (512, (1, 4), (1, 2), (0, 1))]
    assert len(_layers(m.enc, nn.BatchNorm2d)) == 5 and len(_layers(m.enc, nn.ReLU)) == 5
    assert (m.enc_mu.kernel_size, m.enc_mu.out_channels) == ((4, 4), 16)
    ups = _layers(m.dec, nn.ConvTranspose2d)
    assert [(u.out_channels, u.kernel_size, u.stride, u.padding) for u in ups] == [
        (512, (4, 4), (1, 1), (0, 0)), (256, (1, 4), (1, 2), (0, 1)), (128, (1, 4), (1, 2), (0, 1)),
        (64, (4, 4), (2, 2), (1, 1)), (32, (4, 4), (2, 2), (1, 1)), (1, (4, 4), (2, 2), (1, 1))]
    assert m.embedding.weight.shape == (50, 128)
    tokens = torch.randint(0, 50, (6, 32))
    h = m.enc(m.embed(tokens).unsqueeze(1))
    assert h.shape == (6, 512, 4, 4)
    mu, sigma = m.encode(tokens)
    assert mu.shape == sigma.shape == (6, 16)
    z = torch.randn(2, 6, 16)
    logits = m.decode(z)
    assert logits.shape == (2, 6, 32, 50)
    # the output layer is the transposed word embedding (shared, not a separate weight) plus a bias
    m.eval()
    hid = m.dec(z[0][:, :, None, None]).squeeze(1)
    assert torch.allclose(m.decode(z[0]), hid @ m.embedding.weight.t() + m.out_bias, atol=1e-5)
    assert not any(p.shape == (50, 128) for n, p in m.named_parameters() if n != "embedding.weight")
    with pytest.raises(MemeError, match="embedding_dim=100 must be a power of two >= 128"):
        CUBCaptionModality(embedding_dim=100)
    assert _layers(CUBCaptionModality(embedding_dim=256).enc, nn.Conv2d)[-1].out_channels == 512


def test_caption_encoder_takes_ids_or_probabilities():
    m = CUBCaptionModality(latent_dim=8, vocab_size=30).eval()
    tokens = torch.randint(0, 30, (4, 32))
    onehot = m.pseudo_input(tokens)
    assert onehot.shape == (4, 32, 30) and onehot.dtype == torch.float32 and torch.equal(onehot.argmax(-1), tokens)
    assert m.pseudo_shape == (32, 30)
    assert torch.equal(m.embed(onehot), m.embed(tokens))
    a, b = m.encode(tokens), m.encode(onehot)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    soft = torch.softmax(torch.randn(4, 32, 30), -1)
    assert torch.allclose(m.embed(soft), soft @ m.embedding.weight)
    with pytest.raises(MemeError, match="caption probabilities have 7 classes, the vocabulary has 30"):
        m.embed(torch.rand(4, 32, 7))


def test_caption_likelihood_ignores_padding_by_hand():
    m = CUBCaptionModality(latent_dim=8, vocab_size=6, pad_index=1)
    logits = torch.randn(3, 2, 32, 6)                  # (samples, batch, T, V)
    tokens = torch.randint(2, 6, (2, 32))
    tokens[0, 10:] = 1
    tokens[1, 31] = 1
    lp = m.log_likelihood(tokens, logits)
    assert lp.shape == (3, 2)
    for s in range(3):
        for b in range(2):
            expected = sum(float(torch.log_softmax(logits[s, b, t], -1)[tokens[b, t]]) for t in range(32) if tokens[b, t] != 1)
            assert abs(float(lp[s, b]) - expected) < 1e-4
    # a pad position contributes nothing whatever its logits say
    logits2 = logits.clone()
    logits2[:, 0, 20] = torch.randn(6) * 50
    assert torch.allclose(m.log_likelihood(tokens, logits2)[:, 0], lp[:, 0])


def test_meme_pseudo_samples_of_captions_are_one_hot_training_captions(store):
    from meme.models import build_model
    from meme.train import Trainer

    cfg = _small(store, n_pseudo=5, observed="cub_image")
    tr = Trainer(cfg)
    u = tr.model.pseudo[1].detach()
    V = tr.model.mods[1].vocab_size
    assert u.shape == (5, 32, V) and torch.equal(u.sum(-1), torch.ones(5, 32))
    rows = {tuple(r.tolist()) for r in tr.train_data.tables[1]}
    assert all(tuple(r.tolist()) in rows for r in u.argmax(-1))
    # image-only batch: the caption pseudo-samples and encoder learn, the caption decoder does not
    from meme.data.batch import gather

    model = build_model(cfg, tr.model.mods, tr.train_data, tr.observation)
    batch = gather(tr.train_data, tr.observation.s_only[:8], (True, False), "cpu")
    loss, _ = model.loss(batch)
    loss.backward()
    assert model.pseudo[1].grad is not None and model.pseudo[1].grad.abs().sum() > 0
    assert all(p.grad is None or not p.grad.any() for n, p in model.mods[1].named_parameters()
               if n.startswith("dec.") or n == "out_bias")
    with pytest.raises(MemeError, match=r"expected \(5, 32, 20\)"):
        MEME((CUBImageModality(8), CUBCaptionModality(8, vocab_size=20)), n_pseudo=5,
             pseudo_init=(torch.rand(5, 2048), torch.rand(5, 32)))


def _small(store, **kw):
    base = dict(dataset="cub", features_dir=str(store), latent_dim=8, K=1, n_pseudo=4, epochs=1, batch_size=12,
                max_train_pairs=24, supervision=0.5, device="cpu", llik_scale=10.0)
    return TrainConfig(**{**base, **kw})


def test_meme_trains_on_cub_under_each_partial_observation_scheme(store):
    from meme.train import Trainer

    n, half = 24, 12
    expected = {"cub_caption": (0, half), "cub_image": (half, 0), "split": (6, 6)}
    for observed, (s_only, t_only) in expected.items():
        tr = Trainer(_small(store, observed=observed))
        counts = tr.observation.counts()
        assert (counts["paired"], counts["s_only"], counts["t_only"]) == (n - half, s_only, t_only)
        kinds = {observed for _, observed in tr.loader.plan(1)}
        assert kinds == {(True, True), *([(True, False)] if s_only else []), *([(False, True)] if t_only else [])}
        m = tr.run_epoch()
        assert torch.isfinite(torch.tensor(m["loss"]))
        assert tr.train_data.names == ("cub_image", "cub_caption") and tr.train_data.tables[1].dtype == torch.int64


@pytest.mark.parametrize("model", ["mvae", "mmvae"])
def test_baselines_train_on_cub(store, model):
    from meme.train import Trainer

    tr = Trainer(_small(store, model=model, observed="split", max_train_pairs=16, batch_size=16))
    assert torch.isfinite(torch.tensor(tr.run_epoch()["loss"]))


def test_cli_train_on_cub(store, tmp_path, capsys):
    from meme.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--dataset", "cub", "--features-dir", str(store), "--latent-dim", "8", "--K", "1",
               "--n-pseudo", "4", "--epochs", "1", "--batch-size", "8", "--max-train-pairs", "8", "--observed",
               "cub_caption", "--device", "cpu", "--out", str(out), "--quiet"])
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["features_dir"] == str(store)
    # meme eval adds CUB's correlation under CCA and the caption examples to the suite's output
    ev = tmp_path / "eval"
    rc = main(["eval", "--checkpoint", str(out), "--out", str(ev), "--quiet", "--likelihood-k", "0", "--n-joint", "0",
               "--n-tsne", "0", "--n-grid", "3", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((ev / "metrics.json").read_text())
    from meme.eval.cca import cub_cca_metrics, fit_cub_cca
    from meme.runs import load_run
    from meme.features.store import read_sentence_embedder

    model, _, train, test = load_run(out)
    embedder = read_sentence_embedder(store)
    direct = cub_cca_metrics(model, train, test, embedder, cca=fit_cub_cca(train, embedder))
    for k, v in direct.items():
        assert metrics[k] == pytest.approx(v, rel=1e-9), k
    assert "coherence_cub_image_to_cub_caption" not in metrics and "w2_gap" in metrics
    table = (ev / "caption_examples.md").read_text()
    assert table.count("\n| ") >= 2 * 3 and (ev / "caption_examples.png").stat().st_size > 0
    rc = main(["train", "--dataset", "cub", "--features-dir", str(tmp_path / "nothing"), "--epochs", "1",
               "--out", str(tmp_path / "r2"), "--quiet"])
    assert rc == 2 and "no CUB feature table at" in capsys.readouterr().err


def test_cli_features(tmp_path, capsys):
    from meme.cli import main

    cub = write_synthetic_cub(tmp_path / "cub", per_class=2)
    out = tmp_path / "store"
    rc = main(["features", "captions", "--captions", str(cub / "text_testclasses.txt"), "--split", "random",
               "--out", str(out), "--epochs", "1", "--dim", "8", "--quiet"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["captions"] == 60
    assert main(["features", "standin-images", "--out", str(out)]) == 0
    assert main(["features", "info", "--out", str(out)]) == 0
    info = capsys.readouterr().out
    assert "images.parquet: 6 rows" in info and '"standin": true' in info
    assert main(["features", "images", "--cub-dir", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert "no CUB-200-2011 folder at" in capsys.readouterr().err
    assert main(["features", "captions", "--captions", str(cub / "text_testclasses.txt"), "--out", str(out)]) == 2
    assert "no training captions under the 'classes' split" in capsys.readouterr().err


def test_trials_evaluate_cub_with_the_cca(store):
    """Every run's evaluation goes through its Evaluator, which adds CUB's CCA scores."""
    from meme.eval.cca import cub_cca_metrics, fit_cub_cca
    from meme.features.store import read_sentence_embedder
    from meme.train import Trainer
    from meme.eval import EvalConfig

    tr = Trainer(_small(store, observed="split", max_train_pairs=0, batch_size=64))  # all pairs: the probe needs several classes
    tr.run_epoch()
    tr.evaluator.classifiers = {}
    metrics, _ = tr.evaluator(EvalConfig(likelihood_k=0, n_joint=0, n_tsne=0, seed=3))
    embedder = read_sentence_embedder(store)
    direct = cub_cca_metrics(tr.model, tr.train_data, tr.test_data, embedder,
                             cca=fit_cub_cca(tr.train_data, embedder), seed=3)
    assert set(direct) <= set(metrics)
    for k, v in direct.items():
        assert metrics[k] == pytest.approx(v, rel=1e-9), k


def test_cub_cca_is_refitted_for_other_training_pairs_of_the_same_size(store):
    """The CCA cache is keyed by the training pairs themselves: two random subsets of equal size (as
    max_train_pairs with different data seeds gives) each get the CCA fitted on their own pairs."""
    from meme.eval import EvalConfig
    from meme.eval.cca import cub_cca_metrics, fit_cub_cca
    from meme.eval.datasets import dataset_evaluation
    from meme.features.store import read_sentence_embedder
    from meme.train import Trainer

    tr = Trainer(_small(store, observed="split", max_train_pairs=0, batch_size=64))
    embedder = read_sentence_embedder(store)
    n = len(tr.train_data) // 2
    for seed in (0, 1):
        sub = tr.train_data.sample(n, seed)
        metrics, _ = dataset_evaluation(tr.cfg, tr.model, sub, tr.test_data, EvalConfig(seed=3))
        direct = cub_cca_metrics(tr.model, sub, tr.test_data, embedder, cca=fit_cub_cca(sub, embedder), seed=3)
        assert metrics == pytest.approx(direct, rel=1e-9)
