"""``pvc://CLAIM/PATH`` URIs: where models, datasets and artifacts live inside the cluster.

A URI names a PersistentVolumeClaim and a path inside it. Pods mount each claim they need at
``MOUNT_ROOT/CLAIM``, so a URI maps to one in-pod path and back; the Job's command line and the
server's ``--model`` hold in-pod paths. Only ``pvc://`` is supported; other schemes are refused
with a message that says so, and so are paths that could escape the claim ('..', absolute).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

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
