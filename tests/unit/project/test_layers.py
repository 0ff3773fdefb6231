"""The layers hold: the pure layers (fleet/, lfw/, model/, serving/, isa.py, defaults.py) import
neither kopf nor kubernetes nor qfleet.operator, only qfleet/operator/ talks to kopf, and only
model/runtime.py compiles models."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import PACKAGE

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


def top_two(module: str) -> str:
    """``qfleet.operator`` for ``qfleet.operator.applier``; ``qfleet.operators`` would not match."""
    return ".".join(module.split(".")[:2])


#: Layers that know nothing of a cluster: planning, datasets, models, serving, the ISA tiers, defaults.
PURE_PACKAGES = ("fleet", "lfw", "model", "serving")
PURE_MODULES = ("isa.py", "defaults.py")
PURE = sorted(
    [
        *(path for name in PURE_PACKAGES for path in (PACKAGE / name).rglob("*.py")),
        *(PACKAGE / m for m in PURE_MODULES),
    ]
)


@pytest.mark.parametrize("path", PURE, ids=[str(p.relative_to(PACKAGE)) for p in PURE])
def test_pure_layers_import_no_cluster_library(path: Path) -> None:
    offending = {m for m in imported_modules(path) if top(m) in CLUSTER_LIBRARIES}
    assert not offending, f"{path.relative_to(PACKAGE)} imports {sorted(offending)}"


def test_pure_layers_do_not_import_the_operator_layer() -> None:
    for path in PURE:
        assert not {m for m in imported_modules(path) if top_two(m) == "qfleet.operator"}, path


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


def compile_calls(path: Path) -> list[int]:
    """Lines of ``<anything>.compile_model(...)`` calls (OpenVINO's ``Core.compile_model`` or
    ``openvino.compile_model``) and of ``CompiledModel(...)`` constructions in a file."""
    lines: list[int] = []
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        # `from openvino import compile_model` (or from openvino.runtime) counts too.
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("openvino"):
            lines += [node.lineno for alias in node.names if alias.name in ("compile_model", "CompiledModel")]
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("compile_model", "CompiledModel") and isinstance(func, ast.Attribute):
                owner = func.value
                # qfleet's own runtime.compile_model(...) is the one door; anything else is not.
                if not (isinstance(owner, ast.Name) and owner.id == "runtime"):
                    lines.append(node.lineno)
    return lines


def test_every_compile_goes_through_the_runtime_module() -> None:
    """OpenVINO computes in bf16 unless told otherwise on bf16-capable CPUs: only runtime.py,
    which always names the precision and checks it, may call OpenVINO's compile_model."""
    offenders = {
        str(path.relative_to(PACKAGE)): lines
        for path in PACKAGE.rglob("*.py")
        if path.name != "runtime.py" and (lines := compile_calls(path))
    }
    assert not offenders, f"compile_model outside qfleet/model/runtime.py: {offenders}"
    assert compile_calls(PACKAGE / "model" / "runtime.py"), "the runtime module compiles models"
