"""How qfleet installs: one version, extras per image, locked images, and verbs that import only
what their extra provides.

The import-graph tests run ``qfleet`` in a child Python whose import system refuses the packages
that a slice of qfleet must not need (and records every attempt to import them), so a verb that
reaches for MXNet from the server, or for OpenVINO from the operator, fails here and not in an
image.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import tomllib
from functools import cache
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import qfleet
from qfleet import cli, extras
from tests.support.paths import REPO

IMAGES = ("server", "operator", "toolkit")
#: Distributions an extra (and the image of the same name) must not pull in.
FORBIDDEN: dict[str, frozenset[str]] = {
    "server": frozenset({"mxnet", "onnx", "nncf", "kopf", "kubernetes"}),
    "operator": frozenset({"openvino", "nncf", "mxnet", "onnx"}),
    "toolkit": frozenset({"kopf", "kubernetes"}),
}
#: The module each optional distribution is imported as.
MODULE_OF = {
    "openvino": "openvino",
    "numpy": "numpy",
    "aiohttp": "aiohttp",
    "prometheus-client": "prometheus_client",
    "kopf": "kopf",
    "kubernetes": "kubernetes",
    "mxnet": "mxnet",
    "onnx": "onnx",
    "nncf": "nncf",
    "pillow": "PIL",
    "simplejpeg": "simplejpeg",
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "pyyaml": "yaml",
    "boto3": "boto3",
    "grpcio": "grpc",
    "protobuf": "google.protobuf",
}


@cache
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def extra_requirements(extra: str) -> list[Requirement]:
    """The extra's requirements, with qfleet's own extras (``qfleet[toolkit]``) expanded."""
    found: list[Requirement] = []
    for line in pyproject()["project"]["optional-dependencies"][extra]:
        requirement = Requirement(line)
        if canonicalize_name(requirement.name) == "qfleet":
            for inner in sorted(requirement.extras):
                found += extra_requirements(inner)
        else:
            found.append(requirement)
    return found


def names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements}


# --- One version ----------------------------------------------------------------------------------


def test_version_comes_from_pyproject_and_the_chart_follows_it() -> None:
    version = pyproject()["project"]["version"]
    assert qfleet.__version__ == version, "reinstall (make venv): the installed metadata is stale"
    source = (REPO / "operator" / "qfleet" / "__init__.py").read_text(encoding="utf-8")
    assert version not in source, "qfleet/__init__.py must read the version, not repeat it"
    chart = yaml.safe_load((REPO / "charts" / "qfleet" / "Chart.yaml").read_text(encoding="utf-8"))
    assert str(chart["appVersion"]) == qfleet.__version__


def test_build_backend_reads_the_spdx_license() -> None:
    assert pyproject()["project"]["license"] == "Apache-2.0"
    requires = [Requirement(r) for r in pyproject()["build-system"]["requires"]]
    (setuptools,) = [r for r in requires if r.name == "setuptools"]
    # setuptools 77 is the first to take `license` as an SPDX expression.
    assert not setuptools.specifier.contains("76.1") and setuptools.specifier.contains("77.0")


def test_version_names_openvino_and_nncf_when_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed = {"openvino": "2026.4.1"}

    def version(name: str) -> str:
        if name not in installed:
            raise cli.importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(cli.importlib.metadata, "version", version)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"qfleet {qfleet.__version__} (openvino 2026.4.1)"
    installed.clear()
    assert cli.version_text() == f"qfleet {qfleet.__version__}"


# --- Extras ---------------------------------------------------------------------------------------


def test_core_dependencies_are_what_every_verb_needs_to_start() -> None:
    """`qfleet --help`, plan and gate need nothing beyond the standard library."""
    assert pyproject()["project"]["dependencies"] == []
    assert pyproject()["project"]["requires-python"] == ">=3.11"


@pytest.mark.parametrize("extra", IMAGES)
def test_an_extra_leaves_out_what_its_image_must_not_hold(extra: str) -> None:
    assert not names(extra_requirements(extra)) & FORBIDDEN[extra]


def test_mxnet_and_its_onnx_pin_apply_only_where_mxnet_has_wheels() -> None:
    toolkit = {canonicalize_name(r.name): r for r in extra_requirements("toolkit")}
    for name, version in (("mxnet", "1.9.1"), ("onnx", "1.14.1")):
        requirement = toolkit[name]
        assert str(requirement.specifier) == f"=={version}"
        assert requirement.marker is not None
        assert requirement.marker.evaluate({"python_version": "3.11"})
        assert not requirement.marker.evaluate({"python_version": "3.12"})
    for extra in ("server", "operator"):
        assert "onnx" not in names(extra_requirements(extra))
    numpy_pins = [r for r in extra_requirements("toolkit") if r.name == "numpy"]
    on_311 = [r for r in numpy_pins if r.marker is None or r.marker.evaluate({"python_version": "3.11"})]
    assert [str(r.specifier) for r in on_311] == ["==1.26.4"], "MXNet 1.9.1 needs numpy < 2"


def test_dev_installs_every_extra_and_the_tools_the_tests_use() -> None:
    dev = names(extra_requirements("dev"))
    for extra in ("server", "operator", "toolkit", "demo"):
        assert names(extra_requirements(extra)) <= dev, extra
    assert {"pytest", "ruff", "mypy", "lupa", "pyyaml", "packaging"} <= dev


@pytest.mark.parametrize("extra", sorted(extras.EXTRA_MODULES))
def test_extras_module_table_matches_pyproject(extra: str) -> None:
    """qfleet.extras names, for each extra, the modules that pyproject's extra installs."""
    declared = {MODULE_OF[name] for name in names(extra_requirements(extra))}
    assert declared == set(extras.EXTRA_MODULES[extra])
    assert set(extras.VERB_EXTRAS.values()) <= set(extras.EXTRA_MODULES)
    assert set(extras.VERB_EXTRAS) <= set(cli.VERBS)


@pytest.mark.parametrize("image", IMAGES)
def test_image_requirements_are_exact_pins_within_the_images_extra(image: str) -> None:
    allowed = {
        canonicalize_name(r.name): r for r in extra_requirements(image if image != "toolkit" else "demo")
    }
    for requirement in image_requirements(image):
        name = canonicalize_name(requirement.name)
        (pin,) = list(requirement.specifier)
        assert pin.operator == "==", f"{image}: pin {requirement} exactly"
        assert name in allowed, f"{image}: {name} is not in the {image} extra"
        assert allowed[name].specifier.contains(pin.version), f"{image}: {requirement} vs {allowed[name]}"


# --- Lock files -----------------------------------------------------------------------------------


def image_requirements(image: str) -> list[Requirement]:
    text = (REPO / "images" / image / "requirements.txt").read_text(encoding="utf-8")
    return [
        Requirement(line) for line in (raw.strip() for raw in text.splitlines()) if line and line[0] != "#"
    ]


def lock_entries(image: str) -> dict[str, tuple[str, list[str]]]:
    """``name -> (version, hashes)`` of images/locks/<image>.txt."""
    text = (REPO / "images" / "locks" / f"{image}.txt").read_text(encoding="utf-8")
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[^\s#])", text):
        lines = [line.split("#")[0].strip().rstrip("\\").strip() for line in block.splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            continue
        name, _, version = lines[0].partition("==")
        assert version and " " not in version, f"{image}: not an exact pin: {lines[0]}"
        hashes = [line.removeprefix("--hash=") for line in lines[1:] if line.startswith("--hash=")]
        assert len(hashes) == len(lines) - 1, f"{image}: unexpected option in {lines}"
        entries[canonicalize_name(name)] = (version, hashes)
    return entries


@pytest.mark.parametrize("image", IMAGES)
def test_lock_pins_every_package_with_hashes(image: str) -> None:
    entries = lock_entries(image)
    assert entries
    for name, (_, hashes) in entries.items():
        assert hashes and all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


@pytest.mark.parametrize("image", IMAGES)
def test_lock_holds_the_images_requirements_and_nothing_forbidden(image: str) -> None:
    entries = lock_entries(image)
    for requirement in image_requirements(image):
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{image}: {name} missing from the lock: run `make locks`"
        assert requirement.specifier.contains(entries[name][0]), (
            f"{image}: stale lock for {name}: `make locks`"
        )
    assert not set(entries) & FORBIDDEN[image]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_installs_each_image_from_its_lock_with_hashes(image: str) -> None:
    dockerfile = (REPO / "images" / "Dockerfile").read_text(encoding="utf-8")
    stage = dockerfile.split(f"AS build-{image}\n", 1)[1].split("\nFROM ", 1)[0]
    assert f"COPY images/locks/{image}.txt /tmp/lock.txt" in stage
    assert "pip install --require-hashes --no-deps --requirement /tmp/lock.txt" in stage
    assert "pip install --no-deps /wheels/qfleet-*.whl" in stage
    assert "make locks" in dockerfile and "locks:" in (REPO / "Makefile").read_text(encoding="utf-8")


# --- Import graph ---------------------------------------------------------------------------------

# A finder ahead of all others that refuses the blocked top-level packages, as if they were not
# installed, and records each attempt (even one that a library catches and shrugs off).
BLOCKER = textwrap.dedent(
    """
    import atexit, json, sys
    BLOCKED = frozenset({blocked!r})
    attempts = []
    class Blocker:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if fullname.partition(".")[0] in BLOCKED:
                attempts.append(fullname)
                raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)
            return None
    sys.meta_path.insert(0, Blocker)
    atexit.register(lambda: print("ATTEMPTS " + json.dumps(sorted(set(attempts))), file=sys.stderr))
    """
)


def run_blocked(blocked: frozenset[str], body: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    script = BLOCKER.format(blocked=sorted(blocked)) + textwrap.dedent(body)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("ATTEMPTS ")]
    return result, json.loads(line.removeprefix("ATTEMPTS "))


def cli_body(*argv: str) -> str:
    return f"""
    import sys
    from qfleet.cli import main
    try:
        code = main({list(argv)!r})
    except SystemExit as exc:
        code = exc.code
    sys.exit(code)
    """


def test_serve_imports_no_mxnet_onnx_nncf_or_kopf() -> None:
    blocked = FORBIDDEN["server"]
    result, attempts = run_blocked(blocked, cli_body("serve", "--help"))
    assert result.returncode == 0 and "--model" in result.stdout, result.stderr[-2000:]
    assert attempts == []
    body = """
    import importlib, pkgutil
    import qfleet.serving
    for module in pkgutil.walk_packages(qfleet.serving.__path__, "qfleet.serving."):
        importlib.import_module(module.name)
    import qfleet.commands.serve, qfleet.commands.loadtest
    """
    result, attempts = run_blocked(blocked, body)
    assert result.returncode == 0, result.stderr[-2000:]
    assert attempts == []


def test_operator_imports_no_openvino() -> None:
    blocked = FORBIDDEN["operator"]
    result, attempts = run_blocked(blocked, cli_body("operator", "--help"))
    assert result.returncode == 0 and "--namespace" in result.stdout, result.stderr[-2000:]
    assert attempts == []
    body = """
    import importlib, pkgutil
    import qfleet.operator, qfleet.fleet
    for package in (qfleet.operator, qfleet.fleet):
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
    """
    result, attempts = run_blocked(blocked, body)
    assert result.returncode == 0, result.stderr[-2000:]
    assert attempts == []


def test_help_needs_no_optional_package() -> None:
    every = frozenset(m for modules in extras.EXTRA_MODULES.values() for m in modules)
    result, attempts = run_blocked(every, cli_body("--help"))
    assert result.returncode == 0 and "convert" in result.stdout, result.stderr[-2000:]
    assert attempts == []
    result, _ = run_blocked(
        every,
        cli_body(
            "plan",
            "--fps-per-replica",
            "100",
            "--cameras",
            "8",
            "--camera-fps",
            "6",
            "--faces-per-frame",
            "2",
            "--json",
        ),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1])["replicas"] >= 1


# --- A missing extra is one line ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocked", "argv", "message"),
    [
        (
            {"openvino"},
            ["convert", "--source", "x", "--format", "onnx", "--out", "y"],
            "qfleet convert: error: qfleet convert needs the toolkit extra (openvino is not installed): "
            "pip install 'qfleet[toolkit]'",
        ),
        (
            {"mxnet"},
            ["convert", "--source", "x", "--format", "mxnet", "--out", "y"],
            "qfleet convert: error: qfleet convert needs the toolkit extra (mxnet is not installed): "
            "pip install 'qfleet[toolkit]'",
        ),
        (
            {"nncf"},
            ["quantize", "--model", "m.xml", "--calibration", "c", "--out", "o"],
            "qfleet quantize: error: qfleet quantize needs the toolkit extra (nncf is not installed): "
            "pip install 'qfleet[toolkit]'",
        ),
        (
            {"openvino"},
            ["serve", "--model", "m.xml"],
            "qfleet serve: error: qfleet serve needs the server extra (openvino is not installed): "
            "pip install 'qfleet[server]'",
        ),
        (
            {"kopf"},
            ["operator", "--all-namespaces"],
            "qfleet operator: error: qfleet operator needs the operator extra (kopf is not installed): "
            "pip install 'qfleet[operator]'",
        ),
    ],
)
def test_a_missing_extra_is_a_one_line_error(blocked: set[str], argv: list[str], message: str) -> None:
    result, _ = run_blocked(frozenset(blocked), cli_body(*argv))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("ATTEMPTS ")]
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_missing_extra_as_error_names_the_extra_of_a_deep_import() -> None:
    expected = r"needs the toolkit extra \(nncf is not installed\)"
    with pytest.raises(extras.MissingExtraError, match=expected), extras.missing_extra_as_error("quantize"):
        raise ModuleNotFoundError("No module named 'nncf.quantization'", name="nncf.quantization")


@pytest.mark.parametrize(("verb", "module"), [("quantize", "torch"), ("serve", "mxnet"), ("plan", "numpy")])
def test_missing_extra_as_error_leaves_other_import_errors_alone(verb: str, module: str) -> None:
    """A module the verb's extra does not provide is a bug or a broken install, not a missing extra."""
    with pytest.raises(ModuleNotFoundError), extras.missing_extra_as_error(verb):
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def test_require_checks_without_importing() -> None:
    assert "this" not in sys.modules
    extras.require("serve", "this")  # found, and not imported (it would print the Zen of Python)
    assert "this" not in sys.modules
    with pytest.raises(extras.MissingExtraError, match=r"pip install 'qfleet\[server\]'"):
        extras.require("serve", "qfleet_no_such_module")
