"""``docs/RELIABILITY.md`` names real tests, and every fault and security test is in it.

Each pytest node id in the matrix (``tests/...py::test_name``, optionally ``::Class::test`` or a
``[param]`` suffix) must name a test function that exists in that file; every row must name at
least one; and every test of the fault and security suites must appear in some row, so that a
test cannot be added without saying what it promises, nor a promise left without a test.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import REPO

MATRIX = REPO / "docs" / "RELIABILITY.md"
NODE_ID = re.compile(r"`(tests/[\w/]+\.py)((?:::\w+)+)(\[[^\]`]*\])?`")
ROW = re.compile(r"^\| ([IOSX]\d+) \|")
#: The suites whose every test must be in the matrix.
SUITES = (
    "tests/integration/test_faults_*.py",
    "tests/integration/test_security_*.py",
    "tests/unit/project/test_security_*.py",
)
SECTIONS = (
    "## Inputs",
    "## Operator faults",
    "## Server faults",
    "## Security",
    "## Load and soak",
    "## Figures",
)


def functions_in(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    """``name`` and ``Class::name`` of every test function in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            found[node.name] = node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test"):
                    found[f"{node.name}::{item.name}"] = item
    return found


def is_parametrized(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("parametrize" in ast.unparse(decorator) for decorator in function.decorator_list)


def matrix_ids(text: str) -> list[tuple[str, str, str]]:
    return [(match[1], match[2].removeprefix("::"), match[3]) for match in NODE_ID.finditer(text)]


def missing_ids(text: str) -> list[str]:
    problems = []
    cache: dict[str, dict[str, ast.FunctionDef | ast.AsyncFunctionDef]] = {}
    for file, name, param in matrix_ids(text):
        path = REPO / file
        if not path.is_file():
            problems.append(f"{file}: no such file")
            continue
        functions = cache.setdefault(file, functions_in(path))
        if name not in functions:
            problems.append(f"{file}::{name}: no such test")
        elif param and not is_parametrized(functions[name]):
            problems.append(f"{file}::{name}{param}: the test is not parametrized")
    return problems


def test_the_matrix_has_its_sections() -> None:
    text = MATRIX.read_text()
    for section in SECTIONS:
        assert f"\n{section}\n" in text, section
    assert "FIGURES" not in text, "the figures are still a placeholder"


def test_every_node_id_in_the_matrix_exists() -> None:
    text = MATRIX.read_text()
    assert len(matrix_ids(text)) > 100
    assert missing_ids(text) == []


def test_every_row_names_a_test() -> None:
    rows = [line for line in MATRIX.read_text().splitlines() if ROW.match(line)]
    assert len(rows) > 60
    bare = [line[:60] for line in rows if not NODE_ID.search(line)]
    assert bare == []
    labels = [ROW.match(line).group(1) for line in rows]  # type: ignore[union-attr]
    assert len(labels) == len(set(labels)), "row labels repeat"


@pytest.mark.parametrize("pattern", SUITES)
def test_every_fault_and_security_test_is_in_the_matrix(pattern: str) -> None:
    named = {(file, name) for file, name, _ in matrix_ids(MATRIX.read_text())}
    files = sorted(REPO.glob(pattern))
    assert files, pattern
    unlisted = [
        f"{path.relative_to(REPO)}::{name}"
        for path in files
        for name in functions_in(path)
        if (str(path.relative_to(REPO)), name) not in named
    ]
    assert unlisted == []


def test_the_check_catches_a_wrong_id() -> None:
    """The control: ids that do not exist are reported."""
    text = (
        "`tests/unit/project/test_reliability_matrix.py::test_every_row_names_a_test` "
        "`tests/unit/project/test_reliability_matrix.py::test_that_does_not_exist` "
        "`tests/unit/no_such_file.py::test_x` "
        "`tests/unit/project/test_reliability_matrix.py::test_every_row_names_a_test[a]`"
    )
    assert missing_ids(text) == [
        "tests/unit/project/test_reliability_matrix.py::test_that_does_not_exist: no such test",
        "tests/unit/no_such_file.py: no such file",
        "tests/unit/project/test_reliability_matrix.py::test_every_row_names_a_test[a]: the test is not parametrized",
    ]
