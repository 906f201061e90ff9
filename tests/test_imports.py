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
    here, is_pkg = module_name(path), path.name == "__init__.py"
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= _resolve(node, here, is_pkg)
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


EXTRA = ("ray", "optuna", "mlflow", "pydantic", "pydantic_core")   # the orchestrate extra


def _resolve(node: ast.ImportFrom | ast.Import, here: str, is_pkg: bool) -> set[str]:
    """The modules an import statement in module ``here`` names; ``from pkg import name`` counts as ``pkg.name``."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    base = node.module or ""
    if node.level:
        parts = here.split(".")
        pkg = parts[: len(parts) - node.level + is_pkg]
        base = ".".join([*pkg, base] if base else pkg)
    return {base} | {f"{base}.{a.name}" for a in node.names}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def split_imports(path: Path) -> tuple[set[str], list[tuple[int, set[str]]]]:
    """(what ``path`` imports when it loads, [(line, names) of each import inside a function])."""
    tree = ast.parse(path.read_text(), str(path))
    here, is_pkg = module_name(path), path.name == "__init__.py"
    top: set[str] = set()
    inner: list[tuple[int, set[str]]] = []

    def walk(nodes, in_function: bool):
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = _resolve(node, here, is_pkg)
                if in_function:
                    inner.append((node.lineno, names))
                else:
                    top.update(names)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue   # never runs
            elif isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                continue   # run as a file: not an import of the module
            for field in ("body", "orelse", "handlers", "finalbody"):
                child = getattr(node, field, None)
                if isinstance(child, list):
                    walk(child, in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
    walk(tree.body, False)
    return top, inner


def _load_graph() -> dict[str, set[str]]:
    return {module_name(p): split_imports(p)[0] for p in all_modules()}


def _closure(start: set[str], graph: dict[str, set[str]]) -> set[str]:
    """Every name loaded, transitively, when the modules among ``start`` load (a package loads its __init__)."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):   # importing a.b.c loads a, a.b, a.b.c
            todo.extend(graph.get(".".join(parts[:i]), ()))
    return seen


@pytest.mark.parametrize("path", all_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_are_at_the_top_unless_a_cycle_or_the_optional_extra_forbids_it(path):
    """An import of the project's own modules inside a function stands only where importing it at the top would
    close a cycle, or would load the orchestrate extra (Ray, MLflow, pydantic) that the library works without."""
    graph, here = _load_graph(), module_name(path)
    for line, names in split_imports(path)[1]:
        own = {n for n in names if n.split(".")[0] in ("meme", "orchestration")}
        if not own:
            continue
        loaded = _closure(own, graph)
        cycle = here in loaded
        extra = any(n.split(".")[0] in EXTRA for n in loaded)
        assert cycle or extra, (f"{path.relative_to(ROOT)}:{line} imports {sorted(own)[0]} inside a function, but "
                                f"neither a cycle nor the orchestrate extra forbids importing it at the top")


def test_the_top_import_rule_sees_a_needless_inner_import(tmp_path):
    f = ROOT / "meme" / "eval" / "_probe_inner_for_test.py"
    try:
        f.write_text("def g():\n    from meme.errors import MemeError\n    return MemeError\n")
        with pytest.raises(AssertionError, match="neither a cycle nor the orchestrate extra"):
            test_imports_are_at_the_top_unless_a_cycle_or_the_optional_extra_forbids_it(f)
        f.write_text("from meme.errors import MemeError\ndef g():\n    from orchestration.callbacks import trial_label\n")
        test_imports_are_at_the_top_unless_a_cycle_or_the_optional_extra_forbids_it(f)   # callbacks loads Ray
    finally:
        f.unlink()
