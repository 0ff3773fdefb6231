"""The quantizers of an NNCF-quantized IR, and that IR with chosen operations returned to float.

NNCF quantizes an OpenVINO model by inserting FakeQuantize operations: one on each quantized
activation (a convolution's input, a residual Add's inputs) and one on each quantized weight.
Quantized with ``compress_weights`` off, a weight quantizer is still ``Constant -> FakeQuantize``
(not yet folded into INT8 constants), so one quantized model serves every candidate of accuracy
control: a candidate is that model with the quantizers of some operations bypassed, built in
memory in milliseconds, instead of another ``nncf.quantize`` run per candidate.

A *quantized operation* is one that takes an input through a FakeQuantize, directly or through
shape-only operations (NNCF puts a fully connected layer's activation quantizer before its
Reshape). Reverting it bypasses those quantizers; an activation quantizer that also feeds other
operations stays for them when it feeds this one directly, else it goes for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import openvino as ov

FAKE_QUANTIZE = "FakeQuantize"
#: Operations that move values without computing on them: a quantizer above them still quantizes
#: the operation below.
SHAPE_ONLY = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Transpose"})


@dataclass(frozen=True)
class QuantizedOp:
    """An operation that computes on quantized inputs, as named in the IR."""

    name: str
    type_name: str
    #: The operation its activation comes from (e.g. ``prelu1_fwd``): what a person recognises.
    activation_source: str | None
    #: Friendly names of the FakeQuantize operations feeding it.
    quantizers: tuple[str, ...]

    def as_dict(self) -> dict[str, str | None]:
        return {"name": self.name, "type": self.type_name, "input": self.activation_source}


def _is_fq(node: ov.Node) -> bool:
    return bool(node.get_type_name() == FAKE_QUANTIZE)


def _quantizer_above(port: ov.Input) -> tuple[ov.Node | None, bool]:
    """(the FakeQuantize feeding ``port``, whether directly), looking up through shape-only ops."""
    node = port.get_source_output().get_node()
    direct = True
    while node.get_type_name() in SHAPE_ONLY:
        node = node.input_value(0).get_node()
        direct = False
    return (node, direct) if _is_fq(node) else (None, direct)


def _is_weight(fq: ov.Node) -> bool:
    return bool(fq.input_value(0).get_node().get_type_name() == "Constant")


def quantized_ops(model: ov.Model) -> list[QuantizedOp]:
    """The model's quantized operations, in topological order."""
    found: list[QuantizedOp] = []
    for op in model.get_ordered_ops():
        if _is_fq(op) or op.get_type_name() in SHAPE_ONLY:
            continue
        quantizers: list[str] = []
        source: str | None = None
        for port in op.inputs():
            fq, _ = _quantizer_above(port)
            if fq is None:
                continue
            quantizers.append(fq.get_friendly_name())
            if source is None and not _is_weight(fq):
                source = fq.input_value(0).get_node().get_friendly_name()
        if quantizers:
            found.append(QuantizedOp(op.get_friendly_name(), op.get_type_name(), source, tuple(quantizers)))
    return found


def activation_quantized_ops(model: ov.Model) -> set[str]:
    """Names of the operations that take an activation through a FakeQuantize (directly).

    Weight quantizers are left out on purpose: NNCF may fold them into INT8 constants, while
    activation FakeQuantize nodes survive in every form of the IR, so this set is comparable
    between a model before and after weight compression.
    """
    names: set[str] = set()
    for op in model.get_ordered_ops():
        if _is_fq(op):
            continue
        for port in op.inputs():
            producer = port.get_source_output().get_node()
            if _is_fq(producer) and not _is_weight(producer):
                names.add(op.get_friendly_name())
    return names


def revert_ops(model: ov.Model, names: list[str] | tuple[str, ...]) -> ov.Model:
    """A copy of ``model`` whose operations ``names`` take their inputs unquantized."""
    copy = model.clone()
    if not names:
        return copy
    ops = {op.get_friendly_name(): op for op in copy.get_ordered_ops()}
    missing = [name for name in names if name not in ops]
    if missing:
        raise KeyError(f"no operation named {', '.join(missing)} in {model.get_friendly_name()}")
    for name in names:
        for port in ops[name].inputs():
            fq, direct = _quantizer_above(port)
            if fq is None:
                continue
            if direct:  # this operation alone loses the quantizer; other consumers keep it
                port.replace_source_output(fq.input_value(0))
                continue
            for target in list(fq.output(0).get_target_inputs()):
                target.replace_source_output(fq.input_value(0))
    copy.validate_nodes_and_infer_types()
    return copy
