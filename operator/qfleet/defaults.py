"""One definition of every default and every fixed choice that more than one layer needs.

The command line (``qfleet pipeline``, ``quantize``, ``convert``), the operator's spec parser and
the CRD's schema must agree: a hand-run pipeline that gates looser than the operator's Job is a
bug users do not see. The CLI reads its defaults from here, the planner too, and a unit test
compares the CRD's ``default:`` values with these.

Pure: no OpenVINO, no Kubernetes.
"""

from __future__ import annotations

from typing import Final

#: Source model formats ``qfleet convert`` reads.
SOURCE_FORMATS: Final = ("mxnet", "onnx", "openvino")
#: NNCF quantization presets.
PRESETS: Final = ("performance", "mixed")
PRESET: Final = "performance"
#: Calibration samples NNCF uses.
SUBSET_SIZE: Final = 300
#: Largest allowed LFW accuracy drop (absolute, FP32 minus INT8): 0.1 point, as the CRD.
MAX_DROP: Final = 0.001
#: Seconds each benchmark of a hand-run ``qfleet pipeline`` or ``qfleet benchmark`` runs.
BENCHMARK_SECONDS: Final = 10.0
#: Kubernetes' default termination-message file (the pipeline writes its result there in a pod).
TERMINATION_LOG: Final = "/dev/termination-log"
#: Accuracy control's budget: candidate validations (each on a pair subset or on all pairs) and
#: seconds (ranking included). When either runs out, the best candidate so far is kept.
ACCURACY_CONTROL_MAX_ITERATIONS: Final = 20
ACCURACY_CONTROL_TIMEOUT_S: Final = 1800.0
