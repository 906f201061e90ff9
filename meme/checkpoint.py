"""Checkpoints: plain state dicts in ``<run dir>/checkpoint.pt``, read with ``weights_only=True``, and the checks
that a checkpoint fits the model, modalities and network family it is loaded into."""
from __future__ import annotations

from pathlib import Path

import torch

from meme.models import TrainConfig
from meme.errors import MemeError

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_VERSION = 1


def load_checkpoint(path) -> dict:
    """A checkpoint file or a run directory holding ``checkpoint.pt``; loaded with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.exists():
        raise MemeError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MemeError(f"checkpoint {path} is corrupt or not a MEME checkpoint ({_load_error(e)}); it is not "
                        f"loaded any other way (a checkpoint is plain tensors, read with weights_only=True)") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise MemeError(f"{path} is not a checkpoint written by meme (no model/config entries)")
    return state


def stored_config(state: dict) -> TrainConfig:
    """The config a checkpoint was trained with (keys added since then as that run had them)."""
    return TrainConfig.from_stored(state["config"])


def _load_error(e: Exception) -> str:
    """torch.load's error without its advice to retry with weights_only=False (wrong for an untrusted file)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else 'unreadable'}"


def check_checkpoint(state: dict, model_name: str | None, modalities, source: str, nets: str | None = None) -> None:
    if model_name is not None and state.get("model_name") != model_name:
        raise MemeError(f"{source} holds a {state.get('model_name')!r} model, expected {model_name!r}")
    if modalities is not None and tuple(state.get("modalities", ())) != tuple(modalities):
        raise MemeError(f"{source} is for modalities {tuple(state.get('modalities', ()))}, expected {tuple(modalities)}")
    if nets is not None:
        trained = TrainConfig.with_legacy(state.get("config", {})).get("nets")
        if trained != nets:
            raise MemeError(f"{source} was trained with nets={trained!r} and cannot continue as nets={nets!r}; "
                            f"resume it with --nets {trained} (valid: the family it was trained with)")
