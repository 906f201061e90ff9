"""A run rebuilt from its config: the training pairs, which of them are paired, and the model.

``check_config(cfg)`` makes the checks of a config against its dataset (the modalities' names and count, the
network family, the observation scheme, the model's own keys); ``build_run(cfg)`` is what ``meme.train.Trainer`` trains and what ``load_run`` fills with a checkpoint's
weights (``meme eval``, the orchestrator), so a run is put together in one place only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from meme.checkpoint import check_checkpoint, load_checkpoint, stored_config
from meme.data import PairedData, get_dataset, latent_size, make_observation
from meme.data.observation import Observation, check_observed
from meme.data.paired import check_classes
from meme.device import check_fits, resolve_device
from meme.errors import MemeError
from meme.models import MODELS, TrainConfig, build_model
from meme.models.base import check_modality_count
from meme.nets import check_family

log = logging.getLogger(__name__)


@dataclass
class Run:
    cfg: TrainConfig
    train_data: PairedData
    observation: Observation
    model: nn.Module


def check_config(cfg: TrainConfig):
    """The config against its dataset, read from the dataset's description only (no tables): the network family
    has networks for its modalities, the observation scheme names them, the model's keys suit their number.
    Returns the dataset's spec."""
    spec = get_dataset(cfg.dataset)
    check_family(cfg.nets, spec.network_keys or spec.names)
    check_observed(cfg.observed, spec.names, cfg.p_observed, f" for dataset {cfg.dataset}")
    MODELS[cfg.model].check_config(cfg, spec.names)
    return spec


def build_run(cfg: TrainConfig, train_data: PairedData | None = None, warn: bool = True) -> Run:
    """The training pairs (``max_train_pairs`` of them, seeded by ``data_seed``), the observation plan and the
    model, its initial weights drawn under ``cfg.seed``. A model that cannot learn from unpaired examples
    (MMVAE) trains on the paired part alone (``warn``: say so)."""
    spec = check_config(cfg)
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
    check_sizes(cfg, data)
    torch.manual_seed(cfg.seed)
    modalities = spec.build_modalities(cfg, data)
    MODELS[cfg.model].check_run(cfg, data, observation, modalities, _device_for_sizes(cfg))
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


def check_sizes(cfg: TrainConfig, data: PairedData) -> None:
    """Sizes that cannot fit, refused before anything is built: the latent layers and the classes of the labels
    (the model's own: ``check_run``)."""
    device = _device_for_sizes(cfg)
    latent = latent_size(cfg)
    # each modality's heads and first decoder layer are latent x hidden (512) matrices: three per modality
    check_fits(latent * 512 * 3 * 2 * BYTES_PER_PARAMETER, f"latent_dim={latent} (its layers)", device)
    check_classes(data.labels, "the training labels", device)


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
