"""The ``cub`` dataset: image features and caption tokens from the CUB feature store (``meme features``).

The raw CUB files (images, captions, splits) are read by ``meme.features.cub_files``; the feature store
built from them (``meme.features.store``) holds one row per image and per caption. Here they become
``PairedData``: one pair per caption of a split, with its image's features.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from meme.data.mnist_svhn import resolve_data_dir
from meme.data.paired import PairedData
from meme.errors import MemeError, check_choice
from meme.features import store as st
from meme.nets import DEFAULT_LATENT_DIM, modality_class

log = logging.getLogger(__name__)


# ------------------------------------------------------------- the dataset
def default_features_dir(cfg) -> Path:
    """The feature store of a run: ``cfg.features_dir``, or ``<data dir>/cub/features``."""
    return Path(cfg.features_dir).expanduser() if cfg.features_dir else resolve_data_dir(cfg.data_dir) / "cub" / "features"


def load_cub(cfg, split: str):
    """The ``cub`` dataset's ``split`` from the feature store: one pair per caption, with its image's features."""
    return load_paired(default_features_dir(cfg), split)


def build_cub_modalities(cfg, train_data):
    """The image-feature and caption networks, sized from the store's vocabulary."""
    vocab = st.read_vocab(default_features_dir(cfg))
    floor = cfg.sigma_floor or None   # 0 = the family's own floor
    latent = cfg.latent_dim or DEFAULT_LATENT_DIM
    image = modality_class(cfg.nets, "cub_image")(latent_dim=latent, sigma_floor=floor,
                                                  llik_scale=cfg.llik_scale, feature_dim=int(train_data.tables[0].shape[1]))
    caption = modality_class(cfg.nets, "cub_caption")(latent_dim=latent, sigma_floor=floor,
                                                      vocab_size=len(vocab), max_len=vocab.max_len,
                                                      pad_index=vocab.pad_index)
    return image, caption


def load_paired(store, split: str):
    """``PairedData`` of ``split``: one pair per caption of that split, with its image's features.

    Tables: image features (images of the split, float32) and caption token ids (int64); labels are
    the images' classes (-1 where unknown).
    """
    check_choice("split", split, ["train", "test"])
    images, captions = st.read_images(store), st.read_captions(store)
    st.check_consistent(store, images, captions)
    if images.meta.get("standin"):
        log.warning("%s holds STAND-IN image features (%s), not ResNet-101 features of CUB images",
                    store, images.meta.get("settings", {}).get("standin", "generated"))
    rows = st.caption_image_rows(images, captions, store)
    cap = captions.mask(split).nonzero().flatten()
    img_rows = rows[cap]
    mismatch = ~images.mask(split)[img_rows]
    if bool(mismatch.any()):
        bad = int(captions.image_id[cap][mismatch][0])
        raise MemeError(f"{store}: image {bad} is in the {split} split of captions.parquet but not of images.parquet")
    used, local = torch.unique(img_rows, return_inverse=True)
    return PairedData(st.MODALITY_NAMES, (images.features[used], captions.tokens[cap]), (local, torch.arange(cap.numel())),
                      images.label[img_rows])
