"""What an image's packages are: its requirements, their closure, and a Python that sees only those.

A blocked module is one installed here that the image would not have; :data:`BLOCKER` hides them
from the import system of a child Python, so a script run with it behaves as in the image.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.paths import REPO


def requirements(image: str) -> list[Requirement]:
    text = (REPO / "images" / image / "requirements.txt").read_text(encoding="utf-8")
    return [
        Requirement(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


def dependency_closure(names: list[str]) -> set[str]:
    """The distributions ``names`` pull in, read from the installed metadata of this environment."""
    seen: set[str] = set()
    todo = [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    return seen


def blocked_modules(image: str) -> set[str]:
    """Top-level modules installed here that the image would not have."""
    allowed = dependency_closure([r.name for r in requirements(image)])
    blocked: set[str] = set()
    for module, distributions in importlib.metadata.packages_distributions().items():
        if module == "qfleet" or module in sys.stdlib_module_names:
            continue
        if not {canonicalize_name(d) for d in distributions} & allowed:
            blocked.add(module)
    return blocked


# Replaces the import system's path finder with one that cannot see the blocked top-level
# modules: to the code under test (and to ``importlib.util.find_spec`` probes in libraries such as
# yarl) they are simply not installed, as in the image.
BLOCKER = textwrap.dedent(
    """
    import importlib.machinery, sys
    BLOCKED = frozenset({blocked!r})
    class ImagePathFinder(importlib.machinery.PathFinder):
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if path is None and fullname in BLOCKED:
                return None
            return super().find_spec(fullname, path, target)
    sys.meta_path[:] = [
        ImagePathFinder if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path
    ]
    """
)


def run_as_image(image: str, body: str, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=sorted(blocked_modules(image))) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )
