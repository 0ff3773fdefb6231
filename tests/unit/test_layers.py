"""The layers hold: pure planning (fleet/, lfw/) imports neither kopf nor kubernetes, and only
qfleet/operator/ talks to kopf."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "qfleet"
CLUSTER_LIBRARIES = ("kopf", "kubernetes", "kubernetes_asyncio", "pykube")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and _dynamic_import(node) and isinstance(node.args[0], ast.Constant):
            modules.add(str(node.args[0].value))
    return modules


def _dynamic_import(call: ast.Call) -> bool:
    """``__import__("x")`` or ``importlib.import_module("x")``."""
    name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
    return name in ("__import__", "import_module") and bool(call.args)


def top(module: str) -> str:
    return module.split(".", 1)[0]


PURE = sorted([*(PACKAGE / "fleet").glob("*.py"), *(PACKAGE / "lfw").glob("*.py")])


@pytest.mark.parametrize("path", PURE, ids=[str(p.relative_to(PACKAGE)) for p in PURE])
def test_pure_layers_import_no_cluster_library(path: Path) -> None:
    offending = {m for m in imported_modules(path) if top(m) in CLUSTER_LIBRARIES}
    assert not offending, f"{path.relative_to(PACKAGE)} imports {sorted(offending)}"


def test_pure_layers_do_not_import_the_operator_layer() -> None:
    for path in PURE:
        assert not {m for m in imported_modules(path) if m.startswith("qfleet.operator")}, path


def test_only_the_operator_layer_imports_kopf() -> None:
    importers = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(top(m) == "kopf" for m in imported_modules(path))
    }
    outside = {name for name in importers if not name.startswith("operator/")}
    # The `qfleet operator` command starts kopf; it is the command line's door into that layer.
    assert outside <= {"commands/operator.py"}, outside
    assert "operator/handlers.py" in importers


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    import kopf\n    from kubernetes import client\n")
    assert {"kopf", "kubernetes"} <= imported_modules(sample)
