"""Shared fixtures. Data is generated in the real file formats; real MNIST is used where ../shared has it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SHARED_DATA = Path(os.environ.get("MEME_SHARED_DATA", SHARED / "data"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Pairing caches and similar go to a temporary folder, never the user's ~/.cache."""
    old = os.environ.get("MEME_CACHE_DIR")
    os.environ["MEME_CACHE_DIR"] = str(tmp_path_factory.mktemp("meme_cache"))
    yield
    if old is None:
        os.environ.pop("MEME_CACHE_DIR", None)
    else:
        os.environ["MEME_CACHE_DIR"] = old


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """A test that runs a trial in this process (``run_trial`` sets the trial's thread count) or sets threads itself
    leaves torch's thread count as it found it: every later test would otherwise run on one thread."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small generated MNIST-format + SVHN-format dataset (600 train / 200 test) in the real file formats."""
    from meme.data.synthetic import write_synthetic_mnist_svhn

    return write_synthetic_mnist_svhn(tmp_path_factory.mktemp("synth"), n_train=600, n_test=200, seed=0)


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path:
    """../shared/data when it holds the real MNIST files; the test is skipped otherwise."""
    if not (SHARED_DATA / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip("real MNIST not available (../shared/data/MNIST/raw)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray session for the whole test run."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
