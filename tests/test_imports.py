"""The import structure: data flows one way (search_spaces -> orchestration -> meme.train -> meme.models /
meme.eval), so no module imports upward. Every import counts, those inside functions too (they hid cycles)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: (modules whose name starts with this, may not import a module whose name starts with any of these)
RULES = [
    ("meme", ("orchestration",)),
    ("meme.eval", ("meme.train",)),
    ("meme.nets", ("meme.data", "meme.eval", "meme.train", "meme.models", "meme.features")),
    ("meme.models", ("meme.data", "meme.eval", "meme.train", "meme.features")),
    ("meme.features", ("meme.data", "meme.eval", "meme.train", "meme.models")),
    ("meme.data", ("meme.eval", "meme.train", "meme.models")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth; ``from pkg import name`` counts as ``pkg.name``."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = here.split(".")[: len(here.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join([*pkg, base] if base else pkg)
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def all_modules():
    return sorted(p for d in ("meme", "orchestration") for p in (ROOT / d).rglob("*.py"))


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_import(path):
    name = module_name(path)
    for imported in sorted(imports_of(path)):
        for scope, banned in RULES:
            if _under(name, scope):
                bad = [b for b in banned if _under(imported, b)]
                assert not bad, f"{name} imports {imported}: {scope} must not import {', '.join(banned)}"


def test_the_walk_sees_imports_inside_functions(tmp_path):
    f = ROOT / "meme" / "eval" / "_probe_for_test.py"
    try:
        f.write_text("def g():\n    from meme.train import Trainer\n    from .. import train\n")
        assert {"meme.train", "meme.train.Trainer", "meme.train"} <= imports_of(f)
        with pytest.raises(AssertionError, match="meme.eval must not import meme.train"):
            test_no_upward_import(f)
    finally:
        f.unlink()


BLOCK = """
import builtins, importlib.util
real, find = builtins.__import__, importlib.util.find_spec
def fake(name, *a, **k):
    if name.split(".")[0] in ("ray", "optuna", "mlflow", "pydantic", "pydantic_core"):
        raise ImportError("blocked: " + name)
    return real(name, *a, **k)
builtins.__import__ = fake
importlib.util.find_spec = lambda n, *a: None if n.split(".")[0] in ("ray", "optuna", "mlflow", "pydantic") else find(n, *a)
"""


def test_the_library_works_without_the_orchestration_extra_and_the_orchestrator_says_what_is_missing():
    import subprocess
    import sys

    code = BLOCK + """
import meme.train, meme.eval, meme.eval.cli, meme.runs, meme.data, meme.cli
from orchestration import sweep
raise SystemExit(sweep.main(["--study", "smoke", "--dry-run"]))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "sweep.py: error: the orchestrator needs ray, optuna, mlflow, pydantic, which are not installed; install the "
        "orchestrate extra: pip install -e '.[orchestrate]' (the library alone: pip install -e .)")
