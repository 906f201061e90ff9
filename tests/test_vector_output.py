"""Vector modalities learn to be generated: the decoder's output follows the data (``vector_output``).

The same real MNIST pixels declared as flat vectors of 784 and as 1 x 28 x 28 images must reach the same
coherence into that modality at an equal budget. Before ``vector_output``, the vector decoder had an
unbounded identity output under a fixed-scale Laplace likelihood: it learned the per-pixel median
(blank digits), and generation into the vector modality stayed at chance (0.12 against 0.45 for the
images at this budget).
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
from meme.nets.shaped import PublishedVectorModality, VectorModality
from meme.train import Trainer

N_TRAIN, N_TEST = 12000, 2000


def _dataset(tmp, kind: str, arrays) -> str:
    for split, (x, other, y) in arrays.items():
        digit = x.reshape(len(x), -1) if kind == "vector" else x[:, None]
        write_array_table(tmp / f"digit_{kind}_{split}.parquet", digit, y)
        write_array_table(tmp / f"other_{split}.parquet", other[:, None], y)
    path = tmp / f"{kind}.yaml"
    path.write_text(f"name: digits_{kind}\nlabels: label\nmodalities:\n"
                    f"  - {{name: digit, train: digit_{kind}_train.parquet, test: digit_{kind}_test.parquet}}\n"
                    f"  - {{name: other, train: other_train.parquet, test: other_test.parquet}}\n")
    return str(path)


@pytest.mark.slow
def test_mnist_as_vectors_is_generated_as_well_as_mnist_as_images(real_mnist_dir, tmp_path):
    """Reconstructions of the same pixels, judged by one judge (the image declaration's conv classifier), are
    recognised as often under both declarations, and generation into the vector modality leaves chance."""
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
    files = {kind: _dataset(tmp_path, kind, arrays) for kind in ("vector", "image")}
    judge = table_classifiers(read_dataset_file(files["image"]))["digit"][0]
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
            recon = tr.model.decode(tr.model.encode(rows, "digit")[0], "digit")
        recognised[kind] = (predict(judge, recon.reshape(-1, 1, 28, 28)).cpu() == y_test).float().mean().item()
    # measured here (2 threads): recognised 0.49 (vector) and 0.57 (image), 0.16 for the vector before the fix;
    # coherence into the digit 0.42 (vector) and 0.53 (image), 0.12 before. What is left between the two is the
    # networks (the published MNIST MLP against a conv net with BatchNorm), not the likelihood nor the judge: per
    # epoch (1..6, same data and seed) the coherence is 0.28 0.36 0.41 0.47 0.50 0.55 (vector) and 0.12 0.18 0.44
    # 0.65 0.69 0.71 (image), and each model's generations are judged alike by the vector judge (an MLP) and the
    # image judge (a conv net), within 0.04 at every epoch. A longer budget does not close it: at epochs 9..12 the
    # vector reaches 0.67 0.65 0.66 0.67 and the image 0.78 0.79 0.79 0.80 (12,000 training images, seed 0).
    assert abs(recognised["vector"] - recognised["image"]) <= 0.10, recognised
    assert recognised["vector"] > 0.3 and coherence["vector"] > 0.3, (recognised, coherence)


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
