"""Cross-coherence and joint coherence (paper §4.1, after Shi et al. 2019).

Cross-coherence a -> b: encode x_a with a's unimodal encoder, take z ~ q(z | x_a) (or its mean), decode
with b's decoder, classify the output with b's digit classifier, and compare with x_a's label.

Joint coherence: decode prior samples ``model.sample_prior(n)`` into both modalities and count how often
the two classifiers agree.
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
def joint_coherence(model, classifiers: tuple[nn.Module, nn.Module], n: int, batch_size: int) -> float:
    """Fraction of prior samples whose decodings in the two modalities get the same predicted label."""
    agree = 0
    for start in range(0, n, batch_size):
        z = model.sample_prior(min(batch_size, n - start))
        preds = [classifiers[m](model.decode(z, m).float()).argmax(-1) for m in range(2)]
        agree += int((preds[0] == preds[1]).sum())
    return agree / n
