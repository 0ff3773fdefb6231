"""``qfleet fetch``: a model or file into a directory, every file verified (the storage initializer)."""

from __future__ import annotations

import argparse
from typing import Any

from qfleet import extras
from qfleet.storage.uris import is_s3

HELP = "download a model (s3://, pvc:// or a directory) or a file (https://) into DIR, verifying sha256"
DESCRIPTION = (
    HELP + "\n\n"
    "A model is a prefix or directory holding qfleet.json: every file its `files` record lists is\n"
    "downloaded and checked against its sha256, qfleet.json last. --sha256 pins qfleet.json itself\n"
    "(and with it every file), or the one file an https:// URL or s3:// object names. Files land\n"
    "in a staging directory and move into DIR only when every check passed; DIR must be new or\n"
    "empty, or already hold the same model (then it is verified and kept).\n\n"
    "S3 uses the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,\n"
    "AWS_ENDPOINT_URL, AWS_CA_BUNDLE) and QFLEET_S3_ADDRESSING=path|virtual.\n"
    "Exit status: 0 fetched, 2 for what retrying cannot fix (AccessDenied, NoSuchBucket, NoSuchKey,\n"
    "a sha256 mismatch, a missing file), 1 otherwise (an endpoint that does not answer)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "uri", metavar="URI", help="s3://BUCKET/PREFIX, pvc://CLAIM/PATH, https://... or a path"
    )
    parser.add_argument("dest", metavar="DIR", help="directory to fetch into (new or empty)")
    parser.add_argument(
        "--sha256", default=None, help="expected sha256 of the file, or of a model's qfleet.json"
    )
    parser.add_argument(
        "--allow-http", action="store_true", help="accept a plain http:// URL (only with --sha256 pinned)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    if is_s3(args.uri):
        extras.require("fetch", "boto3", extra="server")
    from qfleet.errors import InputError
    from qfleet.storage.fetch import fetch

    if args.allow_http and not args.sha256:
        raise InputError("--allow-http needs --sha256: plain http is accepted only for pinned bytes")
    return fetch(
        args.uri,
        args.dest,
        sha256=args.sha256,
        progress=getattr(args, "progress", False),
        allow_http=args.allow_http,
    )
