"""Least privilege: the chart grants the operator exactly the API calls it makes, and no more.

The calls are not listed by hand. They are derived twice: from kopf's registry of the operator's
handlers (every watched resource needs list and watch, every resource with change handlers needs
patch, for kopf's progress annotations), checked here against the rendered roles; and from the
HTTP requests of the real operator, recorded in ``tests/integration/test_rbac.py``. Here also: no
wildcards, no secrets, no escalation, and the parsers of requests and bindings those checks use.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.k8s_tools import ALL_FEATURES, find, render
from tests.support.operator_fixtures import NAMESPACE
from tests.support.rbac import (
    CLUSTER_WIDE,
    NAMESPACED,
    Call,
    allowed,
    call_from_request,
    kopf_registry_calls,
    operator_grants,
)

pytestmark = pytest.mark.timeout(300)

#: Resources an operator of face models never needs: credentials and arbitrary configuration.
FORBIDDEN_RESOURCES = {"secrets", "configmaps", "serviceaccounts/token", "pods/exec", "pods/attach"}
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}


@pytest.mark.parametrize(
    "values", [{}, ALL_FEATURES, CLUSTER_WIDE, NAMESPACED], ids=["defaults", "all", "cw", "ns"]
)
def test_no_wildcards_no_secrets_no_escalation(values: dict[str, Any]) -> None:
    for role in [*find(render(values), "ClusterRole"), *find(render(values), "Role")]:
        for rule in role["rules"]:
            where = f"{role['kind']}/{role['metadata']['name']}"
            assert "*" not in rule["apiGroups"] and "*" not in rule["resources"], where
            assert not set(rule["verbs"]) & FORBIDDEN_VERBS, where
            assert not set(rule["resources"]) & FORBIDDEN_RESOURCES, where
            assert "resourceNames" not in rule or rule["resourceNames"], where
            assert "nonResourceURLs" not in rule, where


def test_people_roles_are_not_bound_to_the_operator() -> None:
    objects = render(ALL_FEATURES)
    aggregated = {
        o["metadata"]["name"]
        for o in find(objects, "ClusterRole")
        if "aggregate" in str(o["metadata"].get("labels"))
    }
    assert len(aggregated) == 2
    for binding in [*find(objects, "ClusterRoleBinding"), *find(objects, "RoleBinding")]:
        assert binding["roleRef"]["name"] not in aggregated


@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_roles_allow_what_the_kopf_handlers_need(values: dict[str, Any]) -> None:
    grants = operator_grants(render(values))
    needed = kopf_registry_calls()
    assert {resource for _, resource, _ in needed} >= {
        "quantizedmodels",
        "jobs",
        "pods",
        "deployments",
        "nodes",
    }
    for group, resource, verb in needed:
        scope = None if resource == "nodes" else NAMESPACE
        assert allowed(Call(group, resource, verb, scope), grants), f"{verb} {resource} is not granted"


@pytest.mark.parametrize("values", [CLUSTER_WIDE, NAMESPACED], ids=["cluster-wide", "namespaced"])
def test_roles_allow_the_service_pdbs_and_serving_pods(values: dict[str, Any]) -> None:
    """The model's Service and its Deployments' PodDisruptionBudgets are created and patched (the
    budget of a removed tier deleted; the Service goes with the model, through its owner
    reference); pods are watched (Jobs' results, serving pods that stay Pending) and never written."""
    grants = operator_grants(render(values))
    for group, resource, verbs in (
        ("", "services", ("list", "watch", "create", "patch")),
        ("policy", "poddisruptionbudgets", ("list", "watch", "create", "patch", "delete")),
    ):
        for verb in verbs:
            assert allowed(Call(group, resource, verb, NAMESPACE), grants), f"{verb} {resource}"
        assert not allowed(Call(group, resource, "update", NAMESPACE), grants)
    assert not allowed(Call("", "services", "delete", NAMESPACE), grants)
    for verb in ("list", "watch"):
        assert allowed(Call("", "pods", verb, NAMESPACE), grants), f"{verb} pods"
    for verb in ("create", "patch", "update", "delete"):
        assert not allowed(Call("", "pods", verb, NAMESPACE), grants), f"{verb} pods"
    if values is NAMESPACED:
        assert not allowed(Call("", "services", "create", "elsewhere"), grants)


def test_request_parser() -> None:
    assert call_from_request("GET", "/apis/batch/v1/jobs", {"watch": "true"}) == Call(
        "batch", "jobs", "watch", None
    )
    assert call_from_request("GET", "/api/v1/namespaces", {}) == Call("", "namespaces", "list", None)
    assert call_from_request("GET", "/api/v1/namespaces/faces", {}) == Call("", "namespaces", "get", None)
    assert call_from_request(
        "PATCH", "/apis/qfleet.dev/v1alpha1/namespaces/faces/quantizedmodels/m/status", {}
    ) == Call("qfleet.dev", "quantizedmodels/status", "patch", "faces")
    assert call_from_request("DELETE", "/apis/batch/v1/namespaces/faces/jobs/j", {}) == Call(
        "batch", "jobs", "delete", "faces"
    )
    assert call_from_request("POST", "/api/v1/namespaces/faces/events", {}) == Call(
        "", "events", "create", "faces"
    )
    assert call_from_request("GET", "/apis/apps/v1", {}) is None
    assert call_from_request("GET", "/version", {}) is None


def test_grants_follow_bindings() -> None:
    grants = operator_grants(render(NAMESPACED))
    assert allowed(Call("batch", "jobs", "create", NAMESPACE), grants)
    assert not allowed(Call("batch", "jobs", "create", "elsewhere"), grants)
    assert not allowed(Call("batch", "jobs", "create", None), grants)
    assert not allowed(Call("", "secrets", "get", NAMESPACE), grants)
