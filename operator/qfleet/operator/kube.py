"""A small asynchronous Kubernetes API client for the operator's writes (and a few reads).

kopf watches and caches what the operator reads (indices); the operator's own writes -- create a
Job, patch a Deployment or a status, delete an obsolete Job -- go through this client, on the
same event loop, as plain JSON (no model classes to build or parse). Credentials come from the
same places kopf's default login looks: the in-cluster service account, else the kubeconfig
(``$KUBECONFIG`` or ``~/.kube/config``).

Bound service-account tokens rotate: the kubelet rewrites the projected token file, and the API
server rejects an expired token with 401. So on a 401 the client reads its credentials again
and, when they changed, retries the request once with the new ones; a 401 with unchanged
credentials is the caller's to report (an expired or revoked token, not an RBAC problem). The
requests and watches still open on the old credentials' session run to their end there (the server
checked the credentials when each began): closing it under an open watch would leave the watch
waiting, silent, until its read timeout, and every change meanwhile unseen.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
#: A watch asks the server to end its stream after this long (and then opens the next one).
WATCH_SECONDS = 300
#: Beyond the server's own end of a watch, how long a silent stream is trusted.
WATCH_GRACE_SECONDS = 30
#: A LIST comes in chunks of this many objects (the operator's and kopf's): a fleet's
#: collection is never held as one response (10,000 objects are hundreds of MiB as dicts).
LIST_PAGE = 500


class ApiError(Exception):
    """An API request failed; ``status`` is the HTTP status (0 when the server was unreachable)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def transient(self) -> bool:
        """Worth retrying as it is: the server was busy, down or timed out."""
        return self.status == 0 or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    ca_path: str | None = None
    insecure: bool = False
    certificate_path: str | None = None
    private_key_path: str | None = None
    username: str | None = None
    password: str | None = None


def load_credentials() -> Credentials:
    """In-cluster service account, else kubeconfig -- the order kopf's default login uses."""
    import kubernetes.client
    import kubernetes.config

    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        try:
            # The library reads $KUBECONFIG once, at import; read it now.
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration
            )
        except (kubernetes.config.ConfigException, FileNotFoundError, TypeError) as exc:
            raise RuntimeError(
                "no Kubernetes credentials: not in a cluster and no usable kubeconfig "
                "(set KUBECONFIG or run inside a pod with a service account)"
            ) from exc
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    token = header.split(" ", 1)[-1] if header else None
    return Credentials(
        server=str(configuration.host).rstrip("/"),
        token=token,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        username=configuration.username or None,
        password=configuration.password or None,
    )


class KubeApi:
    """JSON over HTTP to the API server; ``create`` treats 409 as "already there"."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        timeout: float = 30.0,
        connections: int = 32,
        reload: Callable[[], Credentials] | None = None,
    ) -> None:
        self.credentials = credentials
        #: Reads the credentials again (after a 401); None: they never change.
        self._reload = reload
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        #: Requests and watches under way per session: a session replaced by renewed credentials
        #: is closed when its last one ends.
        self._in_use: Counter[aiohttp.ClientSession] = Counter()
        #: Called with the object the server answers to each create and patch (the operator's
        #: caches learn of its own writes at once, not only when the watch event comes back).
        self.written: Callable[[dict[str, Any]], None] | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        creds = self.credentials
        if not creds.server.startswith("https"):
            return False
        if creds.insecure:
            return False
        context = ssl.create_default_context(cafile=creds.ca_path)
        if creds.certificate_path and creds.private_key_path:
            context.load_cert_chain(creds.certificate_path, creds.private_key_path)
        return context

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "qfleet-operator"}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        return headers

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            auth = None
            if self.credentials.username and self.credentials.password:
                auth = aiohttp.BasicAuth(self.credentials.username, self.credentials.password)
            self._session = aiohttp.ClientSession(
                base_url=self.credentials.server,
                headers=self._headers(),
                auth=auth,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=self._connections),
            )
        return self._session

    async def close(self) -> None:
        """Close every session, the current one and any still held by an older request."""
        sessions = {*self._in_use, *([self._session] if self._session is not None else [])}
        self._session = None
        self._in_use.clear()
        for session in sessions:
            await session.close()

    @asynccontextmanager
    async def _borrowed(self) -> AsyncIterator[aiohttp.ClientSession]:
        """The current session, for one request or watch; one that renewed credentials replaced
        meanwhile is closed when the last request on it ends."""
        session = await self.session()
        self._in_use[session] += 1
        try:
            yield session
        finally:
            self._in_use[session] -= 1
            if self._in_use[session] <= 0:
                del self._in_use[session]
                if session is not self._session:
                    await session.close()

    async def _retire_session(self) -> None:
        """The next request opens a new session; the current one is closed now if nothing runs
        on it, else when its last request or watch ends."""
        session, self._session = self._session, None
        if session is not None and not self._in_use[session]:
            await session.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        used = self.credentials
        try:
            return await self._request(method, path, body=body, content_type=content_type, params=params)
        except ApiError as exc:
            # Renewed meanwhile by a concurrent request, or now: either way, try the new ones.
            if exc.status != 401 or (self.credentials == used and not await self._credentials_changed()):
                raise
            log.info("the API server refused the old credentials; retrying with the renewed ones")
            return await self._request(method, path, body=body, content_type=content_type, params=params)

    async def _credentials_changed(self) -> bool:
        """Read the credentials again; True (and a new session) when they changed."""
        if self._reload is None:
            return False
        try:
            renewed = self._reload()
        except Exception as exc:  # a token file being rewritten, a kubeconfig mid-edit
            log.warning("could not read the credentials again after a 401: %s", exc)
            return False
        if renewed == self.credentials:
            return False
        self.credentials = renewed
        await self._retire_session()
        return True

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any,
        content_type: str,
        params: dict[str, str] | None,
    ) -> dict[str, Any]:
        headers = {"Content-Type": content_type} if body is not None else {}
        try:
            async with (
                self._borrowed() as session,
                session.request(method, path, json=body, headers=headers, params=params) as response,
            ):
                if response.status >= 400:
                    raise await _error(response)
                data = await response.json(content_type=None)
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc) or "connection failed") from exc
        return data if isinstance(data, dict) else {}

    async def get(self, path: str) -> dict[str, Any] | None:
        """The object at ``path``; None when it does not exist."""
        try:
            return await self.request("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_collection(
        self, path: str, *, page: int = LIST_PAGE
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Every item of the collection at ``path``, with the list's ``resourceVersion``: a watch
        from it streams every change made after the list, none missed and none repeated."""
        items: list[dict[str, Any]] = []
        version = None
        async for chunk, listed_version in self.list_pages(path, page=page):
            items.extend(chunk)
            version = listed_version
        return items, version

    async def list_pages(
        self, path: str, *, page: int = LIST_PAGE
    ) -> AsyncIterator[tuple[list[dict[str, Any]], str | None]]:
        """The collection at ``path``, ``page`` items at a time (a server that ignores ``limit``
        answers everything at once, without a ``continue`` token); the last page comes with the
        list's ``resourceVersion``, the others with None. A caller that keeps a little of each
        item never holds the whole collection."""
        params = {"limit": str(page)}
        while True:
            data = await self.request("GET", path, params=params)
            items = [item for item in data.get("items") or () if isinstance(item, dict)]
            metadata = data.get("metadata") or {}
            token = metadata.get("continue")
            if not token:
                version = metadata.get("resourceVersion")
                yield items, str(version) if version else None
                return
            yield items, None
            params = {"limit": str(page), "continue": str(token)}

    async def watch(
        self, path: str, since: str, *, timeout_seconds: int = WATCH_SECONDS
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch events of the collection at ``path`` after ``resourceVersion`` ``since``,
        until the server ends the stream (after ``timeout_seconds``). An expired ``since`` comes
        as an ``ERROR`` event with code 410, as the server sends it."""
        params = {
            "watch": "true",
            "resourceVersion": since,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        # No total timeout: the stream is meant to stay open; a silent one ends at sock_read.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + WATCH_GRACE_SECONDS)
        refused: ApiError | None = None
        try:
            async with (
                self._borrowed() as session,
                session.get(path, params=params, timeout=timeout) as response,
            ):
                if response.status >= 400:
                    refused = await _error(response)
                else:
                    async for line in _lines(response.content):
                        event = json.loads(line)
                        if isinstance(event, dict):
                            yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise ApiError(0, type(exc).__name__, str(exc) or "watch connection failed") from exc
        if refused is not None:
            if refused.status == 401:
                await self._credentials_changed()  # the caller's next watch uses the renewed ones
            raise refused

    async def create(self, path: str, body: dict[str, Any]) -> bool:
        """Create ``body`` in the collection ``path``; False when it already exists (409)."""
        try:
            created = await self.request("POST", path, body=body)
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        self._notify(created)
        return True

    async def merge_patch(self, path: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """JSON-merge-patch the object at ``path``; None when it is gone (404)."""
        try:
            patched = await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        self._notify(patched)
        return patched

    def _notify(self, answer: dict[str, Any]) -> None:
        if self.written is not None and answer.get("metadata"):
            self.written(answer)

    async def delete(self, path: str, *, propagation: str = "Background") -> bool:
        """Delete the object at ``path`` (and, in the background, what it owns); False when gone."""
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": propagation}
        try:
            await self.request("DELETE", path, body=body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The stream's non-empty lines, however long (aiohttp's own line reader caps their size).
    A line that spans many chunks is joined once, when its end arrives (adding chunk to chunk
    would copy it again for each one: quadratic in its length)."""
    parts: list[bytes] = []
    async for chunk in content.iter_any():
        if b"\n" not in chunk:
            parts.append(chunk)
            continue
        first, *lines, rest = chunk.split(b"\n")
        for line in (b"".join([*parts, first]), *lines):
            if line.strip():
                yield line
        parts = [rest]
    tail = b"".join(parts)
    if tail.strip():
        yield tail


async def _error(response: aiohttp.ClientResponse) -> ApiError:
    try:
        data = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        data = None
    if isinstance(data, dict):
        return ApiError(
            response.status, str(data.get("reason") or response.reason), str(data.get("message") or "")
        )
    return ApiError(response.status, str(response.reason), (await response.text())[:500])


def namespaced(
    group_version: str, plural: str, namespace: str, name: str | None = None, sub: str | None = None
) -> str:
    """The API path of a namespaced collection or object: ``/apis/batch/v1/namespaces/ns/jobs/x``."""
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    path = f"{base}/namespaces/{namespace}/{plural}"
    if name is not None:
        path += f"/{name}"
        if sub is not None:
            path += f"/{sub}"
    return path
