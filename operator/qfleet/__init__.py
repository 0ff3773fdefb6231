"""qfleet: quantize a face-recognition model per CPU ISA tier, gate it on LFW, and size the fleet."""

from importlib.metadata import PackageNotFoundError, version

try:
    # pyproject.toml's `version` is the one source; the chart's appVersion follows it (a test checks).
    __version__ = version("qfleet")
except PackageNotFoundError:  # the source tree on sys.path without an install
    __version__ = "0+unknown"
