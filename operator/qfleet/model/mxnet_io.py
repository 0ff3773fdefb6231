"""The one module that imports MXNet: finding, checking and exporting MXNet checkpoints.

MXNet 1.9.1 (its last release; the project is retired) still uses ``np.bool``, which numpy 1.24
removed, while NNCF needs numpy >= 1.24. Restoring the alias before the import is enough; keep
that shim here and import MXNet only through :func:`import_mxnet`.

A checkpoint is ``PREFIX-symbol.json`` (the graph) plus ``PREFIX-%04d.params`` (the weights of
one epoch, keys ``arg:NAME``/``aux:NAME``), as written by ``mx.model.save_checkpoint`` and by
Gluon's ``HybridBlock.export``. OpenVINO no longer reads MXNet, so a checkpoint reaches OpenVINO
through ONNX (:func:`export_onnx`). Everything a user can get wrong -- a missing file, an epoch
that is not there, a corrupt or truncated params file, params from another model, an input shape
the weights were not trained for -- is checked here first and reported as one line that names
the file, because MXNet's own errors are C++ traces that name neither.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from qfleet.errors import ConversionError, InputError

log = logging.getLogger(__name__)

SYMBOL_SUFFIX = "-symbol.json"
_PARAMS_RE = re.compile(r"-(\d{4,})\.params$")
#: The embedding output of insightface's training symbols (they also carry a softmax head).
INSIGHTFACE_EMBEDDING = "fc1_output"
#: Input sizes tried when the weights do not fit the given one, to suggest the right one.
_COMMON_FACE_SHAPES: tuple[tuple[int, int, int], ...] = (
    (3, 112, 112),
    (3, 112, 96),
    (3, 96, 96),
    (3, 128, 128),
    (3, 160, 160),
    (3, 224, 224),
    (3, 64, 64),
)


@functools.cache
def import_mxnet() -> ModuleType:
    import numpy

    # MXNet prints a line per executor bind ("Subgraph backend MKLDNN is activated") otherwise.
    os.environ.setdefault("MXNET_SUBGRAPH_VERBOSE", "0")
    with warnings.catch_warnings():
        # Even asking numpy 1.26 whether np.bool exists emits a FutureWarning.
        warnings.simplefilter("ignore")
        if not hasattr(numpy, "bool"):
            numpy.bool = bool  # type: ignore[attr-defined]
        import mxnet

    module: ModuleType = mxnet
    return module


# --------------------------------------------------------------------------------------------
# Locating the files (pure: no MXNet needed)


@dataclass(frozen=True)
class CheckpointFiles:
    """The two files of one epoch of an MXNet checkpoint."""

    prefix: Path
    symbol: Path
    params: Path
    epoch: int


def params_path(prefix: str | os.PathLike[str], epoch: int) -> Path:
    return Path(f"{os.fspath(prefix)}-{epoch:04d}.params")


def available_epochs(prefix: str | os.PathLike[str]) -> list[int]:
    """Epochs that have a ``PREFIX-NNNN.params`` file, ascending."""
    base = Path(prefix)
    directory = base.parent if str(base.parent) else Path(".")
    if not directory.is_dir():
        return []
    epochs: list[int] = []
    for entry in directory.iterdir():
        name = entry.name
        if not name.startswith(f"{base.name}-"):
            continue
        match = _PARAMS_RE.search(name)
        if match and name[: match.start()] == base.name and entry.is_file():
            epochs.append(int(match.group(1)))
    return sorted(epochs)


def split_source(source: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """The checkpoint prefix a user meant, and the epoch if they named a params file.

    Accepts the prefix itself, ``PREFIX-symbol.json``, ``PREFIX-NNNN.params``, or a directory that
    holds exactly one ``*-symbol.json``.
    """
    path = Path(source)
    name = path.name
    if name.endswith(SYMBOL_SUFFIX):
        return path.with_name(name[: -len(SYMBOL_SUFFIX)]), None
    match = _PARAMS_RE.search(name)
    if match:
        return path.with_name(name[: match.start()]), int(match.group(1))
    if path.is_dir():
        symbols = sorted(path.glob(f"*{SYMBOL_SUFFIX}"))
        if len(symbols) == 1:
            return symbols[0].with_name(symbols[0].name[: -len(SYMBOL_SUFFIX)]), None
        found = ", ".join(s.name for s in symbols) or "none"
        raise InputError(
            f"MXNet source {path} is a directory with {len(symbols)} *{SYMBOL_SUFFIX} files ({found})",
            hint="pass the checkpoint prefix, e.g. DIR/model for DIR/model-symbol.json",
        )
    return path, None


def _default_epoch(prefix: Path, epochs: Sequence[int]) -> int:
    """Epoch 1 when present, else the only epoch; several without 1 is the user's choice."""
    if 1 in epochs:
        return 1
    if len(epochs) == 1:
        return epochs[0]
    listed = ", ".join(str(e) for e in epochs)
    raise InputError(
        f"MXNet checkpoint {prefix} has several epochs ({listed}) and none is 1",
        hint="choose one with --epoch",
    )


def locate_checkpoint(source: str | os.PathLike[str], *, epoch: int | None = None) -> CheckpointFiles:
    """Find ``PREFIX-symbol.json`` and the params file of ``epoch``.

    Without ``epoch``: the epoch named in ``source`` (a params file), else epoch 1 if present,
    else the only epoch present.
    """
    prefix, named_epoch = split_source(source)
    if epoch is not None and named_epoch is not None and epoch != named_epoch:
        raise InputError(f"--source {source} names epoch {named_epoch} but --epoch is {epoch}")
    if epoch is None:
        epoch = named_epoch
    if epoch is not None and epoch < 0:
        raise InputError(f"epoch {epoch} for MXNet checkpoint {prefix} is negative")
    symbol = Path(f"{os.fspath(prefix)}{SYMBOL_SUFFIX}")
    if not symbol.is_file():
        raise InputError(
            f"MXNet symbol file {symbol} does not exist",
            hint="--source is the checkpoint prefix: PREFIX for PREFIX-symbol.json and PREFIX-0001.params",
        )
    epochs = available_epochs(prefix)
    if not epochs:
        raise InputError(
            f"no MXNet params file {params_path(prefix, epoch if epoch is not None else 1).name} "
            f"(nor any {prefix.name}-NNNN.params) beside {symbol}",
            hint="copy the checkpoint's .params file next to its symbol file",
        )
    if epoch is None:
        epoch = _default_epoch(prefix, epochs)
    params = params_path(prefix, epoch)
    if epoch not in epochs:
        listed = ", ".join(str(e) for e in epochs)
        raise InputError(
            f"epoch {epoch} of MXNet checkpoint {prefix} not found: {params.name} does not exist",
            hint=f"epochs present: {listed}; choose one with --epoch",
        )
    return CheckpointFiles(prefix=prefix, symbol=symbol, params=params, epoch=epoch)


# --------------------------------------------------------------------------------------------
# Loading and checking


@dataclass
class Checkpoint:
    """A loaded, checked checkpoint, reduced to one input and one output."""

    files: CheckpointFiles
    symbol: Any  # mxnet.symbol.Symbol with a single output
    arg_params: dict[str, Any]  # name -> mxnet NDArray (float32)
    aux_params: dict[str, Any]
    input_name: str
    output_name: str  # e.g. "fc1_output"
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    #: Outputs of the symbol file that were not exported (e.g. a training softmax head).
    dropped_outputs: list[str] = field(default_factory=list)


def _mxnet_reason(exc: BaseException) -> str:
    """The informative part of an MXNet error (they come with a C++ trace, a timestamp, a source line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    chosen = lines[-1] if lines else type(exc).__name__
    for line in reversed(lines):
        if "Check failed" in line or "Error in operator" in line or "inconsistent" in line.lower():
            chosen = line
            break
    chosen = chosen.removeprefix("MXNetError: ")
    chosen = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", chosen)
    # "Check failed: <C++ expression>: <message>" -> the message, when there is one.
    return re.sub(r"Check failed: .*?: (?=\S)", "", chosen, count=1)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence MXNet's Python-side prints (``infer_shape`` prints its arguments on failure)."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def _load_symbol(mx: ModuleType, path: Path) -> Any:
    try:
        return mx.sym.load(str(path))
    except mx.base.MXNetError as exc:
        raise InputError(
            f"MXNet symbol file {path} is not a valid symbol JSON: {_mxnet_reason(exc)}"
        ) from None


def _load_params(mx: ModuleType, path: Path, symbol: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        loaded = mx.nd.load(str(path))
    except mx.base.MXNetError as exc:
        raise InputError(
            f"MXNet params file {path} is corrupt or truncated ({_mxnet_reason(exc)})",
            hint="copy the checkpoint again; its size or contents are wrong",
        ) from None
    if not isinstance(loaded, dict) or not loaded:
        raise InputError(f"MXNet params file {path} holds no named parameters")
    auxiliary = set(symbol.list_auxiliary_states())
    arg_params: dict[str, Any] = {}
    aux_params: dict[str, Any] = {}
    for key, value in loaded.items():
        kind, _, name = key.partition(":")
        if not name:  # Gluon's save_parameters writes bare names
            name, kind = key, ("aux" if key in auxiliary else "arg")
        if kind not in ("arg", "aux"):
            raise InputError(f"MXNet params file {path} has a key {key!r} that is neither arg: nor aux:")
        if value.dtype != np.float32:
            if not np.issubdtype(value.dtype, np.floating):
                raise InputError(f"parameter {name!r} in {path} has dtype {value.dtype}, not floating point")
            value = value.astype(np.float32)
        (arg_params if kind == "arg" else aux_params)[name] = value
    for name, value in {**arg_params, **aux_params}.items():
        if not np.isfinite(value.asnumpy()).all():
            raise InputError(
                f"parameter {name!r} in MXNet params file {path} contains NaN or infinite values",
                hint="the file is corrupt, or the training run diverged",
            )
    return arg_params, aux_params


def _choose_output(symbol: Any, input_name: str, params: set[str]) -> tuple[Any, list[str]]:
    """One output that needs only the image: the embedding of a training symbol, not its loss."""
    outputs = symbol.list_outputs()

    def needs_only_image(candidate: Any) -> bool:
        extra = [a for a in candidate.list_arguments() if a not in params and a != input_name]
        # A missing weight is reported later as a mismatch; only label-like inputs disqualify.
        return not any("label" in a for a in extra)

    if len(outputs) == 1 and needs_only_image(symbol):
        return symbol, []
    internals = symbol.get_internals()
    if INSIGHTFACE_EMBEDDING in internals.list_outputs():
        chosen = internals[INSIGHTFACE_EMBEDDING]
        return chosen, [o for o in outputs if o != INSIGHTFACE_EMBEDDING]
    for index, name in enumerate(outputs):
        candidate = symbol[index]
        if needs_only_image(candidate):
            return candidate, [o for o in outputs if o != name]
    raise ConversionError(
        f"every output of the MXNet symbol ({', '.join(outputs)}) needs a label input",
        hint=f"save the embedding part of the symbol, e.g. sym.get_internals()['{INSIGHTFACE_EMBEDDING}']",
    )


def _infer_arg_shapes(
    symbol: Any, input_name: str, shape: Sequence[int]
) -> dict[str, tuple[int, ...]] | None:
    mx = import_mxnet()
    try:
        with _quiet():
            arg_shapes, _, aux_shapes = symbol.infer_shape(**{input_name: tuple(shape)})
    except mx.base.MXNetError:
        return None
    if arg_shapes is None:
        return None
    names = symbol.list_arguments() + symbol.list_auxiliary_states()
    return {n: tuple(s) for n, s in zip(names, list(arg_shapes) + list(aux_shapes), strict=True)}


def _fmt_shape(shape: Sequence[int]) -> str:
    return ",".join(str(d) for d in shape)


def _check_shapes(
    files: CheckpointFiles, symbol: Any, input_name: str, input_shape: tuple[int, ...], params: dict[str, Any]
) -> tuple[int, ...]:
    """Check that the params fit the symbol at ``input_shape``; returns the output shape."""
    mx = import_mxnet()
    try:
        with _quiet():
            arg_shapes, out_shapes, aux_shapes = symbol.infer_shape(**{input_name: input_shape})
    except mx.base.MXNetError as exc:
        suggestion = _fitting_shape(symbol, input_name, input_shape[0], params)
        raise InputError(
            f"input shape {_fmt_shape(input_shape)} does not fit MXNet symbol {files.symbol}: {_mxnet_reason(exc)}",
            hint=_shape_hint(suggestion),
        ) from None
    if arg_shapes is None:  # MXNet could not infer every shape from the input alone
        raise InputError(
            f"MXNet symbol {files.symbol} needs inputs besides {input_name!r} to infer its shapes",
            hint="save a symbol whose only input is the face image",
        )
    names = symbol.list_arguments() + symbol.list_auxiliary_states()
    needed = dict(zip(names, list(arg_shapes) + list(aux_shapes), strict=True))
    needed.pop(input_name)
    missing = [n for n in needed if n not in params]
    if missing:
        shown = ", ".join(f"{n!r} (shape {_fmt_shape(needed[n])})" for n in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InputError(
            f"MXNet params file {files.params} does not match symbol {files.symbol}: "
            f"it lacks parameter {shown}{more}",
            hint="use the params file saved with this symbol",
        )
    wrong = [n for n in needed if tuple(params[n].shape) != tuple(needed[n])]
    if wrong:
        _report_wrong_shapes(files, symbol, input_name, input_shape, params, needed, wrong)
    return tuple(out_shapes[0])


def _report_wrong_shapes(
    files: CheckpointFiles,
    symbol: Any,
    input_name: str,
    input_shape: tuple[int, ...],
    params: dict[str, Any],
    needed: dict[str, Any],
    wrong: list[str],
) -> None:
    """Raise the error for params whose shapes differ from what the symbol needs at ``input_shape``."""
    first = wrong[0]
    detail = (
        f"parameter {first!r} has shape {_fmt_shape(params[first].shape)} in the params "
        f"but the symbol needs {_fmt_shape(needed[first])}"
    )
    if len(wrong) > 1:
        detail += f" ({len(wrong) - 1} more differ)"
    # Weights whose shape follows the input (the first conv's channels, the FC after flatten)
    # point at the input shape rather than at a foreign params file.
    probe = (input_shape[0], input_shape[1] + 1, *(d + 32 for d in input_shape[2:]))
    probed = _infer_arg_shapes(symbol, input_name, probe)
    if probed is not None and all(probed[n] != needed[n] for n in wrong):
        suggestion = _fitting_shape(symbol, input_name, input_shape[0], params)
        raise InputError(
            f"input shape {_fmt_shape(input_shape)} does not fit MXNet checkpoint {files.prefix}: {detail}",
            hint=_shape_hint(suggestion),
        )
    raise InputError(
        f"MXNet params file {files.params} does not match symbol {files.symbol}: {detail}",
        hint="use the params file saved with this symbol",
    )


def _fitting_shape(
    symbol: Any, input_name: str, batch: int, params: dict[str, Any]
) -> tuple[int, ...] | None:
    """A common face input size that every weight of ``symbol`` fits, if there is one."""
    for chw in _COMMON_FACE_SHAPES:
        shapes = _infer_arg_shapes(symbol, input_name, (batch, *chw))
        if shapes is None:
            continue
        shapes.pop(input_name, None)
        if all(n in params and tuple(params[n].shape) == s for n, s in shapes.items()):
            return (batch, *chw)
    return None


def _shape_hint(suggestion: tuple[int, ...] | None) -> str:
    if suggestion:
        return f"the weights fit --input-shape {_fmt_shape(suggestion)}"
    return "pass the shape the model was trained for with --input-shape N,C,H,W"


def load_checkpoint(files: CheckpointFiles, *, input_shape: Sequence[int]) -> Checkpoint:
    """Load and check a checkpoint for ``input_shape`` (N,C,H,W); raise a one-line error if unfit."""
    mx = import_mxnet()
    shape = tuple(int(d) for d in input_shape)
    symbol = _load_symbol(mx, files.symbol)
    arg_params, aux_params = _load_params(mx, files.params, symbol)
    param_names = set(arg_params) | set(aux_params)
    inputs = [a for a in symbol.list_arguments() if a not in param_names]
    if "data" in inputs:
        input_name = "data"
    elif inputs:
        input_name = inputs[0]
    else:
        raise InputError(f"MXNet symbol {files.symbol} has no input: every argument is a parameter")
    chosen, dropped = _choose_output(symbol, input_name, param_names)
    if dropped:
        log.info(
            "exporting output %s of %s; not exporting %s", chosen.list_outputs()[0], files.symbol, dropped
        )
    output_shape = _check_shapes(files, chosen, input_name, shape, {**arg_params, **aux_params})
    used_args = set(chosen.list_arguments())
    used_aux = set(chosen.list_auxiliary_states())
    return Checkpoint(
        files=files,
        symbol=chosen,
        arg_params={k: v for k, v in arg_params.items() if k in used_args},
        aux_params={k: v for k, v in aux_params.items() if k in used_aux},
        input_name=input_name,
        output_name=chosen.list_outputs()[0],
        input_shape=shape,
        output_shape=output_shape,
        dropped_outputs=dropped,
    )


# --------------------------------------------------------------------------------------------
# Export and reference inference


@contextlib.contextmanager
def _root_logging_at_least(level: int) -> Iterator[None]:
    """mxnet.onnx logs through the root logger (temp file paths, shapes); keep that out of the CLI."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, level))
    try:
        yield
    finally:
        root.setLevel(previous)


def export_onnx(checkpoint: Checkpoint, onnx_path: str | os.PathLike[str]) -> Path:
    """Export to ONNX with a dynamic batch dimension (``None,C,H,W``)."""
    mx = import_mxnet()
    import mxnet.onnx  # noqa: F401  (registers mx.onnx)

    _, *chw = checkpoint.input_shape
    target = Path(onnx_path)
    symbol = _with_explicit_defaults(checkpoint.symbol)
    params = {**checkpoint.arg_params, **checkpoint.aux_params}
    # mxnet.onnx ignores BatchNorm's fix_gamma and exports the stored gamma, but MXNet computes
    # with gamma = 1 there (insightface's fc1 is such a BatchNorm): export what MXNet computes.
    for gamma in fixed_gammas(checkpoint.symbol):
        if gamma in params:
            params[gamma] = mx.nd.ones_like(params[gamma])
    try:
        with _root_logging_at_least(logging.WARNING), _quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mx.onnx.export_model(
                symbol,
                params,
                in_shapes=[checkpoint.input_shape],
                in_types=[np.float32],
                onnx_file_path=str(target),
                dynamic=True,
                dynamic_input_shapes=[(None, *chw)],
            )
    except AttributeError as exc:
        match = re.search(r"op type (\S+?) yet", str(exc))
        if not match:
            raise
        op = match.group(1)
        nodes = [n["name"] for n in _graph_nodes(checkpoint.symbol) if n["op"] == op]
        where = f" (node {nodes[0]!r})" if nodes else ""
        raise ConversionError(
            f"MXNet operator {op}{where} in {checkpoint.files.symbol} has no ONNX export, "
            "so OpenVINO cannot convert it",
            hint="replace it with supported operators, or export the model to ONNX yourself",
        ) from None
    except (ValueError, TypeError, KeyError, IndexError, mx.base.MXNetError) as exc:
        raise ConversionError(
            f"exporting MXNet checkpoint {checkpoint.files.prefix} to ONNX failed: {type(exc).__name__}: {exc}",
            hint="export it to ONNX yourself and use --format onnx",
        ) from None
    return target


#: Attributes whose MXNet default mxnet.onnx gets wrong when a symbol leaves them out (it reads a
#: missing boolean as false). insightface's ``pre_fc1`` is a FullyConnected on a 4-D tensor with
#: no ``flatten`` attribute: exported as is, it becomes a per-row matmul with the wrong shape.
_MXNET_DEFAULTS: dict[str, dict[str, str]] = {"FullyConnected": {"flatten": "True"}}


def _with_explicit_defaults(symbol: Any) -> Any:
    """The same graph with the defaults in :data:`_MXNET_DEFAULTS` written out."""
    import json

    mx = import_mxnet()
    graph = json.loads(symbol.tojson())
    changed = False
    for node in graph["nodes"]:
        for attr, value in _MXNET_DEFAULTS.get(node["op"], {}).items():
            attrs = node.setdefault("attrs", {})
            if attr not in attrs:
                attrs[attr] = value
                changed = True
    return mx.sym.load_json(json.dumps(graph)) if changed else symbol


def fixed_gammas(symbol: Any) -> list[str]:
    """Gamma parameters of BatchNorm nodes with ``fix_gamma`` (MXNet's default is True)."""
    nodes = _graph_nodes(symbol)
    names: list[str] = []
    for node in nodes:
        if node["op"] != "BatchNorm":
            continue
        fix_gamma = str(node.get("attrs", {}).get("fix_gamma", "True")).lower() in ("true", "1")
        if fix_gamma and len(node["inputs"]) > 1:
            names.append(nodes[node["inputs"][1][0]]["name"])
    return names


def _graph_nodes(symbol: Any) -> list[dict[str, Any]]:
    import json

    nodes: list[dict[str, Any]] = json.loads(symbol.tojson())["nodes"]
    return nodes
