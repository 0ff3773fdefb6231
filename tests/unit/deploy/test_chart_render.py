"""The chart rendered by the real ``helm``: lint, Kubernetes API schemas, security, wiring.

Every rendering is checked with default values, with every optional feature on, and with the
operator limited to a list of namespaces. The objects are validated against the Kubernetes
OpenAPI schemas (``kubernetes-validate``, strict: unknown fields are errors) for the oldest
Kubernetes the chart supports and the newest the package knows. That ``kubectl`` and ``helm``
accept them in dry runs against an API server is ``tests/integration/test_kubectl_dry_run.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from qfleet.cli import build_parser
from qfleet.fleet.pods import parse_pod_knobs
from tests.support.k8s_tools import (
    ALL_FEATURES,
    CHART,
    find,
    render,
    run_tool,
    write_values,
)

NAMESPACED = {"operator": {"watchNamespaces": ["faces", "lobby"]}}
#: Every pod knob, as the chart's podDefaults (numbers that YAML and JSON both carry).
POD_DEFAULTS: dict[str, Any] = {
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "video", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": 3600},
    ],
    "imagePullSecrets": [{"name": "registry"}],
    "priorityClassName": "inference",
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway"}
    ],
    "podLabels": {"example.com/cost-center": "cctv"},
    "podAnnotations": {"example.com/owner": "vision team"},
    "serviceAccountName": "qfleet-pods",
}  # fmt: skip
NAMESPACED_ALL = {
    **ALL_FEATURES,
    "operator": {**ALL_FEATURES["operator"], "watchNamespaces": ["faces", "lobby"]},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-features": ALL_FEATURES,
    "namespaced": NAMESPACED,
    "namespaced-all-features": NAMESPACED_ALL,
}
#: The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBERNETES_VERSIONS = ("1.29", "1.33")


def kubernetes_validate() -> Any:
    return pytest.importorskip(
        "kubernetes_validate.utils", reason="pip install kubernetes-validate (dev extra)"
    )


def operator_deployment(objects: list[dict[str, Any]]) -> Mapping[str, Any]:
    (deployment,) = find(objects, "Deployment")
    return deployment


def operator_container(objects: list[dict[str, Any]]) -> Mapping[str, Any]:
    (container,) = operator_deployment(objects)["spec"]["template"]["spec"]["containers"]
    return container


# --- helm lint ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_helm_lint_strict(variant: str, tmp_path: Path) -> None:
    values = write_values(VARIANTS[variant], tmp_path)
    result = run_tool("helm", "lint", "--strict", str(CHART), "--values", str(values))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ({"operator": {"logLevel": "loud"}}, "logLevel"),
        ({"operator": {"logFormat": "xml"}}, "logFormat"),
        ({"operator": {"watchNamespace": ["typo"]}}, "watchNamespace"),
        ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
    ],
)
def test_helm_enforces_the_values_schema(override: dict[str, Any], complaint: str, tmp_path: Path) -> None:
    values = write_values(override, tmp_path)
    result = run_tool("helm", "template", "x", str(CHART), "--values", str(values), check=False)
    assert result.returncode != 0
    assert complaint in result.stderr


# --- Kubernetes API schemas ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kubernetes", KUBERNETES_VERSIONS)
def test_rendered_objects_match_the_kubernetes_api_schemas(variant: str, kubernetes: str) -> None:
    utils = kubernetes_validate()
    objects = render(VARIANTS[variant], include_crds=True)
    validated = []
    for obj in objects:
        try:
            utils.validate(obj, kubernetes, strict=True)
        except utils.SchemaNotFoundError:
            # Custom resources (ServiceMonitor, PodMonitor, kopf peerings) have no built-in schema;
            # test_service_and_monitors_select_what_they_should checks what matters in them.
            assert obj["apiVersion"].split("/")[0] in {"monitoring.coreos.com", "kopf.dev"}, obj["kind"]
            continue
        except utils.ValidationError as exc:
            path = ".".join(str(p) for p in exc.caught.absolute_path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.caught.message}")
        validated.append(obj["kind"])
    assert {
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
    } <= set(validated)


def test_validation_catches_a_broken_object() -> None:
    """The schema check is not vacuous: a typo in a rendered field is reported."""
    utils = kubernetes_validate()
    deployment = yaml.safe_load(yaml.safe_dump(operator_deployment(render())))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicey"] = "Always"
    with pytest.raises(utils.ValidationError):
        utils.validate(deployment, "1.33", strict=True)


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for obj in objects:
        spec = obj.get("spec") or {}
        if obj["kind"] == "Pod":
            found.append((obj["metadata"]["name"], spec))
        elif "template" in spec and "spec" in spec["template"]:
            found.append((obj["metadata"]["name"], spec["template"]["spec"]))
        elif obj["kind"] == "CronJob":
            found.append((obj["metadata"]["name"], spec["jobTemplate"]["spec"]["template"]["spec"]))
    return found


def assert_restricted(name: str, pod: Mapping[str, Any]) -> None:
    """The "restricted" Pod Security Standard, plus a read-only root filesystem."""
    pod_security = pod.get("securityContext") or {}
    assert pod_security.get("runAsNonRoot") is True, f"{name}: pod runAsNonRoot"
    assert (pod_security.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{name}: pod seccomp"
    assert pod_security.get("runAsUser", 1) != 0
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        security = container.get("securityContext") or {}
        where = f"{name}/{container['name']}"
        assert security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
        assert security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
        assert security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities"
        assert not security.get("capabilities", {}).get("add"), f"{where}: adds capabilities"
        assert not security.get("privileged"), f"{where}: privileged"
        assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
        seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
        assert seccomp == "RuntimeDefault", f"{where}: seccomp"
        if container.get("securityContext", {}).get("runAsUser") is not None:
            assert container["securityContext"]["runAsUser"] != 0
    for volume in pod.get("volumes", []):
        assert "hostPath" not in volume, f"{name}: hostPath volume {volume['name']}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_chart_pod_is_locked_down(variant: str) -> None:
    objects = render(VARIANTS[variant])
    pods = pod_specs(objects)
    assert {"Deployment", "Pod"} <= {o["kind"] for o in objects}, "the operator and the helm test pod"
    for name, pod in pods:
        assert_restricted(name, pod)
        # The only writable path is an emptyDir at /tmp (the test pod writes nothing).
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert mounts in ({"/tmp": "tmp"}, {}), name
    assert operator_container(objects)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]


def test_every_pod_the_operator_creates_is_locked_down() -> None:
    """The operator's Jobs and Deployments (its pure builders) meet the same standard."""
    from qfleet.fleet.config import FleetConfig
    from qfleet.fleet.manifests import Owner, ServingModel, deployment_for, job_for
    from qfleet.fleet.spec import parse_spec
    from qfleet.fleet.uris import parse_pvc_uri

    sample = yaml.safe_load(
        (CHART.parent.parent / "crds" / "samples" / "qfleet.dev_v1alpha1_quantizedmodel.yaml").read_text()
    )
    spec = parse_spec(sample["spec"])
    owner = Owner(name="arcface-r100", namespace="surveillance", uid="0000")
    config = FleetConfig()
    tier = spec.tiers[0]
    job = job_for(owner, spec, tier, "abc123", config)
    artifact = parse_pvc_uri(
        "pvc://models/qfleet/arcface-r100/avx512_vnni/abc123/int8/model.xml", field="artifact"
    )
    deployment = deployment_for(
        owner, spec, tier, model=ServingModel(artifact, "abc123", 500.0), replicas=2, config=config
    )
    for obj in (job, deployment):
        ((name, pod),) = pod_specs([obj])
        assert_restricted(name, pod)
        assert pod.get("automountServiceAccountToken") is False, f"{name}: needs no API token"


# --- Wiring: the operator's command line and settings ----------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_operator_command_is_a_valid_qfleet_operator_invocation(variant: str) -> None:
    values = VARIANTS[variant]
    container = operator_container(render(values))
    argv = [*container["command"], *container["args"]]
    assert argv[:2] == ["qfleet", "operator"]
    args = build_parser().parse_args(argv[1:])
    namespaces = (values.get("operator") or {}).get("watchNamespaces") or []
    if namespaces:
        assert args.namespaces == namespaces and not args.all_namespaces
    else:
        assert args.all_namespaces and not args.namespaces
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args.metrics_port == ports["metrics"]
    liveness = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S*)", args.liveness)
    assert liveness, args.liveness
    assert int(liveness.group(1)) == ports["health"]
    for probe in ("livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": liveness.group(2), "port": "health"}


def rendered_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def operator_settings_variables() -> set[str]:
    """The QFLEET_* variables the operator's settings read (from its source)."""
    import inspect

    from qfleet.operator import settings

    source = inspect.getsource(settings.OperatorSettings.from_env)
    return {settings.PREFIX + name for name in re.findall(r'reader\.\w+\(\s*"([A-Z_]+)"', source)}


def test_chart_sets_exactly_the_variables_the_operator_reads() -> None:
    env = rendered_env(operator_container(render(ALL_FEATURES)))
    chart_variables = {name for name in env if name.startswith("QFLEET_")}
    read = operator_settings_variables()
    assert read, "found no settings in qfleet.operator.settings"
    unknown = chart_variables - read
    assert not unknown, f"the chart sets variables the operator never reads: {sorted(unknown)}"
    # The metrics port is given on the command line (--metrics-port wins over the variable).
    missing = read - chart_variables - {"QFLEET_METRICS_PORT"}
    assert not missing, f"operator settings the chart cannot set: {sorted(missing)}"


def test_chart_settings_reach_the_operator() -> None:
    """The rendered environment, parsed by the operator's own settings reader."""
    from qfleet.operator.settings import OperatorSettings

    values = {
        **ALL_FEATURES,
        "workloads": {
            "imagePullPolicy": "Always",
            "benchmarkSeconds": 12.5,
            "jobBackoffLimit": 3,
            "jobDeadlineSeconds": 7200,
            "jobTtlSeconds": 1234567,
            "jobMemory": "6Gi",
            "jobServiceAccount": "quantizer",
            "defaultCpu": "2",
        },
        "operator": {
            "resyncSeconds": 120,
            "logFormat": "json",
            "maxRunningJobs": 0,
            "progressDeadlineSeconds": 900,
        },
        "podDefaults": POD_DEFAULTS,
        "podSecurityContext": {"runAsUser": 10001},
    }
    objects = render(values)
    container = operator_container(objects)
    env = rendered_env(container)
    settings = OperatorSettings.from_env(env)
    fleet = settings.fleet
    assert fleet.toolkit_image == "ghcr.io/qfleet/qfleet-toolkit:9.9.9"
    assert fleet.server_image == "registry.example.com/qfleet-server:0.1.0"
    assert (fleet.image_pull_policy, fleet.benchmark_seconds, fleet.job_backoff_limit) == ("Always", 12.5, 3)
    assert (fleet.job_deadline_seconds, fleet.job_ttl_seconds, fleet.job_memory) == (7200, 1234567, "6Gi")
    assert (fleet.job_service_account, fleet.default_cpu, fleet.run_as_user) == ("quantizer", "2", 10001)
    assert settings.resync_seconds == 120
    assert settings.peering == "qfleet"
    # The operator logs in that format (its --log-format default) and passes it to its pods.
    assert fleet.log_format == "json" and env["QFLEET_LOG_FORMAT"] == "json"
    assert settings.max_running_jobs == 0 and fleet.progress_deadline_seconds == 900
    # The chart's imagePullSecrets (ALL_FEATURES) come first, then podDefaults' own.
    assert fleet.pod_defaults == parse_pod_knobs(
        {**POD_DEFAULTS, "imagePullSecrets": [{"name": "registry"}]}, "podDefaults"
    )
    # The chart's own pod runs as the same user as the pods the operator creates.
    pod = operator_deployment(objects)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["image"] == "ghcr.io/qfleet/qfleet-operator@sha256:" + "a" * 64


def test_empty_pod_defaults_leave_qfleets_own() -> None:
    """An empty list or name in podDefaults means "not given", so the serving replicas keep
    qfleet's default spreading across hosts."""
    from qfleet.fleet.pods import PodKnobs
    from qfleet.operator.settings import OperatorSettings

    env = rendered_env(operator_container(render()))
    assert env["QFLEET_POD_DEFAULTS"] == "{}"
    assert OperatorSettings.from_env(env).fleet.pod_defaults == PodKnobs()
    partial = {"podDefaults": {"priorityClassName": "inference", "topologySpreadConstraints": []}}
    knobs = OperatorSettings.from_env(rendered_env(operator_container(render(partial)))).fleet.pod_defaults
    assert knobs == PodKnobs(priority_class_name="inference")


def test_operator_runs_standalone_without_leader_election() -> None:
    from qfleet.operator.settings import OperatorSettings

    objects = render()
    deployment = operator_deployment(objects)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert OperatorSettings.from_env(rendered_env(operator_container(objects))).peering is None
    assert not [o for o in objects if o["apiVersion"].startswith("kopf.dev")]


@pytest.mark.parametrize("variant", ["all-features", "namespaced-all-features"])
def test_leader_election_installs_peering(variant: str) -> None:
    values = VARIANTS[variant]
    objects = render(values)
    deployment = operator_deployment(objects)
    assert deployment["spec"]["replicas"] == values["leaderElection"]["replicas"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = {item["name"]: item for item in operator_container(objects)["env"]}
    # kopf takes its peer identity from POD_ID.
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    peering_name = env["QFLEET_PEERING"]["value"]
    namespaces = values["operator"].get("watchNamespaces")
    if namespaces:
        (crd,) = find(objects, "CustomResourceDefinition", "kopfpeerings.kopf.dev")
        peerings = find(objects, "KopfPeering")
        assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted(namespaces)
    else:
        (crd,) = find(objects, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")
        peerings = find(objects, "ClusterKopfPeering")
        assert len(peerings) == 1
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # kopf writes keep-alives into .status of the main resource: no status subresource.
    (version,) = crd["spec"]["versions"]
    assert "subresources" not in version
    assert version["schema"]["openAPIV3Schema"]["properties"]["status"][
        "x-kubernetes-preserve-unknown-fields"
    ]
    for peering in peerings:
        assert peering["metadata"]["name"] == peering_name
        # Created after the CRD exists (a hook), so the first install can map its kind.
        assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]


def test_peering_crds_can_be_left_to_another_operator() -> None:
    objects = render({"leaderElection": {"enabled": True, "installPeeringCRDs": False}})
    crds = [o["metadata"]["name"] for o in find(objects, "CustomResourceDefinition")]
    assert crds == ["quantizedmodels.qfleet.dev"]
    assert find(objects, "ClusterKopfPeering")


# --- Wiring: services and monitors -----------------------------------------------------------------


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_service_and_monitors_select_what_they_should() -> None:
    from qfleet.fleet.config import FleetConfig
    from qfleet.fleet.manifests import Owner, ServingModel, deployment_for
    from qfleet.fleet.service import service_for
    from qfleet.fleet.spec import parse_spec
    from qfleet.fleet.uris import parse_pvc_uri

    objects = render(ALL_FEATURES)
    deployment = operator_deployment(objects)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selects(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    (service,) = find(objects, "Service")
    assert selects(service["spec"]["selector"], pod_labels)
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in operator_container(objects)["ports"]}
    (monitor,) = find(objects, "ServiceMonitor")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    assert monitor["metadata"]["labels"]["release"] == "prometheus"

    # The PodMonitor finds the inference servers the operator creates, on their HTTP port.
    sample = yaml.safe_load(
        (CHART.parent.parent / "crds" / "samples" / "qfleet.dev_v1alpha1_quantizedmodel.yaml").read_text()
    )
    spec = parse_spec(sample["spec"])
    owner = Owner(name="arcface-r100", namespace="surveillance", uid="0000")
    served = deployment_for(
        owner,
        spec,
        spec.tiers[0],
        model=ServingModel(
            parse_pvc_uri("pvc://models/qfleet/m/int8/model.xml", field="artifact"), "k", 500.0
        ),
        replicas=1,
        config=FleetConfig(),
    )
    (pod_monitor,) = find(objects, "PodMonitor")
    template = served["spec"]["template"]
    assert selects(pod_monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"])
    server_ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in server_ports
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    # The model's own Service reaches the same pods, on the same port.
    model_service = service_for(owner, spec, FleetConfig())
    assert selects(model_service["spec"]["selector"], template["metadata"]["labels"])
    assert {port["targetPort"] for port in model_service["spec"]["ports"]} <= server_ports
    namespaced = find(render(NAMESPACED_ALL), "PodMonitor")[0]
    assert namespaced["spec"]["namespaceSelector"] == {"matchNames": ["faces", "lobby"]}


def test_monitors_are_off_by_default() -> None:
    objects = render()
    assert not find(objects, "ServiceMonitor") and not find(objects, "PodMonitor")
    assert find(objects, "Service")


def test_images_default_to_the_app_version() -> None:
    env = rendered_env(operator_container(render()))
    assert operator_container(render())["image"] == "ghcr.io/qfleet/qfleet-operator:0.1.0"
    assert env["QFLEET_TOOLKIT_IMAGE"] == "ghcr.io/qfleet/qfleet-toolkit:0.1.0"
    assert env["QFLEET_SERVER_IMAGE"] == "ghcr.io/qfleet/qfleet-server:0.1.0"


@pytest.mark.parametrize("variant", VARIANTS)
def test_names_and_labels(variant: str) -> None:
    for obj in render(VARIANTS[variant], release="a-rather-long-release-name-for-qfleet"):
        name = obj["metadata"]["name"]
        assert len(name) <= 63 or obj["kind"] == "CustomResourceDefinition", name
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/part-of") == "qfleet", f"{obj['kind']}/{name}"
        assert labels.get("helm.sh/chart", "").startswith("qfleet-")


def test_notes_render(tmp_path: Path) -> None:
    result = run_tool(
        "helm", "install", "q", str(CHART), "--dry-run=client", "--namespace", "qfleet-system", "--values",
        str(write_values(NAMESPACED, tmp_path)),
    )  # fmt: skip
    assert "faces, lobby" in result.stdout
    assert "kubectl scale qm/NAME --namespace faces --replicas=CAMERAS" in result.stdout
    assert "kubectl get qm --namespace faces --watch" in result.stdout
    assert "helm test q --namespace qfleet-system" in result.stdout
