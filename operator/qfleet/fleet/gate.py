"""The accuracy gate: may an INT8 model replace its FP32 source?

``drop = fp32 accuracy - int8 accuracy``, both measured with the LFW protocol on the same pairs on
the same ISA tier. The INT8 model passes when ``drop <= max_drop`` (a drop exactly equal to the
limit passes; a negative drop, INT8 better than FP32, always satisfies it) and, when
``min_accuracy`` is set, its accuracy is at least ``min_accuracy``.

When both checks fail, the reason is :data:`BELOW_MINIMUM_ACCURACY`: an INT8 model under the
absolute floor may not serve no matter how it compares with FP32, and raising ``maxDrop`` would
not fix it. The message and :attr:`GateDecision.failures` still name every failed check.

Accuracies are compared after rounding to 1e-9, so ``0.9968 - 0.9958`` (0.0010000000000000009
in binary floating point) counts as a drop of exactly 0.001.

Pure: no Kubernetes, no OpenVINO. The reasons are stable identifiers the operator puts into the
``AccuracyGate`` condition.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PASSED = "Passed"
ACCURACY_DROP_EXCEEDED = "AccuracyDropExceeded"
BELOW_MINIMUM_ACCURACY = "BelowMinimumAccuracy"
REASONS: tuple[str, ...] = (PASSED, ACCURACY_DROP_EXCEEDED, BELOW_MINIMUM_ACCURACY)

#: Comparisons ignore differences below this many decimal places (binary float noise).
PRECISION_DIGITS = 9

#: Result keys that must agree for two validation results to be comparable.
COMPARABLE_KEYS: tuple[str, ...] = ("pairs", "dataset_sha256", "flip", "isa", "folds")

Measurement = float | Mapping[str, Any]


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    #: fp32 - int8 accuracy (negative when INT8 is better), rounded to 1e-9.
    drop: float
    #: :data:`PASSED`, :data:`ACCURACY_DROP_EXCEEDED` or :data:`BELOW_MINIMUM_ACCURACY`.
    reason: str
    #: One sentence for people (the condition's message).
    message: str
    fp32_accuracy: float
    int8_accuracy: float
    max_drop: float
    min_accuracy: float | None
    #: Every failed check, in the order of precedence (empty when passed).
    failures: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "drop": self.drop,
            "reason": self.reason,
            "message": self.message,
            "fp32_accuracy": self.fp32_accuracy,
            "int8_accuracy": self.int8_accuracy,
            "max_drop": self.max_drop,
            "min_accuracy": self.min_accuracy,
            "failures": list(self.failures),
        }


def _accuracy(measurement: Measurement, which: str) -> float:
    if isinstance(measurement, Mapping):
        if "accuracy" not in measurement:
            raise ValueError(f"the {which} result has no 'accuracy'")
        value = measurement["accuracy"]
    else:
        value = measurement
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"the {which} accuracy must be a number, got {value!r}")
    accuracy = float(value)
    if not (math.isfinite(accuracy) and 0.0 <= accuracy <= 1.0):
        raise ValueError(f"the {which} accuracy must be within [0, 1], got {value!r}")
    return accuracy


def check_comparable(fp32: Mapping[str, Any], int8: Mapping[str, Any]) -> None:
    """Refuse to compare results measured on different pairs, ISA tiers or protocol settings.

    The baseline must be FP32 computed in f32: on CPUs with native bf16 OpenVINO computes an FP32
    model in bf16 unless told otherwise, and a gate against that baseline measures nothing.
    """
    baseline = fp32.get("inference_precision")
    if baseline is not None and baseline != "f32":
        raise ValueError(
            f"the FP32 baseline was computed in {baseline}, not f32: validate it with precision fp32"
        )
    for key in COMPARABLE_KEYS:
        if key in fp32 and key in int8 and fp32[key] != int8[key]:
            raise ValueError(
                f"the FP32 and INT8 results differ in {key!r} ({fp32[key]!r} vs {int8[key]!r}): "
                "validate both models on the same pairs, with the same settings, on the same ISA tier"
            )


def _percent(value: float) -> str:
    return f"{value * 100:.4g}%"


def gate(
    fp32: Measurement,
    int8: Measurement,
    *,
    max_drop: float,
    min_accuracy: float | None = None,
    candidate: str = "INT8",
) -> GateDecision:
    """Decide whether the INT8 model may roll out; ``fp32``/``int8`` are accuracies or results.

    ``candidate`` names the model compared with FP32 in the messages (``BF16`` for the bf16
    variant, gated the same way).
    """
    if isinstance(fp32, Mapping) and isinstance(int8, Mapping):
        check_comparable(fp32, int8)
    fp32_accuracy = _accuracy(fp32, "FP32")
    int8_accuracy = _accuracy(int8, candidate)
    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise ValueError(f"max drop must be a finite number >= 0, got {max_drop!r}")
    if min_accuracy is not None and not (math.isfinite(min_accuracy) and 0 <= min_accuracy <= 1):
        raise ValueError(f"minimum accuracy must be within [0, 1], got {min_accuracy!r}")

    drop = round(fp32_accuracy - int8_accuracy, PRECISION_DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0
    problems: list[tuple[str, str]] = []
    if min_accuracy is not None and round(int8_accuracy, PRECISION_DIGITS) < round(
        min_accuracy, PRECISION_DIGITS
    ):
        problems.append(
            (
                BELOW_MINIMUM_ACCURACY,
                f"{candidate} accuracy {_percent(int8_accuracy)} is below the minimum {_percent(min_accuracy)}",
            )
        )
    if drop > round(max_drop, PRECISION_DIGITS):
        problems.append(
            (
                ACCURACY_DROP_EXCEEDED,
                f"{candidate} accuracy {_percent(int8_accuracy)} is {_percent(drop)} below FP32 "
                f"{_percent(fp32_accuracy)}, more than the allowed {_percent(max_drop)}",
            )
        )
    if problems:
        reason = problems[0][0]
        message = "; ".join(text for _, text in problems)
    else:
        reason = PASSED
        message = (
            f"{candidate} accuracy {_percent(int8_accuracy)} vs FP32 {_percent(fp32_accuracy)}: "
            f"drop {_percent(drop)} within the allowed {_percent(max_drop)}"
        )
        if min_accuracy is not None:
            message += f", at least the minimum {_percent(min_accuracy)}"
    return GateDecision(
        passed=not problems,
        drop=drop,
        reason=reason,
        message=message,
        fp32_accuracy=fp32_accuracy,
        int8_accuracy=int8_accuracy,
        max_drop=max_drop,
        min_accuracy=min_accuracy,
        failures=tuple(code for code, _ in problems),
    )
