"""Models behind one interface (``meme.models.base.MultimodalModel``), and their registry."""
from __future__ import annotations

from meme.errors import check_choice
from meme.models.base import MultimodalModel
from meme.models.meme import MEME

MODELS: dict[str, type[MultimodalModel]] = {
    "meme": MEME,
}


def build_model(cfg, modalities, train_data, observation) -> MultimodalModel:
    check_choice("model", cfg.model, MODELS)
    return MODELS[cfg.model].from_config(cfg, modalities, train_data, observation)


__all__ = ["MODELS", "MEME", "MultimodalModel", "build_model"]
