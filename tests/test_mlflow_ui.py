"""The MLflow UI shows a study: `mlflow server` on 127.0.0.1, the study's experiment and the comparison of
its trials in headless Chromium (Selenium), with screenshots. Skipped where Chromium is absent.

Set MEME_UI_SCREENSHOTS=<folder> to keep the screenshots.
"""
from __future__ import annotations

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

from meme.config import TrainConfig
from orchestration import tracking
from orchestration.study import load_study, trial_name

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1600,1000"]

pytestmark = pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                                reason="Chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")


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


@pytest.fixture
def mlflow_server(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    info, names = smoke_study_in_mlflow(uri)
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
        yield url, info, names
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def test_study_experiment_and_run_comparison_in_the_mlflow_ui(mlflow_server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    url, info, names = mlflow_server
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    shots = Path(os.environ.get("MEME_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)

    def page_shows(*texts, timeout=120):
        try:
            WebDriverWait(driver, timeout, poll_frequency=1).until(
                lambda d: all(t in d.find_element("tag name", "body").text for t in texts))
        except Exception:
            driver.save_screenshot(str(shots / "mlflow_ui_failure.png"))
            body = driver.find_element("tag name", "body").text
            raise AssertionError(f"the page never showed {[t for t in texts if t not in body]}; it shows:\n{body[:3000]}")

    try:
        # the experiment's runs table: the study's parent run; expanded, its four trials by their readable names
        driver.get(f"{url}/#/experiments/{info.experiment_id}/runs")
        page_shows("smoke-ui", "5 matching runs")
        driver.find_element("xpath", "//a[contains(., 'smoke-ui')]/ancestor::div[@role='gridcell'][1]//button").click()
        page_shows(*names)
        driver.save_screenshot(str(shots / "mlflow_experiment.png"))

        # the comparison of the four trials: parameters side by side, the metrics the study ranks by
        runs = tracking.child_runs(tracking.client_for(info.uri), info.experiment_id, info.parent_run_id)
        ids = json.dumps([r.info.run_id for r in runs])
        driver.get(f"{url}/#/compare-runs?runs={ids}&experiments={json.dumps([info.experiment_id])}")
        page_shows("Comparing 4 Runs", "supervision", "observed", "coherence_cross_mean", *names)
        path = shots / "mlflow_compare_runs.png"
        driver.save_screenshot(str(path))
    finally:
        driver.quit()
    png = path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 50_000   # a rendered page, not a blank one
