"""A QuantizedModel's spec, checked and with defaults applied.

The CRD's schema already rejects most mistakes and applies defaults on a real API server; the
operator checks again (it must not crash on what a schema-less server or an older CRD lets
through) and applies the same defaults, which a unit test compares with the CRD's. Every
problem is reported with the field's path and what to write instead.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from qfleet import defaults
from qfleet.fleet.pods import KnobError, PodKnobs, parse_names_map, parse_pod_knobs
from qfleet.fleet.uris import (
    ArtifactUri,
    HttpUri,
    InputUri,
    PvcUri,
    UriError,
    claims_of,
    parse_artifact_uri,
    parse_input_uri,
)
from qfleet.isa import TIER_NAMES, has_native_bf16
from qfleet.serving.settings import DEFAULT_BATCH_TIMEOUT_S

FORMATS = defaults.SOURCE_FORMATS
PRESETS = defaults.PRESETS
PLACEMENTS = ("fill", "spread")
#: What a tier serves when its new INT8 model fails the gate: ``keep`` the last model that
#: passed, the new ``fp32`` model (computed in f32), or the new ``bf16`` model when it passed the
#: same gate (only on tiers with native bf16; see :func:`parse_spec`).
GATE_FAILURE_POLICIES = ("keep", "fp32", "bf16")
#: The tiers ``onGateFailure: bf16`` may target (the CRD's validation rule lists the same).
BF16_TIERS = tuple(name for name in TIER_NAMES if has_native_bf16(name))
#: The types of the model's Service.
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
#: ``allTiers``: a new pipeline's models go live together, once every tier has its result;
#: ``perTier``: each tier switches as soon as its own result is in.
CONSISTENCY_MODES = ("allTiers", "perTier")
#: The largest ``serving.batching.maxBatch``: past 16 faces a batch's activations leave the caches
#: and FPS falls (benchmarks/RESULTS.md, "Batch size"), while every face waits for the whole batch.
MAX_BATCH = 64
#: S3 addressing styles (``QFLEET_S3_ADDRESSING``): on-prem stores usually need ``path``.
ADDRESSING_STYLES = ("path", "virtual")
# Secret and ConfigMap names are DNS subdomains; a ConfigMap key is a file name.
_OBJECT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: The defaults the CRD's schema declares (tests/unit/deploy/test_crd_schema.py checks they agree); those
#: the command line shares come from :mod:`qfleet.defaults`.
DEFAULTS: dict[str, Any] = {
    "quantization.preset": defaults.PRESET,
    "quantization.subsetSize": defaults.SUBSET_SIZE,
    "quantization.accuracyControl.enabled": False,
    "quantization.accuracyControl.maxIterations": defaults.ACCURACY_CONTROL_MAX_ITERATIONS,
    "quantization.accuracyControl.timeoutSeconds": defaults.ACCURACY_CONTROL_TIMEOUT_S,
    "validation.maxDrop": defaults.MAX_DROP,
    "serving.minReplicas": 1,
    "serving.maxReplicas": 64,
    "serving.service.type": "ClusterIP",
    # 1: every face its own inference, as before batching existed (see the README's "Dynamic
    # batching" for why the default stays there).
    "serving.batching.maxBatch": 1,
    "serving.batching.timeoutMs": DEFAULT_BATCH_TIMEOUT_S * 1000,
    "demand.cameras": 0,
    "demand.cameraFps": 6,
    "demand.facesPerFrame": 1,
    "demand.targetUtilization": 0.8,
    "demand.placement": "fill",
    "demand.pendingGraceSeconds": 300,
    "rollout.onGateFailure": "keep",
    "rollout.consistency": "allTiers",
    "storage.caBundle.key": "ca.crt",
    "storage.allowHttp": False,
}


class SpecError(ValueError):
    """The spec cannot be acted on; the message names the field and what to do."""


@dataclass(frozen=True)
class ConfigMapKey:
    name: str
    key: str


@dataclass(frozen=True)
class StorageSpec:
    """How the pods reach object storage: credentials only by reference, settings as values.

    The operator never reads the Secret: the pods it builds name it in ``envFrom``, so its keys
    become the standard variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``). Without a Secret the pods use what their ServiceAccount or node gives
    them (IRSA, workload identity, an instance profile).
    """

    secret_name: str | None = None
    endpoint: str | None = None
    region: str | None = None
    ca_bundle: ConfigMapKey | None = None
    addressing: str | None = None
    #: Plain ``http://`` inputs are accepted (each must pin its sha256).
    allow_http: bool = DEFAULTS["storage.allowHttp"]


@dataclass(frozen=True)
class AccuracyControl:
    """Quantization that returns the operations costing accuracy to float until the drop is
    within ``validation.maxDrop``, within a budget of validations and seconds."""

    enabled: bool = DEFAULTS["quantization.accuracyControl.enabled"]
    max_iterations: int = DEFAULTS["quantization.accuracyControl.maxIterations"]
    timeout_s: float = DEFAULTS["quantization.accuracyControl.timeoutSeconds"]


@dataclass(frozen=True)
class Target:
    isa: str
    node_selector: Mapping[str, str] = field(default_factory=dict)
    #: Tolerations, pull secrets, priority, spread, labels, ServiceAccount of the tier's pods
    #: (over the operator's ``pod_defaults``; see :func:`qfleet.fleet.pods.merged`).
    pod: PodKnobs = field(default_factory=PodKnobs)


@dataclass(frozen=True)
class ModelSpec:
    source_format: str
    source: InputUri
    epoch: int | None
    preset: str
    subset_size: int
    calibration: InputUri
    lfw: InputUri
    max_drop: float
    min_accuracy: float | None
    targets: tuple[Target, ...]
    serving_image: str | None
    serving_threads: int | None
    resources: Mapping[str, Mapping[str, str]]
    min_replicas: int
    max_replicas: int
    cameras: int
    camera_fps: float
    faces_per_frame: float
    target_utilization: float
    placement: str
    artifacts: ArtifactUri
    on_gate_failure: str
    service_type: str = DEFAULTS["serving.service.type"]
    service_annotations: Mapping[str, str] = field(default_factory=dict)
    #: How long replicas may stay Pending (unschedulable) before their tier counts as short.
    pending_grace_seconds: int = DEFAULTS["demand.pendingGraceSeconds"]
    consistency: str = DEFAULTS["rollout.consistency"]
    storage: StorageSpec = field(default_factory=StorageSpec)
    accuracy_control: AccuracyControl = field(default_factory=lambda: AccuracyControl())
    #: sha256 pins of ``https://`` inputs: source, calibration, lfw (None: not pinned).
    source_sha256: str | None = None
    calibration_sha256: str | None = None
    lfw_sha256: str | None = None
    #: Faces per inference the servers merge concurrent requests into (``qfleet serve
    #: --max-batch``); the Job benchmarks INT8 at it and the plan uses that FPS.
    max_batch: int = DEFAULTS["serving.batching.maxBatch"]
    #: The longest a face waits for its batch to fill (``--batch-timeout-ms``).
    batch_timeout_ms: float = DEFAULTS["serving.batching.timeoutMs"]

    @property
    def tiers(self) -> tuple[str, ...]:
        return tuple(target.isa for target in self.targets)

    def target(self, isa: str) -> Target:
        for candidate in self.targets:
            if candidate.isa == isa:
                return candidate
        raise KeyError(isa)

    @property
    def uris(self) -> tuple[InputUri, ...]:
        """Every URI a quantization Job reads or writes."""
        return (self.source, self.calibration, self.lfw, self.artifacts)

    @property
    def claims(self) -> tuple[PvcUri, ...]:
        """The ``pvc://`` URIs among :attr:`uris` (what the Job mounts)."""
        return tuple(claims_of(self.uris))

    @property
    def uses_object_storage(self) -> bool:
        """Whether a pod of this model reads or writes anything but claims."""
        return not all(isinstance(uri, PvcUri) for uri in self.uris)


def parse_spec(spec: Mapping[str, Any] | None) -> ModelSpec:
    """Check ``spec`` and apply defaults; raises :class:`SpecError` naming the bad field."""
    if not isinstance(spec, Mapping):
        raise SpecError("spec is missing; see crds/samples/ for a complete QuantizedModel")
    source = _section(spec, "source", required=True)
    quantization = _section(spec, "quantization", required=True)
    validation = _section(spec, "validation", required=True)
    serving = _section(spec, "serving")
    demand = _section(spec, "demand")
    rollout = _section(spec, "rollout")
    artifacts = _section(spec, "artifacts", required=True)

    # Checked in this order, so that a spec with several mistakes names the same one first.
    min_replicas, max_replicas = _replicas(serving)
    epoch = _epoch(source)
    source_format = _choice(source, "source.format", FORMATS, required=True)
    min_accuracy = _min_accuracy(validation)
    threads = _threads(serving)
    image = _image(serving)
    targets = _targets(spec.get("targets"))
    on_gate_failure = _choice(rollout, "rollout.onGateFailure", GATE_FAILURE_POLICIES)
    if on_gate_failure == "bf16":
        _check_bf16_targets(targets)
    service = _section(serving, "service", where="spec.serving")
    batching = _section(serving, "batching", where="spec.serving")
    max_batch = _integer(batching, "serving.batching.maxBatch", minimum=1, maximum=MAX_BATCH)
    batch_timeout_ms = _non_negative(batching, "serving.batching.timeoutMs")
    storage = _storage(_section(spec, "storage"))
    inputs = _Inputs(storage.allow_http)
    source_uri = inputs.uri(source, "uri", "spec.source", sha256="sha256")
    if isinstance(source_uri, HttpUri) and source_format != "onnx":
        raise SpecError(
            f"spec.source.uri {str(source_uri)!r}: an https source must be one .onnx file; put "
            f"{source_format} models (several files) on s3:// or a PersistentVolumeClaim"
        )

    return ModelSpec(
        source_format=source_format,
        source=source_uri,
        epoch=epoch,
        preset=_choice(quantization, "quantization.preset", PRESETS),
        subset_size=_integer(quantization, "quantization.subsetSize", minimum=1),
        calibration=inputs.uri(quantization, "calibration", "spec.quantization", sha256="calibrationSha256"),
        lfw=inputs.uri(validation, "lfw", "spec.validation", sha256="lfwSha256"),
        max_drop=_fraction(validation, "validation.maxDrop"),
        min_accuracy=min_accuracy,
        targets=targets,
        serving_image=image,
        serving_threads=threads,
        resources=_resources(serving.get("resources")),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cameras=_integer(demand, "demand.cameras", minimum=0),
        camera_fps=_positive(demand, "demand.cameraFps"),
        faces_per_frame=_positive(demand, "demand.facesPerFrame"),
        target_utilization=_utilization(demand),
        placement=_choice(demand, "demand.placement", PLACEMENTS),
        artifacts=_artifacts_uri(artifacts.get("uri")),
        on_gate_failure=on_gate_failure,
        service_type=_choice(service, "serving.service.type", SERVICE_TYPES),
        service_annotations=_annotations(service.get("annotations"), "spec.serving.service.annotations"),
        pending_grace_seconds=_integer(demand, "demand.pendingGraceSeconds", minimum=0),
        consistency=_choice(rollout, "rollout.consistency", CONSISTENCY_MODES),
        storage=storage,
        accuracy_control=_accuracy_control(
            _section(quantization, "accuracyControl", where="spec.quantization")
        ),
        source_sha256=inputs.pins.get("spec.source.sha256"),
        calibration_sha256=inputs.pins.get("spec.quantization.calibrationSha256"),
        lfw_sha256=inputs.pins.get("spec.validation.lfwSha256"),
        max_batch=max_batch,
        batch_timeout_ms=batch_timeout_ms,
    )


class _Inputs:
    """Parses the input URIs and their sha256 pins (a pin belongs to an https:// input)."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http
        self.pins: dict[str, str] = {}

    def uri(self, section: Mapping[str, Any], key: str, where: str, *, sha256: str) -> InputUri:
        path = f"{where}.{key}"
        try:
            uri = parse_input_uri(section.get(key), field=path, allow_http=self.allow_http)
        except UriError as exc:
            raise SpecError(str(exc)) from None
        pin = section.get(sha256)
        pin_path = f"{where}.{sha256}"
        if pin is not None:
            if not isinstance(uri, HttpUri):
                raise SpecError(
                    f"{pin_path} pins an https:// download; {path} is {uri}, which is read as it is "
                    f"(remove {sha256})"
                )
            if not isinstance(pin, str) or not _SHA256.match(pin.strip().lower()):
                raise SpecError(f"{pin_path} must be 64 hexadecimal digits (sha256sum's output), got {pin!r}")
            self.pins[pin_path] = pin.strip().lower()
        elif isinstance(uri, HttpUri) and uri.url.lower().startswith("http://"):
            raise SpecError(f"{path} {str(uri)!r} is plain http: pin its content with {pin_path}")
        return uri


def _accuracy_control(section: Mapping[str, Any]) -> AccuracyControl:
    enabled = _value(section, "quantization.accuracyControl.enabled")
    if not isinstance(enabled, bool):
        raise SpecError(f"spec.quantization.accuracyControl.enabled must be true or false, got {enabled!r}")
    timeout = _positive(section, "quantization.accuracyControl.timeoutSeconds")
    return AccuracyControl(
        enabled=enabled,
        max_iterations=_integer(section, "quantization.accuracyControl.maxIterations", minimum=1),
        timeout_s=timeout,
    )


def _artifacts_uri(value: object) -> ArtifactUri:
    try:
        return parse_artifact_uri(value, field="spec.artifacts.uri")
    except UriError as exc:
        raise SpecError(str(exc)) from None


def _storage(storage: Mapping[str, Any]) -> StorageSpec:
    secret = _section(storage, "secretRef", where="spec.storage")
    ca_bundle = _section(storage, "caBundle", where="spec.storage")
    secret_name = _object_name(secret.get("name"), "spec.storage.secretRef.name") if secret else None
    ca = None
    if ca_bundle:
        key = ca_bundle.get("key", DEFAULTS["storage.caBundle.key"])
        if not isinstance(key, str) or not _CONFIG_KEY.match(key):
            raise SpecError(f"spec.storage.caBundle.key must be a ConfigMap key such as ca.crt, got {key!r}")
        ca = ConfigMapKey(_object_name(ca_bundle.get("name"), "spec.storage.caBundle.name"), key)
    addressing = storage.get("addressing")
    if addressing is not None and addressing not in ADDRESSING_STYLES:
        raise SpecError(
            f"spec.storage.addressing must be one of {', '.join(ADDRESSING_STYLES)}, got {addressing!r}"
        )
    allow_http = storage.get("allowHttp", DEFAULTS["storage.allowHttp"])
    if not isinstance(allow_http, bool):
        raise SpecError(f"spec.storage.allowHttp must be true or false, got {allow_http!r}")
    return StorageSpec(
        secret_name=secret_name,
        endpoint=_endpoint(storage.get("endpoint")),
        region=_plain_string(storage.get("region"), "spec.storage.region"),
        ca_bundle=ca,
        addressing=addressing,
        allow_http=allow_http,
    )


def _object_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _OBJECT_NAME.match(value):
        raise SpecError(
            f"{path} must name an object in the model's namespace (a DNS subdomain), got {value!r}"
        )
    return value


def _endpoint(value: object) -> str | None:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise SpecError(
            f"spec.storage.endpoint must be the store's URL, such as https://minio.storage:9000, got {value!r}"
        )
    return str(value).rstrip("/")


def _plain_string(value: object, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or any(ch.isspace() for ch in value.strip()):
        raise SpecError(f"{path} must be a name without spaces, got {value!r}")
    return value.strip()


def _replicas(serving: Mapping[str, Any]) -> tuple[int, int]:
    min_replicas = _integer(serving, "serving.minReplicas", minimum=0)
    max_replicas = _integer(serving, "serving.maxReplicas", minimum=1)
    if max_replicas < min_replicas:
        raise SpecError(
            f"serving.maxReplicas ({max_replicas}) is below serving.minReplicas ({min_replicas}); "
            "raise maxReplicas or lower minReplicas"
        )
    return min_replicas, max_replicas


def _epoch(source: Mapping[str, Any]) -> int | None:
    epoch = source.get("epoch")
    if epoch is not None and (not _is_int(epoch) or epoch < 0):
        raise SpecError(f"spec.source.epoch must be an integer >= 0, got {epoch!r}")
    return int(epoch) if epoch is not None else None


def _min_accuracy(validation: Mapping[str, Any]) -> float | None:
    if validation.get("minAccuracy") is None:
        return None
    return _fraction(validation, "validation.minAccuracy")


def _threads(serving: Mapping[str, Any]) -> int | None:
    threads = serving.get("threads")
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise SpecError(f"spec.serving.threads must be an integer >= 1, got {threads!r}")
    return int(threads) if threads is not None else None


def _image(serving: Mapping[str, Any]) -> str | None:
    image = serving.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise SpecError(f"spec.serving.image must be an image reference, got {image!r}")
    return image.strip() if isinstance(image, str) else None


def _check_bf16_targets(targets: tuple[Target, ...]) -> None:
    """``onGateFailure: bf16`` is refused for the whole spec when a target cannot compute bf16.

    A BF16 model exists only where the CPU computes bf16 natively; on other tiers the policy
    could only mean ``keep``, so one spec would promise different things per tier. The user
    chooses instead: another policy, or the bf16 tiers in a QuantizedModel of their own.
    """
    without = [target.isa for target in targets if not has_native_bf16(target.isa)]
    if without:
        raise SpecError(
            f"spec.rollout.onGateFailure bf16 needs native bf16 on every target, but "
            f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} none (tiers with native "
            f"bf16: {', '.join(BF16_TIERS)}); use keep or fp32, or put the bf16 tiers in a "
            "QuantizedModel of their own"
        )


def _section(
    spec: Mapping[str, Any], name: str, *, required: bool = False, where: str = "spec"
) -> Mapping[str, Any]:
    value = spec.get(name)
    if value is None:
        if required:
            raise SpecError(f"{where}.{name} is required; see crds/samples/ for an example")
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{where}.{name} must be an object, got {type(value).__name__}")
    return value


def _annotations(value: object, path: str) -> dict[str, str]:
    try:
        return parse_names_map(value, path, label_values=False)
    except KnobError as exc:
        raise SpecError(str(exc)) from None


def _string_map(value: object, path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(key, str) and isinstance(val, str) for key, val in value.items()
    ):
        raise SpecError(f"{path} must map label names to string values")
    return dict(value)


def _value(section: Mapping[str, Any], path: str) -> Any:
    key = path.rsplit(".", 1)[-1]
    value = section.get(key)
    return DEFAULTS.get(path) if value is None else value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(section: Mapping[str, Any], path: str, *, minimum: int, maximum: int | None = None) -> int:
    value = _value(section, path)
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise SpecError(f"spec.{path} must be an integer {bounds}, got {value!r}")
    return int(value)


def _non_negative(section: Mapping[str, Any], path: str) -> float:
    value = _value(section, path)
    if not _is_number(value) or value < 0:
        raise SpecError(f"spec.{path} must be a number >= 0, got {value!r}")
    return float(value)


def _positive(section: Mapping[str, Any], path: str) -> float:
    value = _value(section, path)
    if not _is_number(value) or value <= 0:
        raise SpecError(f"spec.{path} must be a number > 0, got {value!r}")
    return float(value)


def _fraction(section: Mapping[str, Any], path: str) -> float:
    value = _value(section, path)
    if not _is_number(value) or not 0 <= value <= 1:
        raise SpecError(f"spec.{path} must be a fraction in [0, 1] (0.001 = 0.1 points), got {value!r}")
    return float(value)


def _utilization(section: Mapping[str, Any]) -> float:
    value = _value(section, "demand.targetUtilization")
    if not _is_number(value) or not 0 < value <= 1:
        raise SpecError(f"spec.demand.targetUtilization must be in (0, 1], got {value!r}")
    return float(value)


def _choice(
    section: Mapping[str, Any], path: str, choices: tuple[str, ...], *, required: bool = False
) -> str:
    value = section.get(path.rsplit(".", 1)[-1])
    if value is None:
        if required:
            raise SpecError(f"spec.{path} is required; one of {', '.join(choices)}")
        value = DEFAULTS[path]
    if value not in choices:
        raise SpecError(f"spec.{path} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _targets(value: object) -> tuple[Target, ...]:
    if not isinstance(value, list) or not value:
        raise SpecError(f"spec.targets must list at least one ISA tier ({', '.join(TIER_NAMES)})")
    targets: list[Target] = []
    for index, item in enumerate(value):
        where = f"spec.targets[{index}]"
        if not isinstance(item, Mapping):
            raise SpecError(f"{where} must be an object with an 'isa' field")
        isa = item.get("isa")
        if isa not in TIER_NAMES:
            raise SpecError(f"{where}.isa must be one of {', '.join(TIER_NAMES)}, got {isa!r}")
        if any(target.isa == isa for target in targets):
            raise SpecError(f"{where}.isa {isa!r} is listed twice; list each tier once")
        selector = _string_map(item.get("nodeSelector"), f"{where}.nodeSelector")
        try:
            pod = parse_pod_knobs(item, where)
        except KnobError as exc:
            raise SpecError(str(exc)) from None
        targets.append(Target(isa=str(isa), node_selector=selector, pod=pod))
    return tuple(targets)


def _resources(value: object) -> dict[str, dict[str, str]]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError("spec.serving.resources must be an object with requests and limits")
    result: dict[str, dict[str, str]] = {}
    for kind in ("requests", "limits"):
        section = value.get(kind) or {}
        if not isinstance(section, Mapping):
            raise SpecError(f"spec.serving.resources.{kind} must map resource names to quantities")
        for name, quantity in section.items():
            if not isinstance(quantity, str | int) or isinstance(quantity, bool):
                raise SpecError(f"spec.serving.resources.{kind}.{name} must be a quantity, got {quantity!r}")
        result[kind] = {str(name): str(quantity) for name, quantity in section.items()}
    return result
