"""The URIs of a QuantizedModel: where its models, datasets and artifacts live.

- ``pvc://CLAIM/PATH`` names a PersistentVolumeClaim and a path inside it. Pods mount each claim
  they need at ``MOUNT_ROOT/CLAIM``, so such a URI maps to one in-pod path and back; the Job's
  command line and the server's ``--model`` hold in-pod paths.
- ``s3://BUCKET/KEY`` (inputs and artifacts) is passed as it is: the pods read and write it
  themselves (see :mod:`qfleet.storage`), with the credentials the spec's Secret gives them.
- ``https://...`` (read-only inputs; ``http://`` only where the spec allows it) is passed as it
  is too, downloaded and checked against the sha256 the spec pins.

Anything else is refused with a message that says so, and so are paths and keys that could
escape their claim or prefix ('..', absolute).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from qfleet.storage.uris import HttpUri as HttpUri
from qfleet.storage.uris import S3Uri as S3Uri
from qfleet.storage.uris import StorageUriError, parse_http_uri, parse_s3_uri

SCHEME = "pvc"
#: Where pods mount the claims they use: MOUNT_ROOT/CLAIM.
MOUNT_ROOT = "/var/lib/qfleet/pvc"

# A claim name is a DNS subdomain (RFC 1123): lower-case alphanumerics, '-' and '.'.
_CLAIM = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_URI = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$")


class UriError(ValueError):
    """A URI the operator cannot use; the message names the field and says what to write."""


@dataclass(frozen=True)
class PvcUri:
    claim: str
    #: Normalised relative path inside the claim; "" for the claim's root.
    path: str

    def __str__(self) -> str:
        return f"{SCHEME}://{self.claim}/{self.path}" if self.path else f"{SCHEME}://{self.claim}"

    @property
    def mount_path(self) -> str:
        """Where the claim is mounted in a pod."""
        return f"{MOUNT_ROOT}/{self.claim}"

    @property
    def pod_path(self) -> str:
        """This URI as a path inside a pod that mounts the claim at :attr:`mount_path`."""
        return f"{self.mount_path}/{self.path}" if self.path else self.mount_path

    def join(self, *parts: str) -> PvcUri:
        """A URI below this one; each part must be a plain relative path."""
        path = self.path
        for part in parts:
            path = posixpath.join(path, _checked_relative(part, what=f"path part {part!r}"))
        return PvcUri(self.claim, path)


def parse_pvc_uri(value: object, *, field: str) -> PvcUri:
    """Parse ``pvc://CLAIM/PATH``; ``field`` names the spec field in error messages."""
    if not isinstance(value, str) or not value.strip():
        raise UriError(f"{field} must be a URI like pvc://CLAIM/PATH, got {value!r}")
    match = _URI.match(value.strip())
    if not match:
        raise UriError(f"{field} {value!r} is not a URI; write it as pvc://CLAIM/PATH")
    scheme = match["scheme"].lower()
    if scheme != SCHEME:
        raise UriError(
            f"{field} {value!r} uses the unsupported scheme {scheme!r}; only pvc://CLAIM/PATH is "
            "supported (copy the data to a PersistentVolumeClaim)"
        )
    claim, _, path = match["rest"].partition("/")
    if not _CLAIM.match(claim):
        raise UriError(
            f"{field} {value!r} names the claim {claim!r}, which is not a valid PersistentVolumeClaim name"
        )
    return PvcUri(claim, _checked_relative(path, what=f"{field} {value!r}") if path else "")


def _checked_relative(path: str, *, what: str) -> str:
    if path.startswith("/"):
        raise UriError(f"{what} has an absolute path after the claim; write pvc://CLAIM/relative/path")
    if "\\" in path or "\x00" in path:
        raise UriError(f"{what} contains a backslash or NUL; use '/' separated paths")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UriError(f"{what} contains '..'; paths must stay inside the claim")
    return "/".join(parts)


def pod_path_to_uri(pod_path: str) -> PvcUri | None:
    """The URI of an in-pod path under :data:`MOUNT_ROOT`; None when it is not under it."""
    prefix = MOUNT_ROOT + "/"
    if not pod_path.startswith(prefix):
        return None
    claim, _, path = pod_path[len(prefix) :].partition("/")
    try:
        return PvcUri(claim, _checked_relative(path, what="path") if path else "")
    except UriError:
        return None


#: Where a model or dataset is read from.
InputUri = PvcUri | S3Uri | HttpUri
#: Where artifacts are written (and served from): never a read-only https:// URL.
ArtifactUri = PvcUri | S3Uri
INPUT_SCHEMES = "pvc://CLAIM/PATH, s3://BUCKET/KEY or https://HOST/PATH"
ARTIFACT_SCHEMES = "pvc://CLAIM/PREFIX or s3://BUCKET/PREFIX"


def _scheme_of(value: object, *, field: str, expected: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UriError(f"{field} must be a URI like {expected}, got {value!r}")
    match = _URI.match(value.strip())
    if not match:
        raise UriError(f"{field} {value!r} is not a URI; write it as {expected}")
    return match["scheme"].lower()


def parse_input_uri(value: object, *, field: str, allow_http: bool = False) -> InputUri:
    """A URI to read from: ``pvc://``, ``s3://`` or ``https://`` (``http://`` with ``allow_http``)."""
    scheme = _scheme_of(value, field=field, expected=INPUT_SCHEMES)
    assert isinstance(value, str)
    try:
        if scheme == "s3":
            return parse_s3_uri(value)
        if scheme in ("http", "https"):
            if scheme == "http" and not allow_http:
                raise UriError(
                    f"{field} {value!r} uses plain http; use https://, or set spec.storage.allowHttp "
                    "and pin the file's sha256"
                )
            return parse_http_uri(value, allow_http=allow_http)
    except StorageUriError as exc:
        raise UriError(f"{field}: {exc}") from None
    if scheme != SCHEME:
        raise UriError(f"{field} {value!r} uses the unsupported scheme {scheme!r}; use {INPUT_SCHEMES}")
    return parse_pvc_uri(value, field=field)


def parse_artifact_uri(value: object, *, field: str) -> ArtifactUri:
    """A URI to write artifacts to (and serve them from): ``pvc://`` or ``s3://``."""
    scheme = _scheme_of(value, field=field, expected=ARTIFACT_SCHEMES)
    if scheme in ("http", "https"):
        raise UriError(f"{field} {value!r} is read-only (https); write artifacts to {ARTIFACT_SCHEMES}")
    if scheme == "s3":
        assert isinstance(value, str)
        try:
            return parse_s3_uri(value)
        except StorageUriError as exc:
            raise UriError(f"{field}: {exc}") from None
    if scheme != SCHEME:
        raise UriError(f"{field} {value!r} uses the unsupported scheme {scheme!r}; use {ARTIFACT_SCHEMES}")
    return parse_pvc_uri(value, field=field)


def in_pod(uri: InputUri) -> str:
    """How a pod names ``uri``: the in-pod path of a claim's file, the URI itself otherwise."""
    return uri.pod_path if isinstance(uri, PvcUri) else str(uri)


def claims_of(uris: Iterable[InputUri]) -> list[PvcUri]:
    """The ``pvc://`` URIs among ``uris`` (what a pod must mount)."""
    return [uri for uri in uris if isinstance(uri, PvcUri)]


def artifact_of_result(value: str) -> ArtifactUri | None:
    """The artifact a pipeline reported: an in-pod path on a claim, or the ``s3://`` URI it
    published to; None when it is neither."""
    if value.strip().lower().startswith("s3://"):
        try:
            return parse_s3_uri(value)
        except StorageUriError:
            return None
    return pod_path_to_uri(value)
