"""QuantizedModels kept in object storage, end to end on the operator harness.

A real S3 HTTP server (moto's standalone server, a separate process) holds the source model, the
calibration faces, lfw.bin and the artifacts. The real operator builds the Job and the serving
pods; the harness runs the Job's own ``qfleet pipeline`` command and the serving pods' own init
command (``qfleet fetch``) with the environment their manifests give them: the credentials come
from the Secret the spec names (``envFrom``), never from the operator.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from qfleet.fleet.manifests import FETCH_CONTAINER
from qfleet.model.metadata import METADATA_FILE
from qfleet.storage.publish import UPLOAD_KEY
from tests.support.cluster import DEPLOYMENTS, JOBS, Cluster
from tests.support.operator_fixtures import NAMESPACE, model_body
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY, DenyAll, S3Server, http_servers

pytestmark = pytest.mark.timeout(300)

SECRET = "s3-credentials"


@pytest.fixture
def store(moto_server: S3Server, datasets: Path, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """Buckets "data" (the datasets, as on the "data" claim) and "models" (empty). This process
    and the operator hold no AWS variables: whatever a pod gets comes from its manifest."""
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    moto_server.reset()
    client = moto_server.client()
    client.create_bucket(Bucket="data")
    client.create_bucket(Bucket="models")
    for path in sorted(datasets.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "data", path.relative_to(datasets).as_posix())
    return moto_server


async def add_secret(cluster: Cluster, access_key: str, secret_key: str) -> None:
    data = {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    await cluster.create(
        f"/api/v1/namespaces/{NAMESPACE}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()},
        },
    )


def s3_model(name: str, endpoint: str, *, source: str = "model") -> dict[str, Any]:
    return model_body(
        name,
        source={"format": "openvino", "uri": f"s3://data/{source}/model.xml"},
        quantization={"calibration": "s3://data/calib"},
        validation={"lfw": "s3://data/lfw.bin"},
        artifacts={"uri": "s3://models/qfleet"},
        storage={"secretRef": {"name": SECRET}, "endpoint": endpoint, "region": REGION, "addressing": "path"},
    )


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return (cluster.model(NAMESPACE, name) or {}).get("status") or {}


def condition(cluster: Cluster, name: str, kind: str) -> dict[str, Any]:
    return next((c for c in status(cluster, name).get("conditions") or [] if c["type"] == kind), {})


def served(cluster: Cluster, name: str) -> str | None:
    variants = status(cluster, name).get("variants") or []
    return variants[0].get("served", {}).get("artifact") if variants else None


def objects(store: S3Server, prefix: str) -> dict[str, bytes]:
    client = store.client()
    listed = client.list_objects_v2(Bucket="models", Prefix=prefix).get("Contents") or []
    return {
        item["Key"]: client.get_object(Bucket="models", Key=item["Key"])["Body"].read() for item in listed
    }


async def serving_from_s3(cluster: Cluster, store: S3Server, name: str) -> str:
    await cluster.add_node("avx2-1", "avx2", cpu="16")
    await add_secret(cluster, ACCESS_KEY, SECRET_KEY)
    await cluster.start_operator("--namespace", NAMESPACE)
    await cluster.apply_model(s3_model(name, store.endpoint))
    await cluster.wait_for(
        f"{name} Ready", lambda: condition(cluster, name, "Ready").get("status") == "True", timeout=150
    )
    artifact = served(cluster, name)
    assert artifact is not None
    return artifact


async def test_a_model_kept_in_s3_is_quantized_published_and_served_from_a_verified_copy(
    cluster: Cluster, store: S3Server
) -> None:
    artifact = await serving_from_s3(cluster, store, "faces")
    key = status(cluster, "faces")["pipelineKey"]
    assert artifact == f"s3://models/qfleet/faces/{key}/avx2/int8/model.xml"

    # The Job read its inputs from S3 and published there: no claim mounted, credentials only
    # from the Secret, every file of the model recorded with its sha256 in qfleet.json.
    (job,) = cluster.objects(JOBS, NAMESPACE)
    pod = job["spec"]["template"]["spec"]
    assert not [volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume]
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": SECRET}}]
    run = cluster.runs[job["metadata"]["name"]]
    assert run.exit_codes == [0] and run.env["AWS_ACCESS_KEY_ID"] == ACCESS_KEY
    published = objects(store, f"qfleet/faces/{key}/avx2/int8/")
    record = json.loads(published[f"qfleet/faces/{key}/avx2/int8/{METADATA_FILE}"])
    files = record["files"]
    assert {"model.xml", "model.bin"} <= set(files)
    for file, digest in files.items():
        stored = published[f"qfleet/faces/{key}/avx2/int8/{record[UPLOAD_KEY]}/{file}"]
        assert hashlib.sha256(stored).hexdigest() == digest

    # Each serving pod fetched the model into its emptyDir with its init container, verified,
    # and the server's --model is that local copy.
    deployment = cluster.get(DEPLOYMENTS, NAMESPACE, "faces-avx2")
    assert deployment is not None
    template = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in template["initContainers"]] == [FETCH_CONTAINER]
    runs = [run for run in cluster.init_runs() if run.succeeded]
    assert runs and all(run.exit_codes[-1] == 0 for run in runs)
    local = runs[0].server_model
    assert local.name == "model.xml" and local.is_file()
    assert hashlib.sha256(local.with_suffix(".bin").read_bytes()).hexdigest() == files["model.bin"]
    assert json.loads((local.parent / METADATA_FILE).read_text())["files"] == files


async def test_an_altered_artifact_is_refused_and_the_previous_model_keeps_serving(
    cluster: Cluster, store: S3Server
) -> None:
    good = await serving_from_s3(cluster, store, "faces")
    mark = cluster.capacity_mark()
    cluster.release_inits.clear()  # the new pods' fetch waits until the artifact is damaged
    await cluster.patch(
        cluster.model_path(NAMESPACE, "faces"), {"spec": {"source": {"uri": "s3://data/model-v2/model.xml"}}}
    )
    new = await cluster.wait_for(
        "the new model to roll out", lambda: (a := served(cluster, "faces")) != good and a
    )
    prefix = new.removeprefix("s3://models/").removesuffix("/model.xml")
    client = store.client()
    record = json.loads(client.get_object(Bucket="models", Key=f"{prefix}/{METADATA_FILE}")["Body"].read())
    bucket_key = f"{prefix}/{record[UPLOAD_KEY]}/model.bin"
    damaged = bytearray(client.get_object(Bucket="models", Key=bucket_key)["Body"].read())
    damaged[len(damaged) // 2] ^= 0xFF
    client.put_object(Bucket="models", Key=bucket_key, Body=bytes(damaged))
    cluster.release_inits.set()

    # The fetch refuses the damaged file (exit 2, again on every restart); the pod never becomes
    # ready, so the rollout never removes a serving pod, and the operator goes back to the last
    # good model.
    await cluster.wait_for(
        "the tier rolled back",
        lambda: condition(cluster, "faces", "RolledBack").get("status") == "True",
        timeout=120,
    )
    assert served(cluster, "faces") == good
    refused = [run for run in cluster.init_runs() if not run.succeeded and run.exit_codes]
    assert refused and set(refused[0].exit_codes) == {2}
    log = (refused[0].pod_dir / f"{FETCH_CONTAINER}.log").read_text()
    assert "sha256" in log and "model.bin" in log
    assert "CrashLoopBackOff" in condition(cluster, "faces", "RolledBack")["message"]
    assert cluster.min_capacity_since(mark, NAMESPACE, "faces") > 0


async def test_a_store_that_refuses_the_credentials_fails_the_job_at_once(
    cluster: Cluster, store: S3Server
) -> None:
    with http_servers() as start:
        denying = start(DenyAll)
        await cluster.add_node("avx2-1", "avx2")
        await add_secret(cluster, "wrong-key", "wrong-secret")
        await cluster.start_operator("--namespace", NAMESPACE, env={"QFLEET_JOB_BACKOFF_LIMIT": "2"})
        await cluster.apply_model(s3_model("denied", denying))
        await cluster.wait_for(
            "phase Failed", lambda: status(cluster, "denied").get("phase") == "Failed", timeout=90
        )

    (job,) = cluster.created(JOBS)
    # AccessDenied is the user's to fix: exit 2, so the podFailurePolicy ends the Job after one
    # attempt although backoffLimit allows two more.
    assert cluster.runs[job].exit_codes == [2]
    error = status(cluster, "denied")["variants"][0]["result"]["error"]
    assert error["reason"] == "PodFailurePolicy" and error["stage"] == "fetch-inputs"
    assert "AccessDenied" in error["message"]
    assert "AccessDenied" in condition(cluster, "denied", "Degraded")["message"]
    assert cluster.get(DEPLOYMENTS, NAMESPACE, "denied-avx2") is None
