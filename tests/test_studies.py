"""Study files: the shipped studies, the schema's errors (file, key, what is valid), trial expansion, names."""
from __future__ import annotations

import textwrap

import pytest

from meme.models import TrainConfig
from meme.errors import MemeError
from meme.models import MODELS
from orchestration import sweep
from orchestration.study import STUDIES_DIR, load_study, parse_study, study_names, trial_name

PAPER_F = [1.0, 0.5, 0.25, 0.125, 0.0625]
SHIPPED = ["ablation_paired_only", "ablation_pseudo", "ablation_pseudo_polymnist", "baselines_mnist_svhn", "claims", "claims_reduced", "direction",
           "lr_search", "polymnist", "polymnist_reduced", "polymnist_reduced_partial", "smoke",
           "supervision_cub", "supervision_mnist_svhn"]

MINIMAL = """\
description: a test study
metric: loss
mode: min
epochs: 2
"""


def study(extra: str = "", base: str = MINIMAL):
    return parse_study(base + textwrap.dedent(extra), "t", "t.yaml")


def error(extra: str, base: str = MINIMAL) -> str:
    with pytest.raises(MemeError) as e:
        study(extra, base)
    return str(e.value)


# ----------------------------------------------------------- shipped studies
def test_every_study_of_the_paper_is_shipped():
    assert study_names() == SHIPPED


@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "supervision_cub"])
def test_shipped_study_validates_and_has_a_report(name):
    s = load_study(name)
    assert s.description and s.metric and s.mode in ("min", "max")
    assert s.figures or s.tables
    for point in s.points():   # every trial config is a valid TrainConfig
        TrainConfig.from_dict(s.base_config(**point))


def test_cub_study_validates_against_the_dataset_registry():
    from meme.data import DATASETS

    if "cub" in DATASETS:
        s = load_study("supervision_cub")
        assert sorted({p["supervision"] for p in s.points()}, reverse=True) == PAPER_F
        assert {p["observed"] for p in s.points()} == {"cub_image", "cub_caption", "split"} and s.num_trials() == 45
    else:  # until the cub dataset is registered, loading fails naming the file, the value and the valid ones
        with pytest.raises(MemeError, match=r"supervision_cub\.yaml: base: unknown dataset 'cub'; valid: mnist_svhn"):
            load_study("supervision_cub")


def test_supervision_study_is_the_papers_grid():
    s = load_study("supervision_mnist_svhn")
    pts = s.points()
    assert len(pts) == 45 == s.num_trials()
    assert sorted({p["supervision"] for p in pts}, reverse=True) == PAPER_F
    assert {p["observed"] for p in pts} == {"mnist", "svhn", "split"}
    assert {p["seed"] for p in pts} == {0, 1, 2}
    assert s.base["model"] == "meme" and s.epochs == 100
    assert s.varying_keys() == ("supervision", "observed", "seed")


def test_baselines_study_runs_every_baseline_once_per_point():
    s = load_study("baselines_mnist_svhn")
    pts = s.points()
    assert {p["model"] for p in pts} == {"mvae", "mmvae", "mopoe", "mmjsd"} <= set(MODELS)
    # MMVAE learns from the paired part only: one observation scheme, not three identical runs
    assert sum(p["model"] == "mmvae" for p in pts) == 15
    assert sum(p["model"] == "mvae" for p in pts) == 45
    assert len(pts) == 150


def test_ablations_direction_and_lr_search():
    pseudo = load_study("ablation_pseudo")
    assert {p["n_pseudo"] for p in pseudo.points()} == {5, 10, 25, 50, 100}
    assert pseudo.figures[0].x == "n_pseudo"
    paired = load_study("ablation_paired_only")
    assert {p["paired_only"] for p in paired.points()} == {False, True}
    direction = load_study("direction")
    assert {p["direction"] for p in direction.points()} == {"both", "t_supervises_s", "s_supervises_t"}
    assert direction.eval["likelihood_k"] == 1000
    lr = load_study("lr_search")
    assert lr.searcher == {"name": "optuna", "seed": 0, "num_samples": 24}
    assert lr.scheduler["name"] == "asha" and lr.per_epoch_metric()
    assert lr.search["lr"].dist == "loguniform" and lr.search["lr"].args == (1e-4, 3e-3)


def test_smoke_study_is_tiny_and_generates_its_data():
    s = load_study("smoke")
    assert s.synthetic_data and s.epochs <= 2
    assert s.base["max_train_pairs"] <= 300 and s.base["latent_dim"] <= 16
    assert 2 <= s.num_trials() <= 4


# ----------------------------------------------------------- schema errors
@pytest.mark.parametrize("extra, message", [
    ("gird: {seed: [0]}\n", "t.yaml: gird: unknown key; valid keys: description, base, grid"),
    ("grid: {supervision: []}\n", "t.yaml: grid.supervision: is an empty list; give at least one value"),
    ("grid: {supervision: 0.5}\n", "t.yaml: grid.supervision: must be a list of values (e.g. [0.5])"),
    ("grid: {supervision: [0.5, 1.5]}\n", "t.yaml: grid.supervision[1]: supervision fraction f=1.5 is outside (0, 1]"),
    ("grid: {model: [meme, mvea]}\n", "t.yaml: grid.model[1]: unknown model 'mvea'; valid: meme, mvae"),
    ("grid: {latnet_dim: [8]}\n", "t.yaml: grid.latnet_dim: unknown config key; valid keys: model, dataset"),
    ("grid: {seed: [0, 0]}\n", "t.yaml: grid.seed: repeats a value"),
    ("grid: {}\n", "t.yaml: grid: is empty"),
    ("base: {latnet_dim: 8}\n", "t.yaml: base: unknown config key(s) 'latnet_dim'; valid keys:"),
    ("base: {latent_dim: eight}\n", "t.yaml: base: config key 'latent_dim' must be of type int, got 'eight'"),
    ("base: {epochs: 3}\n", "t.yaml: base.epochs: set epochs at the top level"),
    ("base: {seed: 1}\ngrid: {seed: [0, 1]}\n", "t.yaml: grid.seed: also set in base (1); keep it in one place"),
    ("search: {lr: {loguniform: [0, 1.0e-3]}}\nsearcher: {name: optuna}\n",
     "t.yaml: search.lr.loguniform: low=0 must be > 0"),
    ("search: {lr: {normal: [0, 1]}}\nsearcher: {name: optuna}\n",
     "t.yaml: search.lr.normal: unknown distribution; valid: uniform, loguniform, randint, choice"),
    ("search: {latent_dim: {uniform: [4, 8]}}\nsearcher: {name: optuna}\n",
     "t.yaml: search.latent_dim.uniform: latent_dim is a int; uniform draws floats"),
    ("search: {K: {choice: []}}\nsearcher: {name: optuna}\n", "t.yaml: search.K.choice: must be a non-empty list"),
    ("search: {beta1: {uniform: [0.5, 1.0]}}\nsearcher: {name: optuna}\n",
     "t.yaml: search.beta1.uniform[1]: beta1=1.0 must be in [0, 1)"),
    ("search: {lr: {uniform: [1.0e-4, 1.0e-3]}}\n", "t.yaml: searcher: missing: a search space needs a searcher"),
    ("search: {lr: {uniform: [1.0e-4, 1.0e-3]}}\nsearcher: {name: optuna}\ngrid: {seed: [0, 1]}\n",
     "t.yaml: grid: cannot be combined with the optuna searcher"),
    ("searcher: {name: tpe}\n", "t.yaml: searcher.name: unknown value 'tpe'; valid: optuna, random"),
    ("scheduler: {name: asha, reduction_factor: 1}\n", "t.yaml: scheduler.reduction_factor: must be a number > 1"),
    ("resources: {gpu: 1.5}\n", "t.yaml: resources.gpu: 1.5 GPUs: use a fraction of one GPU"),
    ("resources: {cpu: 0}\n", "t.yaml: resources.cpu: must be a number > 0, got 0"),
    ("eval: {n_jiont: 5}\n", "t.yaml: eval: unknown eval config key(s) 'n_jiont'; valid keys:"),
    ("synthetic_data: {n_train: 5, n_test: 100}\n", "t.yaml: synthetic_data.n_train: must be an integer >= 10, got 5"),
    ("report: {figures: [{name: a, x: supervison, y: [loss]}]}\n", "t.yaml: report.figures[0].x: unknown config key 'supervison'"),
    ("report: {tables: [{name: a, rows: [seed], columns: []}]}\n", "t.yaml: report.tables[0].columns: must be a non-empty list"),
])
def test_schema_errors_name_the_file_the_key_and_what_is_valid(extra, message):
    assert message in error(extra)


@pytest.mark.parametrize("text, message", [
    ("description: x\nmetric: loss\nepochs: 2\n", "t.yaml: mode: missing (required)"),
    ("description: x\nmetric: loss\nmode: best\nepochs: 2\n", "t.yaml: mode: unknown value 'best'; valid: min, max"),
    ("description: x\nmetric: loss\nmode: min\nepochs: '10'\n", "t.yaml: epochs: must be an integer >= 1, got '10'"),
    ("description: x\nmetric: loss\nmode: min\nepochs: 0\n", "t.yaml: epochs: must be an integer >= 1, got 0"),
    ("description: x\nmetric: loss\nmode: min\nmode: max\nepochs: 1\n", "t.yaml: not valid YAML: duplicate key 'mode'"),
    ("", "t.yaml: (file): is empty"),
    ("- a\n- b\n", "t.yaml: : must be a mapping"),
])
def test_top_level_errors(text, message):
    with pytest.raises(MemeError) as e:
        parse_study(text, "t", "t.yaml")
    assert message in str(e.value)


@pytest.mark.parametrize("extra, message", [
    # every message below comes from the declared schema (orchestration/study_schema.py), worded by one function
    ("searcher: {name: random, seed: true}\n", "t.yaml: searcher.seed: must be an integer >= 0, got True"),
    ("searcher: {nam: random}\n", "t.yaml: searcher.nam: unknown key; valid keys: name, seed, num_samples"),
    ("searcher: {seed: 1}\n", "t.yaml: searcher.name: missing (required)"),
    ("searcher: [1]\n", "t.yaml: searcher: must be a mapping, got list [1]"),
    ("scheduler: {name: fifo, grace_period: 1}\n", "t.yaml: scheduler.grace_period: is an ASHA setting; fifo takes none"),
    ("scheduler: {name: asha, reduction_factor: .inf}\n", "t.yaml: scheduler.reduction_factor: must be a number > 1, got inf"),
    ("resources: {cpu: true}\n", "t.yaml: resources.cpu: must be a number > 0, got True"),
    ("search: {lr: {uniform: [1, 2], choice: [1]}}\nsearcher: {name: random}\n",
     "t.yaml: search.lr: must be one distribution, e.g. {loguniform: [1.0e-4, 1.0e-2]}; valid: uniform, loguniform, "
     "randint, choice; got {'uniform': [1, 2], 'choice': [1]}"),
    ("search: {latent_dim: {randint: [1.5, 3]}}\nsearcher: {name: random}\n",
     "t.yaml: search.latent_dim.randint: must be two integers [low, high) , got [1.5, 3]"),
    ("report: {figures: 3}\n", "t.yaml: report.figures: must be a list of figures, got 3"),
    ("report: {figures: [{name: 'a b', x: seed, y: [loss]}]}\n",
     "t.yaml: report.figures[0].name: 'a b' must use only letters, digits, '_', '-' and '.'"),
    ("report: {figures: [{name: a, x: seed, y: [loss], logx: 1}]}\n", "t.yaml: report.figures[0].logx: must be true or false, got 1"),
    ("report: {figures: [{name: a, x: seed, y: [loss], colour: red}]}\n",
     "t.yaml: report.figures[0].colour: unknown key; valid keys: name, x, y, series, title, logx, where"),
    ("report: {figures: [{name: a, x: seed, y: [loss], where: {sed: 1}}]}\n",
     "t.yaml: report.figures[0].where.sed: unknown config key 'sed'; valid keys: model, dataset"),
    ("report: {tables: [{name: a, rows: [], columns: [loss]}]}\n",
     "t.yaml: report.tables[0].rows: must be a non-empty list of config keys, got []"),
    ("report: {tables: [{name: a, rows: [seed], columns: [loss]}], figures: [{name: a, x: seed, y: [loss]}]}\n",
     "t.yaml: report.tables[0].name: 'a' is used twice; figure, table and claim names must be unique"),
    ("report: {claims: [{name: c, text: t, a: {metric: loss, value: 1}, b: {value: 0}}]}\n",
     "t.yaml: report.claims[0].a.value: unknown key; valid keys: where, metric"),
    ("report: {claims: [{name: c, text: t, a: {where: {seed: 0}}, b: {value: 0}}]}\n",
     "t.yaml: report.claims[0].a.metric: missing (required)"),
    ("report: {claims: [{name: c, text: t, a: {metric: loss}, b: {value: 0, metric: loss}}]}\n",
     "t.yaml: report.claims[0].b: a constant side is {value: NUMBER} alone, got {'value': 0, 'metric': 'loss'}"),
    ("report: {claims: [{name: c, text: t, a: {metric: 'a - b - c'}, b: {value: 0}}]}\n",
     "t.yaml: report.claims[0].a.metric: a metric name or 'METRIC - METRIC', got 'a - b - c'"),
    ("report: {claims: [{name: c, text: t, a: {metric: loss}}]}\n", "t.yaml: report.claims[0].b: missing (required)"),
    ("grid: [1]\n", "t.yaml: grid[0]: must be a mapping, got int 1"),
])
def test_schema_errors_come_from_the_declared_schema(extra, message):
    assert error(extra).startswith(message)


def test_a_study_file_reads_into_the_declared_types():
    s = study("""\
        searcher: {name: random, num_samples: 3}
        search: {lr: {loguniform: [1.0e-4, 1.0e-3]}, K: {choice: [5, 10]}}
        scheduler: {name: asha}
        resources: {cpu: 2, gpu: 0.5}
        report:
          figures: [{name: f, x: lr, y: [loss], where: {seed: 0, model: meme}}]
          claims: [{name: c, text: t, a: {metric: loss}, b: {value: 0}}]
        """)
    assert s.searcher == {"name": "random", "seed": 0, "num_samples": 3}
    assert s.scheduler == {"name": "asha", "grace_period": 1, "reduction_factor": 2}
    assert s.resources == {"cpu": 2.0, "gpu": 0.5} and isinstance(s.resources["cpu"], float)
    assert (s.search["lr"].dist, s.search["lr"].args) == ("loguniform", (1e-4, 1e-3))
    assert (s.search["K"].dist, s.search["K"].args) == ("choice", (5, 10))
    fig = s.figures[0]
    assert (fig.y, fig.series, fig.logx, fig.where) == (("loss",), (), False, (("model", "meme"), ("seed", 0)))
    assert s.claims[0].b.value == 0.0 and s.claims[0].a.metric == "loss" and s.claims[0].per == ()


def test_the_exported_json_schema_agrees_with_the_loader(capsys):
    """``sweep.py --study-schema`` is the schema the loader uses: every shipped study passes it, and a typo in a key
    or a wrong type fails it as it fails the loader."""
    import json

    import jsonschema

    from meme.yamlio import load_yaml

    assert sweep.main(["--study-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in SHIPPED:
        doc = load_yaml((STUDIES_DIR / f"{name}.yaml").read_text(), name)
        assert list(validator.iter_errors(doc)) == [], name
    assert sorted(schema["required"]) == ["description", "epochs", "metric", "mode"]
    for bad in ("searcher: {name: optuna, num_sample: 4}\n", "epochs: '3'\n", "scheduler: {name: hyperband}\n",
                "report: {tables: [{name: t, rows: [seed], columns: []}]}\n"):
        doc = load_yaml(MINIMAL.replace("epochs: 2\n", "") + ("" if bad.startswith("epochs") else "epochs: 2\n") + bad, "t")
        assert list(validator.iter_errors(doc)), bad
        with pytest.raises(MemeError):
            parse_study(MINIMAL.replace("epochs: 2\n", "") + ("" if bad.startswith("epochs") else "epochs: 2\n") + bad, "t")


def test_scheduler_needs_a_metric_reported_every_epoch():
    extra = "scheduler: {name: asha}\n"
    assert "a searcher or scheduler needs it every epoch" in error(extra, MINIMAL.replace("loss", "w2_gap"))
    ok = study("scheduler: {name: asha}\nbase: {eval_every: 1}\n", MINIMAL.replace("loss", "w2_gap"))
    assert ok.per_epoch_metric() and study(extra).scheduler == {"name": "asha", "grace_period": 1, "reduction_factor": 2}


def test_numbers_read_as_floats_and_unions_expand_in_order():
    s = study("""\
        base: {lr: 5e-4}
        grid:
          - {model: [meme], supervision: [1.0, 0.25]}
          - {model: [mvae], supervision: [0.5]}
        """)
    assert s.base["lr"] == 5e-4   # YAML 1.1 would read 5e-4 as a string
    assert s.points() == [{"model": "meme", "supervision": 1.0}, {"model": "meme", "supervision": 0.25},
                          {"model": "mvae", "supervision": 0.5}]
    assert s.varying_keys() == ("model", "supervision")
    assert "appears twice" in error("grid: [{seed: [0, 1]}, {seed: [1]}]\n")


def test_unknown_study_lists_the_valid_ones():
    with pytest.raises(MemeError, match=r"unknown study 'nope'; valid: ablation_paired_only, ablation_pseudo"):
        load_study("nope")
    assert (STUDIES_DIR / "smoke.yaml").is_file()


def test_trial_names_are_readable():
    cfg = {**TrainConfig().to_dict(), "supervision": 0.25, "observed": "mnist", "n_pseudo": 10}
    assert trial_name(cfg, ("supervision", "n_pseudo", "seed")) == "meme-f0.25-mnist-p10-s0"
    cfg = {**cfg, "model": "mvae", "paired_only": True, "lr": 3.16e-4}
    assert trial_name(cfg, ("paired_only", "lr"), index=7) == "mvae-f0.25-mnist-pairedonly-lr0.00032-s0-t7"


# -------------------------------------------------------------- sweep CLI
def test_dry_run_prints_every_trial(capsys):
    assert sweep.main(["--study", "supervision_mnist_svhn", "--dry-run", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("[")]
    assert len(lines) == 45
    assert "45 trials x 3 epochs" in out and "meme-f0.0625-split-s2" in lines[-1]


def test_list_and_usage_errors(capsys):
    assert sweep.main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in SHIPPED) and "Fig. 21" in out
    assert sweep.main(["--study", "nope"]) == 2
    assert "sweep.py: error: unknown study 'nope'; valid: ablation_paired_only" in capsys.readouterr().err
    assert sweep.main(["--study", "smoke", "--dry-run", "--gpus-per-trial", "1.5"]) == 2
    assert "--gpus-per-trial: 1.5 GPUs: use a fraction" in capsys.readouterr().err
    assert sweep.main(["--study", "smoke", "--restart-errored"]) == 2
    assert "go with --resume" in capsys.readouterr().err


def test_param_space_puts_grid_points_under_one_grid_search():
    s = load_study("baselines_mnist_svhn")
    space = sweep.param_space(s, s.base_config())
    assert space["grid"] == {"grid_search": s.points()}   # every point sets every grid key: nothing to fill in
    assert "model" not in space and "supervision" not in space and space["epochs"] == 100
    lr = load_study("lr_search")
    space = sweep.param_space(lr, lr.base_config())
    assert type(space["lr"]).__name__ == "Float" and space["lr"].lower == 1e-4
    assert space["latent_dim"].categories == [16, 32, 64]


def test_a_key_set_by_one_block_of_a_union_takes_its_default_in_the_others():
    from orchestration.trainable import train_config

    s = study("""\
        base: {dataset: mnist_svhn, lr: 0.001}
        grid:
          - {model: [meme], nets: [appendix_k], seed: [0]}
          - {model: [meme], supervision: [0.25], n_pseudo: [5], seed: [0]}
          - {model: [meme], supervision: [0.25], paired_only: [true], seed: [0]}
        """)
    space = sweep.param_space(s, s.base_config())
    points = space["grid"]["grid_search"]
    assert points == [
        {"model": "meme", "n_pseudo": 100, "nets": "appendix_k", "paired_only": False, "seed": 0, "supervision": 1.0},
        {"model": "meme", "n_pseudo": 5, "nets": "published", "paired_only": False, "seed": 0, "supervision": 0.25},
        {"model": "meme", "n_pseudo": 100, "nets": "published", "paired_only": True, "seed": 0, "supervision": 0.25}]
    # what each trial trains: the flat space and its point, as the trainable reads them
    cfgs = [train_config({**{k: v for k, v in space.items() if k != "grid"}, "grid": p}) for p in points]
    assert [(c.nets, c.n_pseudo, c.paired_only, c.lr) for c in cfgs] == [
        ("appendix_k", 100, False, 0.001), ("published", 5, False, 0.001), ("published", 100, True, 0.001)]
    # and the dry run names the same trials
    names = [trial_name(c.to_dict(), s.varying_keys()) for c in cfgs]
    assert names == ["meme-f1-split-withunpaired-appendix_k-p100-s0", "meme-f0.25-split-withunpaired-published-p5-s0",
                     "meme-f0.25-split-pairedonly-published-p100-s0"]
    dry = sweep.dry_run(s, s.base_config(), 1, 0)
    assert [f"[{i:>3}] {n}  " in dry for i, n in enumerate(names)] == [True, True, True]


def test_a_local_storage_path_is_refused_on_a_multi_node_cluster(monkeypatch, tmp_path):
    from orchestration import cluster

    nodes = [{"Alive": True, "NodeID": "a", "NodeManagerAddress": "10.0.0.1"},
             {"Alive": True, "NodeID": "b", "NodeManagerAddress": "10.0.0.2"}]
    monkeypatch.setattr(cluster, "alive_nodes", lambda: nodes)
    with pytest.raises(MemeError, match=r"2 Ray nodes are alive but --storage .* is a local path .*--shared-storage"):
        cluster.check_shared_paths(str(tmp_path), "http://mlflow:5000", shared=False)
    with pytest.raises(MemeError, match=r"--tracking-uri sqlite:///x.db is a local path"):
        cluster.check_shared_paths("s3://bucket/studies", "sqlite:///x.db", shared=False)
    cluster.check_shared_paths("s3://bucket/studies", "http://mlflow:5000", shared=False)   # shared: accepted
    monkeypatch.setattr(cluster, "alive_nodes", lambda: nodes[:1])
    cluster.check_shared_paths(str(tmp_path), "sqlite:///x.db", shared=False)               # one node: fine


def test_the_summary_reads_the_public_result_grid(tmp_path):
    """One row per Result (config, last metrics, error), best first; statuses from epochs, errors and, after an
    interrupt, the MLflow child runs."""
    from types import SimpleNamespace

    from orchestration.summary import format_table, summarize

    s = parse_study(MINIMAL.replace("metric: loss\nmode: min", "metric: w2_gap\nmode: max")
                    + "grid: {seed: [0, 1, 2, 3]}\n", "sum")
    trial_dir = tmp_path / "t3"
    trial_dir.mkdir()
    (trial_dir / "error.txt").write_text("Failure # 1\nTraceback ...\n  File \"x.py\"\nMemeError: non-finite loss at epoch 1\n")

    def result(seed, epoch, gap, error=None, path=tmp_path / "none"):
        cfg = {**s.base_config(), "seed": seed}
        return SimpleNamespace(config=cfg, metrics={"epoch": epoch, "w2_gap": gap, "trial_id": f"id_{seed}",
                                                    "time_total_s": 1.25}, error=error, path=str(path))

    grid = [result(0, 2, 0.1), result(1, 1, 0.5), result(2, 2, 0.3), result(3, 1, None, RuntimeError("x"), trial_dir)]
    rows, counts = summarize(grid, s, epochs=2)
    assert [(r["trial"], r["status"], r["w2_gap"]) for r in rows] == [
        ("meme-f1-split-s1", "stopped early", 0.5), ("meme-f1-split-s2", "done", 0.3), ("meme-f1-split-s0", "done", 0.1), ("meme-f1-split-s3", "FAILED", None)]
    assert rows[-1]["reason"] == "MemeError: non-finite loss at epoch 1"
    assert counts == {"stopped early": 1, "done": 2, "FAILED": 1}
    rows, counts = summarize(grid, s, epochs=2, run_status={"id_0": "FINISHED", "id_2": "RUNNING"}, interrupted=True)
    assert {r["trial"]: r["status"] for r in rows} == {"meme-f1-split-s0": "done", "meme-f1-split-s1": "interrupted", "meme-f1-split-s2": "interrupted",
                                                       "meme-f1-split-s3": "FAILED"}
    assert "meme-f1-split-s3: MemeError: non-finite loss at epoch 1" in format_table(rows, "w2_gap")
