"""The typed status reads whatever a status holds (older operators, hand edits) without raising."""

from __future__ import annotations

from qfleet.fleet.status import (
    ModelStatus,
    ResultRecord,
    parse_status,
    result_to_dict,
    status_to_dict,
)


def test_anything_that_is_no_status_reads_as_an_empty_one() -> None:
    for garbage in (None, "Ready", [], {"variants": "avx2", "conditions": [3, {"status": "True"}]}):
        assert parse_status(garbage) == ModelStatus()
    assert status_to_dict(ModelStatus()) == {}


def test_wrong_types_take_neutral_values() -> None:
    status = parse_status(
        {
            "phase": "Ready",
            "variants": [
                {
                    "isa": "avx2",
                    "replicas": "3",
                    "served": {"artifact": "pvc://models/a/model.xml", "fpsPerReplica": "fast"},
                    "result": {"succeeded": True, "gate": "passed", "bf16Gate": {"passed": True}},
                },
                "avx2",
            ],
        }
    )
    (variant,) = status.variants
    assert variant.replicas is None and variant.served is not None
    assert variant.served.fps_per_replica == 0.0
    assert variant.result is not None and not variant.result.gate.passed
    assert variant.result.bf16 is None  # no bf16Artifact: no BF16 model


def test_a_result_of_an_older_pipeline_writes_no_bf16_fields() -> None:
    written = result_to_dict(ResultRecord("key", "job", True, "t1", artifact="pvc://m/int8/model.xml"))
    assert not {"bf16Artifact", "bf16Gate", "runtimeIsa", "inferencePrecision", "speedup", "seconds"} & set(
        written
    )
    assert parse_status({"variants": [{"isa": "avx2", "result": written}]}).variants[
        0
    ].result == ResultRecord("key", "job", True, "t1", artifact="pvc://m/int8/model.xml")


def test_a_failed_result_keeps_why() -> None:
    written = {"pipelineKey": "k", "job": "j", "succeeded": False, "finishedAt": "t1",
               "error": {"reason": "BackoffLimitExceeded", "message": "boom", "stage": "convert", "exitCode": 1}}  # fmt: skip
    record = parse_status({"variants": [{"isa": "avx2", "result": written}]}).variants[0].result
    assert record is not None and record.error is not None and record.error.exit_code == 1
    assert result_to_dict(record) == written
