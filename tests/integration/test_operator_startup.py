"""Start-up of a fleet: the operator handles events while it is still resuming every model.

kopf's indices held every handler back until they were filled (a readiness barrier whose cost grew
with the square of the objects); the operator now keeps its own caches and resumes the fleet in the
background, a few models at a time, so a user's change overtakes that queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest

from qfleet.fleet import names
from qfleet.fleet.planner import current_pipeline_key
from qfleet.fleet.replicas import needed_replicas
from qfleet.fleet.spec import parse_spec
from qfleet.operator.settings import OperatorSettings
from tests.support.cluster import DEPLOYMENTS, Cluster, Emulator

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

NAMESPACE = "startup"
MODELS = 300
FPS = 400.0
#: Few reconciles at once: the fleet's resume takes a while, and the change must overtake it.
ENV = {"QFLEET_RESYNC_SECONDS": "3600", "QFLEET_CONCURRENT_RECONCILES": "2"}


def resumed_model(index: int, cameras: int) -> dict[str, Any]:
    """A model as an operator restart finds it: quantized (a passed result in its status) and
    already handled by kopf (its last-handled configuration in an annotation)."""
    name = f"site-{index:04d}"
    spec = {
        "source": {"format": "onnx", "uri": f"pvc://models/{name}/model.onnx"},
        "quantization": {"calibration": "pvc://data/calib"},
        "validation": {"lfw": "pvc://data/lfw.bin", "maxDrop": 0.001},
        "targets": [{"isa": "avx2"}],
        "serving": {"resources": {"limits": {"cpu": "8"}}, "minReplicas": 1, "maxReplicas": 64},
        "demand": {"cameras": cameras, "cameraFps": 5, "facesPerFrame": 2, "targetUtilization": 0.8},
        "artifacts": {"uri": "pvc://models/qfleet"},
    }
    body: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": names.KIND,
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }
    key = current_pipeline_key(body, parse_spec(spec), OperatorSettings.from_env(ENV).fleet)
    job = names.job_name(name, "avx2", key)
    record = {"pipelineKey": key, "precision": "int8", "artifact": f"pvc://models/qfleet/{name}/int8/model.xml",
              "fpsPerReplica": FPS, "accuracy": 0.996, "since": "2030-01-01T00:00:00Z"}  # fmt: skip
    result = {"pipelineKey": key, "job": job, "succeeded": True, "artifact": record["artifact"],
              "fp32Artifact": f"pvc://models/qfleet/{name}/fp32/model.xml", "fp32Accuracy": 0.9963,
              "int8Accuracy": 0.996, "accuracyDrop": 0.0003, "fp32Fps": FPS / 2, "int8Fps": FPS,
              "gate": {"passed": True, "reason": "Passed", "message": "within 0.1 points"},
              "versions": {}, "seconds": 60.0, "finishedAt": "2030-01-01T00:00:00Z"}  # fmt: skip
    body["status"] = {
        "variants": [{"isa": "avx2", "pipelineKey": key, "job": job, "state": "Succeeded",
                      "result": result, "served": record, "lastGood": record}],
    }  # fmt: skip
    storage = kopf.AnnotationsDiffBaseStorage(prefix=names.GROUP, key="last-handled-configuration")
    patch = kopf.Patch()
    raw = kopf.Body(body)  # type: ignore[arg-type]  # a plain dict is a raw body
    storage.store(body=raw, patch=patch, essence=storage.build(body=raw))
    body["metadata"]["annotations"] = dict(patch["metadata"]["annotations"])
    return body


def replicas_for(cameras: int) -> int:
    return max(1, min(64, needed_replicas(cameras * 5 * 2, FPS, 0.8)))


async def test_a_camera_change_during_start_up_overtakes_the_resume_of_the_fleet(tmp_path: Path) -> None:
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        cluster = Cluster(emulator, server, tmp_path)
        await cluster.add_namespace(NAMESPACE)
        for index in range(4):
            await cluster.add_node(f"avx2-{index}", "avx2", cpu="64")
        for index in range(MODELS):
            await cluster.apply_model(resumed_model(index, cameras=8))
        changed = f"site-{MODELS - 1:04d}"  # listed last: resumed last
        tier_deployment = names.deployment_name(changed, "avx2")

        def planned() -> int:
            return len(cluster.objects(DEPLOYMENTS, NAMESPACE))

        def replicas() -> int | None:
            deployment = cluster.get(DEPLOYMENTS, NAMESPACE, tier_deployment)
            return None if deployment is None else int(deployment["spec"]["replicas"])

        process = await cluster.start_operator("--namespace", NAMESPACE, "--quiet", env=ENV)
        try:
            # The resume is under way (and kopf watches the models: the emulator, unlike an API
            # server, would not replay a change made between kopf's LIST and its WATCH).
            await cluster.wait_for("the fleet's resume under way", lambda: planned() >= 10, timeout=120)
            want = replicas_for(1024)
            assert want != replicas_for(8)
            await cluster.patch(
                cluster.model_path(NAMESPACE, changed), {"spec": {"demand": {"cameras": 1024}}}
            )
            await cluster.wait_for("the change applied", lambda: replicas() == want, timeout=120)
            waiting = MODELS - planned()
            assert waiting > 0, "the change waited until the whole fleet was resumed"
            # The operator's own watch saw the change first (kopf was still listing): its
            # reconcile posts the change's event as kopf's handlers would, and does not crash.
            await cluster.wait_for(
                "the Scaled event",
                lambda: any(e.get("reason") == "Scaled" for e in cluster.events(NAMESPACE, changed)),
                timeout=60,
            )
            assert "reconcile crashed" not in cluster.operator_log()
            await cluster.wait_for("every model planned", lambda: planned() == MODELS, timeout=240)
            assert replicas() == want  # the resume of the changed model did not undo the change
            # The operator and kopf list in chunks: a fleet's collection is never one response.
            assert not emulator.whole_lists, emulator.whole_lists
        except BaseException:
            print(cluster.operator_log())
            raise
        finally:
            await cluster.stop_operator(process)
