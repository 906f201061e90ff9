"""``EvalConfig``: the few knobs of an evaluation, as a frozen flat dataclass."""
from __future__ import annotations

from dataclasses import dataclass

from meme.config import PRECISIONS, FlatConfig, check_device_name, key
from meme.errors import MemeError, check_choice


#: how relatedness decides that (i, j) show the same concept; auto = label for labelled data with at most
#: MAX_LABEL_CLASSES classes (digits), else pair (the paper's image-caption pairs for CUB)
RELATED_BY = ("auto", "label", "pair")
MAX_LABEL_CLASSES = 20


@dataclass(frozen=True)
class EvalConfig(FlatConfig):
    _what = "eval config"

    batch_size: int = key(256, 'test pairs per batch; W2 is taken over all (i, j) inside a batch')
    use_mean: bool = key(False, 'cross-generate from the posterior mean instead of a sample')
    n_latent_train: int = key(10_000, 'training examples for the linear latent probe (0 = all)')
    max_test_pairs: int = key(0, '0 = the full test set, else a seeded subset')
    n_joint: int = key(10_000, 'prior samples for joint coherence (0 = skip)')
    likelihood_k: int = key(1000, 'importance samples per log p(x_a|x_b) (0 = skip likelihoods)')
    likelihood_pairs: int = key(1000, 'test pairs for the likelihoods (0 = all)')
    elbo: bool = key(True, "the model's objective on the test set")
    related_by: str = key("auto", 'relatedness: label | pair (same row of the first modality) | auto')
    n_tsne: int = key(2000, 'latents in the t-SNE figure')
    n_grid: int = key(10, 'columns of the cross-generation grids')
    grid_samples: int = key(4, 'sample rows of the cross-generation grids')
    seed: int = key(0, 'seeds the sampling of the evaluation')
    device: str = key("auto", 'auto | cpu | cuda | cuda:N')
    precision: str = key("fp32", 'the networks\' precision in the evaluation: fp32 (as every evaluation before this key) | '
                         'auto (bf16 autocast on CPUs with native bf16: PolyMNIST\'s 75 coherence cells in 2.5x less '
                         'time) | bf16')

    def __post_init__(self):
        self._check_types()
        if self.batch_size < 2:
            raise MemeError(f"batch_size={self.batch_size} must be at least 2 (W2 compares pairs inside a batch)")
        if self.grid_samples < 1 or self.n_grid < 1:
            raise MemeError(f"n_grid={self.n_grid} and grid_samples={self.grid_samples} must be positive")
        for name in ("n_latent_train", "max_test_pairs", "n_joint", "likelihood_k", "likelihood_pairs", "n_tsne"):
            if getattr(self, name) < 0:
                raise MemeError(f"{name}={getattr(self, name)} must be >= 0")
        check_choice("related_by", self.related_by, RELATED_BY)
        check_device_name(self.device)
        check_choice("precision", self.precision, PRECISIONS)
