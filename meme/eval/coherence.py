"""Cross-coherence, coherence given a subset, and joint coherence (paper §4.1, after Shi et al. 2019; for M
modalities, Sutter et al. 2021's PolyMNIST convention).

Cross-coherence a -> b: encode x_a with a's unimodal encoder, take z ~ q(z | x_a) (or its mean), decode
with b's decoder, classify the output with b's digit classifier, and compare with x_a's label.

Coherence given a subset S -> t (t not in S): z from the model's posterior given S (``model.fuse`` of the
``model.expert`` of each modality in S: a product for MVAE and MoPoE, a mixture for MMVAE and mmJSD), decoded
into t and judged by t's classifier. With |S| = 1 it is cross-coherence.

Joint coherence: decode prior samples ``model.sample_prior(n)`` into every modality and count how often
all the classifiers agree.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from meme.eval.latents import Encoded


def latent_sample(mu: Tensor, sigma: Tensor, use_mean: bool) -> Tensor:
    return mu if use_mean else mu + sigma * torch.randn_like(mu)


@torch.no_grad()
def cross_predictions(model, enc: Encoded, src: int, dst: int, classifier: nn.Module, batch_size: int, device,
                      use_mean: bool = False) -> Tensor:
    """Labels the ``dst`` classifier gives to the ``dst`` decodings of every ``src`` latent in ``enc``."""
    out = []
    for start in range(0, len(enc), batch_size):
        mu = enc.mu[src][start:start + batch_size].to(device)
        sigma = enc.sigma[src][start:start + batch_size].to(device)
        x = model.decode(latent_sample(mu, sigma, use_mean), dst).float()
        out.append(classifier(x).argmax(-1).cpu())
    return torch.cat(out)


def cross_coherence(model, enc: Encoded, src: int, dst: int, classifier: nn.Module, batch_size: int, device,
                    use_mean: bool = False) -> float:
    """Fraction of ``src`` examples whose cross-generation into ``dst`` is classified as their label."""
    pred = cross_predictions(model, enc, src, dst, classifier, batch_size, device, use_mean)
    return float((pred == enc.labels).float().mean())


@torch.no_grad()
def subset_coherence(model, enc: Encoded, subsets, classifiers: dict[int, nn.Module], batch_size: int,
                     device, use_mean: bool = False) -> dict[tuple[tuple[int, ...], int], float]:
    """Coherence S -> t for every subset S of ``subsets`` and every t outside S that has a classifier, over the
    examples of ``enc`` (``encode_pairs`` with ``experts``: each modality's expert, encoded once): batch by batch,
    each subset fused once."""
    M = len(enc.mu)
    correct: dict = {}
    for start in range(0, len(enc), batch_size):
        rows = slice(start, start + batch_size)
        labels = enc.labels[rows].to(device)
        experts = [tuple(v[rows].to(device) for v in enc.expert(m)) for m in range(M)]
        for S in subsets:
            targets = [t for t in range(M) if t not in S and t in classifiers]
            if not targets:
                continue
            z = model.sample_fused(*model.fuse([experts[m] for m in S]), use_mean)
            for t in targets:
                pred = classifiers[t](model.decode(z, t).float()).argmax(-1)
                correct[(S, t)] = correct.get((S, t), 0) + int((pred == labels).sum())
    return {k: v / len(enc) for k, v in correct.items()}


@torch.no_grad()
def joint_coherence(model, classifiers: tuple[nn.Module, ...], n: int, batch_size: int) -> float:
    """Fraction of prior samples whose decodings in every modality get the same predicted label."""
    agree = 0
    for start in range(0, n, batch_size):
        z = model.sample_prior(min(batch_size, n - start))
        preds = [classifiers[m](model.decode(z, m).float()).argmax(-1) for m in range(len(classifiers))]
        same = preds[0] == preds[1]
        for p in preds[2:]:
            same = same & (p == preds[0])
        agree += int(same.sum())
    return agree / n
