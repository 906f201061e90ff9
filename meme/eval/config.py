"""``EvalConfig``: the few knobs of an evaluation, as a frozen flat dataclass."""
from __future__ import annotations

from dataclasses import dataclass

from meme.config import FlatConfig
from meme.errors import MemeError


#: how relatedness decides that (i, j) show the same concept; auto = label for labelled data with at most
#: MAX_LABEL_CLASSES classes (digits), else pair (the paper's image-caption pairs for CUB)
RELATED_BY = ("auto", "label", "pair")
MAX_LABEL_CLASSES = 20


@dataclass(frozen=True)
class EvalConfig(FlatConfig):
    _what = "eval config"

    batch_size: int = 256         # test pairs per batch (also the batch inside which W2 is taken over all (i, j))
    use_mean: bool = False        # cross-generation decodes the posterior mean instead of a sample
    n_latent_train: int = 10_000  # training examples the linear latent probe is fitted on (0 = all)
    max_test_pairs: int = 0       # 0 = the full test set; otherwise a seeded subset of this size
    n_joint: int = 10_000         # prior samples for joint coherence (0 = skip joint coherence)
    likelihood_k: int = 1000      # importance samples per log p(x_a | x_b) estimate (0 = skip likelihoods)
    likelihood_pairs: int = 1000  # test pairs the likelihoods are estimated on (0 = all)
    elbo: bool = True             # the model's own objective on the test pairs (elbo_test, test_*)
    related_by: str = "auto"      # relatedness: "label", "pair" (same row of the first modality) or auto
    n_tsne: int = 2000            # latents in the t-SNE figure (half from each modality)
    n_grid: int = 10              # columns of the cross-generation grids (one digit each where labelled)
    grid_samples: int = 4         # output rows of the cross-generation grids
    seed: int = 0
    device: str = "auto"          # auto = wherever the model already is; else cpu | cuda | cuda:N (the model moves)

    def __post_init__(self):
        self._check_types()
        if self.batch_size < 2:
            raise MemeError(f"batch_size={self.batch_size} must be at least 2 (W2 compares pairs inside a batch)")
        if self.grid_samples < 1 or self.n_grid < 1:
            raise MemeError(f"n_grid={self.n_grid} and grid_samples={self.grid_samples} must be positive")
        for name in ("n_latent_train", "max_test_pairs", "n_joint", "likelihood_k", "likelihood_pairs", "n_tsne"):
            if getattr(self, name) < 0:
                raise MemeError(f"{name}={getattr(self, name)} must be >= 0")
        if self.related_by not in RELATED_BY:
            raise MemeError(f"unknown related_by {self.related_by!r}; valid: {', '.join(RELATED_BY)}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise MemeError(f"unknown device {self.device!r}; valid: auto, cpu, cuda, cuda:N")
