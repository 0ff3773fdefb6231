"""Tiny MXNet face models for conversion tests, built the two ways real checkpoints are made.

- :func:`save_symbol_checkpoint`: the Symbol API + ``mx.model.save_checkpoint``, as insightface's
  training scripts do (optionally with the softmax training head and its label input).
- :class:`MobileFaceNet` + :func:`save_mobilefacenet`: an independent Gluon HybridBlock shaped
  like MobileFaceNet (depthwise-separable bottlenecks, PReLU, BatchNorm, a global depthwise conv
  head, a 128-d embedding), exported with ``HybridBlock.export``.

MXNet is reached only through ``qfleet.model.mxnet_io.import_mxnet`` (it carries the numpy shim).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qfleet.model.mxnet_io import Checkpoint, import_mxnet


def tiny_symbol(*, embedding: int = 16, softmax_head: bool = False, quadratic: bool = False) -> Any:
    """conv -> BN -> PReLU -> pool -> FC -> BN('fc1'), normalising raw pixels inside like insightface.

    Two details of insightface symbols that mxnet.onnx mishandles are on purpose: ``fc1`` is a
    BatchNorm with ``fix_gamma`` (its stored gamma must be ignored), and ``pre_fc1`` has no
    explicit ``flatten`` attribute.
    """
    mx = import_mxnet()
    data = mx.sym.Variable("data")
    x = (data - 127.5) * 0.0078125
    x = mx.sym.Convolution(
        x, num_filter=8, kernel=(3, 3), stride=(2, 2), pad=(1, 1), no_bias=True, name="conv0"
    )
    x = mx.sym.BatchNorm(x, fix_gamma=False, eps=2e-5, name="bn0")
    x = mx.sym.LeakyReLU(x, act_type="prelu", name="relu0")
    if quadratic:  # an operator mxnet.onnx cannot export
        x = mx.sym.contrib.quadratic(x, a=0.1, b=1.0, c=0.0, name="odd_quadratic")
    x = mx.sym.Pooling(x, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool0")
    # As in insightface: FullyConnected straight on the 4-D map, relying on its default flatten.
    x = mx.sym.FullyConnected(x, num_hidden=embedding, name="pre_fc1")
    fc1 = mx.sym.BatchNorm(x, fix_gamma=True, eps=2e-5, name="fc1")
    if not softmax_head:
        return fc1
    fc7 = mx.sym.FullyConnected(fc1, num_hidden=10, name="fc7")
    softmax = mx.sym.SoftmaxOutput(fc7, label=mx.sym.Variable("softmax_label"), name="softmax")
    return mx.sym.Group([softmax, mx.sym.BlockGrad(fc1, name="fc1_grad")])


def random_params(
    symbol: Any, *, input_shape: Sequence[int], seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Random weights and non-trivial BatchNorm statistics for every parameter of ``symbol``."""
    mx = import_mxnet()
    rng = np.random.default_rng(seed)
    shapes: dict[str, Any] = {"data": tuple(input_shape)}
    if "softmax_label" in symbol.list_arguments():
        shapes["softmax_label"] = (input_shape[0],)
    arg_shapes, _, aux_shapes = symbol.infer_shape(**shapes)
    arg_params: dict[str, Any] = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes, strict=True):
        if name in shapes:
            continue
        if name.endswith("_gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith(("_beta", "_bias")):
            value = rng.normal(0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            value = rng.normal(0, 1.0 / np.sqrt(fan_in), shape)
        arg_params[name] = mx.nd.array(value.astype(np.float32))
    aux_params: dict[str, Any] = {}
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes, strict=True):
        value = rng.normal(0, 0.1, shape) if name.endswith("mean") else rng.uniform(0.5, 1.5, shape)
        aux_params[name] = mx.nd.array(value.astype(np.float32))
    return arg_params, aux_params


def save_symbol_checkpoint(
    prefix: Path,
    *,
    epochs: Sequence[int] = (1,),
    input_shape: Sequence[int] = (1, 3, 112, 112),
    seed: int = 0,
    **symbol_options: Any,
) -> Path:
    """Write ``PREFIX-symbol.json`` and one ``PREFIX-%04d.params`` per epoch; returns the prefix."""
    mx = import_mxnet()
    symbol = tiny_symbol(**symbol_options)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for epoch in epochs:
        arg_params, aux_params = random_params(symbol, input_shape=input_shape, seed=seed + epoch)
        mx.model.save_checkpoint(str(prefix), epoch, symbol, arg_params, aux_params)
    return prefix


def mxnet_reference(prefix: Path, batch: np.ndarray, *, epoch: int = 1) -> np.ndarray:
    """The embedding MXNet computes for ``batch``, via a Module bound to the fc1 output."""
    mx = import_mxnet()
    symbol, arg_params, aux_params = mx.model.load_checkpoint(str(prefix), epoch)
    internals = symbol.get_internals()
    if "fc1_output" in internals.list_outputs():
        symbol = internals["fc1_output"]
    module = mx.mod.Module(symbol, data_names=["data"], label_names=None)
    module.bind(data_shapes=[("data", batch.shape)], for_training=False)
    module.set_params(arg_params, aux_params, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
    result: np.ndarray = module.get_outputs()[0].asnumpy()
    return result


def mxnet_forward(checkpoint: Checkpoint, batch: np.ndarray) -> np.ndarray:
    """The output of a checkpoint as qfleet loaded it, for an NCHW float32 batch, computed by MXNet."""
    mx = import_mxnet()
    data = np.ascontiguousarray(batch, dtype=np.float32)
    module = mx.mod.Module(checkpoint.symbol, data_names=[checkpoint.input_name], label_names=None)
    with contextlib.redirect_stdout(io.StringIO()):  # MXNet prints its arguments when binding fails
        module.bind(data_shapes=[(checkpoint.input_name, data.shape)], for_training=False)
    module.set_params(checkpoint.arg_params, checkpoint.aux_params, allow_missing=False, allow_extra=True)
    module.forward(mx.io.DataBatch([mx.nd.array(data)]), is_train=False)
    result: np.ndarray = module.get_outputs()[0].asnumpy()
    return result


def mobilefacenet_class() -> type:
    """The MobileFaceNet-shaped HybridBlock class (defined lazily: Gluon needs the MXNet import)."""
    mx = import_mxnet()
    nn = mx.gluon.nn

    class ConvBnPrelu(mx.gluon.HybridBlock):  # type: ignore[misc, name-defined]
        def __init__(
            self, channels: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
        ) -> None:
            super().__init__()
            with self.name_scope():
                self.conv = nn.Conv2D(
                    channels, kernel, strides=stride, padding=kernel // 2, groups=groups, use_bias=False
                )
                self.bn = nn.BatchNorm(epsilon=2e-5)
                self.act = nn.PReLU(in_channels=channels) if act else None

        def hybrid_forward(self, F: Any, x: Any) -> Any:
            x = self.bn(self.conv(x))
            return self.act(x) if self.act is not None else x

    class Bottleneck(mx.gluon.HybridBlock):  # type: ignore[misc, name-defined]
        """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection."""

        def __init__(self, in_channels: int, out_channels: int, expand: int, stride: int) -> None:
            super().__init__()
            self.residual = stride == 1 and in_channels == out_channels
            hidden = in_channels * expand
            with self.name_scope():
                self.body = nn.HybridSequential()
                self.body.add(
                    ConvBnPrelu(hidden, 1),
                    ConvBnPrelu(hidden, 3, stride, groups=hidden),
                    ConvBnPrelu(out_channels, 1, act=False),
                )

        def hybrid_forward(self, F: Any, x: Any) -> Any:
            y = self.body(x)
            return y + x if self.residual else y

    class MobileFaceNet(mx.gluon.HybridBlock):  # type: ignore[misc, name-defined]
        def __init__(self, width: int = 16, embedding: int = 128) -> None:
            super().__init__()
            with self.name_scope():
                self.stem = nn.HybridSequential()
                self.stem.add(ConvBnPrelu(width, 3, 2), ConvBnPrelu(width, 3, 1, groups=width))
                self.blocks = nn.HybridSequential()
                self.blocks.add(
                    Bottleneck(width, width, 2, 2),
                    Bottleneck(width, width, 2, 1),
                    Bottleneck(width, 2 * width, 2, 2),
                    Bottleneck(2 * width, 2 * width, 2, 1),
                    Bottleneck(2 * width, 2 * width, 2, 2),
                )
                self.head = ConvBnPrelu(4 * width, 1)
                # GDC: a 7x7 depthwise conv over the 7x7 map instead of global average pooling.
                self.gdc = nn.Conv2D(4 * width, 7, groups=4 * width, use_bias=False)
                self.gdc_bn = nn.BatchNorm(epsilon=2e-5)
                self.project = nn.Conv2D(embedding, 1, use_bias=False)
                self.embedding_bn = nn.BatchNorm(epsilon=2e-5, scale=False)
                self.flatten = nn.Flatten()

        def hybrid_forward(self, F: Any, x: Any) -> Any:
            x = (x - 127.5) * 0.0078125
            x = self.head(self.blocks(self.stem(x)))
            x = self.embedding_bn(self.project(self.gdc_bn(self.gdc(x))))
            return self.flatten(x)

    return MobileFaceNet


def save_mobilefacenet(prefix: Path, *, seed: int = 0) -> Any:
    """Build, randomise (weights, BN statistics, PReLU slopes) and export; returns the Gluon net."""
    mx = import_mxnet()
    rng = np.random.default_rng(seed)
    mx.random.seed(seed)
    net = mobilefacenet_class()()
    net.initialize(mx.init.Xavier(magnitude=2.0))
    net.hybridize()
    net(mx.nd.zeros((1, 3, 112, 112)))  # materialise deferred shapes and the cached graph
    for name, param in net.collect_params().items():
        if name.endswith("running_mean"):
            param.set_data(mx.nd.array(rng.normal(0, 0.1, param.shape)))
        elif name.endswith("running_var"):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
        elif name.endswith("alpha"):
            param.set_data(mx.nd.array(rng.uniform(0.05, 0.4, param.shape)))
        elif name.endswith(("gamma", "beta")):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    net.export(str(prefix))
    return net
