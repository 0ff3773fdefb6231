"""Least privilege, as data: API calls parsed from requests, grants read from the rendered roles.

``tests/unit/deploy/test_rbac.py`` checks the roles statically and the parser; the recorded run of
the real operator is ``tests/integration/test_rbac.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tests.support.k8s_tools import find
from tests.support.operator_fixtures import NAMESPACE

CLUSTER_WIDE = {"leaderElection": {"enabled": True}}
NAMESPACED = {"leaderElection": {"enabled": True}, "operator": {"watchNamespaces": [NAMESPACE]}}


@dataclass(frozen=True)
class Call:
    """One API call as RBAC sees it. ``namespace`` is None for cluster-scoped or all-namespace calls."""

    group: str
    resource: str  # with the subresource, e.g. "quantizedmodels/status"
    verb: str
    namespace: str | None

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb} {self.resource}{'.' + self.group if self.group else ''}{where}"


def call_from_request(method: str, path: str, query: Mapping[str, str]) -> Call | None:
    """Parse a request path as the API server's request-info resolver does; None for discovery."""
    parts = [part for part in path.split("/") if part]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None  # /api, /apis, /version, /openapi: discovery, open to every authenticated user
    if not rest:
        return None  # /api/v1, /apis/GROUP/VERSION: discovery
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = rest[0], (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "1") else "list")
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}[method]
    return Call(group, f"{resource}/{sub}" if sub else resource, verb, namespace)


# --- The rendered roles ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    group: str
    resource: str
    verb: str
    #: None: everywhere (ClusterRole through a ClusterRoleBinding); else that namespace only.
    namespace: str | None


def operator_grants(objects: list[dict[str, Any]]) -> set[Grant]:
    """What the rendered roles let the operator's ServiceAccount do."""
    (deployment,) = find(objects, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    release_namespace = deployment["metadata"]["namespace"]

    def bound(binding: Mapping[str, Any]) -> bool:
        return any(
            s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == release_namespace
            for s in binding["subjects"]
        )

    def rules(kind: str, name: str, namespace: str | None) -> list[Mapping[str, Any]]:
        (role,) = [o for o in find(objects, kind, name) if o["metadata"].get("namespace") == namespace]
        return list(role["rules"])

    grants: set[Grant] = set()
    for binding in find(objects, "ClusterRoleBinding"):
        if bound(binding):
            grants |= expand(rules("ClusterRole", binding["roleRef"]["name"], None), None)
    for binding in find(objects, "RoleBinding"):
        if bound(binding):
            namespace = binding["metadata"]["namespace"]
            kind = binding["roleRef"]["kind"]
            grants |= expand(
                rules(kind, binding["roleRef"]["name"], namespace if kind == "Role" else None), namespace
            )
    return grants


def expand(rules: Iterable[Mapping[str, Any]], namespace: str | None) -> set[Grant]:
    return {
        Grant(group, resource, verb, namespace)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def allowed(call: Call, grants: set[Grant]) -> bool:
    return any(
        grant.group == call.group
        and grant.resource == call.resource
        and grant.verb == call.verb
        and (grant.namespace is None or grant.namespace == call.namespace)
        for grant in grants
    )


def used(grant: Grant, calls: Iterable[Call]) -> bool:
    return any(
        (call.group, call.resource, call.verb) == (grant.group, grant.resource, grant.verb)
        and (grant.namespace is None or call.namespace == grant.namespace)
        for call in calls
    )


def kopf_registry_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) that the operator's kopf handlers imply."""
    import kopf

    from qfleet.operator.handlers import kopf_drives_the_models  # (and registers the handlers)

    def resource_of(handler: Any) -> tuple[str, str]:
        selector = handler.selector
        # The handlers name their resources by group, version and plural (kopf keeps it as any_name).
        plural = selector.plural or selector.any_name if selector is not None else None
        assert plural and plural == plural.lower(), f"handler {handler.id}: resource not named by its plural"
        return selector.group or "", plural

    registry = kopf.get_default_registry()
    calls: set[tuple[str, str, str]] = set()
    for handlers in (registry._indexing, registry._watching, registry._changing):
        for handler in handlers.get_all_handlers():
            group, plural = resource_of(handler)
            calls |= {(group, plural, "list"), (group, plural, "watch")}
    for handler in registry._changing.get_all_handlers():
        if handler.when is kopf_drives_the_models:
            continue  # selected only for a scope of namespace patterns, which the chart cannot give
        # kopf keeps handler progress and the last handled spec in the object's annotations.
        calls.add((*resource_of(handler), "patch"))
    return calls
