"""ML Program elementwise operations (MIL opsets iOS15-iOS18) in numpy: arithmetic, activations, unary functions
and casts, each as its MIL definition states it."""

from __future__ import annotations

from functools import partial

import numpy as np

from . import kernels
from .registry import OpCall, always, op

F32 = np.float32
SQRT_2_OVER_PI = np.float32(np.sqrt(2.0 / np.pi))
SQRT_2 = np.float32(np.sqrt(2.0))
GELU_SIGMOID_FACTOR = np.float32(1.702)  # MIL gelu SIGMOID_APPROXIMATION: x * sigmoid(1.702 x)
# MIL defaults for the epsilon parameters (coremltools ops/defs/iOS15/elementwise_unary.py).
RSQRT_EPSILON = 1e-12
INVERSE_EPSILON = 1e-4
LOG_EPSILON = 1e-45


def scalar(value) -> np.float32:
    """A scalar parameter (a 0-d or one-element array) as float32."""
    return np.float32(np.asarray(value).item())


def _sigmoid(x, out=None):
    """1 / (1 + exp(-x)), each step written into one buffer (``out``, which may be ``x`` itself): four passes over
    memory instead of four new arrays, the same float32 roundings."""
    out = np.negative(x, out=out)
    np.exp(out, out=out)
    np.add(out, np.float32(1), out=out)
    return np.reciprocal(out, out=out)


# ------------------------------------------------------------------------------------------------ elementwise
@op("add", batch=always, inplace=True)
def _add(c: OpCall):
    return np.add(c["x"], c["y"], out=c.out())


@op("sub", batch=always, inplace=True)
def _sub(c: OpCall):
    return np.subtract(c["x"], c["y"], out=c.out())


@op("mul", batch=always, inplace=True)
def _mul(c: OpCall):
    return np.multiply(c["x"], c["y"], out=c.out())


def _integers(*values) -> bool:
    return all(np.asarray(v).dtype.kind in "iub" for v in values)


@op("real_div", batch=always)
def _real_div(c: OpCall):
    """``x / y``; on int32 operands the result is int32, the quotient rounded toward negative infinity."""
    x, y = c["x"], c["y"]
    if _integers(x, y):
        return np.floor_divide(x, y)
    return np.divide(x, y)


@op("floor_div", batch=always)
def _floor_div(c: OpCall):
    """``x / y`` rounded toward negative infinity, in the operands' type."""
    x, y = c["x"], c["y"]
    return np.floor_divide(x, y) if _integers(x, y) else np.floor(np.divide(x, y))


@op("mod", batch=always)
def _mod(c: OpCall):
    """``x - floor(x / y) * y`` (the sign of y, as Python's and numpy's %)."""
    return np.mod(c["x"], c["y"])


# Comparisons and logical operators return bool tensors.
for _name, _fn in {
    "equal": np.equal,
    "not_equal": np.not_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}.items():
    op(_name, batch=always)(lambda c, fn=_fn: fn(c["x"], c["y"]))


@op("logical_not", batch=always)
def _logical_not(c: OpCall):
    return np.logical_not(c["x"])


@op("select", batch=always)
def _select(c: OpCall):
    """``a`` where ``cond`` is true, ``b`` elsewhere, broadcast together."""
    return np.where(np.asarray(c["cond"]).astype(bool), c["a"], c["b"])


@op("maximum", batch=always)
def _maximum(c: OpCall):
    return np.maximum(c["x"], c["y"])


@op("minimum", batch=always)
def _minimum(c: OpCall):
    return np.minimum(c["x"], c["y"])


@op("pow", batch=always)
def _pow(c: OpCall):
    return np.power(c["x"], c["y"])


@op("relu", batch=always, inplace=True)
def _relu(c: OpCall):
    return np.maximum(c["x"], F32(0), out=c.out())


@op("relu6", batch=always, inplace=True)
def _relu6(c: OpCall):
    return np.clip(c["x"], F32(0), F32(6), out=c.out())


@op("clip", batch=always, inplace=True)
def _clip(c: OpCall):
    return np.clip(c["x"], scalar(c["alpha"]), scalar(c["beta"]), out=c.out())


def _float32(x) -> bool:
    return isinstance(x, np.ndarray) and x.dtype == F32


@op("sigmoid", batch=always, inplace=True)
def _sigmoid_op(c: OpCall):
    x = c["x"]
    if not _float32(x):
        return _sigmoid(x, c.out())
    return kernels.blockwise(lambda part, out, _: _sigmoid(part, out), x, c.out())


@op("sigmoid_hard", batch=always)
def _sigmoid_hard(c: OpCall):
    alpha, beta = scalar(c.get("alpha", 0.2)), scalar(c.get("beta", 0.5))
    return np.clip(alpha * c["x"] + beta, F32(0), F32(1))


def _silu_block(x, out, scratch):
    np.multiply(x, _sigmoid(x, scratch), out=out)


@op("silu", batch=always, inplace=True)
def _silu(c: OpCall):
    x = c["x"]
    if not _float32(x):
        return np.multiply(x, _sigmoid(x), out=c.out())
    return kernels.blockwise(_silu_block, x, c.out())


@op("tanh", batch=always)
def _tanh(c: OpCall):
    return np.tanh(c["x"])


@op("scaled_tanh", batch=always)
def _scaled_tanh(c: OpCall):
    return scalar(c.get("alpha", 1.0)) * np.tanh(scalar(c.get("beta", 1.0)) * c["x"])


@op("leaky_relu", batch=always)
def _leaky_relu(c: OpCall):
    x = c["x"]
    return np.where(x >= 0, x, scalar(c.get("alpha", 0.01)) * x)


@op("elu", batch=always)
def _elu(c: OpCall):
    x = c["x"]
    return np.where(x > 0, x, scalar(c.get("alpha", 1.0)) * np.expm1(np.minimum(x, F32(0))))


@op("prelu", batch=always)
def _prelu(c: OpCall):
    x, alpha = c["x"], np.asarray(c["alpha"], F32)
    alpha = alpha.reshape((1, -1) + (1,) * (x.ndim - 2))  # one slope per channel (axis 1)
    return np.where(x >= 0, x, alpha * x)


@op("softplus", batch=always)
def _softplus(c: OpCall):
    return np.logaddexp(F32(0), c["x"])


@op("softsign", batch=always)
def _softsign(c: OpCall):
    x = c["x"]
    return x / (F32(1) + np.abs(x))


def _gelu_sigmoid_block(x, out, scratch):
    np.multiply(GELU_SIGMOID_FACTOR, x, out=scratch)
    np.multiply(x, _sigmoid(scratch, scratch), out=out)


def _gelu_exact_block(erf, x, out, scratch):
    """0.5 * x * (1 + erf(x / sqrt(2))) over a block, each step in float32 in the order of the whole-array
    expression (scipy's float32 erf), written into ``scratch`` and ``out`` instead of five new arrays."""
    np.divide(x, SQRT_2, out=scratch)
    erf(scratch, out=scratch)
    np.add(F32(1), scratch, out=scratch)
    np.multiply(F32(0.5), x, out=out)
    np.multiply(out, scratch, out=out)


@op("gelu", batch=always)
def _gelu(c: OpCall):
    x, mode = c["x"], c.const("mode", "EXACT")
    if mode == "EXACT":
        from scipy.special import erf

        if _float32(x):
            return kernels.blockwise(partial(_gelu_exact_block, erf), x)
        return F32(0.5) * x * (F32(1) + erf(x / SQRT_2).astype(F32))
    if mode == "TANH_APPROXIMATION":
        return F32(0.5) * x * (F32(1) + np.tanh(SQRT_2_OVER_PI * (x + F32(0.044715) * x * x * x)))
    if mode == "SIGMOID_APPROXIMATION":
        if not _float32(x):
            scaled = GELU_SIGMOID_FACTOR * x
            return np.multiply(x, _sigmoid(scaled, scaled), out=scaled)
        return kernels.blockwise(_gelu_sigmoid_block, x)
    raise c.unsupported(f"has unknown mode {mode!r}")


@op("exp", batch=always)
def _exp(c: OpCall):
    return np.exp(c["x"])


@op("log", batch=always)
def _log(c: OpCall):
    return np.log(c["x"] + scalar(c.get("epsilon", LOG_EPSILON)))


@op("sqrt", batch=always)
def _sqrt(c: OpCall):
    return np.sqrt(c["x"])


@op("rsqrt", batch=always)
def _rsqrt(c: OpCall):
    return F32(1) / np.sqrt(c["x"] + scalar(c.get("epsilon", RSQRT_EPSILON)))


@op("inverse", batch=always)
def _inverse(c: OpCall):
    return F32(1) / (c["x"] + scalar(c.get("epsilon", INVERSE_EPSILON)))


@op("square", batch=always)
def _square(c: OpCall):
    x = c["x"]
    return x * x


@op("abs", batch=always)
def _abs(c: OpCall):
    return np.abs(c["x"])


@op("floor", batch=always)
def _floor(c: OpCall):
    return np.floor(c["x"])


@op("ceil", batch=always)
def _ceil(c: OpCall):
    return np.ceil(c["x"])


@op("identity", batch=always)
def _identity(c: OpCall):
    return c["x"]


@op("cast", batch=always)
def _cast(c: OpCall):
    """Float casts keep float32 (the compute precision decides rounding, see the package docstring)."""
    dtype = c.const("dtype")
    x = c["x"]
    if dtype in ("fp16", "fp32", "fp64"):
        return np.asarray(x, F32)
    if dtype in ("int8", "uint8", "int16", "uint16", "int32", "int64"):
        return np.trunc(x).astype(np.int32) if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x, np.int32)
    if dtype == "bool":
        return np.asarray(x) != 0
    raise c.unsupported(f"casts to {dtype!r}")


# ------------------------------------------------------------------------------------------------ more unary functions
def _unary(name: str, fn):
    op(name, batch=always)(lambda c: fn(c["x"]))


for _unary_name, _unary_fn in kernels.UNARY_FUNCTIONS.items():
    _unary(_unary_name, _unary_fn)


@op("erf", batch=always)
def _erf(c: OpCall):
    from scipy.special import erf

    x = c["x"]
    return erf(x).astype(x.dtype)


@op("round", batch=always)
def _round(c: OpCall):
    """To the nearest integer, halves to even (MIL: "0.5 is rounded to 0")."""
    return np.round(c["x"])


@op("threshold", batch=always)
def _threshold(c: OpCall):
    """``max(x, alpha)``."""
    x = c["x"]
    return np.maximum(x, np.asarray(c["alpha"]).astype(x.dtype))


@op("thresholded_relu", batch=always)
def _thresholded_relu(c: OpCall):
    """``x`` where ``x >= alpha``, else 0."""
    x = c["x"]
    return np.where(x >= scalar(c.get("alpha", 1.0)), x, F32(0))


@op("clamped_relu", batch=always)
def _clamped_relu(c: OpCall):
    """``min(beta, x)`` for ``x >= 0``, ``min(beta, alpha * x)`` otherwise."""
    x, alpha, beta = c["x"], scalar(c["alpha"]), scalar(c["beta"])
    return np.minimum(np.where(x >= 0, x, alpha * x), beta)


@op("linear_activation", batch=always)
def _linear_activation(c: OpCall):
    return c["x"] * scalar(c["alpha"]) + scalar(c.get("beta", 0.0))


@op("softplus_parametric", batch=always)
def _softplus_parametric(c: OpCall):
    """``alpha_c * log(1 + exp(beta_c * x))`` with one alpha and beta per channel (axis 1)."""
    x = c["x"]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    alpha = np.asarray(c["alpha"], F32).reshape(shape)
    beta = np.asarray(c["beta"], F32).reshape(shape)
    return alpha * np.logaddexp(F32(0), beta * x)
