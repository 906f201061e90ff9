"""Where and in what precision a run computes: the device a config names, and bf16 where it is native."""
from __future__ import annotations

import torch

from meme.errors import MemeError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemeError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return dev


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AMX / AVX512-BF16); elsewhere bf16 is emulated and slow."""
    return torch.backends.cpu.get_cpu_capability() in ("AVX512_BF16", "AMX", "AVX512_AMX")


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return "bf16"
    return "fp32"
