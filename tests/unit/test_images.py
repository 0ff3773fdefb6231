"""Static checks of the container images (no Docker engine is needed).

Each Dockerfile must build from a pinned base, in stages, copy only files that exist and that the
.dockerignore lets through, run a real ``qfleet`` subcommand as a non-root numeric user, and carry
OCI labels. Each image's requirements file must be enough for the verbs it runs and must leave out
what it does not need: an import blocker that hides every distribution outside the image's
requirements (and their dependencies) proves it, for the server by actually serving a model.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import textwrap
import time
import tomllib
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "toolkit", "server")

#: The qfleet verbs each image is for. Every one of them must work with only the image's packages.
VERBS_BY_IMAGE: dict[str, tuple[str, ...]] = {
    "operator": ("operator",),
    "toolkit": ("convert", "quantize", "validate", "gate", "benchmark", "plan", "pipeline", "demo"),
    "server": ("serve", "loadtest"),
}
#: Distributions an image must not carry (the point of having three images).
FORBIDDEN_BY_IMAGE: dict[str, frozenset[str]] = {
    "operator": frozenset({"mxnet", "nncf", "onnx", "openvino"}),
    "toolkit": frozenset({"kopf", "kubernetes"}),
    "server": frozenset({"mxnet", "nncf", "onnx", "kopf", "kubernetes"}),
}
OCI_LABELS = (
    "org.opencontainers.image.title",
    "org.opencontainers.image.description",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.base.name",
)


# --- A small Dockerfile reader -------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    arguments: str

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's list, or None for the shell form."""
        try:
            value = json.loads(self.arguments)
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: dangling line continuation"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        arguments = arguments.strip()
        if keyword == "FROM":
            words = arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
        elif not stages:
            assert keyword == "ARG", f"{path}: only ARG may come before the first FROM, got {keyword}"
            arg_name, _, default = arguments.partition("=")
            global_args[arg_name] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, arguments))
    return Dockerfile(global_args=global_args, stages=stages)


def resolve_base(dockerfile: Dockerfile, base: str) -> str:
    match = re.fullmatch(r"\$\{?(\w+)\}?", base)
    return dockerfile.global_args[match.group(1)] if match else base


def copy_sources(instruction: Instruction) -> tuple[list[str], dict[str, str]]:
    """A COPY's source paths and its --flags."""
    words = shlex.split(instruction.arguments)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    return words[:-1], flags


def dockerignore_allows(relative: str, patterns: list[str]) -> bool:
    """Whether the build context keeps ``relative``: .dockerignore rules, the last match wins."""
    kept = True
    parts = relative.split("/")
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern[1:] if negated else pattern
        body = body.rstrip("/")
        # A rule that matches a parent folder applies to everything under it.
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if body.startswith("**/"):
            hit = any(fnmatch.fnmatch(part, body[3:]) for part in parts)
        else:
            hit = any(fnmatch.fnmatchcase(prefix, body) for prefix in prefixes)
        if hit:
            kept = negated
    return kept


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def dockerfile(image: str) -> Dockerfile:
    return parse_dockerfile(REPO / "images" / image / "Dockerfile")


def requirements(image: str) -> list[Requirement]:
    text = (REPO / "images" / image / "requirements.txt").read_text(encoding="utf-8")
    return [
        Requirement(line.strip()) for line in text.splitlines() if line.strip() and not line.startswith("#")
    ]


# --- Dockerfile structure ------------------------------------------------------------------------


@pytest.mark.parametrize("image", IMAGES)
def test_base_image_is_pinned_by_exact_tag_and_digest(image: str) -> None:
    parsed = dockerfile(image)
    external = [
        resolve_base(parsed, s.base) for s in parsed.stages if s.base not in {t.name for t in parsed.stages}
    ]
    assert external, "no base image"
    for base in external:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_all_images_share_one_base() -> None:
    bases = {resolve_base(dockerfile(image), dockerfile(image).final.base) for image in IMAGES}
    assert len(bases) == 1, bases


@pytest.mark.parametrize("image", IMAGES)
def test_multi_stage_build_installs_the_wheel_of_this_repository(image: str) -> None:
    parsed = dockerfile(image)
    assert len(parsed.stages) >= 2, "expected a build stage and a final stage"
    build_runs = " ".join(i.arguments for s in parsed.stages[:-1] for i in s.all("RUN"))
    assert "pip wheel" in build_runs and "qfleet-*.whl" in build_runs
    stage_names = {s.name for s in parsed.stages[:-1]}
    copied_from = {copy_sources(i)[1].get("from") for i in parsed.final.all("COPY")}
    assert copied_from & stage_names, "the final stage copies nothing from the build stage"
    # The final stage installs nothing with pip: everything comes built from the build stage.
    assert not any("pip" in i.arguments for i in parsed.final.all("RUN"))


@pytest.mark.parametrize("image", IMAGES)
def test_every_copy_source_exists_and_is_in_the_build_context(image: str) -> None:
    patterns = dockerignore_patterns()
    parsed = dockerfile(image)
    checked = 0
    for stage in parsed.stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            sources, flags = copy_sources(instruction)
            if "from" in flags:
                continue
            for source in sources:
                relative = source.rstrip("/")
                assert (REPO / relative).exists(), f"{image}: COPY source {source} does not exist"
                assert dockerignore_allows(relative, patterns), f"{image}: .dockerignore drops {source}"
                if (REPO / relative).is_dir():
                    kept = [
                        p
                        for p in (REPO / relative).rglob("*.py")
                        if dockerignore_allows(str(p.relative_to(REPO)), patterns)
                    ]
                    assert kept, f"{image}: .dockerignore drops every file under {source}"
                checked += 1
    assert checked >= 3


def test_dockerignore_keeps_the_virtualenv_and_tests_out() -> None:
    patterns = dockerignore_patterns()
    for dropped in (
        ".venv/bin/python",
        "tests/unit/test_images.py",
        ".git/HEAD",
        "operator/qfleet/__pycache__/x.pyc",
    ):
        assert not dockerignore_allows(dropped, patterns), dropped
    assert dockerignore_allows("operator/qfleet/cli.py", patterns)


@pytest.mark.parametrize("image", IMAGES)
def test_final_user_is_numeric_and_not_root(image: str) -> None:
    users = dockerfile(image).final.all("USER")
    assert users, f"{image}: the final stage sets no USER and would run as root"
    user, _, group = users[-1].arguments.partition(":")
    assert user.isdigit() and int(user) != 0, (
        f"{image}: USER {users[-1].arguments} (kubelet's runAsNonRoot needs a numeric uid)"
    )
    assert not group or (group.isdigit() and int(group) != 0)


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_is_a_real_qfleet_subcommand(image: str) -> None:
    from qfleet.cli import build_parser

    final = dockerfile(image).final
    entrypoints = final.all("ENTRYPOINT")
    assert entrypoints, f"{image}: no ENTRYPOINT"
    entrypoint = entrypoints[-1].exec_form()
    assert entrypoint, f"{image}: ENTRYPOINT must use the exec (JSON) form so signals reach qfleet"
    assert entrypoint[0] == "qfleet"
    command = final.all("CMD")
    argv = entrypoint[1:] + ((command[-1].exec_form() or []) if command else [])
    assert argv, f"{image}: neither ENTRYPOINT nor CMD names a subcommand"
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert argv[0] in verbs, f"{image}: `qfleet {argv[0]}` is not a subcommand ({', '.join(verbs)})"
    assert argv[0] in VERBS_BY_IMAGE[image]
    # The image's default arguments parse; without a CMD the caller (the operator's pod spec)
    # supplies the options, so only the subcommand itself is checked (``--help`` exits 0).
    try:
        parser.parse_args(argv if command else [*argv, "--help"])
    except SystemExit as exc:
        assert exc.code == 0, f"{image}: `qfleet {' '.join(argv)}` does not parse"


@pytest.mark.parametrize("image", IMAGES)
def test_oci_labels(image: str) -> None:
    labels = " ".join(i.arguments for i in dockerfile(image).final.all("LABEL"))
    for label in OCI_LABELS:
        assert f"{label}=" in labels, f"{image}: missing label {label}"
    assert f'org.opencontainers.image.title="qfleet-{image}"' in labels


@pytest.mark.parametrize("image", IMAGES)
def test_path_and_writable_home_for_a_read_only_root(image: str) -> None:
    env = " ".join(i.arguments for i in dockerfile(image).final.all("ENV"))
    assert "PATH=/opt/qfleet/bin:" in env
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env


# --- Requirements per image ----------------------------------------------------------------------


def pyproject_specifiers() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    found: dict[str, SpecifierSet] = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        found[canonicalize_name(requirement.name)] = requirement.specifier
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_requirements_are_exact_pins_within_the_project_constraints(image: str) -> None:
    allowed = pyproject_specifiers()
    for requirement in requirements(image):
        name = canonicalize_name(requirement.name)
        pins = list(requirement.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"{image}: pin {requirement} exactly"
        assert name in allowed, f"{image}: {name} is not a dependency of qfleet in pyproject.toml"
        assert allowed[name].contains(pins[0].version), (
            f"{image}: {requirement} breaks pyproject's {allowed[name]}"
        )
        assert name not in FORBIDDEN_BY_IMAGE[image], f"{image} must not install {name}"


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


@pytest.mark.parametrize("image", IMAGES)
def test_forbidden_distributions_are_not_pulled_in_transitively(image: str) -> None:
    closure = dependency_closure([r.name for r in requirements(image)])
    assert not closure & FORBIDDEN_BY_IMAGE[image]


# Replaces the import system's path finder with one that cannot see the blocked top-level
# modules: to the code under test (and to ``importlib.util.find_spec`` probes in libraries such as
# yarl) they are simply not installed, as in the image.
_BLOCKER = textwrap.dedent(
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
    script = _BLOCKER.format(blocked=sorted(blocked_modules(image))) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False
    )


def qfleet_modules(*prefixes: str) -> list[str]:
    """Every module of the qfleet package under the given dotted prefixes."""
    root = REPO / "operator"
    names = []
    for path in sorted((root / "qfleet").rglob("*.py")):
        dotted = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        if any(dotted == p or dotted.startswith(p + ".") for p in prefixes):
            names.append(dotted)
    return names


#: The modules whose import (and only import) an image must support, beyond its verbs' modules.
MODULES_BY_IMAGE: dict[str, tuple[str, ...]] = {
    "operator": ("qfleet.operator", "qfleet.fleet", "qfleet.isa"),
    "toolkit": ("qfleet.model", "qfleet.lfw", "qfleet.pipeline", "qfleet.fleet", "qfleet.isa"),
    "server": ("qfleet.serving",),
}


@pytest.mark.parametrize("image", IMAGES)
def test_image_packages_suffice_for_its_verbs(image: str) -> None:
    from qfleet.cli import VERBS

    modules = qfleet_modules(*MODULES_BY_IMAGE[image])
    body = f"""
    import importlib
    from qfleet.cli import build_parser
    parser = build_parser()  # imports every verb module: each must import without heavy packages
    verbs = parser._subparsers._group_actions[0].choices
    missing = [v for v in {VERBS_BY_IMAGE[image]!r} if v not in verbs]
    assert not missing, f"verbs not available: {{missing}}"
    for name in {modules!r}:
        importlib.import_module(name)
    print("ok")
    """
    result = run_as_image(image, body)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    assert set(VERBS_BY_IMAGE[image]) <= set(VERBS)


def test_blocker_hides_what_an_image_leaves_out() -> None:
    result = run_as_image("server", "import nncf\n")
    assert result.returncode != 0 and "No module named 'nncf'" in result.stderr
    result = run_as_image("operator", "import openvino\n")
    assert result.returncode != 0 and "No module named 'openvino'" in result.stderr
    assert run_as_image("server", "import openvino, aiohttp\n").returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_server_image_serves_a_model_without_mxnet_nncf_or_kubernetes(tiny_ir: Callable[..., Path]) -> None:
    """Start `qfleet serve` exactly as the server image would run it, with only its packages."""
    xml = tiny_ir("served")
    port = _free_port()
    body = f"""
    import sys
    from qfleet.cli import main
    sys.exit(main(["serve", "--model", {str(xml)!r}, "--host", "127.0.0.1", "--port", "{port}"]))
    """
    script = _BLOCKER.format(blocked=sorted(blocked_modules("server"))) + textwrap.dedent(body)
    env = {**os.environ, "QFLEET_HOST_ISA": "avx2"}
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/v2/health/ready", timeout=2
                ) as response:
                    ready = response.status == 200
                    break
            except OSError:
                time.sleep(0.3)
        if not ready:
            process.kill()
            _, stderr = process.communicate(timeout=10)
            pytest.fail(f"server did not become ready without the excluded packages:\n{stderr[-3000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()
