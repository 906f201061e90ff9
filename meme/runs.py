"""A run rebuilt from its config: the training pairs, which of them are paired, and the model.

``build_run(cfg)`` is what ``meme.train.Trainer`` trains and what ``load_run`` fills with a checkpoint's
weights (``meme eval``, the orchestrator), so a run is put together in one place only.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from meme.checkpoint import check_checkpoint, load_checkpoint, stored_config
from meme.config import TrainConfig
from meme.data import PairedData, get_dataset, latent_size, make_observation
from meme.data.paired import check_classes
from meme.device import check_fits, resolve_device
from meme.data.observation import Observation
from meme.errors import MemeError
from meme.models import MODELS, build_model
from meme.models.base import check_modality_count

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: TrainConfig
    train_data: PairedData
    observation: Observation
    model: nn.Module


def build_run(cfg: TrainConfig, train_data: PairedData | None = None, warn: bool = True) -> Run:
    """The training pairs (``max_train_pairs`` of them, seeded by ``data_seed``), the observation plan and the
    model, its initial weights drawn under ``cfg.seed``. A model that cannot learn from unpaired examples
    (MMVAE) trains on the paired part alone (``warn``: say so)."""
    spec = get_dataset(cfg.dataset)
    data = train_data if train_data is not None else spec.load(cfg, "train")
    if tuple(data.names) != tuple(spec.names):
        raise MemeError(f"the data's modalities ({', '.join(data.names)}) are not dataset {cfg.dataset!r}'s "
                        f"({', '.join(spec.names)}); name them so, or give the config the dataset they belong to")
    if cfg.max_train_pairs:
        data = data.sample(cfg.max_train_pairs, cfg.data_seed)
    if len(data) == 0:
        raise MemeError(f"dataset {cfg.dataset!r} has no training pairs in {cfg.data_dir or 'the data dir'}")
    if len(data) < 2:
        raise MemeError(f"dataset {cfg.dataset!r} has {len(data)} training example{'' if cfg.max_train_pairs else ' in its table'}"
                        f"{f' (max_train_pairs={cfg.max_train_pairs})' if cfg.max_train_pairs else ''}; training needs at "
                        f"least 2 (BatchNorm and the relatedness compare examples)")
    check_modality_count(MODELS[cfg.model], len(data.names))
    observation = make_observation(len(data), cfg.supervision, cfg.observed, data.names, cfg.paired_only,
                                   cfg.data_seed, cfg.p_observed)
    check_sizes(cfg, data, observation)
    torch.manual_seed(cfg.seed)
    modalities = spec.build_modalities(cfg, data)
    check_batch_memory(cfg, modalities)
    model = build_model(cfg, modalities, data, observation)
    kept = observation.keep(model.learns_from)
    if kept.groups.keys() != observation.groups.keys():
        if warn and len(data.names) == 2:
            log.warning("%s cannot learn from unpaired examples: training on the %d paired examples only",
                        cfg.model, kept.paired.numel())
        elif warn:
            log.warning("%s has no term for examples that observe fewer than %d modalities: training on the %d "
                        "examples that observe more", cfg.model, model.min_observed,
                        sum(i.numel() for i in kept.groups.values()))
        observation = kept
    return Run(cfg, data, observation, model)


BYTES_PER_PARAMETER = 16   # fp32 weight, its gradient and Adam's two moments


def check_sizes(cfg: TrainConfig, data: PairedData, observation: Observation) -> None:
    """Sizes that cannot fit, refused before anything is built: the latent layers, the classes of the labels, and
    more pseudo-samples than rows to start them from."""
    device = _device_for_sizes(cfg)
    latent = latent_size(cfg)
    # each modality's heads and first decoder layer are latent x hidden (512) matrices: three per modality
    check_fits(latent * 512 * 3 * 2 * BYTES_PER_PARAMETER, f"latent_dim={latent} (its layers)", device)
    check_classes(data.labels, "the training labels", device)
    if cfg.model == "meme":
        for m, rows in enumerate(observation.observing(i).numel() for i in range(len(data.names))):
            if cfg.n_pseudo > max(rows, 100):
                raise MemeError(f"n_pseudo={cfg.n_pseudo} is more than the {rows} training rows that observe "
                                f"{data.names[m]!r}, which the pseudo-samples start from; give at most {max(rows, 100)}")


def check_batch_memory(cfg: TrainConfig, modalities) -> None:
    """MEME decodes (K + 2) x batch_size latents per modality and step: refused up front where that cannot fit."""
    if cfg.model != "meme":
        return
    values = sum(math.prod(m.event_shape) for m in modalities)
    # the decoded parameters and, for the backward pass, about as many activations again, in fp32
    check_fits((cfg.K + 2) * cfg.batch_size * values * 4 * 2, f"K={cfg.K} at batch_size={cfg.batch_size} "
               f"(per batch)", _device_for_sizes(cfg))


def _device_for_sizes(cfg: TrainConfig) -> torch.device:
    """The device whose memory bounds the sizes: the run's, or the CPU where a run trained on a GPU is rebuilt
    on a machine without one (``meme eval`` of a GPU run)."""
    try:
        return resolve_device(cfg.device)
    except MemeError:
        return torch.device("cpu")


def load_run(checkpoint, data_dir: str | None = None, expect_model: str | None = None):
    """Rebuild the model of a run (a run directory or a checkpoint file) with its weights; returns
    (model, cfg, train pairs, test pairs)."""
    state = load_checkpoint(checkpoint)
    cfg = stored_config(state)
    if data_dir:
        cfg = cfg.replace(data_dir=str(data_dir))
    spec = get_dataset(cfg.dataset)
    check_checkpoint(state, cfg.model, None, source=f"checkpoint {checkpoint}")
    check_checkpoint(state, expect_model, spec.names, source=f"checkpoint {checkpoint}")
    run = build_run(cfg, warn=False)  # the pairs the run trained on (its latent probe is fitted on them)
    test_data = spec.load(cfg, "test")
    try:
        run.model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[1:2] or [str(e)[:200]]
        raise MemeError(f"checkpoint {checkpoint}: its weights do not fit the {cfg.model!r} model built from its "
                        f"config ({first[0].strip()})") from None
    return run.model, cfg, run.train_data, test_data
