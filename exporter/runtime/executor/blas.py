"""Matrix products through numpy's BLAS, small ones on a single BLAS thread."""

from __future__ import annotations

import contextlib

import numpy as np

# Matrix products below this many multiply-adds (about half a millisecond on one core) run on one BLAS thread.
# Splitting them buys little, and on a shared machine a second thread that gets descheduled stalls the first:
# measured on a 2-core VM with a busy neighbour, a 64-px MobileNetV3 took 0.2 s on one BLAS thread and up to 3.5 s
# on two. A 224-px MobileNetV2's largest products (40-80 M) still gain about 25 % from two threads on a quiet one.
THREADED_GEMM_MACS = 32_000_000

_BLAS = []  # the process's BLAS libraries (threadpoolctl), looked up on first use


def _single_threaded_blas():
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # without threadpoolctl, BLAS keeps its own threading
            _BLAS.append(None)
        else:
            _BLAS.append(ThreadpoolController().select(user_api="blas"))
    return _BLAS[0].limit(limits=1) if _BLAS[0] is not None else contextlib.nullcontext()


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``a @ b`` (into ``out``), on one BLAS thread unless the product is large (see THREADED_GEMM_MACS)."""
    macs = int(np.prod(a.shape[:-1], dtype=np.int64)) * a.shape[-1] * b.shape[-1]
    if macs >= THREADED_GEMM_MACS:
        return np.matmul(a, b, out=out)
    with _single_threaded_blas():
        return np.matmul(a, b, out=out)
