"""The chart on real platforms: as a subchart with globals, behind a registry mirror, on OpenShift,
with its CRD upgraded by Helm, a PodDisruptionBudget, the operator pod's knobs and ``helm test``.

Rendered by the real ``helm`` (``tests/support/k8s_tools.py``); the Kubernetes API schemas come from
``kubernetes-validate``, as in ``test_chart_render.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from qfleet.cli import build_parser
from tests.support.k8s_tools import CHART, CRDS, find, render, run_tool, write_values
from tests.unit.deploy.test_chart_render import (
    assert_restricted,
    kubernetes_validate,
    operator_container,
    operator_deployment,
    rendered_env,
)

SELECTOR = {
    "app.kubernetes.io/name": "qfleet",
    "app.kubernetes.io/instance": "qfleet",
    "app.kubernetes.io/component": "operator",
}
#: What a production platform sets: a mirror, pull secrets, an OpenShift-style security context,
#: placement of the operator, extra arguments, environment and a mounted CA bundle.
PLATFORM: dict[str, Any] = {
    "global": {"imageRegistry": "mirror.example.com/ghcr", "imagePullSecrets": ["mirror"]},
    "imagePullSecrets": [{"name": "registry"}],
    "leaderElection": {"enabled": True, "replicas": 3},
    "podSecurityContext": {
        "runAsUser": None,
        "runAsGroup": None,
        "fsGroup": None,
        "seLinuxOptions": {"level": "s0:c26,c5"},
    },
    "securityContext": {"seLinuxOptions": {"level": "s0:c26,c5"}},
    "operator": {
        "extraArgs": ["--log-format=json"],
        "extraEnv": [
            {"name": "HTTPS_PROXY", "value": "http://proxy.example.com:3128"},
            {"name": "TEAM", "valueFrom": {"configMapKeyRef": {"name": "team", "key": "name"}}},
        ],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "ca-bundle"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}],
        "nodeSelector": {"node-role.kubernetes.io/infra": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/infra", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                 "labelSelector": {"matchLabels": SELECTOR}}}]}},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"},
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "qfleet"}}},
        ],
        "priorityClassName": "system-cluster-critical",
    },
    "tests": {"image": {"repository": "registry.example.com/tools/busybox", "tag": "1.36"}},
}  # fmt: skip


def pod_spec(objects: list[dict[str, Any]]) -> Mapping[str, Any]:
    return operator_deployment(objects)["spec"]["template"]["spec"]


def hook_pod(objects: list[dict[str, Any]]) -> Mapping[str, Any]:
    (pod,) = find(objects, "Pod")
    return pod


def operator_settings(objects: list[dict[str, Any]]) -> Any:
    from qfleet.operator.settings import OperatorSettings

    return OperatorSettings.from_env(rendered_env(operator_container(objects)))


# --- As a subchart -------------------------------------------------------------------------------


def umbrella(tmp_path: Path, values: Mapping[str, Any]) -> Path:
    """An umbrella chart whose charts/ holds a copy of this chart, with ``values`` as its own."""
    root = tmp_path / "platform"
    (root / "charts").mkdir(parents=True)
    (root / "templates").mkdir()
    shutil.copytree(CHART, root / "charts" / "qfleet")
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    (root / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "qfleet", "version": chart["version"]}],
            }
        )
    )
    write_values(values, root)
    return root


UMBRELLA_VALUES: dict[str, Any] = {
    "global": {
        "imageRegistry": "mirror.example.com:5000/cache",
        # A bare name, as many umbrella charts give them, and one the subchart repeats.
        "imagePullSecrets": ["mirror-pull", {"name": "shared"}],
        "storageClass": "fast",  # another subchart's global
    },
    "qfleet": {
        "imagePullSecrets": [{"name": "shared"}, {"name": "qfleet-pull"}],
        "podDefaults": {"imagePullSecrets": [{"name": "pods-only"}]},
    },
}


@pytest.fixture(scope="module")
def umbrella_objects(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = umbrella(tmp_path_factory.mktemp("umbrella"), UMBRELLA_VALUES)
    lint = run_tool("helm", "lint", "--strict", str(root))
    assert "0 chart(s) failed" in lint.stdout
    text = run_tool("helm", "template", "qfleet", str(root), "--namespace", "platform").stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_subchart_global_registry_prefixes_every_image(umbrella_objects: list[dict[str, Any]]) -> None:
    mirror = "mirror.example.com:5000/cache"
    assert operator_container(umbrella_objects)["image"] == f"{mirror}/qfleet/qfleet-operator:0.1.0"
    fleet = operator_settings(umbrella_objects).fleet
    assert fleet.toolkit_image == f"{mirror}/qfleet/qfleet-toolkit:0.1.0"
    assert fleet.server_image == f"{mirror}/qfleet/qfleet-server:0.1.0"
    (container,) = hook_pod(umbrella_objects)["spec"]["containers"]
    assert container["image"] == f"{mirror}/library/busybox:1.37.0"


def test_subchart_pull_secrets_reach_every_pod(umbrella_objects: list[dict[str, Any]]) -> None:
    chart_secrets = [{"name": "mirror-pull"}, {"name": "shared"}, {"name": "qfleet-pull"}]
    assert pod_spec(umbrella_objects)["imagePullSecrets"] == chart_secrets
    assert hook_pod(umbrella_objects)["spec"]["imagePullSecrets"] == chart_secrets
    # The Jobs and serving pods: the operator's podDefaults, as the operator itself parses them.
    from qfleet.fleet.pods import parse_pod_knobs

    env = rendered_env(operator_container(umbrella_objects))
    expected = [*chart_secrets, {"name": "pods-only"}]
    assert yaml.safe_load(env["QFLEET_POD_DEFAULTS"]) == {"imagePullSecrets": expected}
    assert operator_settings(umbrella_objects).fleet.pod_defaults == parse_pod_knobs(
        {"imagePullSecrets": expected}, "podDefaults"
    )


def test_pods_the_operator_creates_get_the_pull_secrets(umbrella_objects: list[dict[str, Any]]) -> None:
    """From the rendered environment to a Job the operator would create."""
    from qfleet.fleet.manifests import Owner, job_for
    from qfleet.fleet.spec import parse_spec

    sample = yaml.safe_load((CRDS / "samples" / "qfleet.dev_v1alpha1_quantizedmodel.yaml").read_text())
    spec = parse_spec(sample["spec"])
    config = operator_settings(umbrella_objects).fleet
    job = job_for(Owner("m", "surveillance", "0"), spec, spec.tiers[0], "key", config)
    pod = job["spec"]["template"]["spec"]
    assert [s["name"] for s in pod["imagePullSecrets"]] == [
        "mirror-pull",
        "shared",
        "qfleet-pull",
        "pods-only",
    ]
    assert pod["containers"][0]["image"].startswith("mirror.example.com:5000/cache/qfleet/qfleet-toolkit:")


def test_without_globals_nothing_changes() -> None:
    objects = render()
    assert "imagePullSecrets" not in pod_spec(objects)
    assert rendered_env(operator_container(objects))["QFLEET_POD_DEFAULTS"] == "{}"


@pytest.mark.parametrize(
    ("repository", "mirrored"),
    [
        ("ghcr.io/qfleet/qfleet-operator", "mirror.example.com/qfleet/qfleet-operator"),
        ("localhost:5000/qfleet-operator", "mirror.example.com/qfleet-operator"),
        ("localhost/qfleet-operator", "mirror.example.com/qfleet-operator"),
        # No registry host (Docker Hub): the mirror is put in front.
        ("qfleet/qfleet-operator", "mirror.example.com/qfleet/qfleet-operator"),
        ("busybox", "mirror.example.com/busybox"),
    ],
)
def test_global_registry_replaces_the_registry_host(repository: str, mirrored: str) -> None:
    values = {
        "global": {"imageRegistry": "mirror.example.com/"},
        "images": {"operator": {"repository": repository, "digest": "sha256:" + "b" * 64}},
    }
    assert operator_container(render(values))["image"] == f"{mirrored}@sha256:{'b' * 64}"


# --- The CRD, upgraded by Helm ----------------------------------------------------------------------


def test_crd_is_a_template_equal_to_crds(tmp_path: Path) -> None:
    (crd,) = find(render(), "CustomResourceDefinition")
    (source,) = yaml.safe_load_all((CRDS / "qfleet.dev_quantizedmodels.yaml").read_text(encoding="utf-8"))
    assert crd["spec"] == source["spec"], "the rendered CRD must be crds/ exactly"
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert source["metadata"]["labels"].items() <= crd["metadata"]["labels"].items()
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    # A template, so `helm upgrade` applies it; not a crds/ file, which Helm installs only once.
    show = run_tool("helm", "show", "crds", str(CHART))
    assert "CustomResourceDefinition" not in show.stdout


def test_crd_keep_and_enabled() -> None:
    (crd,) = find(render({"crds": {"keep": False}}), "CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})
    assert not find(render({"crds": {"enabled": False}}), "CustomResourceDefinition")


# --- Security contexts ----------------------------------------------------------------------------


def test_default_security_contexts_are_todays_restricted_ones() -> None:
    objects = render()
    assert pod_spec(objects)["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert operator_container(objects)["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert operator_settings(objects).fleet.run_as_user == 65532


def test_openshift_leaves_the_uid_to_the_platform() -> None:
    """restricted-v2 assigns each namespace a uid range: null removes the chart's ids."""
    objects = render(PLATFORM)
    for name, pod in [("operator", pod_spec(objects)), ("test", hook_pod(objects)["spec"])]:
        context = pod["securityContext"]
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys(), name
        assert context["seLinuxOptions"] == {"level": "s0:c26,c5"}
        assert_restricted(name, pod)
    # The operator then names no uid in the pods it creates either: the platform assigns it.
    assert rendered_env(operator_container(objects))["QFLEET_RUN_AS_USER"] == "auto"
    assert operator_settings(objects).fleet.run_as_user is None


def test_container_security_context_overrides() -> None:
    objects = render({"securityContext": {"runAsUser": 1000700000}})
    assert operator_container(objects)["securityContext"]["runAsUser"] == 1000700000
    assert operator_container(objects)["securityContext"]["readOnlyRootFilesystem"] is True
    # The uid the operator's container runs as is the one its Jobs and servers get.
    assert operator_settings(objects).fleet.run_as_user == 1000700000


# --- The operator pod's knobs -----------------------------------------------------------------------


def test_operator_pod_knobs() -> None:
    objects = render(PLATFORM)
    pod = pod_spec(objects)
    operator = PLATFORM["operator"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == operator[key], key
    zone, host = pod["topologySpreadConstraints"]
    # A constraint without labelSelector counts the operator's replicas.
    assert zone["labelSelector"] == {"matchLabels": SELECTOR}
    assert host == operator["topologySpreadConstraints"][1]
    container = operator_container(objects)
    argv = [*container["command"], *container["args"]]
    assert argv[-1] == "--log-format=json"
    assert build_parser().parse_args(argv[1:]).log_format == "json"
    env = {item["name"]: item for item in container["env"]}
    assert env["HTTPS_PROXY"]["value"] == "http://proxy.example.com:3128"
    assert env["TEAM"]["valueFrom"] == {"configMapKeyRef": {"name": "team", "key": "name"}}
    assert {"name": "ca", "configMap": {"name": "ca-bundle"}} in pod["volumes"]
    assert {"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True} in container["volumeMounts"]
    assert container["securityContext"]["seLinuxOptions"] == {"level": "s0:c26,c5"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_pod_disruption_budget_with_several_replicas() -> None:
    assert not find(render(), "PodDisruptionBudget"), "one replica: a budget would only block drains"
    objects = render(PLATFORM)
    (budget,) = find(objects, "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    labels = operator_deployment(objects)["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    off = {"leaderElection": {"enabled": True, "podDisruptionBudget": {"enabled": False}}}
    assert not find(render(off), "PodDisruptionBudget")


# --- helm test -----------------------------------------------------------------------------------------


def test_helm_test_pod_reaches_the_metrics_service() -> None:
    objects = render()
    pod = hook_pod(objects)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (service,) = find(objects, "Service")
    (port,) = service["spec"]["ports"]
    (container,) = pod["spec"]["containers"]
    script = container["command"][-1]
    assert f"http://{service['metadata']['name']}.qfleet-system.svc:{port['port']}/metrics" in script
    assert container["image"] == "docker.io/library/busybox:1.37.0"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert_restricted("test", pod["spec"])
    # Not one of the pods the metrics Service sends traffic to.
    assert not service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()


def test_helm_test_pod_image_and_switches() -> None:
    (container,) = hook_pod(render(PLATFORM))["spec"]["containers"]
    assert container["image"] == "mirror.example.com/ghcr/tools/busybox:1.36"
    assert not find(render({"tests": {"enabled": False}}), "Pod")
    assert not find(render({"metrics": {"service": {"enabled": False}}}), "Pod")


# --- Every platform rendering is valid ----------------------------------------------------------------


@pytest.mark.parametrize("kubernetes", ["1.29", "1.33"])
def test_platform_rendering_matches_the_kubernetes_api_schemas(kubernetes: str) -> None:
    utils = kubernetes_validate()
    for obj in render(PLATFORM):
        try:
            utils.validate(obj, kubernetes, strict=True)
        except utils.SchemaNotFoundError:
            assert obj["apiVersion"].startswith("kopf.dev"), obj["kind"]
        except utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.caught.absolute_path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.caught.message}")


def test_platform_values_pass_helm_lint(tmp_path: Path) -> None:
    result = run_tool(
        "helm", "lint", "--strict", str(CHART), "--values", str(write_values(PLATFORM, tmp_path))
    )
    assert "0 chart(s) failed" in result.stdout


# --- The chart's README ----------------------------------------------------------------------------------


def test_chart_readme_is_up_to_date() -> None:
    script = CHART.parent.parent / "scripts" / "chart_readme.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr + "\nregenerate: python scripts/chart_readme.py"


def test_chart_readme_lists_every_value() -> None:
    from tests.unit.deploy.test_chart import schema, walk_schema

    readme = (CHART / "README.md").read_text(encoding="utf-8")
    for path, node in walk_schema(schema()):
        if "." in path or (path and "properties" not in node):
            assert f"| `{path}` |" in readme, path
        elif path:
            assert f"### `{path}`" in readme, path


def test_chart_readme_refuses_a_value_without_description(tmp_path: Path) -> None:
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    schema_path = chart / "values.schema.json"
    document = json.loads(schema_path.read_text(encoding="utf-8"))
    document["properties"]["monitoring"] = {
        "type": "object",
        "description": "A section added later.",
        "properties": {"enabled": {"type": "boolean", "default": False}},
    }
    schema_path.write_text(json.dumps(document))
    sys.path.insert(0, str(CHART.parent.parent / "scripts"))
    try:
        import chart_readme
    finally:
        sys.path.pop(0)
    with pytest.raises(chart_readme.MissingDescriptionError, match=r"monitoring\.enabled"):
        chart_readme.generate(chart)
