"""Quantized operations of an NNCF model, and candidates with some of them back in float."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import numpy.typing as npt
    import openvino as ov

pytest.importorskip("nncf")


@pytest.fixture
def quantized(tiny_ir: Callable[..., Path]) -> tuple[ov.Model, ov.Model]:
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    fp32 = ov.Core().read_model(tiny_ir())
    rng = np.random.default_rng(0)
    samples = [rng.uniform(0, 255, size=(1, 3, 112, 112)).astype(np.float32) for _ in range(4)]
    int8 = nncf.quantize(
        fp32,
        nncf.Dataset(samples),
        subset_size=4,
        advanced_parameters=AdvancedQuantizationParameters(backend_params={"compress_weights": False}),
    )
    return fp32, int8


def _outputs(model: ov.Model, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    from qfleet.model.runtime import compile_model

    compiled = compile_model(model, precision="int8").compiled
    return np.array(compiled({0: images})[0])


def _fake_quantizes(model: ov.Model) -> int:
    return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


def test_quantized_ops_hold_their_activation_and_weight_quantizers(
    quantized: tuple[ov.Model, ov.Model],
) -> None:
    from qfleet.model.quantizers import quantized_ops

    _, int8 = quantized
    ops = quantized_ops(int8)
    kinds = {op.type_name: op for op in ops}
    assert {"Convolution", "MatMul"} <= set(kinds), kinds
    assert ops[0].type_name == "Convolution"  # topological order
    for kind in ("Convolution", "MatMul"):  # an activation and a weight quantizer each
        assert len(kinds[kind].quantizers) == 2
    assert kinds["Convolution"].activation_source is not None


def test_reverting_every_operation_computes_the_fp32_function(quantized: tuple[ov.Model, ov.Model]) -> None:
    from qfleet.model.quantizers import quantized_ops, revert_ops

    fp32, int8 = quantized
    images = np.random.default_rng(1).uniform(0, 255, size=(2, 3, 112, 112)).astype(np.float32)
    before = _fake_quantizes(int8)
    ops = quantized_ops(int8)
    one = revert_ops(int8, [ops[0].name])
    every = revert_ops(int8, [op.name for op in ops])
    assert _fake_quantizes(int8) == before  # the quantized model itself is untouched
    assert _fake_quantizes(one) == before - 2
    assert _fake_quantizes(every) == 0
    reference = _outputs(fp32, images)
    assert np.allclose(_outputs(every, images), reference, rtol=1e-4, atol=1e-4)
    assert not np.allclose(_outputs(int8, images), reference, rtol=1e-4, atol=1e-4)


def test_unknown_operation_names_are_refused(quantized: tuple[ov.Model, ov.Model]) -> None:
    from qfleet.model.quantizers import revert_ops

    with pytest.raises(KeyError, match="no-such-op"):
        revert_ops(quantized[1], ["no-such-op"])
