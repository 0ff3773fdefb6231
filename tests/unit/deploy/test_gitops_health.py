"""How Argo CD sees a QuantizedModel's health: the Lua check in the Argo CD example, run with lupa.

Argo CD runs the script with the global ``obj``: the live object decoded from JSON into Lua
tables (objects as tables with string keys, arrays as tables indexed from 1). The statuses here
come from the operator's own status writer (:func:`qfleet.fleet.status.status_to_dict`), so the
check reads exactly the fields the operator writes.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from qfleet.fleet import conditions as c
from qfleet.fleet.status import Condition, ModelStatus, status_to_dict
from tests.support.paths import REPO

lupa = pytest.importorskip("lupa", reason="pip install lupa (dev extra)")

ARGOCD = REPO / "examples" / "argocd"
SCRIPT = ARGOCD / "quantizedmodel-health.lua"
KEY = "resource.customizations.health.qfleet.dev_QuantizedModel"


def lua_value(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({key: lua_value(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([lua_value(runtime, item) for item in value])
    return value


def health(model: dict[str, Any]) -> tuple[str, str]:
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = lua_value(runtime, model)
    result = runtime.execute(SCRIPT.read_text())
    return result["status"], result["message"]


def model(status: ModelStatus | None, generation: int = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "qfleet.dev/v1alpha1",
        "kind": "QuantizedModel",
        "metadata": {"name": "arcface-r100", "namespace": "surveillance", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status_to_dict(status)
    return obj


def cond(type_: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(
        type=type_, status=status, reason=reason, message=message or reason, observed_generation=3
    )


def status(phase: str, *conditions: Condition, observed: int = 3) -> ModelStatus:
    defaults = {
        c.TYPE_READY: cond(c.TYPE_READY, c.FALSE, c.REASON_NOTHING_SERVED, "no model is served yet"),
        c.TYPE_PROGRESSING: cond(c.TYPE_PROGRESSING, c.FALSE, c.REASON_IDLE, "nothing to do"),
        c.TYPE_DEGRADED: cond(c.TYPE_DEGRADED, c.FALSE, c.REASON_AS_EXPECTED, "no failures"),
        c.TYPE_ROLLED_BACK: cond(c.TYPE_ROLLED_BACK, c.FALSE, c.REASON_NO_ROLLBACK),
        c.TYPE_NODES_AVAILABLE: cond(c.TYPE_NODES_AVAILABLE, c.TRUE, c.REASON_NODES_FOUND),
    }
    for item in conditions:
        defaults[item.type] = item
    return ModelStatus(phase=phase, observed_generation=observed, conditions=tuple(defaults.values()))


READY = cond(c.TYPE_READY, c.TRUE, c.REASON_ALL_SERVING, "3 target(s) serving INT8 models")
QUANTIZING = cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_QUANTIZING, "avx2: Job arcface-r100-avx2")
ROLLING = cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_ROLLING_OUT, "rolling out avx2")
FALLBACK = cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_AS_EXPECTED, "not serving the current INT8 model on avx2")


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param(model(None), "Progressing", id="no status yet"),
        pytest.param(
            model(status(c.READY, READY, observed=2)), "Progressing", id="older generation observed"
        ),
        pytest.param(model(ModelStatus(phase=c.PENDING)), "Progressing", id="no observedGeneration"),
        pytest.param(model(status(c.READY, READY)), "Healthy", id="ready"),
        pytest.param(model(status(c.READY, READY, observed=4)), "Healthy", id="observed ahead"),
        pytest.param(model(status(c.QUANTIZING, QUANTIZING)), "Progressing", id="quantizing"),
        pytest.param(
            model(status(c.QUANTIZING, cond(c.TYPE_PROGRESSING, c.TRUE, c.REASON_QUEUED))),
            "Progressing",
            id="queued for a Job slot",
        ),
        pytest.param(
            model(status(c.PENDING, ROLLING, cond(c.TYPE_READY, c.FALSE, c.REASON_ROLLING_OUT))),
            "Progressing",
            id="rolling out",
        ),
        pytest.param(
            model(status(c.QUANTIZING, QUANTIZING, FALLBACK)),
            "Progressing",
            id="new spec quantizing while the old model serves",
        ),
        pytest.param(model(status(c.PENDING)), "Progressing", id="pending, nothing served yet"),
        pytest.param(
            model(status(c.FAILED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_INVALID_SPEC, "bad spec"))),
            "Degraded",
            id="invalid spec",
        ),
        pytest.param(
            model(status(c.FAILED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_JOB_FAILED, "avx2: OOMKilled"))),
            "Degraded",
            id="every Job failed",
        ),
        pytest.param(
            model(status(c.BLOCKED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_GATE_FAILED, "drop 1.2 points"))),
            "Degraded",
            id="blocked by the gate",
        ),
        pytest.param(
            model(
                status(
                    c.QUANTIZING,
                    QUANTIZING,
                    cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_JOB_FAILED, "avx512_vnni: Job failed"),
                )
            ),
            "Degraded",
            id="one tier's Job failed while another quantizes",
        ),
        pytest.param(
            model(status(c.DEGRADED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_GATE_FAILED, "avx2: FP32"))),
            "Degraded",
            id="gate failed, serving FP32",
        ),
        pytest.param(
            model(
                status(c.DEGRADED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_NODES_MISSING, "no nodes of avx2"))
            ),
            "Degraded",
            id="a tier without nodes",
        ),
        pytest.param(model(status(c.DEGRADED, FALLBACK)), "Degraded", id="serving an older model"),
        pytest.param(
            model(
                status(
                    c.DEGRADED,
                    FALLBACK,
                    cond(c.TYPE_ROLLED_BACK, c.TRUE, c.REASON_CRASH_LOOP, "avx2: new pods crash-looped"),
                )
            ),
            "Degraded",
            id="rolled back",
        ),
        pytest.param(
            model(
                status(
                    c.READY,
                    READY,
                    cond(c.TYPE_ROLLED_BACK, c.TRUE, c.REASON_PROGRESS_DEADLINE, "avx2: deadline exceeded"),
                )
            ),
            "Degraded",
            id="rolled back wins over Ready",
        ),
        pytest.param(
            model(
                status(
                    c.DEGRADED,
                    cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_MAX_REPLICAS, "capacity short by 120.0 faces/s"),
                    cond(c.TYPE_CAPACITY_INSUFFICIENT, c.TRUE, c.REASON_MAX_REPLICAS),
                    cond(c.TYPE_READY, c.FALSE, c.REASON_TARGET_INCOMPLETE),
                )
            ),
            "Healthy",
            id="capacity short only",
        ),
    ],
)
def test_health(obj: dict[str, Any], expected: str) -> None:
    found, message = health(obj)
    assert found == expected, message
    assert message


def test_messages_say_why() -> None:
    assert health(model(None))[1] == "Waiting for the operator to report a status"
    assert "generation 3" in health(model(status(c.READY, READY, observed=2)))[1]
    assert health(model(status(c.READY, READY)))[1] == "3 target(s) serving INT8 models"
    assert "Job arcface-r100-avx2" in health(model(status(c.QUANTIZING, QUANTIZING)))[1]
    blocked = model(status(c.BLOCKED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_GATE_FAILED, "drop 1.2 points")))
    assert health(blocked)[1] == "Blocked: drop 1.2 points"
    short = status(
        c.DEGRADED, cond(c.TYPE_DEGRADED, c.TRUE, c.REASON_MAX_REPLICAS, "capacity short by 1.0 faces/s")
    )
    assert "capacity short" in health(model(short))[1]


def test_the_statuses_use_the_operator_vocabulary() -> None:
    # The script names phases, condition types and reasons the operator writes: a renamed one
    # would silently change the health Argo CD shows.
    script = SCRIPT.read_text()
    for phase in (c.FAILED, c.BLOCKED):
        assert f'"{phase}"' in script and phase in c.PHASES
    for type_ in (c.TYPE_READY, c.TYPE_PROGRESSING, c.TYPE_DEGRADED, c.TYPE_ROLLED_BACK):
        assert f'"{type_}"' in script and type_ in c.CONDITION_TYPES
    for reason in (c.REASON_JOB_FAILED, c.REASON_GATE_FAILED, c.REASON_INVALID_SPEC, c.REASON_MAX_REPLICAS):
        assert f'"{reason}"' in script


def test_argocd_cm_embeds_the_script() -> None:
    (config,) = [doc for doc in yaml.safe_load_all((ARGOCD / "argocd-cm.yaml").read_text()) if doc]
    assert (config["apiVersion"], config["kind"]) == ("v1", "ConfigMap")
    assert (config["metadata"]["name"], config["metadata"]["namespace"]) == ("argocd-cm", "argocd")
    assert config["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd"
    assert config["data"][KEY] == SCRIPT.read_text()
