"""Digit classifiers (train, save, load, refuse) and `meme eval` on a trained run, including its errors."""
from __future__ import annotations

import json

import pytest
import torch

from meme.cli import main
from meme.models import TrainConfig
from meme.errors import MemeError
from meme.eval import EvalConfig, evaluate, load_classifiers
from meme.eval.classifiers import accuracy, ensure_classifiers, load_classifier, predict
from meme.runs import load_run
from meme.train import train


@pytest.fixture(scope="module")
def clf_dir(synth_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("classifiers")
    ensure_classifiers(["mnist", "svhn"], data_dir=synth_dir, directory=d, epochs=1, max_train=256,
                       progress=False, download=False)
    return d


@pytest.fixture(scope="module")
def run_dir(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data_dir=str(synth_dir), download=False, max_train_pairs=256, batch_size=64, latent_dim=8, K=3,
                      n_pseudo=8, epochs=1, precision="fp32", device="cpu")
    list(train(cfg, out, progress=False))
    return out


def test_classifiers_are_saved_with_their_test_accuracy_and_reloaded_identically(synth_dir, clf_dir):
    from meme.data.mnist_svhn import load_svhn

    x, y = load_svhn(synth_dir, "test", download=False)
    clf, record = load_classifier("svhn", clf_dir)
    assert record["modality"] == "svhn" and record["n_train"] == 256 and record["n_test"] == 200
    assert record["test_accuracy"] == pytest.approx(accuracy(clf, x, y))
    again, _ = load_classifier("svhn", clf_dir)
    assert torch.equal(predict(clf, x), predict(again, x))
    # reused when present: nothing is retrained
    stamp = (clf_dir / "svhn.pt").stat().st_mtime_ns
    ensure_classifiers(["svhn"], data_dir=synth_dir, directory=clf_dir, progress=False, download=False)
    assert (clf_dir / "svhn.pt").stat().st_mtime_ns == stamp
    assert set(load_classifiers(["mnist", "svhn", "caption"], clf_dir)) == {"mnist", "svhn"}


def test_missing_wrong_or_corrupt_classifier_files_are_clear_errors(clf_dir, tmp_path):
    with pytest.raises(MemeError, match="no mnist classifier at .*meme eval classifiers"):
        load_classifiers(["mnist", "svhn"], tmp_path)
    assert load_classifiers(["mnist", "svhn"], tmp_path, missing="skip") == {}
    (tmp_path / "mnist.pt").write_bytes((clf_dir / "svhn.pt").read_bytes())
    (tmp_path / "mnist.json").write_text((clf_dir / "svhn.json").read_text())
    with pytest.raises(MemeError, match="describes a classifier for 'svhn', not 'mnist'"):
        load_classifier("mnist", tmp_path)
    (tmp_path / "mnist.json").write_text((clf_dir / "mnist.json").read_text())
    with pytest.raises(MemeError, match="does not fit the mnist classifier"):
        load_classifier("mnist", tmp_path)
    (tmp_path / "mnist.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MemeError, match="corrupt"):
        load_classifier("mnist", tmp_path)
    with pytest.raises(MemeError, match="unknown classifier modality 'caption'"):
        load_classifier("caption", clf_dir)


SMALL = ["--likelihood-k", "4", "--likelihood-pairs", "16", "--n-joint", "64", "--n-tsne", "0",
         "--n-latent-train", "200", "--batch-size", "64", "--quiet"]


def test_meme_eval_writes_the_metrics_of_evaluate_and_the_figures(run_dir, clf_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run_dir), "--out", str(out), "--classifier-dir", str(clf_dir), *SMALL]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("coherence_mnist_to_svhn", "coherence_svhn_to_mnist", "coherence_joint", "latent_acc_mnist",
                "latent_acc_svhn", "w2_paired_mean", "w2_unpaired_mean", "w2_gap", "w2_auroc",
                "loglik_mnist_given_svhn", "loglik_svhn_given_mnist", "elbo_test"):
        assert key in metrics, key
    assert metrics["n_test_pairs"] == 200.0
    assert metrics["w2_gap"] == pytest.approx(metrics["w2_unpaired_mean"] - metrics["w2_paired_mean"])
    # the number trials, meme train and meme eval all rank by: the mean of the two directions
    assert metrics["coherence_cross_mean"] == pytest.approx(
        (metrics["coherence_mnist_to_svhn"] + metrics["coherence_svhn_to_mnist"]) / 2)
    assert {p.name for p in out.iterdir()} >= {"cross_mnist_to_svhn.png", "cross_svhn_to_mnist.png", "w2_histogram.png",
                                                "class_matrix.png", "relatedness.json", "eval_config.json"}
    assert "coherence_mnist_to_svhn" in capsys.readouterr().out
    # the CLI is evaluate() on the rebuilt model: same config, same seed, same numbers
    model, _, train_data, test_data = load_run(run_dir)
    cfg = EvalConfig(likelihood_k=4, likelihood_pairs=16, n_joint=64, n_tsne=0, n_latent_train=200, batch_size=64,
                     device="cpu")
    again, files = evaluate(model, train_data, test_data, load_classifiers(model.names, clf_dir), cfg)
    assert again == metrics and files == []


def _broken_run(run_dir, tmp_path, change):
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    change(state)
    tmp_path.mkdir(exist_ok=True)
    torch.save(state, tmp_path / "checkpoint.pt")
    return tmp_path


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(model_name="mvae"), "holds a 'mvae' model, expected 'meme'"),
    (lambda s: s.update(modalities=["svhn", "mnist"]), r"is for modalities \('svhn', 'mnist'\), expected \('mnist', 'svhn'\)"),
    (lambda s: s["model"].pop("mods.0.enc_mu.weight"), "weights do not fit the 'meme' model"),
    (lambda s: s["config"].update(latent_dim=16), "weights do not fit the 'meme' model"),
])
def test_meme_eval_refuses_a_checkpoint_of_the_wrong_model_or_modality(run_dir, clf_dir, tmp_path, capsys, change, message):
    bad = _broken_run(run_dir, tmp_path / "bad", change)
    code = main(["eval", "--checkpoint", str(bad), "--classifier-dir", str(clf_dir), *SMALL])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("meme: error: checkpoint") and message.replace("\\", "") in err.replace("\\", "") or \
        pytest.fail(err)


def test_meme_eval_user_errors_exit_2_with_one_line(run_dir, clf_dir, tmp_path, capsys):
    cases = [
        (["eval", "--checkpoint", str(run_dir), "--classifier-dir", str(tmp_path)], "no mnist classifier at"),
        (["eval", "--checkpoint", str(run_dir), "--model", "mvae"], "holds a 'meme' model, expected 'mvae'"),
        (["eval", "--checkpoint", str(tmp_path / "nowhere")], "no checkpoint at"),
        (["eval"], "needs --checkpoint"),
        (["eval", "--checkpoint", str(run_dir), "--batch-size", "1"], "batch_size=1"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
