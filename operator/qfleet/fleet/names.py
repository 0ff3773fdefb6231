"""Deterministic, DNS-safe names and labels of the objects the operator owns.

Names are a pure function of the QuantizedModel's name, the ISA tier and the pipeline key, so a
handler that runs twice (after a crash, a restart, a retry) computes the same names and
creating an object twice is a no-op (HTTP 409 means "already there"). Kubernetes limits names
that also become label values (a Job's name is its pods' ``job-name`` label) to 63 characters;
longer names are cut and keep a hash of the full name so that they stay unique.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

GROUP = "qfleet.dev"
VERSION = "v1alpha1"
KIND = "QuantizedModel"
PLURAL = "quantizedmodels"
API_VERSION = f"{GROUP}/{VERSION}"

MAX_NAME = 63

#: Labels on everything the operator creates (values are label-safe).
LABEL_MODEL = f"{GROUP}/model"
LABEL_ISA = f"{GROUP}/isa"
LABEL_PIPELINE_KEY = f"{GROUP}/pipeline-key"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_NAME = "app.kubernetes.io/name"
MANAGED_BY = "qfleet"

#: Annotations: the full QuantizedModel name (labels may be hashed), what a pod serves.
ANNOTATION_MODEL_NAME = f"{GROUP}/model-name"
ANNOTATION_ARTIFACT = f"{GROUP}/artifact"
ANNOTATION_TEMPLATE_HASH = f"{GROUP}/template-hash"
#: On a serving pod (template): the measured faces/s per replica of the model it serves.
ANNOTATION_FPS = f"{GROUP}/fps-per-replica"
#: On a serving Deployment: what it serves, the tier's last good model and the result of the
#: served pipeline key (status records as JSON), so that a lost status can be rebuilt from it.
ANNOTATION_SERVED = f"{GROUP}/served"
ANNOTATION_LAST_GOOD = f"{GROUP}/last-good"
ANNOTATION_RESULT = f"{GROUP}/result"
#: On a serving Deployment while it rolls from one model to another: the lower of the two FPS per
#: replica, which the replicas are planned with until every pod runs the new model.
ANNOTATION_FPS_FLOOR = f"{GROUP}/fps-floor"
#: Change this annotation's value on a QuantizedModel to run its pipelines again.
ANNOTATION_RERUN = f"{GROUP}/rerun"

COMPONENT_QUANTIZER = "quantizer"
COMPONENT_SERVER = "server"

_INVALID = re.compile(r"[^a-z0-9-]+")


def short_hash(value: str, length: int = 8) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


def dns_label(*parts: str, max_length: int = MAX_NAME) -> str:
    """Join ``parts`` with '-' into a lower-case RFC 1123 label of at most ``max_length`` chars.

    A name that has to be cut keeps a hash of the full name, so two long names that share a
    prefix still differ.
    """
    full = "-".join(part for part in parts if part)
    cleaned = _INVALID.sub("-", full.lower()).strip("-")
    cleaned = re.sub("-{2,}", "-", cleaned) or "x"
    if len(cleaned) <= max_length:
        return cleaned
    digest = short_hash(full)
    head = cleaned[: max_length - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}"


def tier_slug(tier: str) -> str:
    """A tier name in a DNS label: ``avx512_vnni`` -> ``avx512-vnni``."""
    return tier.replace("_", "-")


def label_value(name: str) -> str:
    """A label value (<= 63 chars) that stands for ``name``."""
    return dns_label(name)


def job_name(model: str, tier: str, pipeline_key: str) -> str:
    """The quantization Job of ``model`` for ``tier`` and one pipeline key."""
    # The key and tier are what make Jobs differ, so cut the model's name, never them.
    suffix = f"{tier_slug(tier)}-{pipeline_key}"
    budget = MAX_NAME - len(suffix) - 1
    return f"{dns_label(model, max_length=budget)}-{suffix}"


def deployment_name(model: str, tier: str) -> str:
    """The serving Deployment of ``model`` for ``tier``: ``<model>-<tier>``."""
    suffix = tier_slug(tier)
    budget = MAX_NAME - len(suffix) - 1
    return f"{dns_label(model, max_length=budget)}-{suffix}"


def pipeline_key(inputs: Mapping[str, Any], *, length: int = 10) -> str:
    """A short hash of everything that changes the quantized model or its measured capacity."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def model_labels(model: str) -> dict[str, str]:
    return {LABEL_MODEL: label_value(model), LABEL_MANAGED_BY: MANAGED_BY, LABEL_INSTANCE: label_value(model)}


def selector_string(labels: Mapping[str, str]) -> str:
    """A label selector in the string form (``a=b,c=d``), as the scale subresource reports it."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))
