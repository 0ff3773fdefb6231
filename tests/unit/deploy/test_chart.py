"""The Helm chart's files, checked without helm: metadata, CRD copies, values and their schema."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

import qfleet
from tests.support.k8s_tools import ALL_FEATURES, CHART, CRDS

SCHEMA_PATH = CHART / "values.schema.json"
VALUES_PATH = CHART / "values.yaml"
#: The chart's copy of crds/, rendered by templates/crd-quantizedmodels.yaml.
CHART_CRDS = CHART / "files" / "crds"
#: Objects that take keys beyond those described: the umbrella chart's globals, and Kubernetes
#: types passed whole to the pod (the API server checks the keys the schema does not describe).
OPEN_OBJECTS = {
    "global",
    "podSecurityContext",
    "podSecurityContext.seccompProfile",
    "securityContext",
    "securityContext.capabilities",
    "securityContext.seccompProfile",
}


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def default_values() -> dict[str, Any]:
    return yaml.safe_load(VALUES_PATH.read_text(encoding="utf-8"))


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's coalescing of values: maps merge, everything else is replaced."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def validator() -> jsonschema.Draft7Validator:
    document = schema()
    jsonschema.Draft7Validator.check_schema(document)
    return jsonschema.Draft7Validator(document)


# --- Chart.yaml ----------------------------------------------------------------------------------


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "qfleet"
    assert chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    # The images default to appVersion, so it must be the release of this repository.
    assert chart["appVersion"] == qfleet.__version__
    assert chart["kubeVersion"].startswith(">=1.")


# --- CRDs: the chart carries an exact copy of crds/ ----------------------------------------------


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    originals = {path.name: path.read_bytes() for path in CRDS.glob("*.yaml")}
    copies = {path.name: path.read_bytes() for path in CHART_CRDS.glob("*.yaml")}
    assert originals, "crds/ holds no CRD"
    assert copies.keys() == originals.keys(), "charts/qfleet/files/crds/ must hold exactly the files of crds/"
    for name, content in originals.items():
        assert copies[name] == content, (
            f"charts/qfleet/files/crds/{name} differs from crds/{name}: "
            "cp crds/*.yaml charts/qfleet/files/crds/"
        )


def test_chart_has_no_crds_folder() -> None:
    """Helm would install a crds/ folder once and never upgrade it, beside the templated CRD."""
    assert not (CHART / "crds").exists(), "move charts/qfleet/crds/ to charts/qfleet/files/crds/"


def test_chart_crds_are_crds() -> None:
    for path in CHART_CRDS.glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert document["kind"] == "CustomResourceDefinition", path
            assert document["apiVersion"] == "apiextensions.k8s.io/v1", path


# --- values.schema.json --------------------------------------------------------------------------


def walk_schema(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from walk_schema(child, f"{path}.{key}" if path else key)


def test_schema_is_a_valid_draft7_schema() -> None:
    validator()


def test_every_key_has_description_type_and_default() -> None:
    for path, node in walk_schema(schema()):
        if not path:
            continue
        for field in ("description", "type", "default"):
            assert field in node, f"values.schema.json: {path} has no {field}"
        assert node["description"].strip(), f"{path}: empty description"


def test_every_object_is_closed_or_a_typed_map() -> None:
    """Objects with fixed keys forbid others; free-form maps say what their values are."""
    for path, node in walk_schema(schema()):
        if node.get("type") != "object":
            continue
        if path in OPEN_OBJECTS:
            assert node.get("additionalProperties") is True, f"{path}: an open object"
        elif "properties" in node:
            assert node.get("additionalProperties") is False, (
                f"{path or 'root'}: set additionalProperties: false"
            )
        else:
            assert isinstance(node.get("additionalProperties"), dict), f"{path}: a map must type its values"


def test_schema_mirrors_values_yaml_key_for_key_with_equal_defaults() -> None:
    def compare(values: Any, node: dict[str, Any], path: str) -> None:
        assert node["default"] == values, (
            f"{path}: schema default {node['default']!r} != values.yaml {values!r}"
        )
        if "properties" in node:
            assert isinstance(values, dict)
            assert set(values) == set(node["properties"]), (
                f"{path}: keys differ between values.yaml and the schema"
            )
            for key, value in values.items():
                compare(value, node["properties"][key], f"{path}.{key}" if path else key)

    document = schema()
    values = default_values()
    assert set(values) == set(document["properties"])
    for key, value in values.items():
        compare(value, document["properties"][key], key)


def test_every_key_in_values_yaml_has_a_comment() -> None:
    """Each chart setting (a schema property) has a comment line right above it in values.yaml."""
    settings = {path for path, _ in walk_schema(schema()) if path}
    lines = VALUES_PATH.read_text(encoding="utf-8").splitlines()
    stack: list[str] = []
    checked = 0
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = [*stack[:depth], match.group(2)]
        if ".".join(stack) not in settings:
            continue  # an entry of a map (e.g. resources.requests.cpu), not a setting
        previous = lines[number - 1].strip() if number else ""
        assert previous.startswith("#"), f"values.yaml:{number + 1}: {line.strip()} has no comment above it"
        checked += 1
    assert checked == len(settings)


def test_default_values_and_all_features_are_valid() -> None:
    check = validator()
    check.validate(default_values())
    check.validate(merged(default_values(), ALL_FEATURES))
    check.validate(merged(default_values(), {"operator": {"watchNamespaces": ["faces", "lobby"]}}))


def test_platform_values_are_valid() -> None:
    """What real platforms need: an umbrella's globals (with keys of other subcharts), bare secret
    names, Kubernetes fields the schema does not describe, env from Secrets."""
    check = validator()
    check.validate(
        merged(
            default_values(),
            {
                "global": {
                    "imageRegistry": "mirror.example.com:5000/ghcr",
                    "imagePullSecrets": ["bare-name", {"name": "as-object"}],
                    "storageClass": "fast",
                },
                "podSecurityContext": {"seLinuxOptions": {"level": "s0:c1,c2"}, "supplementalGroups": [1]},
                "securityContext": {"runAsUser": 1000, "capabilities": {"add": ["NET_BIND_SERVICE"]}},
                "operator": {
                    "extraEnv": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}],
                    "extraArgs": ["--verbose"],
                    "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
                    "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}],
                },
            },
        )
    )


@pytest.mark.parametrize(
    "override",
    [
        {"operator": {"watchNamespace": ["typo"]}},
        {"operator": {"logLevel": "loud"}},
        {"operator": {"metricsPort": 0}},
        {"operator": {"watchNamespaces": ["Not_A_Namespace"]}},
        {"leaderElection": {"replicas": 1}},
        {"images": {"server": {"digest": "latest"}}},
        {"images": {"operator": {"pullPolicy": "Sometimes"}}},
        {"securityContext": {"runAsUser": 0}},
        {"podSecurityContext": {"runAsUser": 0}},
        {"podSecurityContext": {"runAsNonRoot": "yes"}},
        {"podSecurityContext": {"seccompProfile": {"type": "Whatever"}}},
        {"securityContext": {"capabilities": {"drop": "ALL"}}},
        {"global": {"imageRegistry": "https://mirror.example.com"}},
        {"global": {"imagePullSecrets": [{"secret": "registry"}]}},
        {"crds": {"enabled": "yes"}},
        {"crds": {"keepIt": True}},
        {"leaderElection": {"podDisruptionBudget": {"maxUnavailable": 0}}},
        {"operator": {"extraArgs": [1]}},
        {"operator": {"extraVolumes": [{"emptyDir": {}}]}},
        {"operator": {"extraVolumeMounts": [{"name": "ca", "mountPath": "relative"}]}},
        {"operator": {"extraEnv": [{"name": "X", "value": "1", "valueFrom": {}}]}},
        {"tests": {"image": {"digest": "latest"}}},
        {"workloads": {"jobMemory": "lots"}},
        {"workloads": {"benchmarkSeconds": 0}},
        {"metrics": {"serviceMonitor": {"interval": "often"}}},
        {"operator": {"extraEnv": [{"name": "X"}]}},
        {"operator": {"tolerations": [{"operator": "Maybe"}]}},
        {"operator": {"maxRunningJobs": -1}},
        {"operator": {"progressDeadlineSeconds": 0}},
        {"podDefaults": {"tolerations": [{"key": "a", "operator": "Maybe"}]}},
        {"podDefaults": {"imagePullSecrets": ["registry"]}},
        {"podDefaults": {"priorityClassName": "High Priority"}},
        {"podDefaults": {"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone"}]}},
        {"podDefaults": {"podLabels": {"team": "computer vision"}}},
        {"podDefaults": {"podLabels": {"qfleet.dev/model": "x"}}},
        {"podDefaults": {"podAnnotations": {"qfleet.dev/artifact": "x"}}},
        {"podDefaults": {"serviceAccountName": "Not_A_Name"}},
        {"podDefaults": {"nodeSelector": {"pool": "a"}}},
        {"unknownTopLevel": True},
    ],
)
def test_schema_rejects_mistakes(override: dict[str, Any]) -> None:
    errors = list(validator().iter_errors(merged(default_values(), override)))
    assert errors, f"the schema accepted {override}"


def test_pod_defaults_keys_are_the_operators_knobs() -> None:
    """podDefaults has exactly the keys a target's pod knobs have (QFLEET_POD_DEFAULTS refuses others)."""
    from qfleet.fleet.pods import KNOB_KEYS

    assert set(default_values()["podDefaults"]) == set(KNOB_KEYS)


def test_all_features_values_touch_only_known_keys() -> None:
    """ALL_FEATURES (used by the rendering tests) really turns optional features on."""
    values = merged(default_values(), ALL_FEATURES)
    assert values["leaderElection"]["enabled"]
    assert values["metrics"]["serviceMonitor"]["enabled"] and values["metrics"]["podMonitor"]["enabled"]
    assert values["rbac"]["aggregateToDefaultRoles"]


def test_helmignore_keeps_templates_and_crds() -> None:
    patterns = [
        line.strip()
        for line in (CHART / ".helmignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for kept in ("templates", "files", "values.yaml", "values.schema.json", "Chart.yaml"):
        assert not any(Path(kept).match(pattern.rstrip("/")) for pattern in patterns), kept
