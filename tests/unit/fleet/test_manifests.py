"""Job and Deployment builders: the pipeline contract, tier affinity, restricted pods."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from qfleet.commands import pipeline as pipeline_command
from qfleet.commands import serve as serve_command
from qfleet.fleet import names
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.manifests import (
    TERMINATION_LOG,
    Owner,
    ServingModel,
    deployment_for,
    job_for,
    pipeline_inputs,
    template_hash,
    threads_for,
)
from qfleet.fleet.pods import parse_pod_knobs
from qfleet.fleet.spec import parse_spec
from qfleet.fleet.uris import MOUNT_ROOT, PvcUri, parse_artifact_uri

OWNER = Owner(name="arcface", namespace="faces", uid="uid-1")
CONFIG = FleetConfig(toolkit_image="reg/toolkit:1", server_image="reg/server:1", benchmark_seconds=20)


def make_spec(**overrides: Any) -> Any:
    spec: dict[str, Any] = {
        "source": {"format": "mxnet", "uri": "pvc://models/r100/model", "epoch": 1},
        "quantization": {"calibration": "pvc://data/calib", "subsetSize": 100},
        "validation": {"lfw": "pvc://data/lfw.bin", "maxDrop": 0.001, "minAccuracy": 0.99},
        "targets": [{"isa": "avx512_vnni", "nodeSelector": {"pool": "gpu-free"}}, {"isa": "avx2"}],
        "serving": {"resources": {"requests": {"cpu": "8", "memory": "4Gi"}, "limits": {"cpu": "8"}}},
        "artifacts": {"uri": "pvc://models/qfleet"},
    }
    spec.update(overrides)
    return parse_spec(spec)


def pipeline_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    pipeline_command.configure(parser)
    return parser


def test_job_runs_the_pipeline_contract() -> None:
    job = job_for(OWNER, make_spec(), "avx512_vnni", "0123456789", CONFIG)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["qfleet", "pipeline"]
    args = pipeline_parser().parse_args(container["args"])  # the real `qfleet pipeline` accepts them
    assert args.source == f"{MOUNT_ROOT}/models/r100/model" and args.fmt == "mxnet" and args.epoch == 1
    assert args.calibration == f"{MOUNT_ROOT}/data/calib" and args.lfw == f"{MOUNT_ROOT}/data/lfw.bin"
    assert args.out == f"{MOUNT_ROOT}/models/qfleet/arcface/0123456789/avx512_vnni"
    assert args.expect_isa == "avx512_vnni" and args.subset_size == 100
    assert (args.max_drop, args.min_accuracy) == (0.001, 0.99)
    assert args.threads == 8 and args.benchmark_seconds == 20
    assert args.termination_log == TERMINATION_LOG == container["terminationMessagePath"]
    assert container["terminationMessagePolicy"] == "File" and args.json
    assert container["image"] == "reg/toolkit:1"


def test_job_args_are_one_pipeline_spec_spelled_out() -> None:
    """The Job's args are ``PipelineSpec.to_args()``: read back by the command line, they give the
    same spec, with every value written (nothing left to the defaults of the image)."""
    job = job_for(OWNER, make_spec(), "avx512_vnni", "0123456789", CONFIG)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    spec = pipeline_command.spec_from_args(pipeline_parser().parse_args(args))
    assert spec.to_args() == args
    for flag in ("--preset", "--subset-size", "--max-drop", "--benchmark-seconds", "--threads"):
        assert flag in args, flag


def test_job_measures_with_the_serving_cpu_budget() -> None:
    job = job_for(OWNER, make_spec(), "avx2", "k", CONFIG)
    resources = job["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"] == "8"
    assert resources["limits"]["memory"] == CONFIG.job_memory


def test_job_mounts_each_claim_once_inputs_read_only() -> None:
    pod = job_for(OWNER, make_spec(), "avx2", "k", CONFIG)["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v
    }
    assert set(claims) == {"models", "data"}  # source and artifacts share the "models" claim
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[f"{MOUNT_ROOT}/data"]["readOnly"] is True
    assert mounts[f"{MOUNT_ROOT}/models"]["readOnly"] is False  # artifacts are written there
    assert mounts["/tmp"]["name"] == "tmp"


def expressions(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    terms = pod_spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    (term,) = terms["nodeSelectorTerms"]
    return term["matchExpressions"]  # type: ignore[no-any-return]


def test_job_requires_exactly_its_tier_and_the_targets_selector() -> None:
    pod = job_for(OWNER, make_spec(), "avx512_vnni", "k", CONFIG)["spec"]["template"]["spec"]
    found = {(e["key"].rsplit(".", 1)[-1], e["operator"]) for e in expressions(pod)}
    assert ("AVX512VNNI", "In") in found and ("AMXINT8", "DoesNotExist") in found
    assert ("pool", "In") in found or any(e["key"] == "pool" for e in expressions(pod))
    assert ("AVX512F", "DoesNotExist") not in found  # lower tiers' features are present on VNNI nodes


@pytest.mark.parametrize("kind", ["job", "deployment"])
def test_pods_are_restricted(kind: str) -> None:
    if kind == "job":
        pod = job_for(OWNER, make_spec(), "avx2", "k", CONFIG)["spec"]["template"]["spec"]
    else:
        artifact = PvcUri("models", "qfleet/arcface/k/avx2/int8/model.xml")
        pod = deployment_for(OWNER, make_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=2,
                             config=CONFIG)["spec"]["template"]["spec"]  # fmt: skip
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_pods_log_in_the_operators_format(log_format: str) -> None:
    config = FleetConfig(log_format=log_format)
    artifact = PvcUri("models", "qfleet/arcface/k/avx2/int8/model.xml")
    pods = [
        job_for(OWNER, make_spec(), "avx2", "k", config)["spec"]["template"]["spec"],
        deployment_for(OWNER, make_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=1,
                       config=config)["spec"]["template"]["spec"],
    ]  # fmt: skip
    for pod in pods:
        env = {item["name"]: item["value"] for item in pod["containers"][0]["env"]}
        assert env["QFLEET_LOG_FORMAT"] == log_format


def test_job_metadata_owner_and_limits() -> None:
    job = job_for(OWNER, make_spec(), "avx2", "0123456789", CONFIG)
    metadata, spec = job["metadata"], job["spec"]
    assert metadata["name"] == "arcface-avx2-0123456789"
    assert metadata["ownerReferences"] == [OWNER.reference()]
    assert OWNER.reference()["controller"] is True and OWNER.reference()["kind"] == "QuantizedModel"
    assert metadata["labels"][names.LABEL_PIPELINE_KEY] == "0123456789"
    assert metadata["annotations"][names.ANNOTATION_MODEL_NAME] == "arcface"
    assert spec["template"]["metadata"]["annotations"][names.ANNOTATION_MODEL_NAME] == "arcface"
    assert spec["backoffLimit"] == CONFIG.job_backoff_limit
    assert spec["activeDeadlineSeconds"] == CONFIG.job_deadline_seconds
    assert spec["ttlSecondsAfterFinished"] == CONFIG.job_ttl_seconds
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    rule = spec["podFailurePolicy"]["rules"][0]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2, 3]


def test_job_is_deterministic() -> None:
    assert job_for(OWNER, make_spec(), "avx2", "k", CONFIG) == job_for(
        OWNER, make_spec(), "avx2", "k", CONFIG
    )


def test_deployment_serves_the_artifact_with_probes() -> None:
    artifact = PvcUri("models", "qfleet/arcface/k/avx512_vnni/int8/model.xml")
    deployment = deployment_for(OWNER, make_spec(), "avx512_vnni", model=ServingModel(artifact, "k", 500.0),
                                replicas=3, config=CONFIG)  # fmt: skip
    assert deployment["metadata"]["name"] == "arcface-avx512-vnni"
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["qfleet", "serve"]
    assert container["args"][:2] == [
        "--model",
        f"{MOUNT_ROOT}/models/qfleet/arcface/k/avx512_vnni/int8/model.xml",
    ]
    assert (
        "--threads" in container["args"]
        and container["args"][container["args"].index("--threads") + 1] == "8"
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["ports"][0]["containerPort"] == CONFIG.server_port
    assert {m["mountPath"]: m.get("readOnly") for m in container["volumeMounts"]}[
        f"{MOUNT_ROOT}/models"
    ] is True
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert any(e["key"].endswith("AVX512VNNI") for e in expressions(pod))


def test_replicas_do_not_change_the_template() -> None:
    artifact = PvcUri("models", "a/int8/model.xml")
    one = deployment_for(
        OWNER, make_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=1, config=CONFIG
    )
    ten = deployment_for(
        OWNER, make_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=10, config=CONFIG
    )
    assert template_hash(one) == template_hash(ten) and one["spec"]["template"] == ten["spec"]["template"]
    other = deployment_for(OWNER, make_spec(), "avx2", model=ServingModel(PvcUri("models", "b/int8/model.xml"),
                           "k2", 500.0), replicas=1, config=CONFIG)  # fmt: skip
    assert template_hash(other) != template_hash(one)


def test_pods_run_with_the_cpu_their_fps_was_measured_at() -> None:
    spec = make_spec(serving={"resources": {"limits": {"cpu": "4"}}})
    artifact = PvcUri("models", "a/int8/model.xml")
    measured_at_8 = ServingModel(artifact, "k", 500.0, cpu="8", threads=8)
    pod = deployment_for(OWNER, spec, "avx2", model=measured_at_8, replicas=1, config=CONFIG)["spec"][
        "template"
    ]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["cpu"] == "8" and container["resources"]["requests"]["cpu"] == "8"
    assert container["args"][container["args"].index("--threads") + 1] == "8"
    assert pod["metadata"]["annotations"]["qfleet.dev/fps-per-replica"] == "500"
    assert container["args"][container["args"].index("--name") + 1] == OWNER.name


def test_a_stopping_pod_answers_what_is_in_flight() -> None:
    artifact = PvcUri("models", "a/int8/model.xml")
    deployment = deployment_for(
        OWNER, make_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=1, config=CONFIG
    )
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = float(container["args"][container["args"].index("--shutdown-grace") + 1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + drain
    assert deployment["spec"]["progressDeadlineSeconds"] == CONFIG.progress_deadline_seconds


def test_serving_image_override_and_threads() -> None:
    spec = make_spec(
        serving={"image": "custom/server:2", "threads": 3, "resources": {"limits": {"cpu": "500m"}}}
    )
    assert threads_for(spec, CONFIG) == 3
    artifact = PvcUri("models", "a/int8/model.xml")
    deployment = deployment_for(
        OWNER, spec, "avx2", model=ServingModel(artifact, "k", 500.0), replicas=1, config=CONFIG
    )
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "custom/server:2"
    half = make_spec(serving={"resources": {"limits": {"cpu": "500m"}}})
    assert threads_for(half, CONFIG) == 1


def test_pipeline_inputs_cover_what_changes_the_model() -> None:
    base = pipeline_inputs(make_spec(), CONFIG)
    assert base == pipeline_inputs(make_spec(demand={"cameras": 99}), CONFIG)  # cameras: no new model
    assert base != pipeline_inputs(make_spec(source={"format": "onnx", "uri": "pvc://models/x.onnx"}), CONFIG)
    assert base != pipeline_inputs(
        make_spec(validation={"lfw": "pvc://data/lfw.bin", "maxDrop": 0.002}), CONFIG
    )
    assert base != pipeline_inputs(make_spec(), FleetConfig(toolkit_image="reg/toolkit:2"))
    assert base != pipeline_inputs(make_spec(serving={"resources": {"limits": {"cpu": "4"}}}), CONFIG)
    assert base != pipeline_inputs(make_spec(), CONFIG, rerun="1")


def test_pod_knobs_reach_jobs_and_serving_pods() -> None:
    toleration = {"key": "isa", "operator": "Equal", "value": "vnni", "effect": "NoSchedule"}
    spec = make_spec(targets=[{"isa": "avx2", "tolerations": [toleration], "priorityClassName": "faces",
                               "podLabels": {"team": "video"}}])  # fmt: skip
    config = FleetConfig(
        pod_defaults=parse_pod_knobs({"imagePullSecrets": [{"name": "registry"}]}, "podDefaults")
    )
    job = job_for(OWNER, spec, "avx2", "k", config)["spec"]["template"]
    artifact = PvcUri("models", "a/int8/model.xml")
    served = deployment_for(OWNER, spec, "avx2", model=ServingModel(artifact, "k", 500.0), replicas=2,
                            config=config)["spec"]["template"]  # fmt: skip
    for template in (job, served):
        pod = template["spec"]
        assert pod["tolerations"] == [toleration] and pod["priorityClassName"] == "faces"
        assert pod["imagePullSecrets"] == [{"name": "registry"}]
        assert template["metadata"]["labels"]["team"] == "video"
    # Serving replicas spread across hosts by default; a Job is one pod and does not.
    (spread,) = served["spec"]["topologySpreadConstraints"]
    assert (
        spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    )
    assert "topologySpreadConstraints" not in job["spec"]


STORAGE = {
    "secretRef": {"name": "minio-credentials"},
    "endpoint": "https://minio.storage:9000",
    "region": "eu-west-1",
    "caBundle": {"name": "minio-ca", "key": "ca.pem"},
    "addressing": "path",
}
DIGEST = "ab" * 32


def s3_spec(**overrides: Any) -> Any:
    return make_spec(
        source={"format": "onnx", "uri": "https://models.example/r100.onnx", "sha256": DIGEST},
        quantization={"calibration": "s3://data/calib", "subsetSize": 100},
        validation={"lfw": "s3://data/lfw.bin"},
        artifacts={"uri": "s3://models/qfleet"},
        storage=STORAGE,
        **overrides,
    )


def test_job_with_object_storage_passes_uris_and_references_the_secret() -> None:
    job = job_for(OWNER, s3_spec(), "avx2", "0123456789", CONFIG)
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = pipeline_parser().parse_args(container["args"])
    assert args.source == "https://models.example/r100.onnx" and args.source_sha256 == DIGEST
    assert args.calibration == "s3://data/calib" and args.lfw == "s3://data/lfw.bin"
    assert args.out == "s3://models/qfleet/arcface/0123456789/avx2" and not args.allow_http
    # No claim is mounted; the credentials are a reference, never a value the operator read.
    assert not [volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
    assert container["envFrom"] == [{"secretRef": {"name": "minio-credentials"}}]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["AWS_ENDPOINT_URL"] == "https://minio.storage:9000" and env["AWS_REGION"] == "eu-west-1"
    assert env["QFLEET_S3_ADDRESSING"] == "path"
    assert env["AWS_CA_BUNDLE"] == "/etc/qfleet/storage-ca/ca.pem"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    ca = next(volume for volume in pod["volumes"] if volume["name"] == "storage-ca")
    assert ca["configMap"] == {"name": "minio-ca", "items": [{"key": "ca.pem", "path": "ca.pem"}]}
    assert {"name": "storage-ca", "mountPath": "/etc/qfleet/storage-ca", "readOnly": True} in container[
        "volumeMounts"
    ]


def test_pvc_inputs_with_s3_artifacts_mount_only_the_input_claims_read_only() -> None:
    spec = make_spec(artifacts={"uri": "s3://models/qfleet"})
    pod = job_for(OWNER, spec, "avx2", "k", CONFIG)["spec"]["template"]["spec"]
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models": True, "data": True}
    assert "envFrom" not in pod["containers"][0]  # no Secret named: the pod's own identity (IRSA...)


def serve_args(deployment: dict[str, Any]) -> argparse.Namespace:
    """The serving container's args as the real `qfleet serve` reads them."""
    parser = argparse.ArgumentParser()
    serve_command.configure(parser)
    return parser.parse_args(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def batching(**settings: Any) -> Any:
    """make_spec()'s spec with ``serving.batching`` set (and its CPU budget kept)."""
    return make_spec(serving={"resources": {"limits": {"cpu": "8"}}, "batching": settings})


def test_job_benchmarks_at_the_batch_the_servers_run() -> None:
    batched = batching(maxBatch=4)
    args = job_for(OWNER, batched, "avx2", "k", CONFIG)["spec"]["template"]["spec"]["containers"][0]["args"]
    assert pipeline_command.spec_from_args(pipeline_parser().parse_args(args)).benchmark_batch == 4
    plain = job_for(OWNER, make_spec(), "avx2", "k", CONFIG)["spec"]["template"]["spec"]["containers"][0]
    assert "--benchmark-batch" not in plain["args"]  # batch 1: the Job of before batching


def test_batching_changes_the_pipeline_key_input_only_when_not_the_default() -> None:
    base = pipeline_inputs(make_spec(), CONFIG)
    assert "batch" not in base  # models without batching keep the keys they had
    assert base == pipeline_inputs(batching(maxBatch=1, timeoutMs=9), CONFIG)
    batched = pipeline_inputs(batching(maxBatch=4), CONFIG)
    assert batched["batch"] == 4 and batched != base
    # The timeout changes no artifact and no benchmark: no new Job.
    assert batched == pipeline_inputs(batching(maxBatch=4, timeoutMs=9), CONFIG)


def test_servers_batch_as_much_as_their_fps_was_measured_at() -> None:
    spec = batching(maxBatch=4, timeoutMs=3.5)
    artifact = PvcUri("models", "a/int8/model.xml")
    at_4 = deployment_for(OWNER, spec, "avx2", model=ServingModel(artifact, "k", 90.0, batch=4),
                          replicas=1, config=CONFIG)  # fmt: skip
    args = serve_args(at_4)
    assert (args.max_batch, args.batch_timeout_ms) == (4, 3.5)
    # A model measured at batch 1 (an FP32 fallback, a Job before batching) serves one face per
    # inference, whatever the spec asks now; its template ignores the timeout.
    at_1 = deployment_for(
        OWNER, spec, "avx2", model=ServingModel(artifact, "k", 45.0), replicas=1, config=CONFIG
    )
    assert serve_args(at_1).max_batch == 1
    assert "--batch-timeout-ms" not in at_1["spec"]["template"]["spec"]["containers"][0]["args"]
    other_timeout = batching(maxBatch=4, timeoutMs=8)
    same = deployment_for(OWNER, other_timeout, "avx2", model=ServingModel(artifact, "k", 45.0), replicas=1,
                          config=CONFIG)  # fmt: skip
    assert template_hash(same) == template_hash(at_1)


def test_the_serving_container_exposes_grpc() -> None:
    artifact = PvcUri("models", "a/int8/model.xml")
    deployment = deployment_for(
        OWNER, make_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=1, config=CONFIG
    )
    ports = {port["name"]: port for port in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports["grpc"]["containerPort"] == 8081 and ports["http"]["containerPort"] == CONFIG.server_port
    args = serve_args(deployment)
    assert args.grpc_port == 8081 and not args.no_grpc and args.port == CONFIG.server_port


def test_pins_change_the_pipeline_key_input_only_when_set() -> None:
    assert "sha256" not in pipeline_inputs(make_spec(), CONFIG)["source"]
    pinned = pipeline_inputs(s3_spec(), CONFIG)
    assert pinned["source"]["sha256"] == DIGEST and "lfwSha256" not in pinned["validation"]


def test_an_s3_model_is_fetched_and_verified_by_an_init_container() -> None:
    artifact = parse_artifact_uri("s3://models/qfleet/arcface/k/avx2/int8/model.xml", field="artifact")
    deployment = deployment_for(
        OWNER, s3_spec(), "avx2", model=ServingModel(artifact, "k", 500.0), replicas=2, config=CONFIG
    )
    pod = deployment["spec"]["template"]["spec"]
    (fetch,) = pod["initContainers"]
    server = pod["containers"][0]
    assert fetch["command"] == ["qfleet", "fetch"]
    assert fetch["args"] == ["s3://models/qfleet/arcface/k/avx2/int8", "/var/lib/qfleet/model"]
    assert fetch["image"] == server["image"] and fetch["envFrom"] == [
        {"secretRef": {"name": "minio-credentials"}}
    ]
    assert fetch["securityContext"] == server["securityContext"]
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model", "mountPath": "/var/lib/qfleet/model"} in fetch["volumeMounts"]
    # The server reads the local copy and holds no credentials.
    assert server["args"][server["args"].index("--model") + 1] == "/var/lib/qfleet/model/model.xml"
    assert {"name": "model", "mountPath": "/var/lib/qfleet/model", "readOnly": True} in server["volumeMounts"]
    assert "envFrom" not in server and not any(e["name"].startswith("AWS_") for e in server["env"])
    assert deployment["metadata"]["annotations"][names.ANNOTATION_ARTIFACT] == str(artifact)


def test_a_claim_model_gets_no_init_container() -> None:
    artifact = PvcUri("models", "a/int8/model.xml")
    pod = deployment_for(
        OWNER,
        make_spec(storage=STORAGE),
        "avx2",
        model=ServingModel(artifact, "k", 500.0),
        replicas=1,
        config=CONFIG,
    )["spec"]["template"]["spec"]
    assert "initContainers" not in pod and "envFrom" not in pod["containers"][0]


def test_accuracy_control_reaches_the_job_and_the_key_only_when_on() -> None:
    plain = make_spec()
    controlled = make_spec(
        quantization={
            "calibration": "pvc://data/calib",
            "subsetSize": 100,
            "accuracyControl": {"enabled": True, "maxIterations": 8, "timeoutSeconds": 600},
        }
    )
    args = pipeline_parser().parse_args(
        job_for(OWNER, controlled, "avx2", "k", CONFIG)["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    assert args.accuracy_control and args.accuracy_control_max_iterations == 8
    assert args.accuracy_control_timeout == 600.0
    assert (
        not pipeline_parser()
        .parse_args(
            job_for(OWNER, plain, "avx2", "k", CONFIG)["spec"]["template"]["spec"]["containers"][0]["args"]
        )
        .accuracy_control
    )
    assert "accuracyControl" not in pipeline_inputs(plain, CONFIG)["quantization"]
    assert pipeline_inputs(controlled, CONFIG)["quantization"]["accuracyControl"] == {
        "maxIterations": 8,
        "timeoutSeconds": 600.0,
    }
