"""numpy's BLAS held to one thread while the executor runs, and the dense layers' matrix products.

The executor's matrix products are many and mostly small. On a shared machine a second BLAS thread that gets
descheduled stalls every product it takes part in: measured on a 2-core VM with a busy neighbour, a 224-px MobileNetV2
ran at 10-27 images/s with two BLAS threads and at 57 with one (onnxruntime meanwhile: 60), and a 64-px MobileNetV3
took up to 3.5 s instead of 0.2 s. On an idle machine two threads are about a quarter faster on the 224-px MobileNetV2;
predictable beats that. threadpoolctl (a scikit-learn dependency) sets the limit; without it BLAS keeps its own.
"""

from __future__ import annotations

import contextlib

import numpy as np

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


# Terms of a dense layer's product summed by BLAS at once; the block sums are added in float64. OpenBLAS sums a row of
# a small product (the few images of one pass, or one image) term after term in float32, so its error grows with the
# row's length: on a digits-trained Conv -> Flatten (3,468 features) -> Dense(10) the .mlmodel's logits were 6.2e-5
# from float64 Keras (Keras float32: 1.4e-5) and its probabilities 2.0e-6 (Keras float32 4.6e-7, onnxruntime 6.7e-7),
# past the float64 arbiter's 2x. In blocks of 128: logits 5.9e-6, probabilities 5.9e-7. On that Dense's weights with
# random ReLU features, one image: 3.4e-5 in one product, 1.8e-6 in blocks of 128, 1.6e-6 of 64 (onnxruntime 4.4e-6);
# shorter blocks cost BLAS calls (a 25,088 -> 4,096 Dense at one image: 17 ms in one product, 20-40 ms in blocks).
PRODUCT_BLOCK = 128


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``np.matmul(a, b)`` of float32 operands, summed over the contracted axis in blocks of PRODUCT_BLOCK terms
    whose sums are added in float64, rounded to float32 once; other dtypes (the int32 products of a program) and
    short rows go to np.matmul as they are."""
    a, b = np.asarray(a), np.asarray(b)
    k = a.shape[-1] if a.ndim else 0
    if a.dtype != np.float32 or b.dtype != np.float32 or b.ndim < 2 or k <= PRODUCT_BLOCK:
        return np.matmul(a, b)
    total = np.matmul(a[..., :PRODUCT_BLOCK], b[..., :PRODUCT_BLOCK, :]).astype(np.float64)
    for start in range(PRODUCT_BLOCK, k, PRODUCT_BLOCK):
        stop = start + PRODUCT_BLOCK
        total += np.matmul(a[..., start:stop], b[..., start:stop, :])
    return total.astype(np.float32)
