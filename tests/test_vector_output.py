"""Vector modalities learn to be generated: the decoder's output follows the data (``vector_output``).

The same real MNIST pixels declared as flat vectors of 784 and as 1 x 28 x 28 images must reach the same
coherence into that modality at an equal budget. Before ``vector_output``, the vector decoder had an
unbounded identity output under a fixed-scale Laplace likelihood: it learned the per-pixel median
(blank digits), and generation into the vector modality stayed at chance (0.12 against 0.45 for the
images at this budget).

With the same networks (the images given the published MNIST networks, ``preset: mnist``, which are the
published family's networks for 784-vectors) the two declarations reach the same coherence within 0.05.
With the default networks the images get a conv net with BatchNorm, which learns faster than the
published MNIST MLP; that gap is the networks', and is measured below.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meme.models import TrainConfig
from meme.data.dataset_file import feature_stats, read_dataset_file
from meme.data.mnist_svhn import load_mnist
from meme.data.paired import write_array_table
from meme.dists import laplace_log_prob, normal_log_prob_fixed
from meme.eval import EvalConfig
from meme.eval.classifiers import predict
from meme.eval.table_classifiers import table_classifiers
from meme.errors import MemeError
from meme.nets.mnist import MNISTModality, PublishedMNISTModality
from meme.nets.shaped import PublishedVectorModality, VectorModality
from meme.train import Trainer

N_TRAIN, N_TEST = 12000, 2000


def _dataset(tmp, kind: str, arrays, networks: str = "", stem: str | None = None) -> str:
    for split, (x, other, y) in arrays.items():
        digit = x.reshape(len(x), -1) if kind == "vector" else x[:, None]
        write_array_table(tmp / f"digit_{kind}_{split}.parquet", digit, y)
        write_array_table(tmp / f"other_{split}.parquet", other[:, None], y)
    stem = stem or kind
    path = tmp / f"{stem}.yaml"
    path.write_text(f"name: digits_{stem}\nlabels: label\nmodalities:\n"
                    f"  - {{name: digit, train: digit_{kind}_train.parquet, test: digit_{kind}_test.parquet{networks}}}\n"
                    f"  - {{name: other, train: other_train.parquet, test: other_test.parquet}}\n")
    return str(path)


@pytest.mark.slow
def test_mnist_as_vectors_is_generated_as_well_as_mnist_as_images(real_mnist_dir, tmp_path):
    """With the same networks (``preset: mnist`` on the images), generation into the digit reaches the same
    coherence within 0.05 whether its pixels are declared as vectors or as images, reconstructions of the same
    pixels judged by one judge (the image declaration's conv classifier) are recognised about as often under both
    declarations, and generation into the vector modality leaves chance. (The default networks' comparison, a conv
    net with BatchNorm for the images, is measured below and left out of the tests for its time.)"""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        x, y = load_mnist(real_mnist_dir, split, download=False)
        x, y = x[:n].numpy(), y[:n].numpy()
        partner = np.empty(n, dtype=np.int64)   # the other modality: another instance of the same digit
        for c in range(10):
            members = np.flatnonzero(y == c)
            partner[members] = rng.permutation(members)
        arrays[split] = (x, x[partner], y)
    torch.set_num_threads(2)
    files = {"vector": _dataset(tmp_path, "vector", arrays),
             "image_mnist_nets": _dataset(tmp_path, "image", arrays, ", networks: {preset: mnist}", "image_mnist_nets")}
    judge = table_classifiers(read_dataset_file(files["image_mnist_nets"]))["digit"][0]
    x_test = torch.from_numpy(arrays["test"][0]).float().div(255.0)
    y_test = torch.from_numpy(arrays["test"][2])
    coherence, recognised = {}, {}
    for kind, path in files.items():
        cfg = TrainConfig(dataset=path, model="meme", epochs=3, max_test_pairs=N_TEST, max_train_pairs=10000, seed=0,
                          precision="fp32", device="cpu")
        if kind == "vector":
            assert read_dataset_file(path).resolved()[0].vector_output(cfg.vector_output) == "sigmoid"
        tr = Trainer(cfg)
        for _ in tr.epochs():
            pass
        metrics, _ = tr.evaluator(EvalConfig(n_latent_train=2000, n_joint=0, likelihood_k=0, elbo=False, n_tsne=0,
                                            device="cpu"))
        coherence[kind] = metrics["coherence_other_to_digit"]
        tr.model.eval()
        with torch.no_grad():
            rows = x_test.reshape(len(x_test), -1) if kind == "vector" else x_test[:, None]
            if kind == "image_mnist_nets":
                assert isinstance(tr.model.mods[0], PublishedMNISTModality)
            recon = tr.model.decode(tr.model.encode(rows, "digit")[0], "digit")
        recognised[kind] = (predict(judge, recon.reshape(-1, 1, 28, 28)).cpu() == y_test).float().mean().item()
    # the same networks, declared two ways: measured here 0.407 (vector) and 0.385 (image, preset: mnist); the
    # other direction, judged by the same judge in both, 0.332 in both
    assert abs(coherence["vector"] - coherence["image_mnist_nets"]) <= 0.05, coherence
    # one judge for both: the same networks' reconstructions are recognised alike
    assert abs(recognised["vector"] - recognised["image_mnist_nets"]) <= 0.10, recognised
    # default networks (images: a conv net with BatchNorm), measured here (2 threads): recognised 0.49 (vector) and
    # 0.57 (image), 0.16 for the vector before the fix; coherence into the digit 0.42 (vector) and 0.53 (image), 0.12
    # before. What is left between the two is the networks (the published MNIST MLP against a conv net with
    # BatchNorm), not the likelihood nor the judge: per
    # epoch (1..6, same data and seed) the coherence is 0.28 0.36 0.41 0.47 0.50 0.55 (vector) and 0.12 0.18 0.44
    # 0.65 0.69 0.71 (image), and each model's generations are judged alike by the vector judge (an MLP) and the
    # image judge (a conv net), within 0.04 at every epoch. A longer budget does not close it: at epochs 9..12 the
    # vector reaches 0.67 0.65 0.66 0.67 and the image 0.78 0.79 0.79 0.80 (12,000 training images, seed 0).
    assert recognised["vector"] > 0.3 and coherence["vector"] > 0.3, (recognised, coherence)


def _seeded(cls, **kw):
    torch.manual_seed(0)
    return cls(16, **kw)


@pytest.mark.parametrize("vector_cls, mnist_cls", [(PublishedVectorModality, PublishedMNISTModality),
                                                   (VectorModality, MNISTModality)])
def test_the_mnist_preset_is_the_families_784_vector_network_on_images(vector_cls, mnist_cls):
    """``preset: mnist`` on 1 x 28 x 28 rows builds the same model as ``kind: vector`` on the 784 flat pixels
    (published family: the published MNIST networks; appendix_k: hidden 400): same parameters from the same
    seed, same posteriors, same decoded pixels and same log-likelihoods."""
    hidden = None if vector_cls.published else [400]
    vec = _seeded(vector_cls, shape=(784,), output="sigmoid", name="digit", hidden=hidden)
    img = _seeded(mnist_cls, shape=(1, 28, 28), name="digit", scale=0.75)
    vec.llik_scale = 0.75
    assert [p.shape for p in vec.parameters()] == [p.shape for p in img.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(vec.parameters(), img.parameters()))
    assert img.name == "digit" and img.sigma_rule == vec.sigma_rule and img.sigma_floor == vec.sigma_floor
    x = torch.rand(5, 1, 28, 28)
    for a, b in zip(vec.encode(x.flatten(1)), img.encode(x)):
        assert torch.equal(a, b)
    z = torch.randn(5, 16)
    assert torch.equal(vec.decode(z), img.decode(z).flatten(1))
    assert torch.equal(vec.log_likelihood(x.flatten(1), vec.decode(z)), img.log_likelihood(x, img.decode(z)))


def test_the_mnist_networks_refuse_what_does_not_apply_in_one_line():
    with pytest.raises(MemeError, match=r"take \(1, 28, 28\) images, got rows of shape \(3, 28, 28\)"):
        PublishedMNISTModality(8, shape=(3, 28, 28))
    with pytest.raises(MemeError, match="channels and hidden do not apply"):
        MNISTModality(8, channels=16)
    with pytest.raises(MemeError, match="unknown likelihood 'poisson'"):
        PublishedMNISTModality(8, likelihood="poisson")
    # the built-in MNIST modality is unchanged: name, Laplace with the run's scale
    mod = PublishedMNISTModality(8, None, 0.75)
    assert mod.name == "mnist" and mod.likelihood == "laplace" and mod.llik_scale == 0.75


def test_the_mnist_preset_on_rows_of_another_shape_is_one_line(tmp_path):
    y = np.arange(20) % 10
    write_array_table(tmp_path / "a.parquet", np.zeros((20, 1, 32, 32), np.uint8), y)
    write_array_table(tmp_path / "b.parquet", np.zeros((20, 5), np.float32), y)
    (tmp_path / "d.yaml").write_text("modalities:\n"
                                     "  - {name: a, train: a.parquet, test: a.parquet, networks: {preset: mnist}}\n"
                                     "  - {name: b, train: b.parquet, test: b.parquet}\n")
    with pytest.raises(MemeError, match=r"preset: mnist takes rows of shape \(1, 28, 28\), but 'a' has \(1, 32, 32\)"):
        read_dataset_file(tmp_path / "d.yaml").load("train")


def test_vector_decoder_output_follows_the_data_range():
    z = torch.randn(5, 8)
    sig = PublishedVectorModality(8, shape=(784,), output="sigmoid")
    out = sig.decode(z)
    assert out.min() > 0 and out.max() < 1
    # for D = 784 the published family with a sigmoid is the published MNIST decoder: L-512-512-784, sigmoid
    assert [type(m).__name__ for m in sig.dec] == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "Sigmoid"]
    lin = VectorModality(8, shape=(3,), output="linear")
    assert type(lin.dec[-1]).__name__ == "Linear"


def test_standardized_vectors_decode_in_data_units_and_score_per_feature_scale():
    rows = torch.tensor([[1.0, 100.0, 5.0], [3.0, 300.0, 5.0]])
    mean, std = feature_stats(rows)
    assert torch.equal(mean, torch.tensor([2.0, 200.0, 5.0]))
    assert torch.equal(std, torch.tensor([1.0, 100.0, 1.0]))   # the constant feature gets spread 1
    mod = VectorModality(4, shape=(3,), output="standardized", mean=mean, std=std, scale=0.5)
    z = torch.randn(2, 4)
    raw = mod.dec(z)
    assert torch.allclose(mod.decode(z), mean + std * raw)
    # the encoder reads standardised rows
    h = mod.enc_hidden((rows - mean) / std)
    assert torch.allclose(mod.encode(rows)[0], mod.enc_mu(h))
    # Laplace with scale 0.5 * std per feature, by hand
    x, loc = rows, mod.decode(z)
    b = 0.5 * std
    hand = (-(x - loc).abs() / b - torch.log(2 * b)).sum(-1)
    assert torch.allclose(mod.log_likelihood(x, loc), hand)
    g = VectorModality(4, shape=(3,), output="standardized", mean=mean, std=std, scale=0.5, likelihood="gaussian")
    hand_g = (-0.5 * ((x - loc) / b) ** 2 - b.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(g.log_likelihood(x, loc), hand_g)
    # the statistics are buffers: a checkpoint carries them
    assert {"x_mean", "x_std"} <= set(mod.state_dict())


def test_a_number_scale_gives_the_same_values_as_before():
    """The scale is now a host-side 0-dim tensor (no copy to the device per call); the values are unchanged."""
    g = torch.Generator().manual_seed(0)
    x, loc = torch.rand(4, 1, 28, 28, generator=g), torch.rand(4, 1, 28, 28, generator=g)
    scale = torch.as_tensor(0.75, dtype=loc.dtype, device=loc.device)
    before = (-(x - loc).abs() / scale - torch.log(2.0 * scale)).flatten(1).sum(-1)
    assert torch.equal(laplace_log_prob(x, loc, 0.75, 3), before)
    assert torch.equal(normal_log_prob_fixed(x, loc, 0.75, 3),
                       (-0.5 * ((x - loc) / 0.75) ** 2 - math.log(0.75) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(-1))


def test_stored_configs_without_vector_output_keep_the_linear_decoder():
    cfg = TrainConfig.from_stored({"model": "meme"})
    assert cfg.vector_output == "linear"
    assert TrainConfig().vector_output == "auto"
