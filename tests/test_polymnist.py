"""PolyMNIST: the published recipe by hand, the official release's layout read back, a different PolyMNIST
never overwritten, the published networks layer by layer, and the baselines training on it end to end."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from meme.cli import main
from meme.data.dataset_file import read_dataset_file
from meme.data.polymnist import NAMES, compose, full_contrast, read_release, write_release_layout
from meme.data.synthetic import GENERATED
from meme.errors import MemeError


def md5s(root):
    return {p: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_digit_inverts_the_colours_of_a_random_crop_of_its_background():
    bg = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3) % 251
    bg = bg.astype(np.uint8)
    digit = np.zeros((1, 28, 28), np.uint8)
    digit[0, 5:20, 10:14] = 200      # the stroke
    digit[0, 0, 0] = 127             # at the threshold: not part of the digit
    out = compose(digit, bg, np.random.default_rng(3))
    rng = np.random.default_rng(3)   # the crop's corner, drawn as compose draws it: rows, then columns
    y, x = rng.integers(0, 13, 1)[0], rng.integers(0, 23, 1)[0]
    crop = bg[y:y + 28, x:x + 28].transpose(2, 0, 1)
    want = crop.copy()
    want[:, 5:20, 10:14] = 255 - crop[:, 5:20, 10:14]
    assert out.shape == (1, 3, 28, 28) and out.dtype == np.uint8
    assert np.array_equal(out[0], want)


@pytest.fixture(scope="module")
def built(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("poly") / "pm"
    assert main(["data", "polymnist", "--out", str(out), "--data-dir", str(synth_dir), "--no-download",
                 "--n-train", "300", "--n-test", "100", "--seed", "1"]) == 0
    return out


def test_the_five_modalities_show_the_same_class_over_their_own_backgrounds(built):
    from meme.data.dataset_file import read_dataset_file

    ds = read_dataset_file(built / "polymnist.yaml")
    assert ds.names == NAMES and ds.latent_dim == 512
    assert all(m.networks == {"preset": "polymnist", "likelihood": "laplace", "scale": 0.75} for m in ds.modalities)
    train = ds.load("train")
    assert len(train) == 300 and len(ds.load("test")) == 100
    labels = [np.load(built / f"{n}_train.npz")["label"] for n in NAMES]
    assert all(np.array_equal(labels[0], lab) for lab in labels)
    x = [np.load(built / f"{n}_train.npz")["x"] for n in NAMES]
    assert all(a.shape == (300, 3, 28, 28) and a.dtype == np.uint8 for a in x)
    # each modality's background has its own colours: the mean colour differs between modalities
    means = np.array([a.reshape(300, 3, -1).mean((0, 2)) for a in x])
    assert min(np.abs(means[i] - means[j]).max() for i in range(5) for j in range(i + 1, 5)) > 3
    # modality 0 holds MNIST image i (of a seeded subset); the others another instance of its class
    assert not np.array_equal(x[1], x[2])


def test_full_contrast_pushes_a_colour_from_grey_until_one_channel_saturates():
    # hand-computed: (142, 106, 96) - 127.5 = (14.5, -21.5, -31.5); x 127.5 / 31.5 = (58.69, -87.02, -127.5)
    assert full_contrast(np.array([142, 106, 96])).tolist() == [186, 40, 0]
    # (52, 61, 82) - 127.5 = (-75.5, -66.5, -45.5); x 127.5 / 75.5 = (-127.5, -112.30, -76.84)
    assert full_contrast(np.array([52.0, 61.0, 82.0])).tolist() == [0, 15, 51]
    assert full_contrast(np.array([200, 200, 200])).tolist() == [255, 255, 255]
    assert full_contrast(np.array([127.5, 127.5, 127.5])).tolist() == [0, 0, 0]   # grey has no direction


def test_plain_backgrounds_are_each_photos_mean_colour_at_full_contrast_under_the_same_digits(built, synth_dir,
                                                                                             tmp_path, capsys):
    from skimage import data

    from meme.data.polymnist import BACKGROUNDS

    out = tmp_path / "plain"
    assert main(["data", "polymnist", "--out", str(out), "--data-dir", str(synth_dir), "--no-download",
                 "--n-train", "300", "--n-test", "100", "--seed", "1", "--plain-backgrounds"]) == 0
    for k, (name, photo) in enumerate(zip(NAMES, BACKGROUNDS)):
        mean = full_contrast(np.asarray(getattr(data, photo)())[..., :3].reshape(-1, 3).mean(0))
        assert 255 in np.abs(255 - 2 * mean.astype(int)), (name, mean)   # one channel at 0 or 255
        plain = np.load(out / f"{name}_train.npz")
        crops = np.load(built / f"{name}_train.npz")["x"]
        assert np.array_equal(plain["label"], np.load(built / f"{name}_train.npz")["label"])
        colour = mean[None, :, None, None]
        inverted = 255 - colour
        is_bg = (plain["x"] == colour).all(1)
        is_digit = (plain["x"] == inverted).all(1)
        assert (is_bg | is_digit).all() and is_digit.any(), name   # two colours: the photo's mean, and its inverse
        assert 0.02 < is_digit.mean() < 0.5   # strokes
        assert ((crops == colour).all(1) | (crops == inverted).all(1)).mean() < 0.5   # the photo crops: texture
    text = (out / "polymnist.yaml").read_text()
    assert "plain backgrounds of full contrast" in text
    # over one flat colour the PolyMNIST preset collapses: the plain file takes the image networks by shape
    assert "preset" not in read_dataset_file(out / "polymnist.yaml").modalities[0].networks
    assert "preset: polymnist" in (built / "polymnist.yaml").read_text()
    capsys.readouterr()


def test_plain_backgrounds_of_mean_colours_written_before_are_refused_naming_both(built, synth_dir, tmp_path, capsys):
    """A folder of the earlier plain PolyMNIST (mean colours) is a different PolyMNIST: refused in one line that
    tells them apart, nothing changed; --force replaces it."""
    out = tmp_path / "plain"
    argv = ["data", "polymnist", "--out", str(out), "--data-dir", str(synth_dir), "--no-download",
            "--n-train", "300", "--n-test", "100", "--plain-backgrounds"]
    assert main(argv) == 0
    record = json.loads((out / GENERATED).read_text())
    record["polymnist"]["plain"] = True   # as the earlier code wrote it
    (out / GENERATED).write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain backgrounds of mean colours" in err \
        and "plain backgrounds of full contrast" in err and "--force" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main([*argv, "--force"]) == 0
    assert json.loads((out / GENERATED).read_text())["polymnist"]["plain"] == "full contrast"


@pytest.mark.parametrize("argv, words", [
    (["data", "mnist-views", "--out", "X", "--plain-backgrounds"], "--plain-backgrounds goes with polymnist, not mnist-views"),
    (["data", "polymnist", "--from-release", "R", "--plain-backgrounds"], "--plain-backgrounds builds PolyMNIST from MNIST"),
])
def test_plain_backgrounds_elsewhere_is_one_line(tmp_path, capsys, argv, words):
    (tmp_path / "R").mkdir()
    argv = [str(tmp_path / a) if a in ("X", "R") else a for a in argv]
    assert main([*argv, "--data-dir", str(tmp_path / "d"), "--no-download"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_the_official_release_layout_reads_back_to_the_same_tables(built, tmp_path, capsys):
    release = tmp_path / "release"
    for split in ("train", "test"):
        images = [np.load(built / f"{n}_{split}.npz")["x"] for n in NAMES]
        labels = np.load(built / f"m0_{split}.npz")["label"]
        write_release_layout(release, split, images, labels)
    assert sorted(p.name for p in (release / "train" / "m3").iterdir())[:2] == ["0.%d.png" % labels_of(built, 0),
                                                                               "1.%d.png" % labels_of(built, 1)]
    out = tmp_path / "converted"
    assert main(["data", "polymnist", "--out", str(out), "--from-release", str(release)]) == 0
    for n in NAMES:
        for split in ("train", "test"):
            a, b = np.load(built / f"{n}_{split}.npz"), np.load(out / f"{n}_{split}.npz")
            assert np.array_equal(a["x"], b["x"]) and np.array_equal(a["label"], b["label"])
    capsys.readouterr()


def labels_of(built, i):
    return int(np.load(built / "m0_train.npz")["label"][i])


@pytest.mark.parametrize("damage, words", [
    ("missing", "m3 is missing; the PolyMNIST release holds train/m0 .. train/m4"),
    ("name", "not a PolyMNIST file name; the release names them <index>.<label>.png"),
    ("label", "has label"),
])
def test_a_damaged_release_is_one_line(built, tmp_path, damage, words):
    release = tmp_path / "release"
    images = [np.load(built / f"{n}_train.npz")["x"][:20] for n in NAMES]
    labels = np.load(built / "m0_train.npz")["label"][:20]
    write_release_layout(release, "train", images, labels)
    if damage == "missing":
        for p in (release / "train" / "m3").iterdir():
            p.unlink()
        (release / "train" / "m3").rmdir()
    elif damage == "name":
        (release / "train" / "m2" / ("0.%d.png" % labels[0])).rename(release / "train" / "m2" / "zero.png")
    else:
        (release / "train" / "m4" / ("5.%d.png" % labels[5])).rename(release / "train" / "m4" / ("5.%d.png" % ((labels[5] + 1) % 10)))
    with pytest.raises(MemeError, match=words.replace(".", r"\.").replace("<", "<")):
        read_release(release, "train")


def test_a_folder_with_a_different_polymnist_is_never_overwritten(built, synth_dir, capsys):
    before = md5s(built)
    assert main(["data", "polymnist", "--out", str(built), "--data-dir", str(synth_dir), "--no-download",
                 "--n-train", "400", "--n-test", "100", "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [f"meme: error: {built} already holds a different PolyMNIST (built from MNIST: 300 "
                                f"train, 100 test, seed 1, not built from MNIST: 400 train, 100 test, seed 1); nothing "
                                f"was written (give another --out, or --force to replace it)"]
    assert md5s(built) == before
    # the same one again: nothing to do, nothing touched
    assert main(["data", "polymnist", "--out", str(built), "--data-dir", str(synth_dir), "--no-download",
                 "--n-train", "300", "--n-test", "100", "--seed", "1"]) == 0
    assert "already holds this PolyMNIST" in capsys.readouterr().out and md5s(built) == before


def test_published_polymnist_networks_layer_by_layer():
    from meme.nets.polymnist import PublishedPolyMNISTModality

    mod = PublishedPolyMNISTModality(512, name="m0", scale=0.75)
    shapes = [tuple(p.shape) for p in mod.parameters()]
    assert shapes == [(32, 3, 3, 3), (32,), (64, 32, 3, 3), (64,), (128, 64, 3, 3), (128,), (512, 2048), (512,),
                      (512, 512), (512,), (512, 512), (512,),
                      (2048, 512), (2048,), (128, 64, 3, 3), (64,), (64, 32, 3, 3), (32,), (32, 3, 3, 3), (3,)]
    assert sum(p.numel() for p in mod.parameters()) == 2_811_395
    x = torch.rand(4, 3, 28, 28)
    mu, sigma = mod.encode(x)
    raw = mod.enc_sigma(mod.enc(x))
    assert mu.shape == (4, 512) and torch.allclose(sigma, (0.5 * raw).exp())   # a log-variance head
    out = mod.decode(torch.randn(2, 4, 512))
    assert out.shape == (2, 4, 3, 28, 28)
    assert not any(isinstance(m, (torch.nn.Sigmoid, torch.nn.BatchNorm2d)) for m in mod.modules())
    want = torch.distributions.Laplace(out, 0.75).log_prob(x).sum((-3, -2, -1))
    assert torch.allclose(mod.log_likelihood(x, out), want, rtol=1e-5)


@pytest.mark.parametrize("model", ["mvae", "mmvae", "mopoe", "mmjsd", "meme", "meme_mixture"])
def test_every_model_trains_and_evaluates_on_polymnist(built, tmp_path, capsys, model):
    out = tmp_path / "run"
    extra = ["--meme-combine", "mixture"] if model == "meme_mixture" else []
    extra += ["--K", "2", "--n-pseudo", "8"] if model.startswith("meme") else []
    assert main(["train", "--dataset", str(built / "polymnist.yaml"), "--model", model.split("_")[0], "--epochs", "1",
                 "--batch-size", "64", "--latent-dim", "16", "--supervision", "0.5", "--observed", "random",
                 "--out", str(out), "--quiet", "--max-test-pairs", "40", *extra]) == 0
    m = json.loads((out / "eval" / "metrics.json").read_text())
    for k in ("coherence_given_1", "coherence_given_2", "coherence_given_3", "coherence_given_4", "latent_acc_joint",
              "coherence_m0_to_m4", "classifier_acc_m2", "coherence_joint"):
        assert k in m and 0.0 <= m[k] <= 1.0, k
    table = json.loads((out / "eval" / "coherence.json").read_text())
    assert len(table) == 5 * 4 + 10 * 3 + 10 * 2 + 5 * 1   # every proper subset, every target outside it
    capsys.readouterr()


@pytest.fixture(scope="module")
def reduced(real_mnist_dir, tmp_path_factory):
    """The reduced PolyMNIST of ``polymnist_reduced`` from 12,000 real examples, and the same tables under the
    PolyMNIST networks (``preset.yaml``); the judges are trained once for both (cached by the tables' content)."""
    from meme.data.polymnist import write_polymnist

    out = tmp_path_factory.mktemp("reduced") / "pm"
    write_polymnist(out, data_dir=real_mnist_dir, n_train=12000, n_test=1000, download=False, plain=True)
    text = (out / "polymnist.yaml").read_text()
    (out / "preset.yaml").write_text(text.replace("networks: {", "networks: {preset: polymnist, "))
    return out


def mopoe_coherence_given(dataset) -> list[float]:
    """MoPoE trained 3 epochs (seed 0, 2 threads); its coherence given 1..4 inputs on 500 test examples."""
    from meme.eval import EvalConfig
    from meme.models import TrainConfig
    from meme.train import Trainer

    torch.set_num_threads(2)
    tr = Trainer(TrainConfig(dataset=str(dataset), model="mopoe", latent_dim=64, batch_size=64, lr=1e-3, epochs=3,
                             seed=0, precision="fp32", device="cpu", max_test_pairs=500))
    for _ in tr.epochs():
        pass
    m, _ = tr.evaluator(EvalConfig(n_latent_train=1000, n_joint=0, likelihood_k=0, elbo=False, n_tsne=0, device="cpu"))
    return [m[f"coherence_given_{k}"] for k in range(1, 5)]


@pytest.mark.slow
def test_reduced_polymnist_leaves_chance_on_coherence(reduced):
    """The reduced PolyMNIST (plain backgrounds at full contrast, the image networks by shape) is learnt in a CPU
    budget: MoPoE's conditional coherence leaves chance after 3 epochs of 12,000 real examples and grows with the
    number of inputs."""
    given = mopoe_coherence_given(reduced / "polymnist.yaml")
    # measured here: 0.59 0.67 0.73 0.77; chance is 0.113 (the test set's commonest class, which every collapsed
    # decoding is read as)
    assert given[0] > 0.35 and given[3] > given[0] + 0.05, given


@pytest.mark.slow
def test_the_polymnist_networks_stay_at_chance_on_the_reduced_polymnist(reduced):
    """The same data and budget under the PolyMNIST networks stays at chance (their posterior collapses over a flat
    colour), which is why the plain dataset file does not take them. A test of its own, so that neither of the two
    runs nears the per-test time limit."""
    given = mopoe_coherence_given(reduced / "preset.yaml")
    assert max(given) < 0.15, given   # measured here: 0.113 at every k
