"""numpy's BLAS held to one thread while the executor runs.

The executor's matrix products are many and mostly small. On a shared machine a second BLAS thread that gets
descheduled stalls every product it takes part in: measured on a 2-core VM with a busy neighbour, a 224-px MobileNetV2
ran at 10-27 images/s with two BLAS threads and at 57 with one (onnxruntime meanwhile: 60), and a 64-px MobileNetV3
took up to 3.5 s instead of 0.2 s. On an idle machine two threads are about a quarter faster on the 224-px MobileNetV2;
predictable beats that. threadpoolctl (a scikit-learn dependency) sets the limit; without it BLAS keeps its own.
"""

from __future__ import annotations

import contextlib

_BLAS: list = []  # the process's BLAS libraries, looked up on first use


def single_threaded():
    """A context in which numpy's BLAS uses one thread (process-wide, for the duration)."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _BLAS.append(None)
        else:
            _BLAS.append(ThreadpoolController().select(user_api="blas"))
    return _BLAS[0].limit(limits=1) if _BLAS[0] is not None else contextlib.nullcontext()
