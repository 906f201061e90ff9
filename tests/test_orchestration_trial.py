"""One trial without Ray (LocalSession) and its MLflow child run: resume equivalence, no duplicate epochs,
deterministic errors not retried, reports from hand-made runs."""
from __future__ import annotations

import math

import pytest

from meme.models import TrainConfig
from meme.errors import MemeError
from meme.train import NonFiniteLoss, Trainer
from orchestration import report, tracking
from orchestration.study import parse_study
from orchestration.study_schema import FigureSpec, TableSpec
from orchestration.trainable import LocalSession, TrialSettings, run_trial

EVAL = {"max_test_pairs": 64, "n_latent_train": 64, "n_joint": 0, "likelihood_k": 0, "n_tsne": 0, "n_grid": 4,
        "grid_samples": 1, "elbo": False}
STUDY = """\
description: trial tests
metric: loss
mode: min
epochs: 2
"""


def tiny(synth_dir, **kw) -> dict:
    return TrainConfig(data_dir=str(synth_dir), download=False, max_train_pairs=64, max_test_pairs=64, latent_dim=4,
                       batch_size=32, K=2, n_pseudo=4, epochs=2, supervision=0.5, **kw).to_dict()


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    """One MLflow database for the module (creating one takes seconds); each test has its own parent run."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def parent(db, tmp_path):
    study = parse_study(STUDY, "trialtest", "trialtest.yaml")
    return tracking.start_parent(db, "trialtest", study, "trialtest-1", str(tmp_path / "ray"), {"metric": "loss"})


def history(info, run_id, metric="epoch"):
    c = tracking.client_for(info.uri)
    return sorted((m.step, m.value) for m in c.get_metric_history(run_id, metric))


def children(info):
    return tracking.child_runs(tracking.client_for(info.uri), info.experiment_id, info.parent_run_id)


def test_resumed_trial_matches_an_uninterrupted_one_and_continues_the_same_child_run(synth_dir, parent):
    cfg = tiny(synth_dir)
    settings = TrialSettings(study="trialtest", eval=EVAL, varying=("supervision",), tracking=parent)
    straight = LocalSession("straight")
    full = run_trial(cfg, settings, straight)

    first = LocalSession("resumed")                      # the worker dies after epoch 1 ...
    run_trial({**cfg, "epochs": 1}, TrialSettings(study="trialtest", eval=EVAL, varying=("supervision",),
                                                  tracking=parent), first)
    assert first.state["epoch"] == 1
    again = LocalSession("resumed", state=first.state)  # ... and restarts from its last checkpoint
    resumed = run_trial(cfg, settings, again)

    assert [r["epoch"] for r in again.reports] == [2]  # only the remaining epoch is trained
    assert resumed["epoch"] == full["epoch"] == 2
    for k in ("loss", "loss_paired", "w2_gap", "latent_acc_mnist"):
        assert resumed[k] == pytest.approx(full[k], rel=1e-5), k
    runs = {r.data.tags[tracking.TAG_TRIAL_KEY]: r for r in children(parent)}
    assert sorted(runs) == ["resumed", "straight"]      # one child per trial key, never a second one
    rid = runs["resumed"].info.run_id
    assert [s for s, _ in history(parent, rid)] == [1, 2]
    assert [s for s, _ in history(parent, rid, "loss")] == [1, 2]
    assert runs["resumed"].info.run_name == "meme-f0.5-split-s0"
    params = runs["straight"].data.params
    assert set(TrainConfig.keys()) <= set(params) and params["supervision"] == "0.5"
    artifacts = {a.path for a in tracking.client_for(parent.uri).list_artifacts(rid, "eval")}
    assert {"eval/metrics.json", "eval/cross_mnist_to_svhn.png", "eval/w2_histogram.png"} <= artifacts


def test_a_restart_replays_epochs_without_logging_them_twice(parent):
    t = tracking.TrialTracker.open(parent, "k", "name", {"a": 1}, from_epoch=0)
    t.mark_running()
    for e in (1, 2, 3):
        t.log_epoch({"epoch": e, "loss": 10.0 - e}, e)
    again = tracking.TrialTracker.open(parent, "k", "name", {"a": 1}, from_epoch=1)   # checkpoint of epoch 1
    assert again.run_id == t.run_id and again.last_step == 3
    for e in (2, 3, 4):
        again.log_epoch({"epoch": e, "loss": 10.0 - e}, e)
    assert history(parent, t.run_id, "loss") == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)]
    scratch = tracking.TrialTracker.open(parent, "k", "name", {"a": 1}, from_epoch=0)  # restart from scratch
    assert scratch.run_id != t.run_id and scratch.last_step == 0
    assert [r.info.run_id for r in children(parent)] == [scratch.run_id]   # the old child is deleted


def test_a_non_finite_loss_fails_the_trial_with_its_reason_and_is_not_retried(synth_dir, parent, monkeypatch):
    settings = TrialSettings(study="trialtest", eval=EVAL, tracking=parent)
    with pytest.raises(NonFiniteLoss, match="non-finite loss"):
        run_trial(tiny(synth_dir, lr=1e30), settings, LocalSession("nan"))
    (run,) = children(parent)
    assert run.info.status == "FAILED"
    assert run.data.tags[tracking.TAG_FAILURE].startswith("NonFiniteLoss: non-finite loss")
    assert run.data.tags[tracking.TAG_FATAL] == parent.invocation

    built = []

    def stub(self, cfg):
        built.append(cfg)
        raise RuntimeError("stub trainer")

    monkeypatch.setattr(Trainer, "__init__", stub)
    with pytest.raises(MemeError, match=r"NonFiniteLoss: non-finite loss.*\(not retried"):
        run_trial(tiny(synth_dir, lr=1e30), settings, LocalSession("nan"))   # Tune's retry: fails at once
    assert built == []
    # a later invocation (--resume --retry-errored) does try again
    later = tracking.TrackingInfo(parent.uri, parent.experiment_id, parent.parent_run_id, "trialtest", "another")
    with pytest.raises(RuntimeError, match="stub trainer"):   # reaches the (stubbed) Trainer
        run_trial(tiny(synth_dir, lr=1e30), TrialSettings(study="trialtest", eval=EVAL, tracking=later),
                  LocalSession("nan"))
    assert len(built) == 1


def test_driver_marks_trials_and_creates_a_failed_child_for_a_worker_that_never_started(parent):
    tracking.set_trial_status(parent, "ghost", "FAILED", {tracking.TAG_FAILURE: "RayActorError: died"},
                              run_name="meme-f1-split-s0")
    tracking.set_trial_status(parent, "nobody", "FINISHED")   # no child, not failed: nothing to record
    (run,) = children(parent)
    assert run.info.status == "FAILED" and run.data.tags[tracking.TAG_FAILURE] == "RayActorError: died"
    assert run.info.run_name == "meme-f1-split-s0"


# ------------------------------------------------------------------ reports
def rec(name, seed, f, observed, **metrics):
    return report.RunRecord(name, "FINISHED", {"model": "meme", "supervision": f, "observed": observed, "seed": seed},
                            metrics)


RECORDS = [rec("a", 0, 1.0, "split", coh=0.6, acc=0.9), rec("b", 1, 1.0, "split", coh=0.8, acc=0.7),
           rec("c", 0, 0.25, "split", coh=0.5), rec("d", 0, 0.25, "mnist", coh=0.2, acc=0.4)]


def test_group_takes_mean_and_sample_std_over_seeds():
    g = report.group(RECORDS, ("observed", "supervision"), "coh")
    assert g[("split", 1.0)] == pytest.approx((0.7, math.sqrt(0.02), 2))
    assert g[("split", 0.25)] == (0.5, 0.0, 1)
    assert list(g) == [("mnist", 0.25), ("split", 0.25), ("split", 1.0)]
    assert ("split", 0.25) not in report.group(RECORDS, ("observed", "supervision"), "acc")


def test_tables_and_figures_from_records(tmp_path):
    header, rows, csv_rows = report.build_table(TableSpec("t", ("observed", "supervision"), ("coh", "acc")), RECORDS)
    assert header == ["observed", "supervision", "coh", "acc"]
    assert rows[2] == ["split", "1", "0.7000 ± 0.1414 (2)", "0.8000 ± 0.1414 (2)"]
    assert rows[1] == ["split", "1/4", "0.5000 ± 0.0000 (1)", "-"]
    assert csv_rows[2]["coh_mean"] == pytest.approx(0.7) and csv_rows[2]["coh_n"] == 2
    md, csv_path = report.write_table(TableSpec("t", ("observed", "supervision"), ("coh",)), RECORDS, tmp_path)
    assert "| split | 1 | 0.7000 ± 0.1414 (2) |" in md.read_text()
    assert csv_path.read_text().splitlines()[0] == "observed,supervision,coh_mean,coh_std,coh_n"
    png = report.draw_figure(FigureSpec("f", "supervision", ("coh", "acc"), ("observed",), "t", True), RECORDS, tmp_path)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert report.draw_figure(FigureSpec("g", "supervision", ("absent",)), RECORDS, tmp_path) is None


# ------------------------------------------------------------------- claims
def crec(name, model, f, seed, **metrics):
    return report.RunRecord(name, "FINISHED", {"model": model, "supervision": f, "seed": seed}, metrics)


CLAIM_RUNS = [crec("m1", "meme", 1.0, 0, coh=0.60, a=0.9, b=0.7), crec("m2", "meme", 1.0, 1, coh=0.70, a=0.9, b=0.6),
              crec("v1", "mvae", 1.0, 0, coh=0.30, a=0.95, b=0.2), crec("v2", "mvae", 1.0, 1, coh=0.50, a=0.9, b=0.3),
              crec("m3", "meme", 0.25, 0, coh=0.40), crec("m4", "meme", 0.25, 1, coh=0.42),
              crec("v3", "mvae", 0.25, 0, coh=0.41), crec("v4", "mvae", 0.25, 1, coh=0.45)]


def _claim(text):
    from orchestration.study import parse_study

    return parse_study(MINIMAL_CLAIMS.format(claims=text), "c").claims


MINIMAL_CLAIMS = """\
description: claims
metric: coherence_cross_mean
mode: max
epochs: 1
report:
  claims:
{claims}
"""


def test_claims_by_hand():
    (spec,) = _claim("""    - {name: meme_beats_mvae, text: MEME beats MVAE, per: [supervision],
       a: {where: {model: meme}, metric: coh}, b: {where: {model: mvae}, metric: coh}}""")
    overall, rows = report.evaluate_claim(spec, CLAIM_RUNS)
    # f = 1/4: meme 0.41 +- 0.0141 against mvae 0.43 +- 0.0283: does not hold; f = 1: 0.65 against 0.40 holds
    assert overall == "does not hold"
    assert [(r["supervision"], r["verdict"]) for r in rows] == [(0.25, "does not hold"), (1.0, "holds")]
    assert rows[1]["a_mean"] == pytest.approx(0.65) and rows[1]["b_mean"] == pytest.approx(0.40)
    assert rows[1]["a_std"] == pytest.approx(math.sqrt(0.005)) and rows[1]["b_n"] == 2
    # a difference of two metrics per run, against a constant; within seed noise when the gap is small
    (gap,) = _claim("""    - {name: lopsided, text: lopsided, a: {where: {model: mvae}, metric: a - b}, b: {value: 0.6}}""")
    overall, rows = report.evaluate_claim(gap, CLAIM_RUNS)
    # mvae a - b over its two f = 1 runs: 0.75 and 0.60 -> mean 0.675, std 0.106 > gap 0.075
    assert rows[0]["a_mean"] == pytest.approx(0.675) and rows[0]["a_n"] == 2
    assert overall == "holds, within seed noise"
    (none,) = _claim("""    - {name: none, text: none, a: {where: {model: mopoe}, metric: coh}, b: {value: 0}}""")
    assert report.evaluate_claim(none, CLAIM_RUNS)[0] == "no runs"


def test_claims_file_written(tmp_path):
    specs = _claim("""    - {name: c1, text: MEME beats MVAE, per: [supervision],
       a: {where: {model: meme}, metric: coh}, b: {where: {model: mvae}, metric: coh}}""")
    md, csv_path = report.write_claims(specs, CLAIM_RUNS, tmp_path)
    text = md.read_text()
    assert "| **MEME beats MVAE** | **does not hold** | | coh [model=meme] | coh [model=mvae] |" in text
    assert "| | holds | supervision=1 | 0.6500 ± 0.0707 (2) | 0.4000 ± 0.1414 (2) |" in text
    assert csv_path.read_text().splitlines()[0] == "claim,group,verdict,overall,a_mean,a_std,a_n,b_mean,b_std,b_n"


def test_report_from_run_directories(tmp_path, synth_dir, capsys):
    """``report.py --runs DIR``: ``meme train`` run directories instead of MLflow. Hand-written runs give the
    hand-computed claim of ``test_claims_file_written``; a real run's evaluations come back under their trial
    names; an unfinished run is listed and skipped."""
    import json

    from meme.eval import EvalConfig
    from meme.train import train

    runs = tmp_path / "runs"
    for r in CLAIM_RUNS:
        d = runs / r.name
        d.mkdir(parents=True)
        TrainConfig(model=r.config["model"], supervision=r.config["supervision"], seed=r.config["seed"],
                    epochs=2).save(d / "config.json")
        rows = [{"epoch": 1, "loss": 9.0, "eval_coh": 0.0}, {"epoch": 2, "loss": 5.0, "eval_coh": r.metrics["coh"]}]
        (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    cut = runs / "cut"
    cut.mkdir()
    TrainConfig(model="meme", epochs=2).save(cut / "config.json")
    (cut / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 1.0, "eval_coh": 99.0}) + "\n")
    records, skipped = report.load_run_dirs(runs)
    assert sorted(r.name for r in records) == sorted(r.name for r in CLAIM_RUNS) and skipped == ["cut: epoch 1 of 2"]
    assert {r.name: r.metrics["coh"] for r in records} == {r.name: r.metrics["coh"] for r in CLAIM_RUNS}
    assert all(r.metrics["loss"] == 5.0 and r.config["epochs"] == 2 for r in records)

    study = tmp_path / "c.yaml"
    study.write_text(MINIMAL_CLAIMS.format(claims="""    - {name: c1, text: MEME beats MVAE, per: [supervision],
       a: {where: {model: meme}, metric: coh}, b: {where: {model: mvae}, metric: coh}}"""))
    assert report.main(["--study", str(study), "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "skipped (not finished): cut: epoch 1 of 2" in out
    assert "| | holds | supervision=1 | 0.6500 ± 0.0707 (2) | 0.4000 ± 0.1414 (2) |" in (runs / "report" / "claims.md").read_text()
    assert report.main(["--study", str(study), "--runs", str(runs), "--run-id", "abc"]) == 2
    assert "--runs reads run directories, not MLflow; drop --run-id" in capsys.readouterr().err
    assert report.main(["--study", str(study), "--runs", str(tmp_path / "nowhere")]) == 2
    assert "--runs" in capsys.readouterr().err

    real = tmp_path / "real"
    cfg = TrainConfig(data_dir=str(synth_dir), download=False, max_train_pairs=256, max_test_pairs=128, latent_dim=8,
                      epochs=1, seed=0)
    list(train(cfg, real / "meme-s0", progress=False, eval_cfg=EvalConfig(likelihood_k=0, n_joint=0, n_tsne=0,
                                                                          n_latent_train=256, elbo=False)))
    (rec,), skipped = report.load_run_dirs(real)
    assert skipped == [] and rec.name == "meme-s0" and rec.config == cfg.to_dict()
    assert "w2_gap" in rec.metrics and "latent_acc_mnist" in rec.metrics and not any(k.startswith("eval_") for k in rec.metrics)


@pytest.mark.parametrize("text, message", [
    ("    - {name: x, text: t, a: {metric: coh}}", r"report.claims\[0\].b: missing \(required\)"),
    ("    - {name: x, text: t, a: {metric: coh, value: 1}, b: {value: 0}}", r"report.claims\[0\].a.value: unknown key; valid keys: where, metric"),
    ("    - {name: x, text: t, a: {metric: coh}, b: {value: 0, metric: coh}}", r"report.claims\[0\].b: a constant side is \{value: NUMBER\} alone"),
    ("    - {name: x, text: t, a: {metric: a - b - c}, b: {value: 0}}", r"report.claims\[0\].a.metric: a metric name or 'METRIC - METRIC'"),
    ("    - {name: x, text: t, a: {metric: coh, where: {modle: meme}}, b: {value: 0}}", r"report.claims\[0\].a.where.modle: unknown config key"),
    ("    - {name: x, text: t, per: [f], a: {metric: coh}, b: {value: 0}}", r"report.claims\[0\].per\[0\]: unknown config key 'f'"),
])
def test_bad_claims_are_refused_with_the_key(text, message):
    with pytest.raises(MemeError, match=message):
        _claim(text)
