"""Ray: which cluster to join, whether it is reachable, starting a local one, and whether the cluster can run
the study (resources per trial, storage and tracking folders every node sees)."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from meme.errors import MemeError
from orchestration.run_state import is_uri
from orchestration.tracking import is_local_uri

log = logging.getLogger(__name__)


def ray_address(address: str | None) -> str | None:
    """The cluster to join: --address, else $RAY_ADDRESS (a Ray Jobs entrypoint, `ray job submit -- python
    orchestration/sweep.py ...`, runs with it set to its cluster), else None (a private local Ray)."""
    return address if address is not None else (os.environ.get("RAY_ADDRESS") or None)


def check_ray_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A clear error within ``timeout`` when nothing listens at a HOST:PORT Ray address (``ray.init`` would
    retry for minutes); "auto", "local" and other forms are left to Ray."""
    import socket

    if address is None:
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise MemeError(f"cannot reach Ray at {address} ({e.strerror or e}); start the cluster (ray start --head) "
                        f"or give another --address") from None


def init_ray(address: str | None, num_cpus: int | None, dashboard: bool, verbose: bool) -> bool:
    """Connect to Ray (or start a local instance); True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not verbose:  # the study's own progress replaces Tune's console output
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    kwargs = dict(log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.WARNING)
    address = ray_address(address)   # its reachability is checked by the caller, before the classifiers train
    try:
        if address is None:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MemeError(f"cannot {'start a local Ray instance' if address is None else f'connect to Ray at {address}'}"
                        f": {e}") from None
    return True


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_resources(cpu: float, gpu: float, local: bool) -> None:
    import ray

    res = ray.cluster_resources()
    problems = []
    if cpu > res.get("CPU", 0):
        problems.append(f"--cpus-per-trial {cpu:g} but the cluster has {res.get('CPU', 0):g} CPUs")
    if gpu > 0 and gpu > res.get("GPU", 0):
        problems.append(f"--gpus-per-trial {gpu:g} but the cluster has {res.get('GPU', 0):g} GPUs")
    if problems:
        msg = "; ".join(problems) + " (trials would wait forever)"
        if local:
            raise MemeError(msg)
        log.warning("%s, unless the cluster scales up", msg)


def check_shared_paths(storage: str, tracking_uri: str, shared: bool) -> None:
    """With more than one node alive, results and tracking must be reachable from every node.

    ``--storage`` must be s3:// (or another URI), or a path mounted on every node, declared with
    ``--shared-storage`` and then checked from each node. A local SQLite tracking database likewise
    needs ``--shared-storage`` (an MLflow server is the better choice on a cluster).
    """
    nodes = alive_nodes()
    if len(nodes) <= 1:
        return
    local_paths = [] if is_uri(storage) else [("--storage", storage)]
    if is_local_uri(tracking_uri):
        local_paths.append(("--tracking-uri", tracking_uri))
    if not local_paths:
        return
    if not shared:
        what = " and ".join(f"{opt} {p}" for opt, p in local_paths)
        raise MemeError(f"{len(nodes)} Ray nodes are alive but {what} is a local path that the other nodes may not "
                        f"see; pass --storage s3://bucket/path (and --tracking-uri http://<mlflow server>), or, if the "
                        f"path is mounted at the same place on every node, add --shared-storage")
    for opt, p in local_paths:
        path = p.removeprefix("sqlite:///").removeprefix("file://")
        folder = Path(path) if opt == "--storage" else Path(path).parent
        _check_visible_everywhere(opt, folder, nodes)


def _check_visible_everywhere(opt: str, folder: Path, nodes: list[dict]) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".meme-shared-{uuid.uuid4().hex}"
    marker.write_text("")

    @ray.remote(num_cpus=0)
    def sees(path: str) -> bool:
        return os.path.exists(path)

    try:
        refs = {n["NodeManagerAddress"]: sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            n["NodeID"], soft=False)).remote(str(marker)) for n in nodes}
        blind = [ip for ip, ref in refs.items() if not ray.get(ref, timeout=120)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise MemeError(f"{opt} {folder} is not visible from node(s) {', '.join(blind)}; mount it at the same path "
                        f"on every node or use s3:// storage and an MLflow server")
