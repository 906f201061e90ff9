"""Models behind one interface (``meme.models.base.MultimodalModel``), their registry, and ``TrainConfig``: the
shared keys (``meme.config.SharedKeys``) joined with every registered model's own ``Keys``. A new model is its file
and one line here."""
from __future__ import annotations

from meme.config import train_config
from meme.errors import check_choice
from meme.models.base import MultimodalModel
from meme.models.meme import MEME
from meme.models.mmjsd import MMJSD
from meme.models.mmvae import MMVAE
from meme.models.mopoe import MoPoE
from meme.models.mvae import MVAE

MODELS: dict[str, type[MultimodalModel]] = {
    "meme": MEME,
    "mvae": MVAE,
    "mmvae": MMVAE,
    "mopoe": MoPoE,
    "mmjsd": MMJSD,
}

TrainConfig = train_config(MODELS, __name__)


def build_model(cfg, modalities, train_data, observation) -> MultimodalModel:
    check_choice("model", cfg.model, MODELS)
    return MODELS[cfg.model].from_config(cfg, modalities, train_data, observation)


__all__ = ["MODELS", "TrainConfig", "MEME", "MMJSD", "MMVAE", "MVAE", "MoPoE", "MultimodalModel", "build_model"]
