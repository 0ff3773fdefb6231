"""Least privilege: the chart grants the operator exactly the API calls it makes, and no more.

The calls are not listed by hand. They are derived twice:

- from kopf's registry of the operator's handlers (every watched resource needs list and watch,
  every resource with change handlers needs patch, for kopf's progress annotations), and
- from the HTTP requests the real operator (``qfleet operator`` as the chart runs it: its command
  line and environment rendered by ``helm template``) sends to the emulated API server while a
  QuantizedModel is created, quantized on two ISA tiers, served, rescaled, narrowed to one tier (a
  Deployment deleted) and re-quantized after a spec change (obsolete Jobs deleted), while kopf
  peering keeps its keep-alives in the peering object the chart creates.

Then every request must be allowed by the rendered roles bound to the operator's ServiceAccount,
and every permission in those roles must have been used. Both for the cluster-wide install (one
ClusterRole) and for a namespaced one (a Role per namespace plus a ClusterRole for nodes).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from k8s_tools import ALL_FEATURES, find, render

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "integration"))

from cluster import DEPLOYMENTS, JOBS, Cluster, Emulator  # noqa: E402
from operator_fixtures import NAMESPACE, model_body, write_datasets  # noqa: E402

pytestmark = pytest.mark.timeout(300)

CLUSTER_WIDE = {"leaderElection": {"enabled": True}}
NAMESPACED = {"leaderElection": {"enabled": True}, "operator": {"watchNamespaces": [NAMESPACE]}}
#: Resources an operator of face models never needs: credentials and arbitrary configuration.
FORBIDDEN_RESOURCES = {"secrets", "configmaps", "serviceaccounts/token", "pods/exec", "pods/attach"}
FORBIDDEN_VERBS = {"escalate", "bind", "impersonate", "*"}


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


# --- Static checks of the roles --------------------------------------------------------------------


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


def kopf_registry_calls() -> set[tuple[str, str, str]]:
    """(group, resource, verb) that the operator's kopf handlers imply."""
    import kopf

    import qfleet.operator.handlers  # noqa: F401  (registers the handlers)

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
        # kopf keeps handler progress and the last handled spec in the object's annotations.
        calls.add((*resource_of(handler), "patch"))
    return calls


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


# --- The recorded run ------------------------------------------------------------------------------


class RecordingEmulator(Emulator):
    """Records every HTTP request (method, path, query, user agent) before it is served."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.recorded: list[tuple[str, str, dict[str, str], str]] = []

    async def __call__(self, raw_request: Any) -> Any:
        agent = raw_request.headers.get("User-Agent", "")
        self.recorded.append((raw_request.method, raw_request.path, dict(raw_request.query), agent))
        return await super().__call__(raw_request)


@contextlib.asynccontextmanager
async def recording_cluster(root: Path) -> AsyncIterator[Cluster]:
    import kmock

    async with RecordingEmulator() as emulator, kmock.Server(emulator) as server:
        emulator.resources.load_bundled()
        cluster = Cluster(emulator, server, root)
        await cluster.start()
        try:
            yield cluster
        finally:
            await cluster.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def chart_invocation(objects: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    """The operator's arguments and environment exactly as the chart renders them (free local ports)."""
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = []
    for arg in container["args"]:
        if arg.startswith("--metrics-port="):
            arg = f"--metrics-port={free_port()}"
        elif arg.startswith("--liveness="):
            arg = f"--liveness=http://127.0.0.1:{free_port()}/healthz"
        args.append(arg)
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    env["POD_ID"] = "qfleet-operator-0"  # the downward API's metadata.name
    env["QFLEET_BENCHMARK_SECONDS"] = "1"  # keep the tiny pipelines short
    return args, env


def operator_calls(cluster: Cluster) -> list[Call]:
    emulator: RecordingEmulator = cluster.emulator  # type: ignore[assignment]
    calls = []
    for method, path, query, agent in emulator.recorded:
        if agent.startswith("kmock/"):
            continue  # the test cluster's own controllers and set-up
        assert agent.startswith(("kopf/", "qfleet-operator")), f"unexpected client {agent!r}"
        call = call_from_request(method, path, query)
        if call is not None:
            calls.append(call)
    return calls


def seen(cluster: Cluster, verb: str, resource: str) -> bool:
    return any(c.verb == verb and c.resource == resource for c in operator_calls(cluster))


def settled(cluster: Cluster, name: str) -> bool:
    """Every target served by the current pipeline (Degraded: at maxReplicas, which is fine here)."""
    status = (cluster.model(NAMESPACE, name) or {}).get("status") or {}
    progressing = [c for c in status.get("conditions") or [] if c["type"] == "Progressing"]
    return (
        status.get("phase") in ("Ready", "Degraded")
        and bool(progressing)
        and progressing[0]["status"] == "False"
    )


async def exercise_the_operator(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    """Install what the chart installs for peering, run the operator as the chart does, use it."""
    for crd in find(objects, "CustomResourceDefinition"):
        cluster.emulator.install_crd(crd)
    for peering in [*find(objects, "ClusterKopfPeering"), *find(objects, "KopfPeering")]:
        group_version, plural = peering["apiVersion"], peering["kind"].lower() + "s"
        namespace = peering["metadata"].get("namespace")
        where = f"/namespaces/{namespace}" if namespace else ""
        await cluster.create(f"/apis/{group_version}{where}/{plural}", peering)
    await cluster.add_node("avx512-1", "avx512")
    await cluster.add_node("avx2-1", "avx2")

    args, env = chart_invocation(objects)
    process = await cluster.start_operator(*args, env=env)
    name = "rbac"
    path = cluster.model_path(NAMESPACE, name)
    await cluster.apply_model(model_body(name, targets=("avx512", "avx2"), cameras=1))
    await cluster.wait_for("served", lambda: settled(cluster, name), timeout=120)
    # Cameras change (1000 -> 20000 faces/s): the Deployments are patched.
    await cluster.patch(path, {"spec": {"demand": {"cameras": 20}}})
    await cluster.wait_for("a Deployment patched", lambda: seen(cluster, "patch", "deployments"), timeout=30)
    # One tier fewer: its Deployment is deleted.
    await cluster.patch(path, {"spec": {"targets": [{"isa": "avx2"}]}})
    await cluster.wait_for("a Deployment deleted", lambda: seen(cluster, "delete", "deployments"), timeout=60)
    # Quantization change: a new pipeline key, a new Job, the obsolete ones deleted at once.
    await cluster.patch(path, {"spec": {"quantization": {"subsetSize": 6}}})
    await cluster.wait_for("an obsolete Job deleted", lambda: seen(cluster, "delete", "jobs"), timeout=60)
    await cluster.wait_for("an event posted", lambda: seen(cluster, "create", "events"), timeout=30)
    # A clean stop: kopf removes its keep-alive from the peering object.
    await cluster.stop_operator(process)
    assert cluster.objects(JOBS, NAMESPACE) and cluster.objects(DEPLOYMENTS, NAMESPACE)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_datasets(tmp_path_factory.mktemp("rbac-data"))


async def recorded_calls(
    values: dict[str, Any], root: Path, datasets: Path
) -> tuple[list[Call], list[dict[str, Any]]]:
    objects = render(values)
    async with recording_cluster(root) as cluster:
        cluster.claims["data"] = datasets
        cluster.add_claim("models")
        await cluster.add_namespace(NAMESPACE)
        try:
            await exercise_the_operator(cluster, objects)
        except BaseException:
            print(cluster.diagnostics())
            raise
        return operator_calls(cluster), objects


def assert_exact_privileges(calls: list[Call], objects: list[dict[str, Any]]) -> None:
    grants = operator_grants(objects)
    refused = sorted({str(call) for call in calls if not allowed(call, grants)})
    assert not refused, "the operator made calls its roles do not allow:\n" + "\n".join(refused)
    unused = sorted(
        f"{g.verb} {g.resource}.{g.group or 'core'} ({g.namespace or 'cluster role'})"
        for g in grants
        if not used(g, calls)
    )
    assert not unused, "the roles grant permissions the operator never used:\n" + "\n".join(unused)
    # The run covered what kopf's registry says the handlers need.
    observed = {(c.group, c.resource, c.verb) for c in calls}
    assert kopf_registry_calls() <= observed


async def test_cluster_wide_install_grants_exactly_what_the_operator_uses(
    tmp_path: Path, datasets: Path
) -> None:
    calls, objects = await recorded_calls(CLUSTER_WIDE, tmp_path, datasets)
    assert_exact_privileges(calls, objects)
    assert any(c.resource == "clusterkopfpeerings" and c.verb == "patch" for c in calls)
    # Serving every namespace, kopf watches cluster-wide: no request names a namespace for watches.
    assert all(c.namespace is None for c in calls if c.verb in ("list", "watch"))


async def test_namespaced_install_grants_exactly_what_the_operator_uses(
    tmp_path: Path, datasets: Path
) -> None:
    calls, objects = await recorded_calls(NAMESPACED, tmp_path, datasets)
    assert_exact_privileges(calls, objects)
    grants = operator_grants(objects)
    # Namespaced resources only through the Role of the watched namespace; nodes cluster-wide.
    cluster_wide = {(g.group, g.resource) for g in grants if g.namespace is None}
    assert ("", "nodes") in cluster_wide
    assert not cluster_wide & {
        ("batch", "jobs"),
        ("", "pods"),
        ("apps", "deployments"),
        ("qfleet.dev", "quantizedmodels"),
    }
    assert any(c.resource == "kopfpeerings" and c.namespace == NAMESPACE and c.verb == "patch" for c in calls)


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


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(recorded_calls(CLUSTER_WIDE, Path("/tmp/rbac"), Path("/tmp/rbac-data")))
