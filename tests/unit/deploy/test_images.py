"""Static checks of the container images (no Docker engine is needed).

All three images build from ``images/Dockerfile``, one target each, sharing one build stage (the
virtual environment and the qfleet wheel) and one runtime stage. Each image must build from a
pinned base, in stages, install only its own requirements file, copy only files that exist and
that the .dockerignore lets through, run a real ``qfleet`` subcommand as a non-root numeric user,
and carry OCI labels. Each image's requirements file must be enough for the verbs it runs and must
leave out what it does not need: an import blocker that hides every distribution outside the
image's requirements (and their dependencies) proves it; for the server by actually serving a model
(``tests/integration/test_server_image.py``).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from tests.support.image_packages import dependency_closure, requirements, run_as_image
from tests.support.paths import REPO

DOCKERFILE = REPO / "images" / "Dockerfile"
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

    def copied_from(self) -> set[str]:
        """The stages this one copies files from (``COPY --from=<stage>``)."""
        return {copy_sources(i)[1]["from"] for i in self.all("COPY") if "from" in copy_sources(i)[1]}


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        found = [s for s in self.stages if s.name == name]
        assert len(found) == 1, f"{len(found)} stages named {name}"
        return found[0]

    def lineage(self, name: str) -> list[Stage]:
        """The stage ``name`` and the stages it is built FROM, the nearest first."""
        names = {s.name for s in self.stages}
        chain = [self.stage(name)]
        while chain[-1].base in names:
            chain.append(self.stage(chain[-1].base))
        return chain

    def needs(self, name: str) -> list[Stage]:
        """Every stage that building ``name`` builds: its lineage and what those copy from, recursively."""
        seen: dict[str, Stage] = {}
        todo = [name]
        while todo:
            for stage in self.lineage(todo.pop()):
                if stage.name not in seen:
                    seen[str(stage.name)] = stage
                    todo.extend(stage.copied_from())
        return list(seen.values())

    def external_base(self, name: str) -> str:
        """The image that stage ``name`` starts from in the end, with the global ARGs filled in."""
        return resolve_base(self, self.lineage(name)[-1].base)


@dataclass
class Image:
    """One target of the Dockerfile as the image it builds: its configuration and its build stages."""

    dockerfile: Dockerfile
    target: str

    def config(self, keyword: str) -> list[Instruction]:
        """The ``keyword`` instructions that make up the image's configuration, in the order they apply.

        ENV, LABEL, USER, ENTRYPOINT ... of a stage carry over to the stages built FROM it.
        """
        lineage = reversed(self.dockerfile.lineage(self.target))
        return [i for stage in lineage for i in stage.all(keyword)]

    @property
    def final(self) -> Stage:
        return self.dockerfile.stage(self.target)

    @property
    def build_stages(self) -> list[Stage]:
        """The stages this image's files come from, outside its own lineage (not shipped)."""
        shipped = {s.name for s in self.dockerfile.lineage(self.target)}
        return [s for s in self.dockerfile.needs(self.target) if s.name not in shipped]


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


@functools.cache
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


def image(name: str) -> Image:
    return Image(dockerfile(), name)


def requirements_copied(stages: list[Stage]) -> set[str]:
    """The ``images/*/requirements.txt`` files that these stages copy in."""
    return {
        source
        for stage in stages
        for instruction in stage.all("COPY")
        for source in copy_sources(instruction)[0]
        if re.fullmatch(r"images/[^/]+/requirements\.txt", source)
    }


# --- Dockerfile structure ------------------------------------------------------------------------


def test_one_dockerfile_builds_every_image() -> None:
    found = sorted(str(p.relative_to(REPO)) for p in (REPO / "images").rglob("*Dockerfile*"))
    assert found == ["images/Dockerfile"], f"expected one Dockerfile with a target per image, found {found}"
    names = [s.name for s in dockerfile().stages]
    assert all(names), "every stage needs a name: the images are built by --target"
    assert len(set(names)) == len(names), names
    assert set(IMAGES) <= set(names)


def test_a_build_without_a_target_fails() -> None:
    """The last stage is what `docker build` makes without --target: it must fail, not pass for an image."""
    last = dockerfile().stages[-1]
    assert last.name not in IMAGES
    runs = " ".join(i.arguments for i in last.all("RUN"))
    assert re.search(r"\bexit 1\b", runs), f"the last stage ({last.name}) builds without failing"
    assert all(last not in dockerfile().needs(name) for name in IMAGES)


@pytest.mark.parametrize("name", IMAGES)
def test_base_image_is_pinned_by_exact_tag_and_digest(name: str) -> None:
    parsed = dockerfile()
    stage_names = {s.name for s in parsed.stages}
    external = [resolve_base(parsed, s.base) for s in parsed.needs(name) if s.base not in stage_names]
    assert external, "no base image"
    for base in external:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_all_images_share_one_base() -> None:
    bases = {dockerfile().external_base(name) for name in IMAGES}
    assert len(bases) == 1, bases


def test_images_share_one_build_stage_and_one_runtime_stage() -> None:
    """The wheel is built once, in a stage every image's build uses; the runtime base is one stage."""
    parsed = dockerfile()
    wheel_builders = [s for s in parsed.stages if any("pip wheel" in i.arguments for i in s.all("RUN"))]
    assert len(wheel_builders) == 1, [s.name for s in wheel_builders]
    venv_makers = [s for s in parsed.stages if any("-m venv" in i.arguments for i in s.all("RUN"))]
    assert len(venv_makers) == 1, [s.name for s in venv_makers]
    for name in IMAGES:
        build_stages = image(name).build_stages
        assert wheel_builders[0] in build_stages and venv_makers[0] in build_stages, name
    runtime_lineages = [{s.name for s in parsed.lineage(name)[1:]} for name in IMAGES]
    assert set.intersection(*runtime_lineages), "the images share no runtime stage"


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_installs_its_own_requirements_and_no_other(name: str) -> None:
    """What keeps MXNet and NNCF out of the server and OpenVINO out of the operator."""
    assert requirements_copied(dockerfile().needs(name)) == {f"images/{name}/requirements.txt"}
    # A stage that more than one image builds installs no image's requirements.
    shared = [s for s in dockerfile().needs(name) if sum(s in dockerfile().needs(n) for n in IMAGES) > 1]
    assert shared and not requirements_copied(shared), [s.name for s in shared]
    for stage in shared:
        assert not any("--requirement" in i.arguments or " -r " in i.arguments for i in stage.all("RUN"))


@pytest.mark.parametrize("name", IMAGES)
def test_multi_stage_build_installs_the_wheel_of_this_repository(name: str) -> None:
    built = image(name)
    assert built.build_stages, "expected build stages apart from the image's own"
    build_runs = " ".join(i.arguments for s in built.build_stages for i in s.all("RUN"))
    assert "pip wheel" in build_runs and "qfleet-*.whl" in build_runs
    copied_from = {copy_sources(i)[1].get("from") for i in built.config("COPY")}
    assert copied_from & {s.name for s in built.build_stages}, "the image copies nothing from its build"
    # The image itself installs nothing with pip: everything comes built from the build stages.
    assert not any("pip" in i.arguments for i in built.config("RUN"))


def test_every_copy_source_exists_and_is_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    checked = 0
    for stage in dockerfile().stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            sources, flags = copy_sources(instruction)
            if "from" in flags:
                assert flags["from"] in {s.name for s in dockerfile().stages}, instruction
                continue
            for source in sources:
                relative = source.rstrip("/")
                assert (REPO / relative).exists(), f"{stage.name}: COPY source {source} does not exist"
                assert dockerignore_allows(relative, patterns), f"{stage.name}: .dockerignore drops {source}"
                if (REPO / relative).is_dir():
                    kept = [
                        p
                        for p in (REPO / relative).rglob("*.py")
                        if dockerignore_allows(str(p.relative_to(REPO)), patterns)
                    ]
                    assert kept, f"{stage.name}: .dockerignore drops every file under {source}"
                checked += 1
    assert checked >= 3 + len(IMAGES)


def test_dockerignore_keeps_the_virtualenv_and_tests_out() -> None:
    patterns = dockerignore_patterns()
    for dropped in (
        ".venv/bin/python",
        "tests/unit/deploy/test_images.py",
        ".git/HEAD",
        "operator/qfleet/__pycache__/x.pyc",
    ):
        assert not dockerignore_allows(dropped, patterns), dropped
    assert dockerignore_allows("operator/qfleet/cli.py", patterns)


@pytest.mark.parametrize("name", IMAGES)
def test_final_user_is_numeric_and_not_root(name: str) -> None:
    users = image(name).config("USER")
    assert users, f"{name}: the image sets no USER and would run as root"
    user, _, group = users[-1].arguments.partition(":")
    assert user.isdigit() and int(user) != 0, (
        f"{name}: USER {users[-1].arguments} (kubelet's runAsNonRoot needs a numeric uid)"
    )
    assert not group or (group.isdigit() and int(group) != 0)


@pytest.mark.parametrize("name", IMAGES)
def test_entrypoint_is_a_real_qfleet_subcommand(name: str) -> None:
    from qfleet.cli import build_parser

    built = image(name)
    entrypoints = built.config("ENTRYPOINT")
    assert entrypoints, f"{name}: no ENTRYPOINT"
    entrypoint = entrypoints[-1].exec_form()
    assert entrypoint, f"{name}: ENTRYPOINT must use the exec (JSON) form so signals reach qfleet"
    assert entrypoint[0] == "qfleet"
    command = built.config("CMD")
    argv = entrypoint[1:] + ((command[-1].exec_form() or []) if command else [])
    assert argv, f"{name}: neither ENTRYPOINT nor CMD names a subcommand"
    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert argv[0] in verbs, f"{name}: `qfleet {argv[0]}` is not a subcommand ({', '.join(verbs)})"
    assert argv[0] in VERBS_BY_IMAGE[name]
    # The image's default arguments parse; without a CMD the caller (the operator's pod spec)
    # supplies the options, so only the subcommand itself is checked (``--help`` exits 0).
    try:
        parser.parse_args(argv if command else [*argv, "--help"])
    except SystemExit as exc:
        assert exc.code == 0, f"{name}: `qfleet {' '.join(argv)}` does not parse"


@pytest.mark.parametrize("name", IMAGES)
def test_oci_labels(name: str) -> None:
    labels = " ".join(i.arguments for i in image(name).config("LABEL"))
    for label in OCI_LABELS:
        assert f"{label}=" in labels, f"{name}: missing label {label}"
    assert f'org.opencontainers.image.title="qfleet-{name}"' in labels
    assert labels.count("org.opencontainers.image.title=") == 1


@pytest.mark.parametrize("name", IMAGES)
def test_path_and_writable_home_for_a_read_only_root(name: str) -> None:
    env = " ".join(i.arguments for i in image(name).config("ENV"))
    assert "PATH=/opt/qfleet/bin:" in env
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env


# --- Requirements per image ----------------------------------------------------------------------


#: The extras an image installs (the toolkit image also runs ``qfleet demo``).
IMAGE_EXTRAS = {"operator": ("operator",), "server": ("server",), "toolkit": ("toolkit", "demo")}


def pyproject_specifiers(image: str) -> dict[str, SpecifierSet]:
    """What pyproject allows in the image's extras (and the core dependencies) on Python 3.11."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    lines = [*project["dependencies"], *(line for extra in IMAGE_EXTRAS[image] for line in extras[extra])]
    found: dict[str, SpecifierSet] = {}
    for line in lines:
        if line.startswith("qfleet["):
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        found[canonicalize_name(requirement.name)] = requirement.specifier
    return found


@pytest.mark.parametrize("image", IMAGES)
def test_requirements_are_exact_pins_within_the_project_constraints(image: str) -> None:
    allowed = pyproject_specifiers(image)
    for requirement in requirements(image):
        name = canonicalize_name(requirement.name)
        pins = list(requirement.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"{image}: pin {requirement} exactly"
        assert name in allowed, f"{image}: {name} is not in qfleet[{image}] in pyproject.toml"
        assert allowed[name].contains(pins[0].version), (
            f"{image}: {requirement} breaks pyproject's {allowed[name]}"
        )
        assert name not in FORBIDDEN_BY_IMAGE[image], f"{image} must not install {name}"


@pytest.mark.parametrize("image", IMAGES)
def test_forbidden_distributions_are_not_pulled_in_transitively(image: str) -> None:
    closure = dependency_closure([r.name for r in requirements(image)])
    assert not closure & FORBIDDEN_BY_IMAGE[image]


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
