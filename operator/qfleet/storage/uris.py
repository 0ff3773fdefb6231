"""Where inputs and artifacts live: ``s3://``, ``https://``, ``pvc://`` and local paths.

Pure parsing, no I/O. A URI is one of

- ``s3://BUCKET/KEY/PREFIX``: an object or a prefix in an S3-compatible store (AWS, MinIO, Ceph
  RGW...), reached with the standard AWS variables (see :mod:`qfleet.storage.s3`);
- ``https://HOST/PATH``: a read-only input, downloaded and checked against a pinned sha256;
  ``http://`` only where the caller explicitly allows it (``allow_http=True``);
- ``pvc://CLAIM/PATH``: a path inside a PersistentVolumeClaim, as mounted in a pod;
- anything else without a scheme: a local path.

Keys are checked like paths: '..', '.', empty or absolute parts, backslashes and NUL are refused,
so a key can never name something outside the prefix it was joined to. Every error is one line
that names the URI.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from dataclasses import dataclass

from qfleet.errors import InputError

#: Bucket names as S3 accepts them for new buckets (and MinIO and RGW enforce): 3-63 characters of
#: lower-case letters, digits, '.' and '-', starting and ending with a letter or digit.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)$", re.DOTALL)


class StorageUriError(InputError):
    """A URI that names no usable location; the message names the URI and says why."""


@dataclass(frozen=True)
class S3Uri:
    """``s3://bucket/key``: ``key`` is normalised ('' for the bucket's root, no leading or trailing '/')."""

    bucket: str
    key: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def join(self, *parts: str) -> S3Uri:
        """A URI below this one; each part must be a plain relative key."""
        key = self.key
        for part in parts:
            checked = checked_key(part, uri=f"{self}/{part}")
            key = f"{key}/{checked}" if key and checked else (key or checked)
        return S3Uri(self.bucket, key)

    @property
    def name(self) -> str:
        """The last part of the key ('' for a bucket)."""
        return self.key.rsplit("/", 1)[-1]

    @property
    def prefix(self) -> str:
        """The key as a prefix that matches only objects *below* it ('' or ending in '/')."""
        return f"{self.key}/" if self.key else ""


@dataclass(frozen=True)
class HttpUri:
    """A read-only ``https://`` (or explicitly allowed ``http://``) file."""

    url: str

    def __str__(self) -> str:
        return self.url

    @property
    def name(self) -> str:
        """The file name the URL's path ends in ('download' when it ends in '/')."""
        path = urllib.parse.urlsplit(self.url).path
        return posixpath.basename(urllib.parse.unquote(path)) or "download"


@dataclass(frozen=True)
class LocalPath:
    """A path on this machine (a ``pvc://`` URI becomes its in-pod path)."""

    path: str

    def __str__(self) -> str:
        return self.path


Location = S3Uri | HttpUri | LocalPath


def checked_key(key: str, *, uri: str) -> str:
    """``key`` normalised (no leading/trailing '/'), or :class:`StorageUriError` when unsafe."""
    if "\\" in key or "\x00" in key:
        raise StorageUriError(f"{uri!r}: the key contains a backslash or NUL; use '/' separated keys")
    if key.startswith("/"):
        raise StorageUriError(f"{uri!r}: the key is absolute (starts with '/'); write s3://BUCKET/KEY")
    parts = key.rstrip("/").split("/") if key.rstrip("/") else []
    if ".." in parts or "." in parts:
        raise StorageUriError(f"{uri!r}: the key contains '..' or '.'; keys must stay below their prefix")
    if "" in parts:
        raise StorageUriError(f"{uri!r}: the key has an empty part ('//'); remove the extra '/'")
    return "/".join(parts)


def parse_s3_uri(value: str) -> S3Uri:
    """Parse ``s3://BUCKET[/KEY]``."""
    match = _SCHEME.match(value.strip())
    if not match or match["scheme"].lower() != "s3":
        raise StorageUriError(f"{value!r} is not an s3:// URI; write it as s3://BUCKET/KEY")
    bucket, _, key = match["rest"].partition("/")
    if not bucket:
        raise StorageUriError(f"{value!r} names no bucket; write it as s3://BUCKET/KEY")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise StorageUriError(
            f"{value!r}: {bucket!r} is not a valid bucket name "
            "(3-63 lower-case letters, digits, '.' and '-', starting and ending with a letter or digit)"
        )
    return S3Uri(bucket, checked_key(key, uri=value))


def parse_http_uri(value: str, *, allow_http: bool = False) -> HttpUri:
    """Parse an ``https://`` URL (``http://`` only with ``allow_http``)."""
    parts = urllib.parse.urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise StorageUriError(
            f"{value!r} uses plain http; use https:// (http is allowed only where explicitly enabled)"
        )
    if scheme not in ("http", "https"):
        raise StorageUriError(f"{value!r} is not an https:// URL")
    if not parts.hostname:
        raise StorageUriError(f"{value!r} names no host")
    if "\x00" in value or "\\" in value:
        raise StorageUriError(f"{value!r} contains a backslash or NUL")
    segments = urllib.parse.unquote(parts.path).split("/")
    if ".." in segments:
        raise StorageUriError(f"{value!r}: the path contains '..'")
    return HttpUri(value.strip())


def parse_location(value: str, *, allow_http: bool = False) -> Location:
    """Any supported location: s3://, https:// (http:// with ``allow_http``), pvc:// or a local path."""
    if not isinstance(value, str) or not value.strip():
        raise StorageUriError(f"{value!r} is not a location; give a path or an s3:// or https:// URI")
    match = _SCHEME.match(value.strip())
    if not match:
        if "\x00" in value:
            raise StorageUriError(f"{value!r} contains NUL")
        return LocalPath(value)
    scheme = match["scheme"].lower()
    if scheme == "s3":
        return parse_s3_uri(value)
    if scheme in ("http", "https"):
        return parse_http_uri(value, allow_http=allow_http)
    if scheme == "pvc":
        from qfleet.fleet.uris import UriError, parse_pvc_uri

        try:
            return LocalPath(parse_pvc_uri(value, field="location").pod_path)
        except UriError as exc:
            raise StorageUriError(str(exc)) from None
    raise StorageUriError(
        f"{value!r} uses the unsupported scheme {scheme!r}; use s3://, https://, pvc:// or a local path"
    )


def is_s3(value: str | None) -> bool:
    """Whether ``value`` is spelled as an ``s3://`` URI (not whether it is a valid one)."""
    return bool(value) and str(value).strip().lower().startswith("s3://")


def is_http(value: str | None) -> bool:
    """Whether ``value`` is spelled as an ``https://`` or ``http://`` URL."""
    return bool(value) and str(value).strip().lower().startswith(("https://", "http://"))
