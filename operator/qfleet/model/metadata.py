"""``qfleet.json``: what we know about a model directory (provenance, input spec, quantization).

Every IR directory qfleet writes holds ``model.xml``, ``model.bin`` and ``qfleet.json``. The
JSON is the contract between the stages and the server:

- ``kind``: ``"fp32"`` (converted) or ``"int8"`` (quantized).
- ``source``: ``format``, ``files`` (name -> sha256), ``epoch`` (mxnet).
- ``input``: ``name``, ``shape`` (batch -1), ``layout`` (NCHW), ``color`` (RGB/BGR) and the
  ``mean``/``scale`` baked into the IR (empty lists when the graph normalises itself).
- ``output``: ``name``, ``shape``.
- ``quantization`` (int8 only): ``isa`` (the tier it was quantized on), ``preset``,
  ``subset_size``, ``calibration`` {``path``, ``sha256``, ``samples``}, ``reverted_layers``.
- ``isa``: for int8, the tier the model is meant to be served on (same as quantization.isa).
- ``versions``: library versions; ``duration_s`` of the stage that wrote it.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path
from typing import Any

from qfleet.errors import InputError
from qfleet.outputs import read_json, write_json

METADATA_FILE = "qfleet.json"
MODEL_XML = "model.xml"
MODEL_BIN = "model.bin"


def metadata_path(model_xml: str | os.PathLike[str]) -> Path:
    return Path(model_xml).with_name(METADATA_FILE)


def read_metadata(model_xml: str | os.PathLike[str], *, required: bool = False) -> dict[str, Any]:
    """The ``qfleet.json`` beside ``model_xml``; {} when absent (unless ``required``)."""
    path = metadata_path(model_xml)
    if not path.exists():
        if required:
            raise InputError(f"{path} is missing", hint="was this model written by qfleet convert/quantize?")
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path} does not hold a JSON object")
    return data


def write_metadata(directory: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    path = Path(directory) / METADATA_FILE
    write_json(path, data)
    return path


def library_versions(*names: str) -> dict[str, str]:
    """Installed versions of the given distributions (plus qfleet, numpy and openvino)."""
    wanted = ("qfleet", "numpy", "openvino", *names)
    versions: dict[str, str] = {}
    for name in dict.fromkeys(wanted):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def require_model_xml(model_xml: str | os.PathLike[str]) -> Path:
    """Check that an IR's .xml and .bin exist, with an error naming the missing file."""
    xml = Path(model_xml)
    if xml.is_dir():
        xml = xml / MODEL_XML
    if not xml.is_file():
        raise InputError(f"model {xml} does not exist", hint="pass the model.xml of an OpenVINO IR")
    if xml.suffix != ".xml":
        raise InputError(f"model {xml} is not an OpenVINO IR .xml file")
    weights = xml.with_suffix(".bin")
    if not weights.is_file():
        raise InputError(f"weights {weights} for model {xml} do not exist")
    return xml
