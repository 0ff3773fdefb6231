"""A face model whose INT8 loses accuracy in known layers, with its FP32 function unchanged.

Accuracy control needs a model where plain INT8 misses the gate. Real ones do (ArcFace backbones
with outlier channels); the shipped demo model does not. :func:`add_outlier_channels` rewrites an
MXNet checkpoint so that chosen activations carry a few channels ``scale`` times larger than the
rest: the BatchNorm before a PReLU scales those channels up (gamma and beta), the convolution
after it scales its weights for them down by as much. PReLU is positively homogeneous, so FP32
computes the same function; a per-tensor INT8 activation quantizer on that convolution's input,
though, spends its range on the outliers and rounds the other channels to a few levels. Only the
rewritten convolutions lose accuracy, so the layers accuracy control must revert are known.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qfleet.model.mxnet_io import import_mxnet

#: (BatchNorm before a PReLU, the convolution after it) of the shipped demo model.
DEMO_SITES: tuple[tuple[str, str], ...] = (
    ("batchnorm0", "conv1"),
    ("batchnorm1", "conv2"),
    ("batchnorm2", "conv3"),
    ("batchnorm3", "conv4"),
)


def add_outlier_channels(
    prefix: str | Path,
    out_prefix: str | Path,
    sites: Sequence[tuple[str, str, float]],
    *,
    channels: int = 2,
    epoch: int = 1,
) -> Path:
    """Copy checkpoint ``prefix`` to ``out_prefix`` with outlier channels at each site.

    A site is ``(batchnorm, conv, scale)``: the first ``channels`` channels of the BatchNorm's
    output grow by ``scale`` and ``conv`` divides its weights for them by ``scale``.
    Returns ``out_prefix`` (``-symbol.json`` and ``-%04d.params`` written beside it).
    """
    mx = import_mxnet()
    symbol, args, aux = mx.model.load_checkpoint(str(prefix), epoch)
    for batchnorm, conv, scale in sites:
        if scale <= 0:
            raise ValueError(f"scale must be positive (PReLU is homogeneous only for those), got {scale}")
        picked = slice(0, channels)
        for name in (f"{batchnorm}_gamma", f"{batchnorm}_beta"):
            value = args[name].asnumpy()
            value[picked] *= scale
            args[name] = mx.nd.array(value)
        weight = args[f"{conv}_weight"].asnumpy()
        weight[:, picked] /= scale
        args[f"{conv}_weight"] = mx.nd.array(weight.astype(np.float32))
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    mx.model.save_checkpoint(str(out_prefix), epoch, symbol, args, aux)
    return Path(out_prefix)
