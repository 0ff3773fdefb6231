"""The examples for real clusters: every manifest is checked against what it refers to.

QuantizedModels against the CRD's schema (strictly: an unknown field is an error here, where the
API server would silently prune it), built-in objects against the Kubernetes API schemas, Helm
values in the Argo CD and Flux manifests against the chart's values schema, paths and source
references against this repository, the KEDA ScaledObject against the CRD's scale subresource,
the node groups against qfleet's ISA-tier affinity, and the GitOps folder with the real
``kubectl kustomize``. The ``kubectl`` dry runs of the folder, the CRD and its samples against an
API server are in ``tests/integration/test_kubectl_dry_run.py``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from qfleet import isa
from tests.support.k8s_tools import CHART, CRDS, REPO, load_yaml_documents, run_tool

EXAMPLES = REPO / "examples"
GITOPS = EXAMPLES / "gitops" / "surveillance"
#: The placeholder GitHub owner of the released images and chart (examples/README.md: replace it).
OWNER = "example-org"
#: The release the Argo CD and Flux examples install: chart version, image tag and Git tag v0.1.0.
CHART_VERSION = "0.1.0"


def documents(relative: str) -> list[dict[str, Any]]:
    return load_yaml_documents(EXAMPLES / relative)


def example_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(EXAMPLES.rglob("*.yaml")) for doc in load_yaml_documents(path)]


def crd() -> dict[str, Any]:
    (found,) = load_yaml_documents(CRDS / "qfleet.dev_quantizedmodels.yaml")
    return found


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields forbidden wherever properties are listed."""
    if isinstance(schema, dict):
        result = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
        if result.get("type") == "object" and "properties" in result and "additionalProperties" not in result:
            result["additionalProperties"] = False
        return result
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    return schema


def model_validator() -> jsonschema.Draft4Validator:
    # Kubernetes structural schemas are OpenAPI v3.0: boolean exclusiveMinimum, as in draft 4.
    (version,) = [v for v in crd()["spec"]["versions"] if v["storage"]]
    schema = strict(version["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft4Validator(schema)


def chart_values_validator() -> jsonschema.Draft7Validator:
    return jsonschema.Draft7Validator(json.loads((CHART / "values.schema.json").read_text()))


def with_chart_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    def merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
        for key, value in override.items():
            base[key] = (
                merge(base[key], value)
                if isinstance(value, Mapping) and isinstance(base.get(key), dict)
                else value
            )
        return base

    return merge(copy.deepcopy(yaml.safe_load((CHART / "values.yaml").read_text())), values)


# --- Every file --------------------------------------------------------------------------------------


def test_examples_are_kubernetes_objects() -> None:
    objects = example_objects()
    assert len(objects) >= 12
    for path, obj in objects:
        assert obj.get("apiVersion") and obj.get("kind"), path
        if obj["apiVersion"] != "kustomize.config.k8s.io/v1beta1" and obj["kind"] != "ClusterConfig":
            assert obj["metadata"].get("name"), path


def test_quantized_models_match_the_crd_schema() -> None:
    check = model_validator()
    models = [obj for _, obj in example_objects() if obj["kind"] == "QuantizedModel"]
    assert models
    for model in models:
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in check.iter_errors(model)]
        assert not errors, f"{model['metadata']['name']}: {errors}"


def test_the_model_schema_check_is_strict() -> None:
    check = model_validator()
    (model,) = [obj for _, obj in example_objects() if obj["kind"] == "QuantizedModel"]
    broken = copy.deepcopy(model)
    broken["spec"]["demand"]["cameraFPS"] = 6  # a typo the API server would silently drop
    assert list(check.iter_errors(broken))
    broken = copy.deepcopy(model)
    broken["spec"]["targets"][0]["isa"] = "sse4"
    assert list(check.iter_errors(broken))


def test_builtin_objects_match_the_kubernetes_api_schemas() -> None:
    utils = pytest.importorskip(
        "kubernetes_validate.utils", reason="pip install kubernetes-validate (dev extra)"
    )
    checked = 0
    for path, obj in example_objects():
        if obj["apiVersion"] in ("v1", "apps/v1", "rbac.authorization.k8s.io/v1"):
            try:
                utils.validate(obj, "1.33", strict=True)
            except utils.ValidationError as exc:
                pytest.fail(f"{path}: {exc.caught.message}")
            checked += 1
    assert checked >= 3


# --- GitOps folder -----------------------------------------------------------------------------------


def test_gitops_folder_builds_with_kubectl_kustomize() -> None:
    output = run_tool("kubectl", "kustomize", str(GITOPS)).stdout
    built = [doc for doc in yaml.safe_load_all(output) if doc]
    kinds = sorted(obj["kind"] for obj in built)
    assert kinds == ["Namespace", "PersistentVolumeClaim", "PersistentVolumeClaim", "QuantizedModel"]
    for obj in built:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "surveillance"


def test_claims_named_by_the_model_exist_in_the_folder() -> None:
    from qfleet.fleet.spec import parse_spec

    (model,) = [o for o in load_yaml_documents(GITOPS / "arcface-r100.yaml")]
    claims = {uri.claim for uri in parse_spec(model["spec"]).claims}
    defined = {o["metadata"]["name"] for o in load_yaml_documents(GITOPS / "storage.yaml")}
    assert claims and claims <= defined
    for claim in load_yaml_documents(GITOPS / "storage.yaml"):
        # Jobs write artifacts on one node while servers read them on others.
        assert "ReadWriteMany" in claim["spec"]["accessModes"]


# --- KEDA ----------------------------------------------------------------------------------------------


def test_scaled_object_sets_cameras_through_the_scale_subresource() -> None:
    (scaled,) = documents("keda/scaledobject.yaml")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1" and scaled["kind"] == "ScaledObject"
    target = scaled["spec"]["scaleTargetRef"]
    (model,) = load_yaml_documents(GITOPS / "arcface-r100.yaml")
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        model["apiVersion"],
        model["kind"],
        model["metadata"]["name"],
    )
    assert scaled["metadata"]["namespace"] == model["metadata"]["namespace"]
    # The CRD maps the scale subresource's replicas to the cameras.
    (version,) = [v for v in crd()["spec"]["versions"] if v["storage"]]
    scale = version["subresources"]["scale"]
    assert scale["specReplicasPath"] == ".spec.demand.cameras"
    assert scale["statusReplicasPath"] == ".status.demand.cameras"
    # replicas = ceil(active streams / 1): one camera per stream.
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["threshold"] == "1"
    assert "camera" in trigger["metadata"]["query"]
    cameras = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["demand"][
        "properties"
    ]["cameras"]
    assert scaled["spec"]["minReplicaCount"] >= cameras["minimum"]
    assert scaled["spec"]["maxReplicaCount"] > scaled["spec"]["minReplicaCount"]


def test_gitops_model_leaves_the_cameras_to_keda() -> None:
    (model,) = load_yaml_documents(GITOPS / "arcface-r100.yaml")
    assert "cameras" not in model["spec"].get("demand", {}), "GitOps would reset the cameras KEDA sets"


# --- Argo CD and Flux ----------------------------------------------------------------------------------


def test_argocd_applications() -> None:
    (operator,) = documents("argocd/qfleet-operator.yaml")
    (models,) = documents("argocd/qfleet-models.yaml")
    for app in (operator, models):
        assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    # The released chart: the OCI artifact the release workflow pushes, at a concrete version.
    source = operator["spec"]["source"]
    assert source["repoURL"] == f"oci://ghcr.io/{OWNER}/charts/qfleet"
    assert source["path"] == "." and source["targetRevision"] == CHART_VERSION
    chart_values_validator().validate(with_chart_defaults(source["helm"]["valuesObject"]))
    for name, image in source["helm"]["valuesObject"]["images"].items():
        assert image["repository"] == f"ghcr.io/{OWNER}/qfleet-{name}"
    assert "ServerSideApply=true" in operator["spec"]["syncPolicy"]["syncOptions"]
    assert (REPO / models["spec"]["source"]["path"]).is_dir()
    assert models["spec"]["source"]["path"] == "examples/gitops/surveillance"
    assert models["spec"]["source"]["targetRevision"] == f"v{CHART_VERSION}"
    (ignored,) = models["spec"]["ignoreDifferences"]
    assert ignored["kind"] == "QuantizedModel" and ignored["jsonPointers"] == ["/spec/demand/cameras"]


def test_flux_release_and_sources() -> None:
    sources = {
        (obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"]): obj
        for name in ("flux/gitrepository.yaml", "flux/ocirepository.yaml")
        for obj in documents(name)
    }
    (release,) = documents("flux/helmrelease.yaml")
    assert release["apiVersion"] == "helm.toolkit.fluxcd.io/v2" and release["kind"] == "HelmRelease"
    ref = release["spec"]["chartRef"]
    assert "chart" not in release["spec"]
    assert (ref["kind"], ref["name"], ref["namespace"]) in sources
    oci = sources[(ref["kind"], ref["name"], ref["namespace"])]
    assert oci["kind"] == "OCIRepository"
    assert oci["spec"]["url"] == f"oci://ghcr.io/{OWNER}/charts/qfleet"
    assert oci["spec"]["ref"]["tag"] == CHART_VERSION
    assert oci["spec"]["layerSelector"]["mediaType"] == "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
    assert oci["spec"]["verify"]["provider"] == "cosign"
    assert (
        release["spec"]["install"]["crds"] == "Create"
        and release["spec"]["upgrade"]["crds"] == "CreateReplace"
    )
    chart_values_validator().validate(with_chart_defaults(release["spec"]["values"]))
    for name, image in release["spec"]["values"]["images"].items():
        assert image["repository"] == f"ghcr.io/{OWNER}/qfleet-{name}"

    (kustomization,) = documents("flux/models-kustomization.yaml")
    assert kustomization["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    ref = kustomization["spec"]["sourceRef"]
    assert ("GitRepository", ref["name"], kustomization["metadata"]["namespace"]) in sources
    assert (REPO / kustomization["spec"]["path"]).resolve() == GITOPS.resolve()
    repository = sources[("GitRepository", "qfleet", "flux-system")]
    assert repository["spec"]["ref"]["tag"] == f"v{CHART_VERSION}"
    assert "!/examples/gitops/" in repository["spec"]["ignore"]


def test_flux_creates_the_release_namespace_first() -> None:
    (release,) = documents("flux/helmrelease.yaml")
    (config,) = documents("flux/kustomization.yaml")
    listed = [obj for name in config["resources"] for obj in documents(f"flux/{name}")]
    assert listed[0]["kind"] == "Namespace"
    assert listed[0]["metadata"]["name"] == release["metadata"]["namespace"]
    output = run_tool("kubectl", "kustomize", str(EXAMPLES / "flux")).stdout
    built = [doc for doc in yaml.safe_load_all(output) if doc]
    kinds = [obj["kind"] for obj in built]
    assert kinds[0] == "Namespace" and kinds.index("Namespace") < kinds.index("HelmRelease")
    assert sorted(kinds) == sorted(obj["kind"] for obj in listed)


def test_flux_waits_for_the_quantized_model() -> None:
    (kustomization,) = documents("flux/models-kustomization.yaml")
    (model,) = load_yaml_documents(GITOPS / "arcface-r100.yaml")
    (check,) = kustomization["spec"]["healthChecks"]
    assert (check["apiVersion"], check["kind"], check["name"], check["namespace"]) == (
        model["apiVersion"],
        model["kind"],
        model["metadata"]["name"],
        model["metadata"]["namespace"],
    )
    (exprs,) = kustomization["spec"]["healthCheckExprs"]
    assert (exprs["apiVersion"], exprs["kind"]) == (model["apiVersion"], model["kind"])
    assert "status.observedGeneration < metadata.generation" in exprs["inProgress"]
    assert "c.type == 'Ready'" in exprs["current"]
    assert "'Failed', 'Blocked'" in exprs["failed"] and "'RolledBack'" in exprs["failed"]


def test_values_validation_catches_a_wrong_value() -> None:
    (release,) = documents("flux/helmrelease.yaml")
    values = copy.deepcopy(release["spec"]["values"])
    values["leaderElection"]["replica"] = 2
    assert list(chart_values_validator().iter_errors(with_chart_defaults(values)))


# --- Node Feature Discovery and the autoscaler's node groups -------------------------------------------


def matches(affinity: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` satisfies a required node affinity."""
    terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]

    def holds(expression: Mapping[str, Any]) -> bool:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        return {
            "In": lambda: labels.get(key) in values,
            "NotIn": lambda: labels.get(key) not in values,
            "Exists": lambda: key in labels,
            "DoesNotExist": lambda: key not in labels,
        }[operator]()

    return any(all(holds(e) for e in term["matchExpressions"]) for term in terms)


TEMPLATE_LABEL = "k8s.io/cluster-autoscaler/node-template/label/"


def test_each_node_group_is_exactly_one_isa_tier() -> None:
    (config,) = documents("cluster-autoscaler/eksctl-node-groups.yaml")
    groups = config["nodeGroups"]
    tiers = []
    for group in groups:
        labels = group["labels"]
        tier = isa.tier_from_labels(labels)
        assert tier is not None, group["name"]
        tiers.append(tier)
        # qfleet's pods for this tier land here, and pods for any other tier do not.
        for other in isa.TIER_NAMES:
            assert matches(isa.node_affinity(other), labels) == (other == tier), (group["name"], other)
        # The autoscaler's template knows the same labels (scale-up decisions from a template).
        templated = {
            k.removeprefix(TEMPLATE_LABEL): v
            for k, v in group["tags"].items()
            if k.startswith(TEMPLATE_LABEL)
        }
        assert templated == labels, group["name"]
        assert group["tags"]["k8s.io/cluster-autoscaler/enabled"] == "true"
        # The operator waits for a node of a tier before it starts the tier's Job.
        assert group["minSize"] >= 1
    assert len(set(tiers)) == len(tiers), "one node group per tier"
    (model,) = load_yaml_documents(GITOPS / "arcface-r100.yaml")
    targeted = {target["isa"] for target in model["spec"]["targets"]}
    assert targeted <= set(tiers), "every tier the GitOps model targets has a node group"


def test_readme_documents_every_tier_label() -> None:
    text = (EXAMPLES / "README.md").read_text()
    for tier in isa.TIERS:
        assert f"| `{tier.name}` | `{tier.nfd_label}` |" in text
