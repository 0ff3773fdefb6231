"""The model's Service and its Deployments' PodDisruptionBudgets: names, selectors, ports,
ownership and the hash that tells the operator when to patch."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qfleet.fleet import names
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.manifests import Owner, model_selector, serving_labels
from qfleet.fleet.service import METRICS_PORT, address_url, pdb_for, service_for
from qfleet.fleet.spec import parse_spec

OWNER = Owner(name="arcface", namespace="faces", uid="uid-1")
SPEC: dict[str, Any] = {
    "source": {"format": "onnx", "uri": "pvc://models/r100.onnx"},
    "quantization": {"calibration": "pvc://data/calib"},
    "validation": {"lfw": "pvc://data/lfw.bin"},
    "targets": [{"isa": "avx512_vnni"}, {"isa": "avx2"}],
    "artifacts": {"uri": "pvc://models/qfleet"},
}


def with_service(service: dict[str, Any] | None) -> Any:
    spec = copy.deepcopy(SPEC)
    if service is not None:
        spec["serving"] = {"service": service}
    return parse_spec(spec)


def test_one_service_named_like_the_model_selects_every_tier() -> None:
    service = service_for(OWNER, with_service(None), FleetConfig())
    metadata = service["metadata"]
    assert (service["apiVersion"], service["kind"]) == ("v1", "Service")
    assert (metadata["name"], metadata["namespace"]) == ("arcface", "faces")
    assert metadata["ownerReferences"] == [OWNER.reference()]
    assert metadata["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY
    assert metadata["labels"][names.LABEL_MODEL] == names.label_value("arcface")
    assert metadata["annotations"][names.ANNOTATION_MODEL_NAME] == "arcface"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == model_selector(OWNER)
    # Every tier's serving pods match the selector.
    for tier in ("avx512_vnni", "avx2"):
        pod_labels = {**serving_labels(OWNER, tier), names.LABEL_COMPONENT: names.COMPONENT_SERVER}
        assert all(pod_labels.get(key) == value for key, value in service["spec"]["selector"].items())


def test_ports_reach_the_servers_http_and_grpc_ports() -> None:
    service = service_for(OWNER, with_service(None), FleetConfig(server_port=8000))
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "metrics", "port": METRICS_PORT, "targetPort": "http", "protocol": "TCP"},
    ]
    assert METRICS_PORT == 9090


def test_type_and_annotations_come_from_the_spec() -> None:
    annotations = {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}
    service = service_for(
        OWNER, with_service({"type": "LoadBalancer", "annotations": annotations}), FleetConfig()
    )
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"].items() >= annotations.items()
    assert names.ANNOTATION_MODEL_NAME in service["metadata"]["annotations"]


def test_the_hash_follows_what_qfleet_sets() -> None:
    config = FleetConfig()

    def hash_of(service: dict[str, Any]) -> str:
        return str(service["metadata"]["annotations"][names.ANNOTATION_TEMPLATE_HASH])

    base = service_for(OWNER, with_service(None), config)
    assert hash_of(base) == hash_of(service_for(OWNER, with_service({"type": "ClusterIP"}), config))
    assert len(hash_of(base)) == 16
    changed = [
        service_for(OWNER, with_service({"type": "NodePort"}), config),
        service_for(OWNER, with_service({"annotations": {"example.com/a": "b"}}), config),
        service_for(OWNER, with_service(None), FleetConfig(server_port=8000)),
    ]
    assert len({hash_of(base), *map(hash_of, changed)}) == 4


def test_address_url() -> None:
    assert address_url(OWNER, 8080) == "http://arcface.faces.svc:8080"


def test_pdb_keeps_replicas_through_drains_without_blocking_on_broken_pods() -> None:
    selector = serving_labels(OWNER, "avx2")
    pdb = pdb_for(OWNER, "avx2", "arcface-avx2", selector, 2)
    metadata = pdb["metadata"]
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert (metadata["name"], metadata["namespace"]) == ("arcface-avx2", "faces")
    assert metadata["ownerReferences"] == [OWNER.reference()]
    assert metadata["labels"][names.LABEL_MANAGED_BY] == names.MANAGED_BY
    assert metadata["labels"][names.LABEL_ISA] == "avx2"
    assert metadata["annotations"][names.ANNOTATION_MODEL_NAME] == "arcface"
    assert pdb["spec"] == {
        "selector": {"matchLabels": selector},
        "minAvailable": 2,
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    other = pdb_for(OWNER, "avx2", "arcface-avx2", selector, 1)
    key = names.ANNOTATION_TEMPLATE_HASH
    assert metadata["annotations"][key] != other["metadata"]["annotations"][key]
    assert (
        metadata["annotations"][key]
        == pdb_for(OWNER, "avx2", "arcface-avx2", selector, 2)["metadata"]["annotations"][key]
    )


@pytest.mark.parametrize("kubernetes", ["1.29", "1.33"])
def test_objects_match_the_kubernetes_api_schemas(kubernetes: str) -> None:
    utils = pytest.importorskip("kubernetes_validate.utils", reason="pip install kubernetes-validate")
    for service_type in ("ClusterIP", "NodePort", "LoadBalancer"):
        utils.validate(
            service_for(OWNER, with_service({"type": service_type}), FleetConfig()), kubernetes, strict=True
        )
    utils.validate(
        pdb_for(OWNER, "avx2", "arcface-avx2", serving_labels(OWNER, "avx2"), 1), kubernetes, strict=True
    )
