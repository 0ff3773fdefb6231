"""The QuantizedModel CRD: structural, samples valid, invalid resources rejected, defaults agreed."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from qfleet import defaults
from qfleet.fleet import names, pods
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.nodes import Inventory, node_info
from qfleet.fleet.planner import Observed, plan
from qfleet.fleet.spec import (
    BF16_TIERS,
    CONSISTENCY_MODES,
    DEFAULTS,
    GATE_FAILURE_POLICIES,
    SERVICE_TYPES,
    parse_spec,
)
from qfleet.fleet.status import (
    Bf16Record,
    CapacityStatus,
    Condition,
    ControlRecord,
    DemandStatus,
    GateRecord,
    JobError,
    ModelStatus,
    ResultRecord,
    ServedModel,
    Summary,
    VariantStatus,
    parse_status,
    status_to_dict,
)
from qfleet.isa import TIER_NAMES, TIERS
from tests.support.paths import REPO

CRD = REPO / "crds" / "qfleet.dev_quantizedmodels.yaml"
SAMPLES = sorted((REPO / "crds" / "samples").glob("*.yaml"))


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    (only,) = crd["spec"]["versions"]
    return only  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def schema(version: dict[str, Any]) -> dict[str, Any]:
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def to_json_schema(node: Any) -> Any:
    """Translate Kubernetes' OpenAPI v3 dialect into JSON Schema (draft 7).

    - ``exclusiveMinimum: true`` + ``minimum: X`` (OpenAPI 3.0) -> ``exclusiveMinimum: X``;
    - ``x-kubernetes-*`` extensions are dropped (int-or-string already carries its anyOf);
    - structural schemas prune unknown fields, but an unknown field is worth failing here, so
      objects with ``properties`` and no ``additionalProperties`` get ``additionalProperties:
      false`` (except ``metadata``, which the API server owns).
    """
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {
        key: to_json_schema(value) for key, value in node.items() if not key.startswith("x-kubernetes-")
    }
    for key in ("exclusiveMinimum", "exclusiveMaximum"):
        if result.get(key) is True:
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            result[key] = result.pop(bound)
        elif result.get(key) is False:
            del result[key]
    if result.get("type") == "object" and "properties" in result and "additionalProperties" not in result:
        result["additionalProperties"] = False
    if "properties" in result and "metadata" in result["properties"]:
        result["properties"]["metadata"] = {"type": "object"}
    return result


@pytest.fixture(scope="module")
def validator(schema: dict[str, Any]) -> jsonschema.Draft7Validator:
    translated = to_json_schema(schema)
    jsonschema.Draft7Validator.check_schema(translated)
    return jsonschema.Draft7Validator(translated, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for key, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_names_and_scope(crd: dict[str, Any], version: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{names.PLURAL}.{names.GROUP}"
    assert spec["group"] == names.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == names.KIND and spec["names"]["plural"] == names.PLURAL
    assert "qm" in spec["names"]["shortNames"]
    assert version["name"] == names.VERSION and version["served"] and version["storage"]


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    """Every node names its type; every object lists its properties (or what its values are)."""
    problems = []
    for path, node in walk(schema):
        if node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        if "type" not in node:
            problems.append(f"{path or '<root>'}: no type")
        described = "properties" in node or "additionalProperties" in node
        if node.get("type") == "object" and path != ".metadata" and not described:
            problems.append(f"{path}: object without properties")
        for keyword in ("anyOf", "oneOf", "allOf"):
            for branch in node.get(keyword) or []:
                if "properties" in branch or "default" in branch:
                    problems.append(f"{path}: {keyword} branches may not declare properties or defaults")
    assert not problems, problems


def test_subresources_and_scale_paths(version: dict[str, Any], schema: dict[str, Any]) -> None:
    subresources = version["subresources"]
    assert subresources["status"] == {}
    scale = subresources["scale"]
    assert scale["specReplicasPath"] == ".spec.demand.cameras"
    assert scale["statusReplicasPath"] == ".status.demand.cameras"
    nodes = dict(walk(schema))
    assert nodes[".spec.demand.cameras"]["type"] == "integer"
    assert nodes[".status.demand.cameras"]["type"] == "integer"
    assert nodes[scale["labelSelectorPath"]]["type"] == "string"


def test_printer_columns_point_into_the_schema(version: dict[str, Any], schema: dict[str, Any]) -> None:
    columns = {column["name"]: column for column in version["additionalPrinterColumns"]}
    assert set(columns) == {"Phase", "Cameras", "Replicas", "INT8 FPS", "Drop", "URL", "Age"}
    assert columns["URL"]["jsonPath"] == ".status.address.url"
    nodes = dict(walk(schema))
    for column in columns.values():
        if column["jsonPath"] == ".metadata.creationTimestamp":
            continue
        assert column["jsonPath"] in nodes, column


def test_enums_match_the_code(schema: dict[str, Any]) -> None:
    nodes = dict(walk(schema))
    assert nodes[".spec.targets[].isa"]["enum"] == list(TIER_NAMES)
    assert nodes[".spec.source.format"]["enum"] == ["mxnet", "onnx", "openvino"]
    assert nodes[".spec.source.format"]["enum"] == list(defaults.SOURCE_FORMATS)
    assert nodes[".spec.quantization.preset"]["enum"] == ["performance", "mixed"]
    assert nodes[".spec.quantization.preset"]["enum"] == list(defaults.PRESETS)
    assert nodes[".spec.demand.placement"]["enum"] == ["fill", "spread"]
    assert nodes[".spec.rollout.onGateFailure"]["enum"] == ["keep", "fp32", "bf16"]
    assert nodes[".spec.rollout.onGateFailure"]["enum"] == list(GATE_FAILURE_POLICIES)
    assert nodes[".spec.targets"]["maxItems"] == len(TIER_NAMES)
    assert nodes[".spec.serving.service.type"]["enum"] == list(SERVICE_TYPES)
    assert nodes[".spec.rollout.consistency"]["enum"] == list(CONSISTENCY_MODES)
    assert nodes[".spec.targets[].tolerations[].operator"]["enum"] == list(pods.TOLERATION_OPERATORS)
    assert nodes[".spec.targets[].tolerations[].effect"]["enum"] == list(pods.TAINT_EFFECTS)
    spread = ".spec.targets[].topologySpreadConstraints[]"
    assert nodes[f"{spread}.whenUnsatisfiable"]["enum"] == list(pods.WHEN_UNSATISFIABLE)
    assert set(nodes[spread]["properties"]) == set(pods.SPREAD_KEYS)
    assert set(nodes[".spec.targets[].tolerations[]"]["properties"]) == set(pods.TOLERATION_KEYS)
    # Every pod knob the operator reads is in the schema (the API server prunes the others).
    assert set(nodes[".spec.targets[]"]["properties"]) == {"isa", "nodeSelector", *pods.KNOB_KEYS}
    for record in ("served", "lastGood"):
        assert nodes[f".status.variants[].{record}.precision"]["enum"] == ["int8", "fp32", "bf16"]
    assert set(nodes[".status.phase"]["enum"]) == {
        "Pending",
        "Quantizing",
        "Ready",
        "Degraded",
        "Blocked",
        "Failed",
    }


def test_bf16_policy_rule_lists_the_native_bf16_tiers(schema: dict[str, Any]) -> None:
    """A real API server refuses ``onGateFailure: bf16`` with a tier without native bf16 (CEL), as
    the operator does; the rule's tier list must be the code's."""
    (rule,) = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert "self.rollout.onGateFailure != 'bf16'" in rule["rule"]
    listed = re.search(r"t\.isa in \[([^\]]*)\]", rule["rule"])
    assert listed is not None
    assert tuple(name.strip(" '") for name in listed.group(1).split(",")) == BF16_TIERS
    assert all(tier in rule["message"] for tier in BF16_TIERS)


def test_result_fields_of_every_variant_are_in_the_schema(schema: dict[str, Any]) -> None:
    """The API server prunes status fields the schema does not name: keep the BF16 numbers."""
    nodes = dict(walk(schema))
    result = ".status.variants[].result"
    for field in ("bf16Artifact", "bf16Accuracy", "bf16Fps", "bf16Gate", "runtimeIsa", "inferencePrecision",
                  "speedup.int8VsFp32", "speedup.int8VsBf16", "bf16Gate.passed", "bf16Gate.drop"):  # fmt: skip
        assert f"{result}.{field}" in nodes, field


def test_schema_defaults_are_the_operators_defaults(schema: dict[str, Any]) -> None:
    declared = {
        path.removeprefix(".spec."): node["default"]
        for path, node in walk(schema)
        if path.startswith(".spec.") and "default" in node and node["default"] != {}
    }
    assert declared == DEFAULTS
    # The defaults the command line shares: a hand-run pipeline gates like the operator's Job.
    shared = {
        "quantization.preset": defaults.PRESET,
        "quantization.subsetSize": defaults.SUBSET_SIZE,
        "validation.maxDrop": defaults.MAX_DROP,
    }
    assert {path: declared[path] for path in shared} == shared


@pytest.mark.parametrize("sample", SAMPLES, ids=[path.name for path in SAMPLES])
def test_samples_are_valid(sample: Path, validator: jsonschema.Draft7Validator) -> None:
    body = yaml.safe_load(sample.read_text())
    errors = sorted(validator.iter_errors(body), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert body["apiVersion"] == names.API_VERSION and body["kind"] == names.KIND
    parse_spec(body["spec"])  # and the operator accepts them


def test_samples_cover_one_and_several_tiers() -> None:
    names_ = [path.name for path in SAMPLES]
    assert "qfleet.dev_v1alpha1_quantizedmodel.yaml" in names_
    tier_counts = {len(yaml.safe_load(path.read_text())["spec"]["targets"]) for path in SAMPLES}
    assert 1 in tier_counts and max(tier_counts) >= 2


def test_samples_show_the_service_and_pod_knobs() -> None:
    specs = [parse_spec(yaml.safe_load(path.read_text())["spec"]) for path in SAMPLES]
    assert any(spec.service_type != "ClusterIP" and spec.service_annotations for spec in specs)
    assert any(target.pod.tolerations for spec in specs for target in spec.targets)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        node = body
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is _DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value

    return mutate


_DELETE = object()
INVALID = {
    "no source": _set("spec.source", _DELETE),
    "unknown format": _set("spec.source.format", "tensorflow"),
    "no uri": _set("spec.source.uri", _DELETE),
    "negative epoch": _set("spec.source.epoch", -1),
    "unknown preset": _set("spec.quantization.preset", "fast"),
    "subset of zero": _set("spec.quantization.subsetSize", 0),
    "no calibration": _set("spec.quantization.calibration", _DELETE),
    "drop above one": _set("spec.validation.maxDrop", 1.5),
    "negative drop": _set("spec.validation.maxDrop", -0.01),
    "accuracy above one": _set("spec.validation.minAccuracy", 1.01),
    "no targets": _set("spec.targets", []),
    "unknown tier": _set("spec.targets.0.isa", "sse4"),
    "target without isa": _set("spec.targets", [{"nodeSelector": {"pool": "a"}}]),
    "non-string selector": _set("spec.targets.0.nodeSelector", {"pool": 3}),
    "negative min replicas": _set("spec.serving.minReplicas", -1),
    "zero max replicas": _set("spec.serving.maxReplicas", 0),
    "fractional cpu number": _set("spec.serving.resources.limits.cpu", 0.5),
    "negative cameras": _set("spec.demand.cameras", -1),
    "fractional cameras": _set("spec.demand.cameras", 2.5),
    "zero camera fps": _set("spec.demand.cameraFps", 0),
    "zero utilization": _set("spec.demand.targetUtilization", 0),
    "utilization above one": _set("spec.demand.targetUtilization", 1.2),
    "unknown placement": _set("spec.demand.placement", "random"),
    "no artifacts": _set("spec.artifacts", _DELETE),
    "unknown policy": _set("spec.rollout.onGateFailure", "ignore"),
    "seven targets": _set("spec.targets", [{"isa": tier} for tier in (*TIER_NAMES, "avx2")]),
    "unknown field": _set("spec.demand.camera", 3),
    "unknown service type": _set("spec.serving.service.type", "ExternalName"),
    "non-string service annotation": _set("spec.serving.service.annotations", {"a": 1}),
    "negative pending grace": _set("spec.demand.pendingGraceSeconds", -1),
    "unknown consistency": _set("spec.rollout.consistency", "eventual"),
    "toleration operator": _set("spec.targets.0.tolerations", [{"key": "a", "operator": "Maybe"}]),
    "toleration typo": _set("spec.targets.0.tolerations", [{"key": "a", "efect": "NoSchedule"}]),
    "pull secret without name": _set("spec.targets.0.imagePullSecrets", [{}]),
    "spread without skew": _set(
        "spec.targets.0.topologySpreadConstraints",
        [{"topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}],
    ),
    "non-string pod label": _set("spec.targets.0.podLabels", {"team": 1}),
    "service account list": _set("spec.targets.0.serviceAccountName", ["a"]),
    "no spec": _set("spec", _DELETE),
}


@pytest.mark.parametrize("mutation", list(INVALID), ids=list(INVALID))
def test_invalid_resources_are_rejected(mutation: str, validator: jsonschema.Draft7Validator) -> None:
    body = yaml.safe_load(SAMPLES[0].read_text())
    assert validator.is_valid(body)
    broken = copy.deepcopy(body)
    INVALID[mutation](broken)
    assert not validator.is_valid(broken), mutation


def test_validation_does_not_reject_unsupported_uri_schemes(validator: jsonschema.Draft7Validator) -> None:
    """The operator, not the schema, refuses gs:// etc., so users get a condition that explains."""
    body = yaml.safe_load(SAMPLES[0].read_text())
    body["spec"]["source"]["uri"] = "gs://bucket/model"
    assert validator.is_valid(body)


# --- The status: what the operator writes fits the schema, and reads back as it was ------------------

T0 = "2030-01-01T00:00:00Z"
KEY = "0123456789"
OUT = "pvc://models/qfleet/arcface/0123456789"
INT8 = ServedModel(KEY, "int8", f"{OUT}/amx_int8/int8/model.xml", 2100.0, 0.996, T0, batch=4)
BF16_RESULT = ResultRecord(
    pipeline_key=KEY,
    job="arcface-amx-int8-0123456789",
    succeeded=True,
    finished_at=T0,
    artifact=INT8.artifact,
    fp32_artifact=f"{OUT}/amx_int8/fp32/model.xml",
    fp32_accuracy=0.9963,
    int8_accuracy=0.996,
    accuracy_drop=0.0003,
    fp32_fps=326.0,
    int8_fps=1000.0,
    int8_batch=4,
    int8_batch_fps=2100.0,
    int8_batch_latency_ms=7.5,
    gate=GateRecord(True, "Passed", "INT8 accuracy 99.6% vs FP32 99.63%"),
    versions={"openvino": "2025.4", "nncf": "2.19"},
    seconds=300.5,
    runtime_isa="Intel AMX",
    inference_precision={"fp32": "f32", "int8": "f32", "bf16": "bf16"},
    speedup={"int8_vs_fp32": 3.067, "int8_vs_bf16": 2.222},
    bf16=Bf16Record(f"{OUT}/amx_int8/bf16/model.xml", 0.9961, 450.0, True, "Passed", 0.0002),
    accuracy_control=ControlRecord("met", True, 0.0004, 0.021, 7, 412.5, ("conv_0", "fc1")),
)
FAILED_RESULT = ResultRecord(
    pipeline_key=KEY,
    job="arcface-avx2-0123456789",
    succeeded=False,
    finished_at=T0,
    error=JobError("BackoffLimitExceeded", "r100.onnx does not exist (exit code 2)", "convert", 2),
)
GATE_FAILED_RESULT = ResultRecord(
    pipeline_key=KEY,
    job="arcface-avx512-vnni-0123456789",
    succeeded=True,
    finished_at=T0,
    artifact=f"{OUT}/avx512_vnni/int8/model.xml",
    fp32_artifact=f"{OUT}/avx512_vnni/fp32/model.xml",
    fp32_accuracy=0.9963,
    int8_accuracy=0.97,
    accuracy_drop=0.0263,
    fp32_fps=300.0,
    int8_fps=579.0,
    gate=GateRecord(False, "AccuracyDropExceeded", "drop 2.63 points exceeds 0.1"),
)
STATUSES = {
    "ready with bf16 numbers": ModelStatus(
        phase="Ready",
        observed_generation=3,
        pipeline_key=KEY,
        selector="qfleet.dev/model=arcface,app.kubernetes.io/component=server",
        conditions=(
            Condition("Ready", "True", "AllTargetsServing", "1 target(s) serving INT8 models", T0, 3),
            Condition("AccuracyGate", "True", "Passed", "accuracy drop in points: amx_int8 0.030", T0, 3),
        ),
        demand=DemandStatus(cameras=64, faces_per_second=384.0),
        capacity=CapacityStatus(replicas=1, faces_per_second=800.0, shortfall_faces_per_second=0.0),
        summary=Summary(fps="1000", drop="0.03"),
        variants=(
            VariantStatus(
                isa="amx_int8",
                pipeline_key=KEY,
                job=BF16_RESULT.job,
                state="Succeeded",
                reason="Passed",
                message="INT8 accuracy 99.60%",
                result=BF16_RESULT,
                served=INT8,
                last_good=INT8,
                deployment="arcface-amx-int8",
                replicas=1,
                ready_replicas=1,
            ),
        ),
    ),
    "degraded: a failed Job, a failed gate serving FP32, a tier waiting for nodes": ModelStatus(
        phase="Degraded",
        observed_generation=1,
        pipeline_key=KEY,
        conditions=(Condition("Degraded", "True", "JobFailed", "avx2: Job failed", T0, 1),),
        demand=DemandStatus(cameras=0, faces_per_second=0.0),
        capacity=CapacityStatus(replicas=0, faces_per_second=0.0, shortfall_faces_per_second=0.0),
        summary=Summary(fps="-/326/-", drop="-/2.63/-"),
        variants=(
            VariantStatus("avx2", KEY, FAILED_RESULT.job, "Failed", "JobFailed", "failed", FAILED_RESULT),
            VariantStatus(
                "avx512_vnni",
                KEY,
                GATE_FAILED_RESULT.job,
                "GateFailed",
                "AccuracyDropExceeded",
                "serving the FP32 model instead",
                GATE_FAILED_RESULT,
                served=ServedModel(KEY, "fp32", GATE_FAILED_RESULT.fp32_artifact, 300.0, 0.9963, T0),
                deployment="arcface-avx512-vnni",
                replicas=0,
                ready_replicas=0,
            ),
            VariantStatus(
                "amx_int8",
                KEY,
                "arcface-amx-int8-0123456789",
                "WaitingForNodes",
                "NoNodesOfTier",
                "no schedulable node of ISA tier amx_int8",
            ),
        ),
    ),
}


def with_status(status: dict[str, Any]) -> dict[str, Any]:
    body = yaml.safe_load(SAMPLES[0].read_text())
    body["status"] = status
    return body  # type: ignore[no-any-return]


@pytest.mark.parametrize("case", list(STATUSES), ids=list(STATUSES))
def test_status_round_trips_through_the_schema(
    case: str, validator: jsonschema.Draft7Validator, schema: dict[str, Any]
) -> None:
    """Every field the operator writes is in the schema (an API server prunes the others), and
    what it writes reads back as the same status (through JSON, as the API server stores it)."""
    status = STATUSES[case]
    written = json.loads(json.dumps(status_to_dict(status)))
    assert parse_status(written) == status
    errors = sorted(validator.iter_errors(with_status(written)), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_the_address_is_in_the_schema(validator: jsonschema.Draft7Validator) -> None:
    body = with_status({"phase": "Ready", "address": {"url": "http://arcface-r100.surveillance.svc:8080"}})
    assert validator.is_valid(body)


def test_the_result_names_its_job_in_the_schema(schema: dict[str, Any]) -> None:
    """The operator records which Job a result came from; an API server would prune the field if
    the schema did not declare it."""
    assert ".status.variants[].result.job" in dict(walk(schema))


def test_a_result_pruned_of_its_job_writes_back_the_same() -> None:
    written = status_to_dict(STATUSES["ready with bf16 numbers"])
    del written["variants"][0]["result"]["job"]
    assert status_to_dict(parse_status(written)) == written


def test_the_planners_first_status_fits_the_schema(
    validator: jsonschema.Draft7Validator, schema: dict[str, Any]
) -> None:
    body = yaml.safe_load(SAMPLES[0].read_text())
    nodes = Inventory.of(
        node_info({"metadata": {"name": f"n-{tier.name}", "labels": {tier.nfd_label: "true"}},
                   "status": {"allocatable": {"cpu": "32"},
                              "conditions": [{"type": "Ready", "status": "True"}]}})
        for tier in TIERS
    )  # fmt: skip
    first = plan({**body, "metadata": {"name": "m", "namespace": "ns", "uid": "u", "generation": 1}},
                 Observed(inventory=nodes), FleetConfig(), now=T0)  # fmt: skip
    assert first.create_jobs and first.invalid_spec is None
    errors = sorted(validator.iter_errors(with_status(first.status)), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    assert parse_status(first.status) == first.model_status
