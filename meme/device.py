"""Where and in what precision a run computes: the device a config names, and bf16 where it is native."""
from __future__ import annotations

import ctypes
import os

import torch

from meme.errors import MemeError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MemeError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu or auto")
    return dev


# torch's own probes of the CPU's bf16 instructions (``torch.backends.cpu.get_cpu_capability()`` names only the
# vector width, "AVX2" or "AVX512", never bf16): AVX512-BF16 (Cooper Lake, Zen 4 and later) and AMX tiles
# (Sapphire Rapids and later). Private names, so a torch without them reads as "no native bf16".
BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


def cpu_has_native_bf16() -> bool:
    """True where the CPU multiplies bf16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated and far
    slower than fp32."""
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in BF16_PROBES)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CPUs with native bf16, fp32 elsewhere, CUDA included. Measured on an H200
    (``benchmarks/gpu_check.py``, batch 128): the models' steps are bound by kernel launches, not arithmetic,
    and bf16 autocast adds casts, so MEME's paired step ran 12,055 pairs/s in fp32 against 9,623 in bf16
    (every model was 12 to 20 % slower in bf16); compiled with CUDA graphs the two were equal (43,698 and
    44,075). fp32 is also the published code's precision."""
    if precision != "auto":
        return precision
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def memory_bytes(device: torch.device) -> int:
    """The memory a run on ``device`` can have at most: the GPU's, or this machine's RAM."""
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.get_device_properties(device).total_memory)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_fits(nbytes: float, what: str, device: torch.device) -> None:
    """A one-line ``MemeError`` up front where ``what`` needs more memory than ``device`` has at all."""
    total = memory_bytes(device)
    if nbytes > total:
        raise MemeError(f"{what} needs about {nbytes / 2**30:,.0f} GiB, more than the {total / 2**30:,.0f} GiB "
                        f"of {device.type}; give a smaller value")


#: glibc's malloc tuned for a process that allocates and frees the same large tensors every step (``tune_allocator``)
MMAP_THRESHOLDS = (256 * 2**20, 32 * 2**20)   # the first that this glibc accepts
TRIM_THRESHOLD = 2**30
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt's parameters (malloc.h)
_tuned: bool | None = None


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process rather than handing it back to the system (glibc on Linux; once per
    process; ``MEME_MALLOC=default`` in the environment keeps glibc's defaults). Returns whether it applied.

    By default glibc serves every allocation above its mmap threshold (128 KiB at first, and at most 32 MiB) with a
    fresh mmap and unmaps it on free, and trims the heap's top above 128 KiB, so each step's activations come back
    as new pages that the kernel must fault in and zero. On this project's CPUs that took more than half of a bf16
    conv net's time: the evaluation's judge ran a batch of 256 PolyMNIST images in 16 ms, and in 7 ms with an mmap
    threshold of 256 MiB and a trim threshold of 1 GiB (``benchmarks/eval_speed_m.py`` gives the whole
    evaluation). The cost is that the process keeps up to its peak heap, as a GPU's caching allocator does. The
    values computed do not change."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("MEME_MALLOC", "tuned") == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):   # not glibc (macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # the mmap threshold first: the trim threshold alone would switch off glibc's growing mmap threshold
    if any(mallopt(M_MMAP_THRESHOLD, t) == 1 for t in MMAP_THRESHOLDS):
        _tuned = mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    return _tuned
