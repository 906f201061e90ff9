"""ResNet-101 image features of CUB: the 2048-d average-pooled output, without the classifier.

The network is torchvision's ``resnet101`` with ``fc`` replaced by the identity, so a batch gives exactly
what torchvision's own forward computes up to (and including) the pooling and flattening.

Weights (``weights``):

* ``"imagenet"``: torchvision's ``IMAGENET1K_V1`` (the weights of ``pretrained=True`` that the MMVAE code
  used), downloaded once into torch's hub cache; offline this is a ``MemeError`` telling to pass a file;
* a path: a local state dict (``torch.load(weights_only=True)``), with or without the ``fc.*`` entries,
  e.g. torchvision's ``resnet101-63fe2227.pth`` copied from a machine with internet;
* ``"none"``: random initialisation (seeded by ``seed``), for tests and stand-ins only.

Preprocessing (``PREPROCESS``): ``"weights"`` (default) is the weights' own transform (resize 256,
centre crop 224, ImageNet normalisation); ``"mmvae"`` reproduces the MMVAE code: resize the short side
to ``image_size`` (224), no crop, no normalisation. Its images differ in size, so a batch is run as
groups of equal shape (the network pools adaptively).

Extraction is batched, runs on the GPU when there is one (``device="auto"``), shows a progress bar and
is resumable: finished images are saved every ``chunk`` images under ``images.parquet.partial/`` and a
restarted run skips them (and reuses the rows of an existing ``images.parquet`` made with the same
settings, e.g. when only the split changes).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from meme.features.cub_files import CUBImages, sha256_file
from meme.device import resolve_device
from meme.errors import MemeError, check_choice
from meme.features import store as st
from meme.progress import bar as progress_bar

log = logging.getLogger(__name__)

FEATURE_DIM = 2048
PREPROCESS = ("weights", "mmvae")
PARTIAL = "images.parquet.partial"


def _weights_enum():
    from torchvision.models import ResNet101_Weights

    return ResNet101_Weights.IMAGENET1K_V1


def load_state_dict_file(path) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise MemeError(f"ResNet-101 weights file {path} does not exist; pass a torchvision resnet101 state dict "
                        f"(e.g. resnet101-63fe2227.pth), 'imagenet' to download it, or 'none'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise MemeError(f"cannot read ResNet-101 weights {path} ({type(e).__name__}: {e}); it must be a state dict "
                        f"saved with torch.save") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise MemeError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def download_imagenet_weights() -> dict:
    w = _weights_enum()
    try:
        return w.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, HTTPError, OSError, hash mismatch ...
        raise MemeError(f"could not download the ResNet-101 ImageNet weights from {w.url} ({type(e).__name__}: {e}); "
                        f"offline, copy {Path(w.url).name} from a machine with internet and pass --weights PATH") from None


def resnet101_features(weights: str = "imagenet", seed: int = 0) -> nn.Module:
    """ResNet-101 mapping (N, 3, H, W) images to (N, 2048) pooled features, in eval mode."""
    from torchvision.models import resnet101

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet101(weights=None)
    model.fc = nn.Identity()
    if weights == "none":
        return model.eval()
    state = download_imagenet_weights() if weights == "imagenet" else load_state_dict_file(weights)
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise MemeError(f"{weights} is not a torchvision ResNet-101 state dict: {str(e).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise MemeError(f"{weights} is not a torchvision ResNet-101 state dict: missing {missing[:3]}"
                        f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}")
    return model.eval()


def preprocess_transform(preprocess: str = "weights", image_size: int = 224):
    """PIL image -> float tensor (3, H, W)."""
    check_choice("preprocess", preprocess, PREPROCESS)
    if preprocess == "weights":
        return _weights_enum().transforms()
    from torchvision import transforms

    if image_size < 32:
        raise MemeError(f"image_size={image_size} is too small for ResNet-101 (at least 32; 224 in the MMVAE code)")
    return transforms.Compose([transforms.Resize(image_size), transforms.ToTensor()])


class ImageFiles(torch.utils.data.Dataset):
    """Image ``i`` -> (i, preprocessed tensor, sha256 of the file bytes)."""

    def __init__(self, files: list[Path], transform):
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        path = self.files[i]
        try:
            data = path.read_bytes()
            img = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception as e:
            raise MemeError(f"cannot read image {path} ({type(e).__name__}: {e})") from None
        return i, self.transform(img), hashlib.sha256(data).digest()


def collate_list(batch):
    return batch


def _settings(weights: str, preprocess: str, image_size: int, seed: int) -> dict:
    import torchvision

    if weights in ("imagenet", "none"):
        wdesc = {"weights": weights, "url": _weights_enum().url if weights == "imagenet" else None,
                 "seed": seed if weights == "none" else None}
    else:
        wdesc = {"weights": "file", "sha256": sha256_file(Path(weights).expanduser())}
    return {"model": "resnet101", "output": "avgpool (fc removed)", "dim": FEATURE_DIM, **wdesc, "preprocess": preprocess,
            "image_size": image_size if preprocess == "mmvae" else None,
            "transform": repr(preprocess_transform(preprocess, image_size)), "torchvision": torchvision.__version__,
            "dtype": "float32"}


@torch.inference_mode()
def _forward_groups(model, tensors: list[torch.Tensor], device) -> torch.Tensor:
    """Features of a list of images; images of equal shape run as one batch."""
    out = torch.empty(len(tensors), FEATURE_DIM)
    groups: dict[tuple, list[int]] = {}
    for j, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(j)
    for idx in groups.values():
        x = torch.stack([tensors[j] for j in idx]).to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        out[idx] = model(x).float().cpu()
    return out


class _Progress:
    """Finished rows: from an earlier images.parquet, the partial folder and this run (flushed every ``chunk``)."""

    def __init__(self, folder: Path, settings: dict):
        self.folder = folder
        self.rows: dict[int, tuple[np.ndarray, bytes]] = {}
        self.pending: list[tuple[int, np.ndarray, bytes]] = []
        cfg = folder / "settings.json"
        if folder.is_dir():
            try:
                same = json.loads(cfg.read_text()) == settings
            except (OSError, ValueError):
                same = False
            if not same:
                log.warning("%s was made with other settings; starting the extraction over", folder)
                shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg.write_text(json.dumps(settings, sort_keys=True))
        for part in sorted(folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as z:
                    for i, f, d in zip(z["image_id"], z["features"], z["sha256"]):
                        self.rows[int(i)] = (f, bytes(d))
            except Exception:
                log.warning("partial file %s is unreadable; its images are extracted again", part)

    def add(self, image_id: int, feat: np.ndarray, digest: bytes) -> None:
        self.rows[image_id] = (feat, digest)
        self.pending.append((image_id, feat, digest))

    def flush(self) -> None:
        if not self.pending:
            return
        n = len(list(self.folder.glob("part-*.npz")))
        ids, feats, digests = zip(*self.pending)
        tmp = self.folder / f"part-{n:05d}.tmp.npz"
        np.savez(tmp, image_id=np.array(ids, dtype=np.int64), features=np.stack(feats),
                 sha256=np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32))
        tmp.replace(self.folder / f"part-{n:05d}.npz")
        self.pending = []


def _reuse_existing(path: Path, settings: dict, progress: _Progress) -> None:
    """Rows of an existing images.parquet made with the same settings (its digests are in its metadata)."""
    if not path.is_file():
        return
    try:
        images = st.read_images(path.parent)
    except MemeError:
        return
    if images.meta.get("settings") != settings or images.meta.get("standin"):
        return
    feats, digests = images.features.numpy(), images.table.column("sha256").to_pylist()
    for r, i in enumerate(images.image_id.tolist()):
        if i not in progress.rows:
            progress.rows[i] = (feats[r], digests[r])


def extract_image_features(images: CUBImages, store, split_scheme: str = "classes", weights: str = "imagenet",
                           preprocess: str = "weights", image_size: int = 224, batch_size: int = 64,
                           device: str = "auto", num_workers: int = 2, seed: int = 0, split_seed: int = 0,
                           test_fraction: float = 0.2, chunk: int = 1024, progress: bool = True,
                           max_images: int = 0) -> Path:
    """Write ``<store>/images.parquet`` with the ResNet-101 features of every image (resuming earlier work).

    ``max_images`` > 0 stops after that many new images (the partial work is kept; for tests and trials).
    """
    if batch_size < 1 or chunk < 1:
        raise MemeError(f"batch_size={batch_size} and chunk={chunk} must be positive")
    if images.root is None:
        raise MemeError("image features need the CUB-200-2011 images; pass --cub-dir (or use `meme features standin-images`)")
    splits = images.split(split_scheme, split_seed, test_fraction)
    store = Path(store)
    settings = _settings(weights, preprocess, image_size, seed)
    done = _Progress(store / PARTIAL, settings)
    _reuse_existing(store / st.FILES["images"], settings, done)
    todo = [r for r, i in enumerate(images.image_ids.tolist()) if i not in done.rows]
    if max_images:
        todo = todo[:max_images]
    if todo:
        dev = resolve_device(device)
        model = resnet101_features(weights, seed).to(dev)
        if dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        files = [images.image_path(r) for r in todo]
        loader = torch.utils.data.DataLoader(ImageFiles(files, preprocess_transform(preprocess, image_size)),
                                             batch_size=batch_size, num_workers=num_workers, collate_fn=collate_list,
                                             pin_memory=dev.type == "cuda")
        bar = progress_bar(total=len(todo), desc="ResNet-101 features", unit="img", progress=progress, fine=True)
        try:
            for batch in loader:
                idx, tensors, digests = zip(*batch)
                feats = _forward_groups(model, list(tensors), dev).numpy()
                for j, f, d in zip(idx, feats, digests):
                    done.add(int(images.image_ids[todo[j]]), f, d)
                if len(done.pending) >= chunk:
                    done.flush()
                bar.update(len(batch))
        finally:
            done.flush()
            bar.close()
    missing = [i for i in images.image_ids.tolist() if i not in done.rows]
    if missing:
        log.info("%d images still to extract; run again to continue", len(missing))
        return store / PARTIAL
    ids = images.image_ids.tolist()
    feats = np.stack([done.rows[i][0] for i in ids]).astype(np.float32, copy=False)
    digests = [done.rows[i][1] for i in ids]
    import pyarrow as pa

    meta = st.make_meta("images", split_scheme, settings,
                        {**images.sources, "images/ (sha256 of the per-image sha256s)": hashlib.sha256(b"".join(digests)).hexdigest()})
    path = st.write_table(store / st.FILES["images"], "images", {
        "image_id": pa.array(images.image_ids, pa.int64()), "label": pa.array(images.labels, pa.int32()),
        "split": pa.array(splits.astype(str), pa.string()), "path": pa.array(images.paths, pa.string()),
        "sha256": pa.array(digests, pa.binary(32)), "features": st.vector_column(feats, pa.float32())}, meta)
    shutil.rmtree(store / PARTIAL, ignore_errors=True)
    return path
