"""The MLflow UI shows a study: `mlflow server` on 127.0.0.1, the study's experiment and the comparison of
its trials in headless Chromium (Selenium), with screenshots: for runs written through the tracking API, and
for a real `sweep.py` study, opened at the runs page the study prints when it ends.

Skipped where Chromium is absent, except under CI (CI=true), where a missing browser fails: `.ci/run`
installs it (apt-get install chromium chromium-driver). Set MEME_UI_SCREENSHOTS=<folder> to keep the
screenshots.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meme.models import TrainConfig
from orchestration import tracking
from orchestration.study import load_study, trial_name

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]

HAVE_BROWSER = Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


@pytest.fixture(autouse=True)
def _browser():
    if not HAVE_BROWSER:
        why = "Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}; .ci/run installs them")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smoke_study_in_mlflow(uri: str):
    """The smoke study's parent run and its four trials, each with per-epoch metrics (values made up)."""
    study = load_study("smoke")
    info = tracking.start_parent(uri, "smoke", study, "smoke-ui", "/nowhere", {"metric": study.metric})
    names = []
    for i, point in enumerate(study.points()):
        cfg = TrainConfig.from_dict(study.base_config(**point)).to_dict()
        name = trial_name(cfg, study.varying_keys())
        t = tracking.TrialTracker.open(info, f"trial_{i}", name, cfg, from_epoch=0)
        t.mark_running()
        for epoch in (1, 2):
            t.log_epoch({"epoch": epoch, "loss": 900.0 - 100 * epoch - 10 * i,
                         "coherence_cross_mean": 0.2 + 0.1 * epoch + 0.05 * i}, epoch)
        tracking.set_trial_status(info, f"trial_{i}", "FINISHED", {tracking.TAG_STOPPED_EARLY: "false"})
        names.append(name)
    tracking.end_parent(info, "FINISHED")
    return info, names


@contextlib.contextmanager
def serve(uri: str, tmp_path: Path):
    """`mlflow server` on a free port of 127.0.0.1 over ``uri``; yields its URL."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)   # its own process group: the server and its workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-2000:]
            time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture
def mlflow_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    info, names = smoke_study_in_mlflow(uri)
    with serve(uri, tmp_path) as url:
        yield url, info, names


class Browser:
    """Headless Chromium on the MLflow UI: open a page, wait for texts, screenshot."""

    def __init__(self, tmp_path: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.shots = Path(os.environ.get("MEME_UI_SCREENSHOTS", tmp_path))
        self.shots.mkdir(parents=True, exist_ok=True)

    def shows(self, *texts, timeout=120):
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            WebDriverWait(self.driver, timeout, poll_frequency=1).until(
                lambda d: all(t in d.find_element("tag name", "body").text for t in texts))
        except Exception:
            self.driver.save_screenshot(str(self.shots / "mlflow_ui_failure.png"))
            body = self.driver.find_element("tag name", "body").text
            raise AssertionError(f"the page never showed {[t for t in texts if t not in body]}; it shows:\n{body[:3000]}")

    def runs_table_with_trials(self, url: str, parent_name: str, n_runs: int, names, shot: str) -> None:
        """The experiment's runs table: the parent run; expanded, its trials by their readable names."""
        self.driver.get(url)
        self.shows(parent_name, f"{n_runs} matching runs")
        self.driver.find_element("xpath", f"//a[contains(., '{parent_name}')]/ancestor::div[@role='gridcell'][1]//button").click()
        self.shows(*names)
        self.driver.save_screenshot(str(self.shots / shot))

    def comparison(self, url: str, info, names, shot: str) -> Path:
        """The comparison of the trials: parameters side by side, the metric the study ranks by."""
        runs = tracking.child_runs(tracking.client_for(info.uri), info.experiment_id, info.parent_run_id)
        ids = json.dumps([r.info.run_id for r in runs])
        self.driver.get(f"{url}/#/compare-runs?runs={ids}&experiments={json.dumps([info.experiment_id])}")
        self.shows(f"Comparing {len(names)} Runs", "supervision", "observed", "coherence_cross_mean", *names)
        path = self.shots / shot
        self.driver.save_screenshot(str(path))
        return path


def test_study_experiment_and_run_comparison_in_the_mlflow_ui(mlflow_server, tmp_path):
    pytest.importorskip("selenium.webdriver")
    url, info, names = mlflow_server
    browser = Browser(tmp_path)
    try:
        browser.runs_table_with_trials(f"{url}/#/experiments/{info.experiment_id}/runs", "smoke-ui", 5, names,
                                       "mlflow_experiment.png")
        path = browser.comparison(url, info, names, "mlflow_compare_runs.png")
    finally:
        browser.driver.quit()
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000   # a rendered page, not a blank one


def test_a_real_sweep_study_in_the_mlflow_ui(ray_session, tmp_path, capsys):
    """sweep.py runs the smoke study; the runs page it prints at the end shows its parent run and four trials."""
    pytest.importorskip("selenium.webdriver")
    from orchestration import sweep

    uri = f"sqlite:///{tmp_path / 'study.db'}"
    assert sweep.main(["--study", "smoke", "--tracking-uri", uri, "--storage", str(tmp_path / "store"),
                       "--data-dir", str(tmp_path / "data"), "--quiet"]) == 0
    out = capsys.readouterr().out
    (page_line,) = [ln for ln in out.splitlines() if ln.startswith("MLflow runs page: ")]
    client = tracking.client_for(uri)
    exp = client.get_experiment_by_name("smoke")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"    # opens on training runs, not traces
    page = f"/#/experiments/{exp.experiment_id}/runs"
    assert page_line == f"MLflow runs page: mlflow server --backend-store-uri {uri}, then open http://127.0.0.1:5000{page}"
    (parent,) = client.search_runs([exp.experiment_id], filter_string="tags.`meme.role` = 'study'")
    info = tracking.TrackingInfo(uri, exp.experiment_id, parent.info.run_id, "smoke", "ui-test")
    study = load_study("smoke")
    names = [trial_name(TrainConfig.from_dict(study.base_config(**p)).to_dict(), study.varying_keys())
             for p in study.points()]
    with serve(uri, tmp_path) as url:
        browser = Browser(tmp_path)
        try:
            browser.runs_table_with_trials(url + page, parent.info.run_name, 5, names, "mlflow_real_study.png")
            browser.comparison(url, info, names, "mlflow_real_study_compare.png")
        finally:
            browser.driver.quit()
