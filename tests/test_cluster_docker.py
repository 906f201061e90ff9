"""The files in docker/: the cluster launcher's own validation, pins that agree with the project, secure
defaults (loopback binds, no credentials in files, non-root images, /dev/shm for Ray's object store).

Docker images are not built here (no Docker engine); `python docker/validate.py` runs the external linters
(hadolint, the Compose Specification schema, `docker compose config`, strict Kubernetes validation).
"""
from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda", "mlflow": DOCKER / "Dockerfile.mlflow"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: anything that looks like a secret written into a file: key = value with a literal value
SECRET_RE = re.compile(r"(?i)(password|secret|access_key|token)\w*[ \t]*[:=][ \t]*([^\s#]+)")


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")))
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln.strip() else "")
            for ln in text.splitlines() if ln.strip()]


def pinned_requirement(name: str) -> str:
    return next(d.split("==")[1] for d in PYPROJECT["project"]["dependencies"] if d.startswith(name + "=="))


@pytest.mark.parametrize("kind", ["cpu", "cuda", "mlflow"])
def test_dockerfiles_pin_their_base_image_and_run_as_a_non_root_user(kind):
    steps = instructions(DOCKERFILES[kind])
    (base,) = [a for i, a in steps if i == "FROM"]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{base} is not pinned to a version"
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] == "1000", "the last USER must be the numeric non-root uid 1000"
    assert steps[-1][0] == "CMD"


@pytest.mark.parametrize("kind,index", [("cpu", "whl/cpu"), ("cuda", "whl/cu130")])
def test_project_images_install_the_project_as_the_readme_says_with_the_pinned_torch(kind, index):
    runs = " ; ".join(a for i, a in instructions(DOCKERFILES[kind]) if i == "RUN")
    assert "python3 -m venv .venv" in runs
    assert re.search(r"\.venv/bin/pip install -e \"\.", runs), "the project must be installed with pip install -e ."
    torch, vision = pinned_requirement("torch"), pinned_requirement("torchvision")
    assert f"{index} torch=={torch} torchvision=={vision}" in runs, "torch pins must match pyproject.toml"
    text = DOCKERFILES[kind].read_text()
    assert "--shm-size" in text, "the image must tell users about Ray's /dev/shm object store"
    ignore = (DOCKER / f"Dockerfile.{kind}.dockerignore").read_text().split()
    for excluded in (".git", ".venv", "runs", "mlruns", "**/.env"):
        assert excluded in ignore


def test_mlflow_image_matches_the_installed_mlflow():
    import mlflow

    (arg,) = [a for i, a in instructions(DOCKERFILES["mlflow"]) if i == "ARG" and a.startswith("MLFLOW_VERSION=")]
    assert arg == f"MLFLOW_VERSION={mlflow.__version__}"
    compose = yaml.safe_load((DOCKER / "compose.tracking.yaml").read_text())
    assert compose["services"]["mlflow"]["image"] == f"meme-mlflow:{mlflow.__version__}"


def interpolate_defaults(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the default; ${VAR:?err} stays visible as <required:VAR>."""
    value = re.sub(r"\$\{(\w+):\?[^}]*\}", r"<required:\1>", value)
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_tracking_stack_binds_to_loopback_and_takes_secrets_from_the_environment():
    text = (DOCKER / "compose.tracking.yaml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "create-bucket", "mlflow"}
    published = {name: [interpolate_defaults(p) for p in svc.get("ports", [])] for name, svc in services.items()}
    assert published["postgres"] == [] and published["create-bucket"] == []
    for name, ports in published.items():
        for port in ports:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback by default"
    assert published["mlflow"] == ["127.0.0.1:5000:5000"]
    # secrets: required variables, never literals, never defaults
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${MEME_PG_PASSWORD:?")
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"].startswith("${MEME_MINIO_PASSWORD:?")
    assert "<required:MEME_PG_PASSWORD>@postgres" in interpolate_defaults(
        services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"])
    for name, svc in services.items():
        image = svc["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
    # MLflow serves the artifacts itself, so cluster nodes need no S3 credentials
    assert "--serve-artifacts" in services["mlflow"]["command"]
    assert services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


def test_env_template_holds_placeholders_only_and_real_env_files_stay_out_of_git():
    values = dict(ln.split("=", 1) for ln in (DOCKER / "env.example").read_text().splitlines()
                  if ln and not ln.startswith("#"))
    for key, value in values.items():
        if "PASSWORD" in key:
            assert value.startswith("CHANGE-ME"), key
    assert values["MEME_MLFLOW_BIND"] == "127.0.0.1"
    assert "/docker/.env" in (ROOT / ".gitignore").read_text().split()


def test_no_docker_file_holds_a_credential():
    for path in DOCKER.iterdir():
        if path.suffix in (".yaml", ".cpu", ".cuda", ".mlflow", ".example"):
            text = re.sub(r"\$\{[^}]*\}", "${}", path.read_text())  # ${VAR...}: taken from the environment
            for key, value in SECRET_RE.findall(text):
                assert value.startswith(("${", "CHANGE-ME")) or value == "...", (path.name, key, value)


def test_ray_cluster_launcher_accepts_the_config_and_the_dashboard_stays_on_loopback():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    config = prepare_config(raw)  # what `ray up` does before it contacts any machine
    validate_config(config)
    assert config["provider"]["type"] == "local"
    assert config["max_workers"] == len(raw["provider"]["worker_ips"])
    head = " ".join(config["head_start_ray_commands"])
    args = shlex.split(head.split("ray start", 1)[1].split(";")[0])
    assert "--dashboard-host=127.0.0.1" in args and "--head" in args
    run = config["docker"]["run_options"]
    assert any(o.startswith("--shm-size=") for o in run)
    assert "--env-file=/etc/meme/cluster.env" in run, "credentials come from an env file on the machines"
    assert "auth" in config and "ssh_private_key" in config["auth"] and "BEGIN" not in str(config["auth"])


def test_kuberay_rayjob_runs_a_study_on_shared_storage_with_secrets_from_a_secret():
    import ray

    job = yaml.safe_load((DOCKER / "kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    args = shlex.split(spec["entrypoint"])
    assert args[:4] == ["python", "/home/meme/app/orchestration/sweep.py", "--address", "auto"], \
        "the study's driver must join the RayCluster, not start a Ray of its own"
    storage = args[args.index("--storage") + 1]
    assert storage.startswith("s3://"), "pods share no disk: the study must store to S3-compatible storage"
    assert args[args.index("--tracking-uri") + 1].startswith("http://"), "trials log to an MLflow server"
    assert args[args.index("--study") + 1]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__, "the cluster's Ray must match the project's"
    assert cluster["headGroupSpec"]["enableIngress"] is False
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 1000
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "meme-tracking"}}]
        assert not [e for e in container.get("env", []) if "value" in e and SECRET_RE.search(f"{e['name']}={e['value']}")]
        shm = {v["name"]: v for v in pod["spec"]["volumes"]}["dshm"]
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
