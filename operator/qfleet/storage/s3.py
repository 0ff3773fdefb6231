"""S3-compatible object storage through boto3.

Why boto3 and not a hand-written client: it is the reference S3 client, so AWS, MinIO and Ceph
RGW all test against it; it brings managed multipart transfers and streaming bodies (large
weights never sit in memory), botocore's standard retry mode (bounded attempts with backoff on
throttling and connection errors), and it reads ``AWS_ENDPOINT_URL``, ``AWS_CA_BUNDLE`` and the
credential variables the way every other AWS tool does, with path-style addressing for on-prem
stores. Request signing (SigV4) is botocore's, never ours.

The client is configured from the standard variables only: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` (an on-prem store), ``AWS_CA_BUNDLE`` (its private CA), plus
``QFLEET_S3_ADDRESSING=path|virtual`` (default: path when ``AWS_ENDPOINT_URL`` is set, as MinIO
and RGW usually need, virtual otherwise) and ``AWS_MAX_ATTEMPTS`` (default 5). With connect and
read timeouts of :data:`CONNECT_TIMEOUT_S` and :data:`READ_TIMEOUT_S`, an endpoint that does not
answer fails within about a minute with a message that names it.

Errors become :mod:`qfleet.errors` types: what the user can fix (AccessDenied, NoSuchBucket,
NoSuchKey, bad credentials) exits 2, which a Job's podFailurePolicy treats as final; an endpoint
that cannot be reached exits 1 (retrying later may help).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from qfleet.errors import InputError, QfleetError
from qfleet.storage.uris import S3Uri

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
DEFAULT_MAX_ATTEMPTS = 5
#: Uploads switch to multipart above this size, in parts of this size (bounded memory per part).
MULTIPART_THRESHOLD = 64 << 20
MULTIPART_CHUNKSIZE = 16 << 20
UPLOAD_CONCURRENCY = 4

#: S3 error codes that the user's input or configuration causes: retrying cannot help.
USER_ERROR_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "NoSuchBucket",
        "NoSuchKey",
        "InvalidToken",
        "ExpiredToken",
        "InvalidObjectState",
        "403",
        "404",
        "400",
    }
)
_HINTS = {
    "AccessDenied": "check the credentials (AWS_ACCESS_KEY_ID) and the bucket policy",
    "InvalidAccessKeyId": "check AWS_ACCESS_KEY_ID",
    "SignatureDoesNotMatch": "check AWS_SECRET_ACCESS_KEY",
    "NoSuchBucket": "check the bucket name and AWS_ENDPOINT_URL",
    "403": "check the credentials and the bucket policy",
}


class StorageError(InputError):
    """The store refused the request for a reason the user can fix (exit 2)."""

    def __init__(self, message: str, *, code: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.code = code


class StorageUnavailableError(QfleetError):
    """The store could not be reached or failed on its side (exit 1: a later retry may help)."""

    exit_code = 1


class ObjectMissingError(StorageError):
    """NoSuchKey / 404 for one object."""


def addressing_style() -> str:
    value = os.environ.get("QFLEET_S3_ADDRESSING", "").strip().lower()
    if value in ("path", "virtual"):
        return value
    if value:
        raise InputError(f"QFLEET_S3_ADDRESSING={value!r} is not 'path' or 'virtual'")
    return "path" if os.environ.get("AWS_ENDPOINT_URL") else "virtual"


def endpoint_name() -> str:
    return os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"


def make_client() -> Any:
    """A boto3 S3 client from the standard AWS variables (see the module docstring)."""
    import boto3
    from botocore.config import Config

    try:
        attempts = int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS))
    except ValueError:
        raise InputError(f"AWS_MAX_ATTEMPTS={os.environ['AWS_MAX_ATTEMPTS']!r} is not a number") from None
    config = Config(
        retries={"mode": "standard", "max_attempts": max(1, attempts)},
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=READ_TIMEOUT_S,
        s3={"addressing_style": addressing_style()},
        # Checksums only where the operation requires them: MinIO/RGW releases differ on the rest.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    session = boto3.session.Session()
    return session.client("s3", region_name=region, config=config)


@contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn botocore's exceptions into one-line qfleet errors naming ``what`` (a URI)."""
    from botocore import exceptions as bce

    try:
        yield
    except bce.ClientError as exc:
        error = exc.response.get("Error", {})
        # A HEAD response has no body: its bare status stands for S3's error code.
        code = {"403": "AccessDenied", "404": "NoSuchKey"}.get(
            str(error.get("Code", "")), error.get("Code", "")
        )
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or exc.__class__.__name__
        text = f"{what}: {code or status} ({message}) from {endpoint_name()}"
        if code in ("NoSuchKey", "404"):
            raise ObjectMissingError(text, code=code) from None
        if code in USER_ERROR_CODES or (isinstance(status, int) and 400 <= status < 500 and status != 429):
            raise StorageError(text, code=code, hint=_HINTS.get(code)) from None
        raise StorageUnavailableError(text) from None
    except bce.NoCredentialsError:
        raise StorageError(
            f"{what}: no credentials", hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except (bce.EndpointConnectionError, bce.ConnectTimeoutError, bce.ReadTimeoutError) as exc:
        raise StorageUnavailableError(
            f"{what}: {endpoint_name()} did not answer after the configured retries ({exc})"
        ) from None
    except bce.BotoCoreError as exc:
        raise StorageUnavailableError(f"{what}: {type(exc).__name__}: {exc}") from None


class S3Store:
    """The few operations qfleet needs, each translating errors into qfleet's."""

    def __init__(self, client: Any | None = None) -> None:
        self.client = client if client is not None else make_client()

    def exists(self, uri: S3Uri) -> bool:
        """Whether the object ``uri`` exists (a missing bucket is an error, not False)."""
        try:
            with translated(str(uri)):
                self.client.head_object(Bucket=uri.bucket, Key=uri.key)
        except ObjectMissingError:
            return False
        return True

    def size(self, uri: S3Uri) -> int:
        with translated(str(uri)):
            return int(self.client.head_object(Bucket=uri.bucket, Key=uri.key)["ContentLength"])

    def list(self, uri: S3Uri) -> list[tuple[str, int]]:
        """``(key, size)`` of every object below the prefix ``uri``."""
        found: list[tuple[str, int]] = []
        with translated(str(uri)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=uri.bucket, Prefix=uri.prefix
            )
            for page in pages:
                found += [(item["Key"], int(item["Size"])) for item in page.get("Contents", [])]
        return found

    def read_bytes(self, uri: S3Uri, *, limit: int = 16 << 20) -> bytes:
        """A small object's bytes (``qfleet.json``); refuses one larger than ``limit``."""
        with translated(str(uri)):
            response = self.client.get_object(Bucket=uri.bucket, Key=uri.key)
            if int(response.get("ContentLength", 0)) > limit:
                raise InputError(f"{uri} is larger than {limit} bytes")
            return bytes(response["Body"].read())

    def download(
        self, uri: S3Uri, handle: IO[bytes], *, progress: Callable[[int], None] | None = None
    ) -> tuple[int, str]:
        """Stream ``uri`` into ``handle`` (see :func:`qfleet.storage.transfer.copy_stream`: bounded
        memory, hashing and writing overlap the download); return (bytes, sha256). botocore's
        body checks at its end that as many bytes came as the object's Content-Length."""
        from qfleet.storage.transfer import copy_stream

        with translated(str(uri)):
            body = self.client.get_object(Bucket=uri.bucket, Key=uri.key)["Body"]
            try:
                return copy_stream(body, handle, progress=progress)
            finally:
                body.close()

    def upload(self, path: Path, uri: S3Uri) -> None:
        """Upload one file (multipart above :data:`MULTIPART_THRESHOLD`, bounded memory)."""
        from boto3.s3.transfer import TransferConfig

        config = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=UPLOAD_CONCURRENCY,
        )
        from s3transfer.exceptions import S3UploadFailedError

        try:
            with translated(str(uri)):
                self.client.upload_file(str(path), uri.bucket, uri.key, Config=config)
        except S3UploadFailedError as exc:
            text = str(exc)
            for code in ("AccessDenied", "NoSuchBucket", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                if code in text:
                    raise StorageError(f"{uri}: {code} from {endpoint_name()}", code=code) from None
            raise StorageUnavailableError(f"{uri}: upload failed: {text}") from None

    def delete(self, uri: S3Uri) -> None:
        with translated(str(uri)):
            self.client.delete_object(Bucket=uri.bucket, Key=uri.key)

    def put_if_absent(self, data: bytes, uri: S3Uri) -> bool:
        """Write a small object only where none exists (``If-None-Match: *``); False when one did."""
        try:
            with translated(str(uri)):
                self.client.put_object(Bucket=uri.bucket, Key=uri.key, Body=data, IfNoneMatch="*")
        except StorageError as exc:
            if exc.code in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return False
            raise
        return True
