"""iResNet-50 / iResNet-100 shaped MXNet checkpoints (the ArcFace backbones) with random weights.

The graph follows insightface's MXNet ``fresnet`` with residual unit v3 and output head "E":

- input: raw 0..255 RGB 112x112; the graph normalises ``(x - 127.5) / 128`` itself;
- stem: 3x3 conv 64, BN, PReLU at 112x112;
- stages of widths 64/128/256/512 with [3, 4, 14, 3] (50) or [3, 13, 30, 3] (100) units; a unit
  is BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride 2 in a stage's first unit) -> BN, plus a
  shortcut (1x1 conv + BN where the shape changes);
- head: BN -> Dropout -> FC 512 -> BN: the 512-d embedding ``fc1``.

Random weights are enough to measure speed: FLOPs and memory traffic do not depend on the
values. They are drawn so that activations stay in a sane range through 100 layers (He-scaled
convolutions, small gamma on each residual branch's last BN), which keeps NNCF's calibration
statistics finite. The checkpoint is a real ``prefix-symbol.json`` + ``prefix-0001.params``, so
it goes through the same ``qfleet convert`` path as an insightface model.

Run ``python benchmarks/iresnet.py`` to build both and print their parameter and FLOP counts.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qfleet.model.mxnet_io import import_mxnet

UNITS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
WIDTHS = (64, 128, 256, 512)
EMBEDDING_SIZE = 512
INPUT_SHAPE = (1, 3, 112, 112)
BN_EPS = 2e-5
BN_MOMENTUM = 0.9


def _bn(mx: Any, data: Any, name: str, *, fix_gamma: bool = False) -> Any:
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=BN_EPS, momentum=BN_MOMENTUM, name=name)


def _conv(mx: Any, data: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    pad = kernel // 2
    return mx.sym.Convolution(
        data=data,
        num_filter=filters,
        kernel=(kernel, kernel),
        stride=(stride, stride),
        pad=(pad, pad),
        no_bias=True,
        name=name,
    )


def _prelu(mx: Any, data: Any, name: str) -> Any:
    return mx.sym.LeakyReLU(data=data, act_type="prelu", name=name)


def _unit(mx: Any, data: Any, filters: int, stride: int, same_shape: bool, name: str) -> Any:
    body = _bn(mx, data, f"{name}_bn1")
    body = _conv(mx, body, filters, 3, 1, f"{name}_conv1")
    body = _bn(mx, body, f"{name}_bn2")
    body = _prelu(mx, body, f"{name}_relu1")
    body = _conv(mx, body, filters, 3, stride, f"{name}_conv2")
    body = _bn(mx, body, f"{name}_bn3")
    if same_shape:
        shortcut = data
    else:
        shortcut = _bn(mx, _conv(mx, data, filters, 1, stride, f"{name}_conv1sc"), f"{name}_sc")
    return body + shortcut


def iresnet_symbol(depth: int) -> Any:
    """The MXNet Symbol of iResNet-``depth`` (50 or 100) with output ``fc1``."""
    if depth not in UNITS:
        raise ValueError(f"depth must be one of {sorted(UNITS)}, got {depth}")
    mx = import_mxnet()
    data = mx.sym.Variable("data")
    body = (data - 127.5) * 0.0078125
    body = _conv(mx, body, 64, 3, 1, "conv0")
    body = _bn(mx, body, "bn0")
    body = _prelu(mx, body, "relu0")
    for stage, (units, width) in enumerate(zip(UNITS[depth], WIDTHS, strict=True), start=1):
        body = _unit(mx, body, width, 2, False, f"stage{stage}_unit1")
        for unit in range(2, units + 1):
            body = _unit(mx, body, width, 1, True, f"stage{stage}_unit{unit}")
    body = _bn(mx, body, "bn1")
    body = mx.sym.Dropout(data=body, p=0.4)
    body = mx.sym.FullyConnected(data=body, num_hidden=EMBEDDING_SIZE, name="pre_fc1")
    return _bn(mx, body, "fc1", fix_gamma=True)


def random_params(symbol: Any, *, seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Random ``arg_params`` and ``aux_params`` for ``symbol`` at the 112x112 input."""
    mx = import_mxnet()
    rng = np.random.default_rng(seed)
    arg_shapes, _, aux_shapes = symbol.infer_shape(data=INPUT_SHAPE)
    args: dict[str, Any] = {}
    for name, shape in zip(symbol.list_arguments(), arg_shapes, strict=True):
        if name == "data":
            continue
        if name.endswith("_weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=shape)
        elif name.endswith("_gamma") and name.endswith("_bn3_gamma"):
            # A small last gamma keeps each residual branch small next to its shortcut.
            value = np.full(shape, 0.2)
        elif name.endswith("_gamma"):
            value = rng.uniform(0.8, 1.2, size=shape)
        elif name.endswith("_beta") or name.endswith("_bias"):
            value = rng.normal(0.0, 0.05, size=shape)
        else:  # PReLU slopes
            value = np.full(shape, 0.25)
        args[name] = mx.nd.array(value.astype(np.float32))
    aux: dict[str, Any] = {}
    for name, shape in zip(symbol.list_auxiliary_states(), aux_shapes, strict=True):
        value = np.zeros(shape) if name.endswith("moving_mean") else np.ones(shape)
        aux[name] = mx.nd.array(value.astype(np.float32))
    return args, aux


@dataclass(frozen=True)
class Complexity:
    params: int
    #: Multiply-accumulates of convolutions and fully connected layers for one image.
    macs: int

    @property
    def gflops(self) -> float:
        """FLOPs counted as 2 per multiply-accumulate (the convention behind ArcFace's 24.2 G)."""
        return 2 * self.macs / 1e9


def complexity(symbol: Any) -> Complexity:
    """Trainable parameters (BN moving statistics excluded) and MACs of conv/FC layers."""
    internals = symbol.get_internals()
    arg_shapes, out_shapes, _ = internals.infer_shape(data=INPUT_SHAPE)
    arg_shape = dict(zip(internals.list_arguments(), arg_shapes, strict=True))
    out_shape = dict(zip(internals.list_outputs(), out_shapes, strict=True))
    params = sum(int(np.prod(shape)) for name, shape in arg_shape.items() if name != "data")
    macs = 0
    for name in internals.list_outputs():
        layer = name.removesuffix("_output")
        output = out_shape[name]
        weight = arg_shape.get(f"{layer}_weight")
        if weight is None or not name.endswith("_output"):
            continue
        if len(weight) == 2:  # fully connected: one MAC per weight per image
            macs += int(np.prod(weight))
        elif len(weight) == 4:  # convolution: every output element needs in_ch x kh x kw MACs
            macs += int(np.prod(output[1:])) * int(np.prod(weight[1:]))
    return Complexity(params=params, macs=macs)


def build_checkpoint(depth: int, prefix: str | Path, *, seed: int = 0) -> Complexity:
    """Write ``prefix-symbol.json`` and ``prefix-0001.params`` for iResNet-``depth``."""
    mx = import_mxnet()
    symbol = iresnet_symbol(depth)
    args, aux = random_params(symbol, seed=seed)
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    mx.model.save_checkpoint(str(prefix), 1, symbol, args, aux)
    return complexity(symbol)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="also write the checkpoints under this folder")
    args = parser.parse_args()
    for depth in sorted(UNITS):
        if args.out:
            counted = build_checkpoint(depth, args.out / f"iresnet{depth}" / "model")
        else:
            counted = complexity(iresnet_symbol(depth))
        print(
            f"iResNet-{depth}: {counted.params / 1e6:.1f} M parameters, {counted.gflops:.2f} GFLOPs per 112x112 image"
        )


if __name__ == "__main__":
    main()
