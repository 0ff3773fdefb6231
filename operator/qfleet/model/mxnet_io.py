"""The one module that imports MXNet.

MXNet 1.9.1 (its last release; the project is retired) still uses ``np.bool``, which numpy 1.24
removed, while NNCF needs numpy >= 1.24. Restoring the alias before the import is enough; keep
that shim here and import MXNet only through :func:`import_mxnet`.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType


@functools.cache
def import_mxnet() -> ModuleType:
    import numpy

    if not hasattr(numpy, "bool"):
        numpy.bool = bool  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mxnet

    return mxnet
