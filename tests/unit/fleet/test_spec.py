"""The spec parser: defaults applied, every mistake named with its field."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from qfleet.fleet.pods import PodKnobs
from qfleet.fleet.spec import DEFAULTS, AccuracyControl, ConfigMapKey, SpecError, StorageSpec, parse_spec

MINIMAL: dict[str, Any] = {
    "source": {"format": "onnx", "uri": "pvc://models/r100.onnx"},
    "quantization": {"calibration": "pvc://data/calib"},
    "validation": {"lfw": "pvc://data/lfw.bin"},
    "targets": [{"isa": "avx512_vnni"}],
    "artifacts": {"uri": "pvc://models/qfleet"},
}


def with_(path: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    node = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return spec


def test_minimal_spec_gets_the_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.preset == DEFAULTS["quantization.preset"]
    assert spec.subset_size == DEFAULTS["quantization.subsetSize"]
    assert spec.max_drop == DEFAULTS["validation.maxDrop"]
    assert spec.min_accuracy is None
    assert (spec.min_replicas, spec.max_replicas) == (1, 64)
    assert (spec.cameras, spec.camera_fps, spec.faces_per_frame) == (0, 6.0, 1.0)
    assert spec.target_utilization == 0.8 and spec.placement == "fill"
    assert spec.on_gate_failure == "keep"
    assert spec.service_type == DEFAULTS["serving.service.type"] == "ClusterIP"
    assert spec.service_annotations == {}
    assert spec.pending_grace_seconds == DEFAULTS["demand.pendingGraceSeconds"] == 300
    assert spec.consistency == DEFAULTS["rollout.consistency"] == "allTiers"
    assert spec.max_batch == DEFAULTS["serving.batching.maxBatch"] == 1
    assert spec.batch_timeout_ms == DEFAULTS["serving.batching.timeoutMs"] == 2
    assert spec.target("avx512_vnni").pod == PodKnobs()
    assert spec.tiers == ("avx512_vnni",)
    assert spec.source.claim == "models" and spec.artifacts.path == "qfleet"


@pytest.mark.parametrize(
    ("path", "value", "words"),
    [
        ("source.format", "caffe", ["spec.source.format", "mxnet, onnx, openvino"]),
        ("source.uri", "gs://bucket/m.onnx", ["spec.source.uri", "unsupported scheme 'gs'", "s3://"]),
        ("source.uri", "s3://bucket/../m.onnx", ["spec.source.uri", "'..'"]),
        (
            "source",
            {"format": "mxnet", "uri": "https://models.example/r100"},
            ["an https source must be one .onnx file", "s3://"],
        ),
        ("source.uri", "http://models.example/r100.onnx", ["plain http", "allowHttp"]),
        ("source.sha256", "ab" * 32, ["spec.source.sha256 pins an https:// download"]),
        ("artifacts.uri", "https://models.example/out", ["spec.artifacts.uri", "read-only"]),
        ("storage.secretRef", {"name": "Bad Name"}, ["spec.storage.secretRef.name"]),
        ("storage.endpoint", "minio:9000", ["spec.storage.endpoint", "https://"]),
        ("storage.addressing", "dns", ["spec.storage.addressing", "path, virtual"]),
        ("storage.caBundle", {"name": "ca", "key": "a/b"}, ["spec.storage.caBundle.key"]),
        ("storage.allowHttp", "yes", ["spec.storage.allowHttp"]),
        ("quantization.accuracyControl", True, ["spec.quantization.accuracyControl must be an object"]),
        ("quantization.accuracyControl.enabled", "yes", ["spec.quantization.accuracyControl.enabled"]),
        ("quantization.accuracyControl.maxIterations", 0, ["accuracyControl.maxIterations", ">= 1"]),
        ("quantization.accuracyControl.timeoutSeconds", 0, ["accuracyControl.timeoutSeconds", "> 0"]),
        ("source.epoch", -2, ["spec.source.epoch"]),
        ("quantization.calibration", "pvc://data/../x", ["spec.quantization.calibration", "'..'"]),
        ("quantization.subsetSize", 0, ["spec.quantization.subsetSize", ">= 1"]),
        ("validation.maxDrop", 2, ["spec.validation.maxDrop", "fraction"]),
        ("validation.minAccuracy", "high", ["spec.validation.minAccuracy"]),
        ("targets", [], ["spec.targets", "at least one"]),
        ("targets", [{"isa": "avx2"}, {"isa": "avx2"}], ["spec.targets[1].isa", "twice"]),
        ("targets", [{"isa": "neon"}], ["spec.targets[0].isa", "avx512_vnni"]),
        ("serving.minReplicas", 5, ["maxReplicas (64)"]),  # fine alone...
        ("demand.cameras", -1, ["spec.demand.cameras", ">= 0"]),
        ("demand.cameras", True, ["spec.demand.cameras"]),
        ("demand.targetUtilization", 0, ["spec.demand.targetUtilization", "(0, 1]"]),
        ("demand.placement", "random", ["spec.demand.placement", "fill, spread"]),
        ("rollout.onGateFailure", "serve", ["spec.rollout.onGateFailure", "keep, fp32, bf16"]),
        ("artifacts", "pvc://models", ["spec.artifacts must be an object"]),
        ("serving.resources", {"limits": {"cpu": [1]}}, ["spec.serving.resources.limits.cpu"]),
        ("serving.service", "LoadBalancer", ["spec.serving.service must be an object"]),
        (
            "serving.service.type",
            "External",
            ["spec.serving.service.type", "ClusterIP, NodePort, LoadBalancer"],
        ),
        ("serving.service.annotations", {"a": 1}, ["spec.serving.service.annotations.a must be a string"]),
        (
            "serving.service.annotations",
            {"qfleet.dev/model-name": "x"},
            ["spec.serving.service.annotations.qfleet.dev/model-name", "operator's own"],
        ),
        ("demand.pendingGraceSeconds", -1, ["spec.demand.pendingGraceSeconds", ">= 0"]),
        ("demand.pendingGraceSeconds", 1.5, ["spec.demand.pendingGraceSeconds", "integer"]),
        ("rollout.consistency", "eventual", ["spec.rollout.consistency", "allTiers, perTier"]),
        ("serving.batching.maxBatch", 0, ["spec.serving.batching.maxBatch", "1..64"]),
        ("serving.batching.maxBatch", 65, ["spec.serving.batching.maxBatch", "1..64"]),
        ("serving.batching.maxBatch", 4.0, ["spec.serving.batching.maxBatch", "integer"]),
        ("serving.batching.timeoutMs", -1, ["spec.serving.batching.timeoutMs", ">= 0"]),
        ("serving.batching.timeoutMs", "2ms", ["spec.serving.batching.timeoutMs"]),
        ("serving.batching", 4, ["spec.serving.batching must be an object"]),
        (
            "targets",
            [{"isa": "avx2"}, {"isa": "avx512", "tolerations": [{"operator": "Maybe"}]}],
            ["spec.targets[1].tolerations[0].operator", "Exists or Equal"],
        ),
        (
            "targets",
            [{"isa": "avx2", "imagePullSecrets": "registry"}],
            ["spec.targets[0].imagePullSecrets must be a list"],
        ),
        ("targets", [{"isa": "avx2", "podLabels": {"team": "a b"}}], ["spec.targets[0].podLabels.team"]),
        ("targets", [{"isa": "avx2", "nodeSelector": {"pool": 1}}], ["spec.targets[0].nodeSelector"]),
    ],
)
def test_mistakes_are_named(path: str, value: Any, words: list[str]) -> None:
    spec = with_(path, value)
    if path == "serving.minReplicas":
        parse_spec(spec)  # 5 <= 64 is valid; below checks the reverse
        spec = with_("serving", {"minReplicas": 5, "maxReplicas": 2})
        words = ["serving.maxReplicas (2)", "serving.minReplicas (5)"]
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    for word in words:
        assert word in str(caught.value)


def test_object_storage_uris_with_their_settings_and_pins() -> None:
    spec = copy.deepcopy(MINIMAL)
    digest = "0123456789abcdef" * 4
    spec["source"] = {"format": "onnx", "uri": "https://models.example/r100.onnx", "sha256": digest.upper()}
    spec["quantization"] = {"calibration": "s3://data/calib/"}
    spec["validation"] = {"lfw": "http://mirror.local/lfw.bin", "lfwSha256": digest}
    spec["artifacts"] = {"uri": "s3://models/qfleet"}
    spec["storage"] = {
        "secretRef": {"name": "minio-credentials"},
        "endpoint": "https://minio.storage:9000/",
        "region": "eu-west-1",
        "caBundle": {"name": "minio-ca"},
        "addressing": "path",
        "allowHttp": True,
    }
    parsed = parse_spec(spec)
    assert str(parsed.source) == "https://models.example/r100.onnx" and parsed.source_sha256 == digest
    assert str(parsed.calibration) == "s3://data/calib" and parsed.calibration_sha256 is None
    assert parsed.lfw_sha256 == digest and str(parsed.artifacts) == "s3://models/qfleet"
    assert parsed.claims == () and parsed.uses_object_storage
    assert parsed.storage == StorageSpec(
        secret_name="minio-credentials",
        endpoint="https://minio.storage:9000",
        region="eu-west-1",
        ca_bundle=ConfigMapKey("minio-ca", "ca.crt"),
        addressing="path",
        allow_http=True,
    )
    # Plain http needs the opt-in as well as the pin.
    del spec["storage"]["allowHttp"]
    with pytest.raises(SpecError, match="plain http"):
        parse_spec(spec)


def test_claims_are_only_the_pvc_uris() -> None:
    spec = copy.deepcopy(MINIMAL)
    spec["artifacts"] = {"uri": "s3://models/qfleet"}
    parsed = parse_spec(spec)
    assert [str(uri) for uri in parsed.claims] == [
        "pvc://models/r100.onnx",
        "pvc://data/calib",
        "pvc://data/lfw.bin",
    ]
    assert parsed.uses_object_storage and not parse_spec(MINIMAL).uses_object_storage


@pytest.mark.parametrize("section", ["source", "quantization", "validation", "artifacts"])
def test_required_sections(section: str) -> None:
    spec = copy.deepcopy(MINIMAL)
    del spec[section]
    with pytest.raises(SpecError, match=f"spec.{section} is required"):
        parse_spec(spec)


def test_missing_spec() -> None:
    with pytest.raises(SpecError, match="spec is missing"):
        parse_spec(None)


def test_service_demand_and_rollout_settings_are_kept() -> None:
    spec = parse_spec(
        with_("serving.service", {"type": "NodePort", "annotations": {"example.com/lb": "internal"}})
        | {"demand": {"pendingGraceSeconds": 0}, "rollout": {"consistency": "perTier"}}
    )
    assert (spec.service_type, spec.service_annotations) == ("NodePort", {"example.com/lb": "internal"})
    assert spec.pending_grace_seconds == 0 and spec.consistency == "perTier"


def test_target_pod_knobs_are_kept_per_target() -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "video", "effect": "NoSchedule"}
    spec = parse_spec(
        with_(
            "targets",
            [
                {
                    "isa": "avx2",
                    "tolerations": [toleration],
                    "imagePullSecrets": [{"name": "edge-registry"}],
                    "priorityClassName": "inference",
                    "topologySpreadConstraints": [],
                    "podLabels": {"example.com/pool": "edge"},
                    "podAnnotations": {"example.com/note": "edge pool"},
                    "serviceAccountName": "edge-pods",
                },
                {"isa": "amx_int8"},
            ],
        )
    )
    assert spec.target("avx2").pod == PodKnobs(
        tolerations=(toleration,),
        image_pull_secrets=("edge-registry",),
        priority_class_name="inference",
        topology_spread_constraints=(),
        labels={"example.com/pool": "edge"},
        annotations={"example.com/note": "edge pool"},
        service_account_name="edge-pods",
    )
    assert spec.target("amx_int8").pod == PodKnobs()


def test_target_node_selector_and_resources_are_kept() -> None:
    spec = parse_spec(
        with_("targets", [{"isa": "avx2", "nodeSelector": {"pool": "edge"}}])
        | {"serving": {"resources": {"limits": {"cpu": 4, "memory": "2Gi"}}}}
    )
    assert spec.target("avx2").node_selector == {"pool": "edge"}
    assert spec.resources["limits"] == {"cpu": "4", "memory": "2Gi"}


@pytest.mark.parametrize("tiers", [["amx_int8"], ["avx512_bf16"], ["amx_int8", "avx512_bf16"]])
def test_bf16_policy_on_tiers_with_native_bf16(tiers: list[str]) -> None:
    spec = parse_spec(
        with_("targets", [{"isa": tier} for tier in tiers]) | {"rollout": {"onGateFailure": "bf16"}}
    )
    assert spec.on_gate_failure == "bf16" and spec.tiers == tuple(tiers)


def test_bf16_policy_refuses_the_whole_spec_naming_each_tier_without_bf16() -> None:
    spec = with_("targets", [{"isa": "amx_int8"}, {"isa": "avx512_vnni"}, {"isa": "avx2"}])
    spec["rollout"] = {"onGateFailure": "bf16"}
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert "spec.rollout.onGateFailure bf16" in message
    assert "avx512_vnni, avx2 have none" in message and "amx_int8, avx512_bf16" in message
    assert "use keep or fp32" in message
    # The same targets with another policy are fine.
    spec["rollout"] = {"onGateFailure": "fp32"}
    assert parse_spec(spec).on_gate_failure == "fp32"


def test_bf16_tiers_are_the_native_bf16_tiers() -> None:
    from qfleet.fleet.spec import BF16_TIERS
    from qfleet.isa import TIERS

    assert BF16_TIERS == ("amx_int8", "avx512_bf16")
    assert tuple(tier.name for tier in TIERS if tier.native_bf16) == BF16_TIERS


def test_batching_settings_are_kept() -> None:
    spec = parse_spec(with_("serving.batching", {"maxBatch": 4, "timeoutMs": 0.5}))
    assert (spec.max_batch, spec.batch_timeout_ms) == (4, 0.5)
    assert parse_spec(with_("serving.batching", {"maxBatch": 8})).batch_timeout_ms == 2


def test_accuracy_control_defaults_and_settings() -> None:
    plain = parse_spec(MINIMAL).accuracy_control
    assert plain == AccuracyControl() and not plain.enabled
    assert plain.max_iterations == DEFAULTS["quantization.accuracyControl.maxIterations"]
    spec = with_("quantization.accuracyControl", {"enabled": True, "maxIterations": 8, "timeoutSeconds": 600})
    assert parse_spec(spec).accuracy_control == AccuracyControl(True, 8, 600.0)
