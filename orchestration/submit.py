"""Submit a study to a running Ray cluster through Ray Jobs; follow, list and stop its jobs.

    python orchestration/submit.py --address http://HEAD:8265 --study NAME --storage s3://bucket/studies [sweep options]
    python orchestration/submit.py --address http://HEAD:8265 --logs JOB_ID      # print (--follow: follow) its log
    python orchestration/submit.py --address http://HEAD:8265 --status JOB_ID
    python orchestration/submit.py --address http://HEAD:8265 --stop JOB_ID      # the study saves its state
    python orchestration/submit.py --address http://HEAD:8265 --list

Submitting is the same as ``ray job submit --address http://HEAD:8265 --working-dir . -- python
orchestration/sweep.py --address auto --study NAME ...``: the repository (less .git, virtual environments
and local results) is packaged as the job's working directory, every option this script does not know is
passed to ``sweep.py`` as given, the job id is printed on stdout and the job's log is followed until it
ends (``--no-wait`` returns at once). The study's driver runs on the head node and joins the cluster
(``--address auto``), so its trials are spread over every node.

On a cluster the study needs ``--storage`` for its results and checkpoints, which every node must reach:
an ``s3://`` (or ``gs://``, ...) URI, or an absolute path mounted at the same place on every node (NFS,
declared with ``--shared-storage``; ``sweep.py`` then checks from every node that it sees the path, and
refuses a local path on a multi-node cluster). It also needs ``--tracking-uri`` of an MLflow server
every node reaches (``docker/compose.tracking.yaml`` runs one).

Values for the job's environment come from ``--env NAME`` (this shell's value) or ``--env NAME=VALUE``.
The job's environment is shown to anyone who can reach the dashboard: keep credentials in the nodes'
own environment (docker/ray-cluster.yaml's env file, a Kubernetes Secret), not here.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from meme.errors import MemeError
from orchestration import check_orchestration_installed
from orchestration.study import load_study

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SWEEP = "orchestration/sweep.py"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: never packaged into the job's working directory (Ray also honours .gitignore and .rayignore)
EXCLUDES = [".git", ".venv", "venv", "**/__pycache__", ".pytest_cache", "*.egg-info", "runs", "mlruns",
            "*.db", "docker/.env", "**/*.env", ".gl", ".whl", "build"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
SWEEP_ERROR = "sweep.py: error: "
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY", "CREDENTIAL")


# ------------------------------------------------------------------ the cluster's address and client
def check_address(address: str) -> str:
    """The Ray Jobs API address (the dashboard's ``http://HOST:8265``), or a ``MemeError`` saying what is valid."""
    try:
        url = urlparse(address)
        host = url.hostname
    except ValueError as e:   # e.g. "Invalid IPv6 URL" for an unclosed [
        raise MemeError(f"--address {address!r} is not a valid URL ({e}); use the dashboard's http://HOST:8265 "
                        f"(IPv6: http://[::1]:8265)") from None
    if url.scheme not in ("http", "https") or not host:
        raise MemeError(f"--address {address!r} is not a Ray Jobs API address; use the dashboard's "
                        f"http://HOST:8265 (not the GCS address HOST:6379)")
    return address.rstrip("/")


def connect(address: str):
    """A ``JobSubmissionClient`` for ``address``; an unreachable cluster is a one-line ``MemeError``."""
    from ray.job_submission import JobSubmissionClient

    address = check_address(address)
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, OSError, RuntimeError) as e:
        raise MemeError(f"cannot reach the Ray Jobs API at {address} ({str(e).splitlines()[0]}); start the "
                        f"cluster with `ray start --head` or `ray up`, forward its dashboard port "
                        f"(`ray dashboard CLUSTER.yaml`), and check --address") from None


# ------------------------------------------------------------------ what is submitted
def is_uri(storage: str) -> bool:
    """True for ``s3://``, ``gs://``, ... URIs (every node reaches them); ``file://`` counts as a path."""
    scheme = urlparse(storage).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(storage: str) -> str:
    return urlparse(storage).path if storage.startswith("file://") else storage


def parse_env(items: list[str], environ=os.environ) -> dict[str, str]:
    """``NAME`` takes this shell's value, ``NAME=VALUE`` sets one; names that look like secrets are warned about."""
    env = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not name.isidentifier():
            raise MemeError(f"--env {item!r}: expected NAME or NAME=VALUE")
        if not eq:
            if name not in environ:
                raise MemeError(f"--env {name}: {name} is not set in this shell; set it, or pass {name}=VALUE")
            value = environ[name]
        if any(w in name.upper() for w in SECRET_WORDS):
            log.warning("--env %s: the job's environment is visible to anyone who can reach the dashboard; "
                        "prefer the nodes' own environment for credentials", name)
        env[name] = value
    return env


def load_runtime_env(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    try:
        env = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise MemeError(f"--runtime-env {path}: cannot read it ({e})") from None
    if not isinstance(env, dict):
        raise MemeError(f"--runtime-env {path}: expected a mapping such as {{env_vars: {{...}}, pip: [...]}}")
    return env


def build_runtime_env(working_dir, env: dict[str, str], base: dict | None = None, stop_grace_s: int = 60) -> dict:
    """The job's runtime environment: the packaged working directory, env vars, and ``base`` (a --runtime-env file).

    ``RAY_JOB_STOP_WAIT_TIME_S`` gives the study's driver ``stop_grace_s`` seconds between Ray's SIGTERM
    (``--stop``) and SIGKILL, so that it can save its state for ``--resume``.
    """
    wd = Path(working_dir).resolve()
    if not (wd / SWEEP).is_file():
        raise MemeError(f"--working-dir {wd} does not hold {SWEEP}; pass the repository's root")
    runtime_env = dict(base or {})
    runtime_env["working_dir"] = str(wd)
    runtime_env["excludes"] = sorted(set(runtime_env.get("excludes", [])) | set(EXCLUDES))
    runtime_env["env_vars"] = {"RAY_JOB_STOP_WAIT_TIME_S": str(stop_grace_s),
                               **runtime_env.get("env_vars", {}), **env}
    return runtime_env


def sweep_entrypoint(sweep_args: list[str]) -> str:
    """``python orchestration/sweep.py --address auto ARGS``: the study's driver joins the cluster it runs on."""
    return shlex.join(["python", SWEEP, "--address", "auto", *sweep_args])


def study_options(sweep_args: list[str]) -> argparse.Namespace:
    """The few sweep.py options this script looks at (all of them are passed on unchanged)."""
    p = argparse.ArgumentParser(add_help=False)
    for opt in ("--study", "--storage", "--tracking-uri"):
        p.add_argument(opt)
    p.add_argument("--resume", nargs="?", const="")
    return p.parse_known_args(sweep_args)[0]


# ------------------------------------------------------------------ jobs
def wait_for(client, job_id: str, timeout_s: float, poll_s: float = 1.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(poll_s)


def follow(client, job_id: str, out=sys.stdout) -> str:
    """Stream the job's log to ``out`` until the job ends; return its final status."""
    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    asyncio.run(tail())
    return wait_for(client, job_id, timeout_s=30)


def check_study_args(opts: argparse.Namespace) -> None:
    """What a study needs on a cluster, checked before anything is sent: storage and tracking all nodes reach."""
    if not opts.study:
        raise MemeError("no --study given; e.g. --study smoke (the studies are search_spaces/*.yaml)")
    if opts.resume is None:   # validated here, the same way sweep.py will there (a study file travels too)
        load_study(opts.study)
    if not opts.storage:
        raise MemeError("a study on a cluster needs --storage: s3://bucket/path (or gs://...), or an absolute path "
                        "mounted at the same place on every node (NFS) with --shared-storage")
    if not is_uri(opts.storage) and not Path(local_path(opts.storage)).is_absolute():
        raise MemeError(f"--storage {opts.storage!r} is a relative path; on a cluster it would land in the job's "
                        f"temporary copy of the repository: use an absolute shared path or s3://...")
    if opts.resume is None and not (opts.tracking_uri or "").startswith(("http://", "https://")):
        raise MemeError(f"a study on a cluster needs --tracking-uri http://HOST:5000, an MLflow server every node "
                        f"reaches (docker/compose.tracking.yaml runs one), not {opts.tracking_uri or 'the default'} "
                        f"(a SQLite file in the job's temporary directory)")


def submit(args, sweep_args: list[str], out=sys.stdout) -> int:
    opts = study_options(sweep_args)
    check_study_args(opts)
    client = connect(args.address)
    runtime_env = build_runtime_env(args.working_dir, parse_env(args.env), load_runtime_env(args.runtime_env),
                                    args.stop_grace)
    job_id = client.submit_job(entrypoint=sweep_entrypoint(sweep_args), runtime_env=runtime_env,
                               submission_id=args.job_id, metadata={"meme": "study", "study": opts.study})
    print(job_id, file=out, flush=True)
    print(f"submitted study {opts.study!r} as job {job_id} to {args.address}; stop it with "
          f"`python orchestration/submit.py --address {args.address} --stop {job_id}`", file=sys.stderr)
    if args.no_wait:
        return 0
    return report(client, job_id, follow(client, job_id, out))


def report(client, job_id: str, status: str) -> int:
    """The job's end as an exit status: 0 succeeded, 2 the study refused its arguments (its one-line error
    is repeated), 1 otherwise."""
    if status == "SUCCEEDED":
        print(f"job {job_id}: {status}", file=sys.stderr)
        return 0
    errors = [ln for ln in client.get_job_logs(job_id).splitlines() if ln.startswith(SWEEP_ERROR)]
    if errors:
        raise MemeError(f"job {job_id} {status}: {errors[-1][len(SWEEP_ERROR):]}")
    message = (client.get_job_info(job_id).message or "").strip().splitlines()
    print(f"job {job_id}: {status}" + (f" ({message[0]})" if message else ""), file=sys.stderr)
    return 1


def list_jobs(client, out=sys.stdout) -> int:
    for job in sorted(client.list_jobs(), key=lambda j: j.start_time or 0):
        meta = job.metadata or {}
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((job.start_time or 0) / 1000))
        print(f"{job.submission_id or job.job_id}\t{job.status.value}\t{started}\t{meta.get('study', '-')}\t"
              f"{job.entrypoint}", file=out)
    return 0


def job_call(fn, job_id: str, *args):
    """``fn(job_id, ...)`` on the client; an unknown job id is a ``MemeError``."""
    try:
        return fn(job_id, *args)
    except RuntimeError as e:
        if "does not exist" in str(e):
            raise MemeError(f"no job {job_id!r} on this cluster; --list shows its jobs") from None
        raise


def stop(client, job_id: str, timeout_s: float) -> int:
    if not job_call(client.stop_job, job_id):
        print(f"job {job_id} had already ended: {client.get_job_status(job_id).value}", file=sys.stderr)
        return 0
    status = wait_for(client, job_id, timeout_s)
    print(f"job {job_id}: {status}", file=sys.stderr)
    return 0 if status in TERMINAL else 1


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="submit.py", allow_abbrev=False,
        description="Submit a study to a running Ray cluster through Ray Jobs (every option not listed here "
                    "goes to orchestration/sweep.py), or follow, list and stop its jobs.",
        epilog="example: python orchestration/submit.py --address http://127.0.0.1:8265 --study smoke "
               "--storage s3://bucket/studies --tracking-uri http://mlflow.internal:5000")
    p.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", DEFAULT_ADDRESS),
                   help="the Ray Jobs API (the dashboard), http://HOST:8265 (default: $RAY_API_SERVER_ADDRESS "
                        f"or {DEFAULT_ADDRESS})")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--logs", metavar="JOB_ID", help="print a job's log (with --follow: until it ends)")
    act.add_argument("--status", metavar="JOB_ID", help="print a job's status")
    act.add_argument("--stop", metavar="JOB_ID", help="stop a job: its study saves its state and exits")
    act.add_argument("--list", action="store_true", help="list the cluster's jobs")
    p.add_argument("--follow", action="store_true", help="with --logs: follow the log until the job ends")
    p.add_argument("--no-wait", action="store_true", help="submit, print the job id and return")
    p.add_argument("--working-dir", default=str(REPO), help="the directory packaged for the job (default: this "
                                                            "repository)")
    p.add_argument("--runtime-env", metavar="FILE", help="a YAML runtime environment to start from (pip, env_vars, ...)")
    p.add_argument("--env", action="append", default=[], metavar="NAME[=VALUE]",
                   help="an environment variable for the job: NAME passes this shell's value (repeatable)")
    p.add_argument("--job-id", help="the submission id to use (default: generated)")
    p.add_argument("--stop-grace", type=int, default=60, metavar="S",
                   help="seconds the study gets to save its state when stopped, before it is killed (default: 60)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args, sweep_args = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_orchestration_installed()
        if not (args.logs or args.status or args.stop or args.list):
            return submit(args, sweep_args)
        if sweep_args:
            raise MemeError(f"unexpected arguments {' '.join(sweep_args)}")
        client = connect(args.address)
        if args.list:
            return list_jobs(client)
        if args.status:
            info = job_call(client.get_job_info, args.status)
            print(info.status.value + (f": {info.message}" if info.message else ""))
            return 0
        if args.stop:
            return stop(client, args.stop, timeout_s=args.stop_grace + 30)
        logs = job_call(client.get_job_logs, args.logs)
        if args.follow:
            return report(client, args.logs, follow(client, args.logs))
        print(logs, end="")
        return 0
    except MemeError as e:
        print(f"submit.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("submit.py: stopped following; the job keeps running (--stop JOB_ID stops it)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
