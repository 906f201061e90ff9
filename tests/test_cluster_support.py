"""Support for the cluster and fault tests: a local multi-raylet Ray cluster, process trees stopped by
PID, and readers of what a study leaves behind (Ray Tune's result.json files, MLflow runs)."""
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
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
SUBMIT = [sys.executable, str(ROOT / "orchestration" / "submit.py")]
SWEEP = [sys.executable, str(ROOT / "orchestration" / "sweep.py")]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (from /proc), children first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def stop_process_tree(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM ``proc`` (``ray start --block`` then stops its raylet and friends), SIGKILL what is left."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    for pid in [proc.pid, *tree, *descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise TimeoutError(f"{what} not within {timeout_s:.0f}s")


class LocalCluster:
    """A Ray head and workers as separate raylets on 127.0.0.x, plus an MLflow server, all started here."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.temp_dir = Path(f"/tmp/rt_{uuid.uuid4().hex[:8]}")  # short: Ray's socket paths have a length limit
        self.procs: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        self.env.pop("RAY_ADDRESS", None)
        self.gcs_port, self.dashboard_port, self.client_port, self.mlflow_port = free_ports(4)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.tracking_uri = f"http://127.0.0.1:{self.mlflow_port}"

    def _spawn(self, cmd: list[str], log: str, prefix: list[str] = ()) -> subprocess.Popen:
        out = open(self.tmp / log, "wb")
        proc = subprocess.Popen([*prefix, *cmd], env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def start_head(self) -> None:
        agent, = free_ports(1)
        self._spawn([str(VENV_BIN / "ray"), "start", "--head", "--block", f"--port={self.gcs_port}",
                     "--node-ip-address=127.0.0.2", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={self.client_port}",
                     "--num-cpus=1", "--object-store-memory=80000000", f"--temp-dir={self.temp_dir}",
                     "--include-dashboard=true", "--disable-usage-stats"], "head.log")

    def add_worker(self, ip: str, hide: Path | None = None) -> None:
        """A worker raylet on ``ip`` with a temp dir of its own (as on another machine: its own runtime
        environments, unpacked job packages and logs); with ``hide``, that directory is a private empty
        tmpfs for this node, a disk the others do not see."""
        agent, = free_ports(1)
        cmd = [str(VENV_BIN / "ray"), "start", "--block", f"--address=127.0.0.2:{self.gcs_port}", f"--node-ip-address={ip}",
               "--num-cpus=1", "--object-store-memory=80000000", f"--dashboard-agent-listen-port={agent}",
               f"--temp-dir={self.temp_dir}-{ip.rsplit('.', 1)[1]}", "--disable-usage-stats"]
        prefix = []
        if hide is not None:
            prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      f'mount -t tmpfs tmpfs "{hide}" && exec "$@"', "sh"]
        self.workers[ip] = self._spawn(cmd, f"worker-{ip}.log", prefix)

    def kill_node(self, ip: str) -> list[int]:
        """A machine lost at once: SIGKILL to the worker raylet on ``ip`` and every process of that node (its
        `ray start`, raylet, object store, trial workers); returns their PIDs."""
        proc = self.workers.pop(ip)
        own_dir = f"{self.temp_dir}-{ip.rsplit('.', 1)[1]}".encode()
        node = {proc.pid, *descendants(proc.pid)}
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if own_dir in cmdline.read_bytes():
                    node.add(int(cmdline.parent.name))
            except OSError:
                pass
        for pid in node:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(10)
        return sorted(node)

    def start_mlflow(self) -> None:
        self._spawn([str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.mlflow_port),
                     "--workers", "1", "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
                     "--artifacts-destination", str(self.tmp / "artifacts"), "--serve-artifacts"], "mlflow.log")

    def nodes(self) -> list[dict]:
        """The alive nodes, from the dashboard's state API ([] while it does not answer)."""
        import requests

        try:
            rows = requests.get(f"{self.address}/api/v0/nodes", timeout=10).json()["data"]["result"]["result"]
        except (requests.RequestException, KeyError, ValueError):
            return []
        return [n for n in rows if n["state"] == "ALIVE"]

    def wait_nodes(self, n: int, timeout_s: float = 120) -> list[dict]:
        return wait_until(lambda: len(self.nodes()) == n and self.nodes(), timeout_s, f"{n} alive Ray nodes")

    def wait_mlflow(self, timeout_s: float = 120) -> None:
        import requests

        def up():
            try:
                return requests.get(f"{self.tracking_uri}/health", timeout=2).ok
            except requests.RequestException:
                return False
        wait_until(up, timeout_s, "mlflow server")

    def submit(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([*SUBMIT, "--address", self.address, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout_s, cwd=ROOT)

    def stop(self) -> list[int]:
        """Stop everything started here, by PID; return the PIDs still alive afterwards (should be none)."""
        started = {pid for p in self.procs for pid in [p.pid, *descendants(p.pid)]} | self.mentioning_temp_dir()
        for proc in reversed(self.procs):  # workers first, then the head (its GCS outlives the workers' drain)
            stop_process_tree(proc)
        for pid in self.mentioning_temp_dir():  # anything reparented away from its `ray start`
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        for d in self.temp_dir.parent.glob(self.temp_dir.name + "*"):
            shutil.rmtree(d, ignore_errors=True)
        return sorted(pid for pid in started if Path(f"/proc/{pid}").exists() and not is_zombie(pid))

    def mentioning_temp_dir(self) -> set[int]:
        """Processes whose command line names one of this cluster's temp dirs (all of them are this cluster's)."""
        found = set()
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                if str(self.temp_dir).encode() in cmdline.read_bytes():
                    found.add(int(cmdline.parent.name))
            except OSError:
                pass
        return found

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.log")))


@contextlib.contextmanager
def two_node_cluster(tmp: Path, data_dir: Path, study_text: str, name: str):
    """An MLflow server, a head on 127.0.0.2 and a worker on 127.0.0.3 (one CPU each), with ``study_text``
    written to ``tmp/<name>.yaml`` (``c.study``); everything started is stopped by PID afterwards."""
    c = LocalCluster(tmp)
    c.study = c.tmp / f"{name}.yaml"
    c.study.write_text(study_text)
    c.data_dir = data_dir
    try:
        c.start_mlflow()
        c.start_head()
        c.wait_nodes(1)
        c.add_worker("127.0.0.3")
        c.nodes_at_start = c.wait_nodes(2)
        c.wait_mlflow()
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        left = c.stop()
        assert not left, f"processes left running after the cluster's shutdown: {left}"


def study_args(c: LocalCluster, storage: Path, *extra: str) -> list[str]:
    return ["--study", str(c.study), "--storage", str(storage), "--tracking-uri", c.tracking_uri,
            "--data-dir", str(c.data_dir), "--quiet", *extra]


# ------------------------------------------------------------------ what a study leaves behind
def trial_results(run_dir: Path) -> dict[str, list[dict]]:
    """Ray Tune's result.json of each trial under a study run: one dict per reported epoch."""
    return {p.parent.name: [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()]
            for p in run_dir.glob("*/result.json")}


def only_run(storage: Path) -> tuple[Path, dict]:
    """The one study run under ``storage``: its folder and its saved state (meme_study.json)."""
    (state_file,) = storage.glob("*/meme_study.json")
    return state_file.parent, json.loads(state_file.read_text())


def mlflow_children(uri: str, state: dict) -> list:
    """The child runs of the study's parent run, checking that the experiment holds nothing else."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(state["experiment"])
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("meme.role") == "study"]
    assert [p.info.run_id for p in parents] == [state["parent_run_id"]], "one parent run per study"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == state["parent_run_id"]]
    assert len(children) == len(runs) - 1, "every other run is a child of the parent"
    return children


def epochs_logged(uri: str, run_id: str) -> list[int]:
    """The steps of the run's ``epoch`` metric, sorted: each epoch once means nothing lost or duplicated."""
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, "epoch"))


def tiny_study(description: str, grid: str, epochs: int, max_train_pairs: int) -> str:
    """A study YAML of tiny one-CPU MEME trials with a light evaluation, for the generated data (``synth_dir``)."""
    return f"""\
description: {description}
base: {{model: meme, dataset: mnist_svhn, download: false, max_train_pairs: {max_train_pairs}, latent_dim: 4,
       batch_size: 64, K: 1, n_pseudo: 4}}
grid:
  {grid}
metric: loss
mode: min
epochs: {epochs}
resources: {{cpu: 1, gpu: 0}}
eval: {{max_test_pairs: 64, n_latent_train: 64, n_joint: 0, likelihood_k: 0, elbo: false, n_tsne: 0, n_grid: 2,
       grid_samples: 1}}
"""
