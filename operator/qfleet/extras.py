"""Optional dependencies: which extra provides what, and a one-line error when one is missing.

qfleet installs in slices (pyproject's extras), one per image: ``server``, ``operator``,
``toolkit``, and ``demo`` on top of the toolkit. A verb run without its slice should say which
extra to install, not end in a traceback from deep inside a library. Verbs call :func:`require`
before any work (cheap: it only looks the modules up, importing nothing), and the command line
runs every verb inside :func:`missing_extra_as_error`, which catches what a check missed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from qfleet.errors import InputError

_TOOLKIT_MODULES = ("mxnet", "numpy", "onnx", "openvino", "nncf", "PIL", "simplejpeg", "tqdm", "boto3")
#: The importable top-level modules each extra installs, as the extras in pyproject.toml list them.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "server": ("openvino", "numpy", "aiohttp", "prometheus_client", "boto3", "grpc", "google.protobuf"),
    "operator": ("kopf", "kubernetes", "aiohttp", "prometheus_client", "yaml"),
    "toolkit": _TOOLKIT_MODULES,
    "demo": (*_TOOLKIT_MODULES, "matplotlib"),
}

#: The extra that each verb needs (``plan`` and ``gate`` need none).
VERB_EXTRAS: dict[str, str] = {
    "serve": "server",
    "loadtest": "server",
    "operator": "operator",
    "convert": "toolkit",
    "quantize": "toolkit",
    "validate": "toolkit",
    "benchmark": "toolkit",
    "pipeline": "toolkit",
    "fetch": "server",  # boto3, for s3://; https:// and local paths need nothing
    "isa": "server",  # OpenVINO, to ask its CPU plugin; the server and toolkit extras both have it
    "demo": "demo",
}

#: MXNet 1.9.1 (and the onnx it exports with) has wheels for Python 3.11 at most.
PYTHON_311_ONLY = frozenset({"mxnet", "onnx"})


class MissingExtraError(InputError):
    """A verb needs an optional package that this installation of qfleet does not have."""


def missing_extra(verb: str, extra: str, module: str) -> MissingExtraError:
    """The one-line error for ``verb`` run without ``module``, which ``extra`` installs."""
    hint = None
    if module in PYTHON_311_ONLY and sys.version_info >= (3, 12):
        hint = f"{module} has no wheels past Python 3.11; run this on Python 3.11"
    return MissingExtraError(
        f"qfleet {verb} needs the {extra} extra ({module} is not installed): pip install 'qfleet[{extra}]'",
        hint=hint,
    )


def is_installed(module: str) -> bool:
    """Whether the top-level ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(verb: str, *modules: str, extra: str | None = None) -> None:
    """Raise :class:`MissingExtraError` unless every one of ``modules`` is installed.

    ``extra`` defaults to the verb's own (:data:`VERB_EXTRAS`); ``modules`` default to all of
    that extra's. Nothing is imported, so a verb can check before it starts long work.
    """
    extra = extra or VERB_EXTRAS[verb]
    for module in modules or EXTRA_MODULES[extra]:
        if not is_installed(module):
            raise missing_extra(verb, extra, module)


@contextmanager
def missing_extra_as_error(verb: str, extra: str | None = None) -> Iterator[None]:
    """Turn an import of a missing optional package into :class:`MissingExtraError`.

    Only a package that the verb's extra provides counts; any other missing module is a bug (or
    a broken install of a dependency) and is raised as it is.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        module = (exc.name or "").partition(".")[0]
        extra = extra or VERB_EXTRAS.get(verb)
        if extra is None or module not in EXTRA_MODULES[extra]:
            raise
        raise missing_extra(verb, extra, module) from exc
