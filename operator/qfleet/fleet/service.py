"""Builders of a model's Service (one address for every tier) and of its PodDisruptionBudgets.

Pure functions to plain dicts, like :mod:`qfleet.fleet.manifests`. Each object carries a hash
of what qfleet sets in it (``qfleet.dev/template-hash``): the operator patches it when the hash
it would write differs from the one it reads, and leaves alone what others added (a cloud
controller's annotations, an allocated nodePort or clusterIP).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from qfleet.fleet import names
from qfleet.fleet.config import FleetConfig
from qfleet.fleet.manifests import GRPC_PORT, GRPC_PORT_NAME, Owner, model_selector
from qfleet.fleet.spec import ModelSpec

#: The server exposes /metrics on its HTTP port; a port named ``metrics`` lets a ServiceMonitor
#: (or anything that finds metrics by port name) scrape through the Service.
METRICS_PORT = 9090
HTTP_PORT_NAME = "http"
METRICS_PORT_NAME = "metrics"
#: Labels under which the Service and the PodDisruptionBudgets appear beside the Deployments.
SERVICE_NAME_LABEL = "qfleet-server"


def address_url(owner: Owner, port: int) -> str:
    """The in-cluster URL of ``owner``'s Service (what ``status.address.url`` reports)."""
    return f"http://{owner.name}.{owner.namespace}.svc:{port}"


def _labels(owner: Owner) -> dict[str, str]:
    return {
        **names.model_labels(owner.name),
        names.LABEL_COMPONENT: names.COMPONENT_SERVER,
        names.LABEL_NAME: SERVICE_NAME_LABEL,
    }


def _with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Add the template-hash annotation: a hash of the spec, labels and annotations set so far."""
    metadata = obj["metadata"]
    canonical = json.dumps(
        {"spec": obj["spec"], "labels": metadata["labels"], "annotations": metadata["annotations"]},
        sort_keys=True,
    )
    metadata["annotations"][names.ANNOTATION_TEMPLATE_HASH] = names.short_hash(canonical, 16)
    return obj


def service_for(owner: Owner, spec: ModelSpec, config: FleetConfig) -> dict[str, Any]:
    """The Service in front of every serving replica of ``owner``, on every tier.

    The user's annotations (a load balancer's settings, say) come first, so they never replace
    the operator's ``qfleet.dev/`` ones (the spec parser refuses that prefix anyway).
    """
    annotations = {**spec.service_annotations, names.ANNOTATION_MODEL_NAME: owner.name}
    return _with_hash(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": owner.name,
                "namespace": owner.namespace,
                "labels": _labels(owner),
                "annotations": annotations,
                "ownerReferences": [owner.reference()],
            },
            "spec": {
                "type": spec.service_type,
                "selector": model_selector(owner),
                "ports": [
                    {
                        "name": HTTP_PORT_NAME,
                        "port": config.server_port,
                        "targetPort": HTTP_PORT_NAME,
                        "protocol": "TCP",
                    },
                    {
                        # The Open Inference Protocol's gRPC service (appProtocol lets meshes and
                        # gateways that read it balance per request instead of per connection).
                        "name": GRPC_PORT_NAME,
                        "port": GRPC_PORT,
                        "targetPort": GRPC_PORT_NAME,
                        "protocol": "TCP",
                        "appProtocol": "grpc",
                    },
                    {
                        "name": METRICS_PORT_NAME,
                        "port": METRICS_PORT,
                        "targetPort": HTTP_PORT_NAME,
                        "protocol": "TCP",
                    },
                ],
            },
        }
    )


def pdb_for(
    owner: Owner, tier: str, deployment_name: str, selector: Mapping[str, str], min_available: int
) -> dict[str, Any]:
    """The PodDisruptionBudget of one tier's Deployment: a node drain keeps ``min_available``
    ready replicas serving. Unhealthy pods may always be evicted, so a crash-looping replica
    never blocks a drain."""
    return _with_hash(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {
                "name": deployment_name,
                "namespace": owner.namespace,
                "labels": {**_labels(owner), names.LABEL_ISA: names.tier_slug(tier)},
                "annotations": {names.ANNOTATION_MODEL_NAME: owner.name},
                "ownerReferences": [owner.reference()],
            },
            "spec": {
                "selector": {"matchLabels": dict(selector)},
                "minAvailable": min_available,
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }
    )
