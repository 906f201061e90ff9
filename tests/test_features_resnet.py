"""ResNet-101 image features: torchvision's network, weights files, offline errors, resumable extraction."""
from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
import torchvision

from meme.features.cub_files import read_cub_images, write_synthetic_cub
from meme.errors import MemeError
from meme.features import resnet as rn
from meme.features import store as st


@pytest.fixture(scope="module")
def net():
    return rn.resnet101_features("none", seed=3)


def test_random_weights_match_torchvision_directly(net):
    torch.manual_seed(3)
    direct = torchvision.models.resnet101(weights=None)
    direct.fc = torch.nn.Identity()
    direct.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        ours, ref = net(x), direct(x)
    assert ours.shape == (2, 2048)
    assert torch.equal(ours, ref)
    # the same as torchvision's layers up to the pooling, applied by hand
    with torch.inference_mode():
        h = direct.maxpool(direct.relu(direct.bn1(direct.conv1(x))))
        for layer in (direct.layer1, direct.layer2, direct.layer3, direct.layer4):
            h = layer(h)
        assert torch.allclose(ours, h.mean((2, 3)), atol=1e-5, rtol=1e-5)


def test_weights_file_and_errors(net, tmp_path, monkeypatch):
    # a complete torchvision state dict: the trunk plus the 1000-class classifier (which extraction drops)
    state = {**net.state_dict(), "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save(state, tmp_path / "resnet101.pth")
    loaded = rn.resnet101_features(str(tmp_path / "resnet101.pth"))
    x = torch.rand(1, 3, 48, 48)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(MemeError, match="is not a torchvision ResNet-101 state dict: size mismatch for conv1.weight"):
        rn.resnet101_features(str(tmp_path / "bad.pth"))
    with pytest.raises(MemeError, match="weights file .*absent.pth does not exist"):
        rn.resnet101_features(str(tmp_path / "absent.pth"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(MemeError, match=r"could not download the ResNet-101 ImageNet weights .*pass --weights PATH"):
        rn.resnet101_features("imagenet")


def test_preprocessing_options():
    from PIL import Image

    from torchvision.models import ResNet101_Weights

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    w = rn.preprocess_transform("weights")
    assert repr(w) == repr(ResNet101_Weights.IMAGENET1K_V1.transforms())
    assert w(img).shape == (3, 224, 224)
    m = rn.preprocess_transform("mmvae", 224)(img)
    assert m.shape == (3, 224, 298) and 0 <= float(m.min()) and float(m.max()) <= 1   # resize only: no crop, no normalisation
    with pytest.raises(MemeError, match="unknown preprocess 'crop'"):
        rn.preprocess_transform("crop")


def test_extraction_is_batched_resumable_and_matches_direct_features(net, tmp_path, monkeypatch):
    cub = write_synthetic_cub(tmp_path / "cub", per_class=2, size=(40, 34))
    images = read_cub_images(cub)
    store = tmp_path / "store"
    seen = []
    forward = rn._forward_groups
    monkeypatch.setattr(rn, "_forward_groups", lambda m, t, d: seen.append(len(t)) or forward(m, t, d))
    kw = dict(weights="none", seed=3, preprocess="mmvae", image_size=32, batch_size=3, device="cpu", num_workers=0,
              progress=False)
    partial = rn.extract_image_features(images, store, max_images=4, chunk=2, **kw)   # an interrupted run
    assert partial.name == rn.PARTIAL and len(list(partial.glob("part-*.npz"))) == 2
    assert not (store / st.FILES["images"]).exists()
    path = rn.extract_image_features(images, store, **kw)                              # resumes
    assert path == store / st.FILES["images"] and not (store / rn.PARTIAL).exists()
    assert sum(seen) == len(images) and seen[:2] == [3, 1]                             # nothing extracted twice
    table = st.read_images(store)
    assert table.image_id.tolist() == images.image_ids.tolist()
    assert table.table.column("path").to_pylist() == images.paths
    tf = rn.preprocess_transform("mmvae", 32)
    from PIL import Image

    x = torch.stack([tf(Image.open(images.image_path(r)).convert("RGB")) for r in range(len(images))])
    with torch.inference_mode():  # the same batches as the two runs: 3 + 1, then 3 + 3
        direct = torch.cat([net(x[a:b]) for a, b in ((0, 3), (3, 4), (4, 7), (7, 10))])
    assert torch.equal(table.features, direct)
    assert table.meta["settings"]["preprocess"] == "mmvae" and table.meta["settings"]["weights"] == "none"
    import hashlib

    assert table.table.column("sha256")[0].as_py() == hashlib.sha256(images.image_path(0).read_bytes()).digest()
    # another split: the features are reused, not extracted again
    seen.clear()
    rn.extract_image_features(images, store, split_scheme="official", **kw)
    assert seen == [] and st.read_images(store).mask("train").tolist() == images.official_train.tolist()
