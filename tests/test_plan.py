"""``sweep.py``'s first step: ``plan(args)`` decides a study run without writing anything, and its saved form is
the run's resume state, which also reads the state files written before plans existed."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from meme.errors import MemeError
from orchestration import sweep
from orchestration.plan import PLAN_FORMAT, StudyPlan, plan
from orchestration.run_state import STATE_FILE, read_state, write_state
from orchestration.study import load_study

# a resume state as sweep.py wrote it before plans (every key it had, nothing more)
OLD_KEYS = ("study", "study_path", "study_text", "epochs", "data_dir", "tracking_uri", "data_dir_option",
            "experiment", "parent_run_id", "created")


def tree(root) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def args_for(*argv):
    return sweep.build_parser().parse_args(list(argv))


def old_state(tmp_path) -> dict:
    smoke = load_study("smoke")
    return {"study": smoke.name, "study_path": smoke.path, "study_text": smoke.text, "epochs": 3,
            "data_dir": str(tmp_path / "data" / "synthetic" / "n600-200-s0"), "tracking_uri": "sqlite:////x/mlflow.db",
            "data_dir_option": str(tmp_path / "data"), "experiment": "smoke-exp", "parent_run_id": "abc123",
            "created": "2026-11-30 10:00:00"}


def test_a_new_plan_is_decided_from_the_options_and_writes_nothing(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    before = tree(tmp_path)
    p = plan(args_for("--study", "smoke", "--data-dir", str(tmp_path / "data"), "--storage", str(tmp_path / "store"),
                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--epochs", "2", "--cpus-per-trial", "1.5",
                      "--max-failures", "0", "--quiet"))
    assert tree(tmp_path) == before   # no data, no storage, no database
    smoke = load_study("smoke")
    assert p.study == smoke and p.epochs == 2 and p.cpu == 1.5 and p.gpu == smoke.resources["gpu"]
    assert p.storage == str(tmp_path / "store") and p.ray_path == f"{tmp_path / 'store'}/{p.run_name}"
    assert p.run_name.startswith("smoke-") and p.experiment == "smoke" and p.parent_run_id is None
    s = smoke.synthetic_data
    assert p.data_dir == str(tmp_path / "data" / "synthetic" / f"n{s['n_train']}-{s['n_test']}-s{s['seed']}")
    assert p.invocation.quiet and p.invocation.max_failures == 0 and not p.resume
    assert p.base_config()["epochs"] == 2 and p.base_config()["download"] is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.epochs = 3


def test_the_saved_plan_is_the_resume_state_and_reads_back_as_the_same_plan(tmp_path):
    p = plan(args_for("--study", "smoke", "--data-dir", str(tmp_path / "data"), "--storage", str(tmp_path / "store"),
                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment", "mine")).with_parent("run9")
    write_state(p.storage, p.run_name, p.state())
    saved = json.loads((tmp_path / "store" / p.run_name / STATE_FILE).read_text())
    assert saved["plan"] == PLAN_FORMAT and saved["parent_run_id"] == "run9" and saved["experiment"] == "mine"
    assert set(OLD_KEYS) <= set(saved)   # an older version can still read what it needs
    resumed = plan(args_for("--study", "smoke", "--resume", "--storage", str(tmp_path / "store")))
    assert resumed == dataclasses.replace(p, resume=True, invocation=resumed.invocation)


def test_a_state_file_written_before_plans_still_resumes(tmp_path):
    state = old_state(tmp_path)
    write_state(str(tmp_path / "store"), "smoke-20261130-100000", state)
    assert read_state(str(tmp_path / "store"), "smoke-20261130-100000") == state
    before = tree(tmp_path)
    p = plan(args_for("--study", "smoke", "--resume", "--storage", str(tmp_path / "store"), "--gpus-per-trial", "0"))
    assert tree(tmp_path) == before
    assert p.resume and p.run_name == "smoke-20261130-100000" and p.study == load_study("smoke")
    assert {k: getattr(p, k) for k in StudyPlan.SAVED} == {k: state[k] for k in StudyPlan.SAVED}
    assert p.base_config()["data_dir"] == state["data_dir"] and p.base_config()["epochs"] == 3
    # a new tracking URI may be given on resume (the database moved); the rest is the run's
    p2 = plan(args_for("--resume", "smoke-20261130-100000", "--storage", str(tmp_path / "store"),
                       "--tracking-uri", "sqlite:////y/m.db"))
    assert p2.tracking_uri == "sqlite:////y/m.db" and p2.epochs == 3


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "5"], "--epochs 5 differs from the interrupted run's 3; a resumed study keeps its settings"),
    (["--data-dir", "/elsewhere"], "--data-dir /elsewhere differs from the interrupted run's"),
])
def test_a_resume_that_changes_the_runs_settings_is_refused(tmp_path, extra, message):
    write_state(str(tmp_path / "store"), "smoke-20261130-100000", old_state(tmp_path))
    with pytest.raises(MemeError, match=message):
        plan(args_for("--study", "smoke", "--resume", "--storage", str(tmp_path / "store"), *extra))


def test_a_saved_plan_from_a_newer_version_or_a_damaged_one_is_refused(tmp_path, capsys):
    store = str(tmp_path / "store")
    write_state(store, "smoke-1", {**old_state(tmp_path), "plan": PLAN_FORMAT + 1})
    state = old_state(tmp_path)
    del state["parent_run_id"]
    write_state(store, "smoke-2", state)
    before = tree(tmp_path)
    assert sweep.main(["--resume", "smoke-1", "--storage", store]) == 2
    assert sweep.main(["--resume", "smoke-2", "--storage", store]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"sweep.py: error: run smoke-1's saved plan has format {PLAN_FORMAT + 1}; this version reads "
                   f"formats 0 to {PLAN_FORMAT} (resume it with the version that started it)",
                   "sweep.py: error: run smoke-2's saved plan lacks parent_run_id; it cannot be resumed"]
    assert tree(tmp_path) == before
