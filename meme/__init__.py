"""MEME: the Mutually supErvised Multimodal VAE (Joy et al., ICLR 2022).

The library is usable on its own, without Ray or MLflow:

    from meme.train import TrainConfig, train
    for metrics in train(TrainConfig(supervision=0.25, observed="mnist", epochs=5), out_dir="runs/x"):
        print(metrics)
"""
from __future__ import annotations

from meme.errors import MemeError

__all__ = ["MemeError", "__version__"]
__version__ = "0.1.0"
