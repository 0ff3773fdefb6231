"""Scheduling and identity settings of the pods qfleet creates (its Jobs and serving replicas).

A cluster's own rules reach qfleet's pods through these knobs: tolerations of tainted CPU pools,
registry credentials, a PriorityClass, topology spread, labels and annotations that policy
engines or cost reports expect, a ServiceAccount (for workload identity). The operator has
defaults for all of them (chart value ``podDefaults``) and each target of a QuantizedModel may
set its own; :func:`merged` combines the two and :func:`apply_pod_knobs` writes the result into a
pod template.

A list or a name that is not given (``None``) leaves the default in force; an empty list given on
purpose is kept, so ``topologySpreadConstraints: []`` turns qfleet's default spreading off.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

#: The keys of a target (and of ``podDefaults``) that are pod knobs, with the field they fill.
KNOB_KEYS: dict[str, str] = {
    "tolerations": "tolerations",
    "imagePullSecrets": "image_pull_secrets",
    "priorityClassName": "priority_class_name",
    "topologySpreadConstraints": "topology_spread_constraints",
    "podLabels": "labels",
    "podAnnotations": "annotations",
    "serviceAccountName": "service_account_name",
}

TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")
TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
SPREAD_KEYS = (
    "maxSkew",
    "topologyKey",
    "whenUnsatisfiable",
    "labelSelector",
    "minDomains",
    "nodeAffinityPolicy",
    "nodeTaintsPolicy",
    "matchLabelKeys",
)
WHEN_UNSATISFIABLE = ("DoNotSchedule", "ScheduleAnyway")
#: Labels and annotations under this prefix are the operator's own (selectors, bookkeeping).
RESERVED_PREFIX = "qfleet.dev/"
HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?)")


class KnobError(ValueError):
    """A pod knob is malformed; the message names its path and what to write instead."""


@dataclass(frozen=True)
class PodKnobs:
    """Pod settings beyond what qfleet decides itself; ``None`` means "not given"."""

    tolerations: tuple[Mapping[str, Any], ...] | None = None
    #: Names of Secrets of type kubernetes.io/dockerconfigjson in the model's namespace.
    image_pull_secrets: tuple[str, ...] | None = None
    priority_class_name: str | None = None
    topology_spread_constraints: tuple[Mapping[str, Any], ...] | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    service_account_name: str | None = None


def parse_pod_knobs(mapping: Mapping[str, Any] | None, where: str) -> PodKnobs:
    """The knobs in ``mapping`` (other keys are ignored); raises :class:`KnobError` naming
    ``where.<key>`` for the first malformed one."""
    if mapping is None:
        return PodKnobs()
    if not isinstance(mapping, Mapping):
        raise KnobError(f"{where} must be an object, got {type(mapping).__name__}")
    return PodKnobs(
        tolerations=_optional_list(mapping, where, "tolerations", _toleration),
        image_pull_secrets=_optional_list(mapping, where, "imagePullSecrets", _pull_secret),
        priority_class_name=_name(mapping, where, "priorityClassName"),
        topology_spread_constraints=_optional_list(mapping, where, "topologySpreadConstraints", _spread),
        labels=parse_names_map(mapping.get("podLabels"), f"{where}.podLabels", label_values=True),
        annotations=parse_names_map(
            mapping.get("podAnnotations"), f"{where}.podAnnotations", label_values=False
        ),
        service_account_name=_name(mapping, where, "serviceAccountName"),
    )


def merged(defaults: PodKnobs, target: PodKnobs) -> PodKnobs:
    """``target`` over ``defaults``: a field the target gives wins whole, except labels and
    annotations, which are merged key by key (the target's value wins)."""
    values: dict[str, Any] = {}
    for knob in fields(PodKnobs):
        mine, theirs = getattr(target, knob.name), getattr(defaults, knob.name)
        if knob.name in ("labels", "annotations"):
            values[knob.name] = {**theirs, **mine}
        else:
            values[knob.name] = theirs if mine is None else mine
    return PodKnobs(**values)


def default_spread(selector: Mapping[str, str]) -> dict[str, Any]:
    """Replicas spread across hosts where possible (a soft rule: it never leaves a pod Pending)."""
    return {
        "maxSkew": 1,
        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": dict(selector)},
    }


def apply_pod_knobs(
    pod_template: dict[str, Any], knobs: PodKnobs, *, spread_selector: Mapping[str, str] | None
) -> None:
    """Write ``knobs`` into ``pod_template`` (``{"metadata": ..., "spec": ...}``) in place.

    Labels and annotations qfleet already set are kept: they select the pods and record what
    they serve. ``spread_selector`` selects the pods that should spread across hosts (a serving
    Deployment's replicas); without knobs' own constraints they get :func:`default_spread`, and
    a knobs' constraint that names no pods (no labelSelector, no matchLabelKeys) selects them.
    """
    metadata = pod_template.setdefault("metadata", {})
    for key, knob_values in (("labels", knobs.labels), ("annotations", knobs.annotations)):
        if knob_values:
            existing = metadata.setdefault(key, {})
            for name, value in knob_values.items():
                existing.setdefault(name, value)
    spec = pod_template.setdefault("spec", {})
    if knobs.tolerations:
        spec["tolerations"] = [copy.deepcopy(dict(item)) for item in knobs.tolerations]
    if knobs.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in knobs.image_pull_secrets]
    if knobs.priority_class_name:
        spec["priorityClassName"] = knobs.priority_class_name
    if knobs.service_account_name:
        # The pods still get no API token (automountServiceAccountToken stays False): the
        # account is for workload identity (image pulls, cloud storage), not for the API.
        spec["serviceAccountName"] = knobs.service_account_name
    constraints = _spread_constraints(knobs, spread_selector)
    if constraints:
        spec["topologySpreadConstraints"] = constraints


def _spread_constraints(knobs: PodKnobs, selector: Mapping[str, str] | None) -> list[dict[str, Any]]:
    if knobs.topology_spread_constraints is None:
        return [default_spread(selector)] if selector else []
    constraints = [copy.deepcopy(dict(item)) for item in knobs.topology_spread_constraints]
    if selector:
        for constraint in constraints:
            if "labelSelector" not in constraint and "matchLabelKeys" not in constraint:
                constraint["labelSelector"] = {"matchLabels": dict(selector)}
    return constraints


# --- parsing -----------------------------------------------------------------------------------


def _optional_list(
    mapping: Mapping[str, Any], where: str, key: str, item: Callable[[object, str], Any]
) -> tuple[Any, ...] | None:
    value = mapping.get(key)
    if value is None:
        return None
    path = f"{where}.{key}"
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise KnobError(f"{path} must be a list, got {type(value).__name__}")
    return tuple(item(entry, f"{path}[{index}]") for index, entry in enumerate(value))


def _object(value: object, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise KnobError(f"{path} must be an object, got {type(value).__name__}")
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise KnobError(f"{path} has unknown field(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    return value


def _text(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise KnobError(f"{path} must be a string, got {value!r}")
    return value


def _toleration(value: object, path: str) -> dict[str, Any]:
    """A Kubernetes Toleration, checked as the API server checks it."""
    toleration = dict(_object(value, path, TOLERATION_KEYS))
    key = _text(toleration.get("key", ""), f"{path}.key")
    operator = toleration.get("operator", "Equal")
    if operator not in TOLERATION_OPERATORS:
        raise KnobError(f"{path}.operator must be Exists or Equal, got {operator!r}")
    tolerated = _text(toleration.get("value", ""), f"{path}.value")
    if operator == "Exists" and tolerated:
        raise KnobError(f"{path}.value must be empty with operator Exists (it matches every value)")
    if not key and operator != "Exists":
        raise KnobError(f"{path}: an empty key needs operator Exists (to tolerate every taint)")
    effect = toleration.get("effect", "")
    if effect not in TAINT_EFFECTS:
        raise KnobError(
            f"{path}.effect must be one of NoSchedule, PreferNoSchedule, NoExecute, got {effect!r}"
        )
    seconds = toleration.get("tolerationSeconds")
    if seconds is not None:
        if not isinstance(seconds, int) or isinstance(seconds, bool):
            raise KnobError(f"{path}.tolerationSeconds must be an integer, got {seconds!r}")
        if effect != "NoExecute":
            raise KnobError(f"{path}.tolerationSeconds needs effect NoExecute")
    return toleration


def _pull_secret(value: object, path: str) -> str:
    secret = _object(value, path, ("name",))
    name = secret.get("name")
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.fullmatch(name):
        raise KnobError(f"{path}.name must name a Secret (a DNS subdomain), got {name!r}")
    return name


def _spread(value: object, path: str) -> dict[str, Any]:
    """A Kubernetes TopologySpreadConstraint (its required fields checked; the rest passed on)."""
    constraint = dict(_object(value, path, SPREAD_KEYS))
    skew = constraint.get("maxSkew")
    if not isinstance(skew, int) or isinstance(skew, bool) or skew < 1:
        raise KnobError(f"{path}.maxSkew must be an integer >= 1, got {skew!r}")
    topology_key = constraint.get("topologyKey")
    if not isinstance(topology_key, str) or not topology_key:
        raise KnobError(f"{path}.topologyKey must be a node label name such as {HOSTNAME_TOPOLOGY_KEY}")
    when = constraint.get("whenUnsatisfiable")
    if when not in WHEN_UNSATISFIABLE:
        raise KnobError(
            f"{path}.whenUnsatisfiable must be one of {', '.join(WHEN_UNSATISFIABLE)}, got {when!r}"
        )
    selector = constraint.get("labelSelector")
    if selector is not None and not isinstance(selector, Mapping):
        raise KnobError(f"{path}.labelSelector must be a label selector object")
    return constraint


def _name(mapping: Mapping[str, Any], where: str, key: str) -> str | None:
    value = mapping.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _DNS_SUBDOMAIN.fullmatch(value):
        raise KnobError(f"{where}.{key} must be a lower-case DNS name, got {value!r}")
    return value


def parse_names_map(value: object, path: str, *, label_values: bool) -> dict[str, str]:
    """Labels (``label_values``) or annotations at ``path``: valid keys, none under the
    operator's own ``qfleet.dev/`` prefix, string values; raises :class:`KnobError`."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise KnobError(f"{path} must map names to string values, got {type(value).__name__}")
    result: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _valid_key(name):
            raise KnobError(f"{path}: {name!r} is not a valid name (optional DNS prefix/, then <= 63 chars)")
        if name.startswith(RESERVED_PREFIX):
            raise KnobError(f"{path}.{name}: names under {RESERVED_PREFIX} are the operator's own")
        if not isinstance(text, str):
            raise KnobError(f"{path}.{name} must be a string, got {text!r}")
        if label_values and not _LABEL_VALUE.fullmatch(text):
            raise KnobError(
                f"{path}.{name}: {text!r} is not a valid label value (<= 63 letters, digits, -_.)"
            )
        result[name] = text
    return result


def _valid_key(name: str) -> bool:
    """A label or annotation key: ``[prefix/]name``, prefix a DNS subdomain."""
    prefix, _, local = name.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return bool(_LABEL_NAME.fullmatch(local))
