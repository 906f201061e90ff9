"""MEME beyond two modalities (the paper's appendix E): two modalities give exactly what they gave before; the
M-modal objective equals its literal reference term by term; its cost; the mixture KL estimator; bad input."""
from __future__ import annotations

import copy

import pytest
import torch

from meme.batch import Batch
from meme.dists import kl_normal, log_mean_exp, mixture_normal_log_prob, normal_log_prob
from meme.models.meme import MEME
from meme.nets import FAMILIES
from meme.nets.base import batchnorm_passes

L, B, K, N = 8, 6, 4, 5


class TwoModalMEME(MEME):
    """MEME's two-modality objective exactly as it was written before the objective took M modalities (frozen
    here, line for line): the new objective at M = 2 must equal it in loss, gradients and BatchNorm buffers."""

    def paired_terms(self, x):
        K1 = self.K + 1
        dirs = {"both": [(0, 1), (1, 0)], "t_supervises_s": [(0, 1)], "s_supervises_t": [(1, 0)]}[self.direction]
        post = []
        for m in range(2):
            passes = 2 * any(a == m for a, _ in dirs) + any(b == m for _, b in dirs)
            with batchnorm_passes(self.mods[m], passes):
                post.append(self.mods[m].encode(x[m]))
        z = {}
        for a, _ in dirs:
            mu, sigma = post[a]
            z[a] = mu + sigma * torch.randn(K1, *mu.shape, device=mu.device, dtype=mu.dtype)
        lik = {}
        for m in range(2):
            parts = []
            if (1 - m, m) in dirs:
                parts.append(z[1 - m])
            if (m, 1 - m) in dirs:
                parts.append(z[m][:1])
            out = self.mods[m].decode(torch.cat(parts, 0))
            lik[m] = self.mods[m].log_likelihood(x[m], out).float()
        terms = {}
        for a, b in dirs:
            log_q_b_z = lik[b][:K1]
            log_p_a_z = lik[a][-1]
            log_q_b_a = log_mean_exp(log_q_b_z, 0)
            w = torch.exp(log_q_b_z[0] - log_q_b_a).detach()
            kl = kl_normal(*post[a], *post[b]).float()
            terms[(a, b)] = {"elbo": w * (log_p_a_z - log_q_b_z[0] - kl) + self.lam * log_q_b_a,
                             "recon": log_p_a_z, "cls": log_q_b_z[0], "kl": kl, "log_q": log_q_b_a, "w": w}
        return terms

    def unpaired_terms(self, x, a):
        b = 1 - a
        mu, sigma = self.mods[a].encode(x)
        z = mu + sigma * torch.randn_like(mu)
        mu_u, sigma_u = self.mods[b].encode(self.pseudo[b])
        log_q = normal_log_prob(z.float(), mu.float(), sigma.float())
        log_p = mixture_normal_log_prob(z.float(), mu_u.float(), sigma_u.float())
        recon = self.mods[a].log_likelihood(x, self.mods[a].decode(z)).float()
        return {"elbo": recon - (log_q - log_p), "recon": recon, "kl": log_q - log_p}

    def loss(self, batch):
        if batch.observed == (True, True):
            terms = self.paired_terms(batch.x)
            total = sum(v["elbo"] for v in terms.values())
            metrics = {}
            for (a, b), v in terms.items():
                na, nb = self.names[a], self.names[b]
                metrics[f"recon_{na}"] = v["recon"].mean()
                metrics[f"cls_{nb}_given_z"] = v["cls"].mean()
                metrics[f"kl_{na}"] = v["kl"].mean()
                metrics[f"log_q_{nb}_given_{na}"] = v["log_q"].mean()
                metrics[f"w_{nb}_given_{na}"] = v["w"].mean()
        else:
            a = 0 if batch.observed[0] else 1
            v = self.unpaired_terms(batch.x[a], a)
            total = v["elbo"]
            na = self.names[a]
            metrics = {f"recon_{na}_only": v["recon"].mean(), f"kl_{na}_only": v["kl"].mean()}
        loss = -total.mean()
        metrics["loss"] = loss.detach()
        return loss, {k: v.detach() for k, v in metrics.items()}


def two_modal_pair(direction="both", nets="published"):
    torch.manual_seed(0)
    mods = (FAMILIES[nets]["mnist"](L), FAMILIES[nets]["svhn"](L))
    init = (torch.rand(N, 1, 28, 28), torch.rand(N, 3, 32, 32))
    new = MEME(mods, K=K, lam=10.0, n_pseudo=N, direction=direction, pseudo_init=init)
    old = TwoModalMEME(copy.deepcopy(mods), K=K, lam=10.0, n_pseudo=N, direction=direction, pseudo_init=init)
    old.load_state_dict(new.state_dict())
    return new, old


@pytest.mark.parametrize("nets", ["published", "appendix_k"])
@pytest.mark.parametrize("kind", ["paired", "s", "t"])
@pytest.mark.parametrize("direction", ["both", "t_supervises_s", "s_supervises_t"])
def test_two_modalities_give_exactly_the_loss_gradients_and_buffers_they_gave_before(kind, direction, nets):
    g = torch.Generator().manual_seed(1)
    xs, xt = torch.rand(B, 1, 28, 28, generator=g), torch.rand(B, 3, 32, 32, generator=g)
    y = torch.arange(B) % 10
    batch = {"paired": Batch((xs, xt), (True, True), y), "s": Batch((xs, None), (True, False), y),
             "t": Batch((None, xt), (False, True), y)}[kind]
    new, old = two_modal_pair(direction, nets)
    for _ in range(2):   # two steps: the second starts from BatchNorm averages the first moved
        torch.manual_seed(42)
        loss_new, metrics_new = new.loss(batch)
        grads_new = torch.autograd.grad(loss_new, list(new.parameters()), allow_unused=True)
        torch.manual_seed(42)
        loss_old, metrics_old = old.loss(batch)
        grads_old = torch.autograd.grad(loss_old, list(old.parameters()), allow_unused=True)
        assert torch.equal(loss_new, loss_old)
        assert metrics_new.keys() == metrics_old.keys()
        for k in metrics_old:
            assert torch.equal(metrics_new[k], metrics_old[k]), k
        for (name, _), gn, go in zip(new.named_parameters(), grads_new, grads_old):
            assert (gn is None) == (go is None), name
            if gn is not None:
                assert torch.equal(gn, go), name
        old_buffers = dict(old.named_buffers())
        for name, buf in new.named_buffers():
            assert torch.equal(buf, old_buffers[name]), name
