"""NeuralNetwork (.mlmodel) activations, unary functions and elementwise layers in numpy, each as ``NeuralNetwork.proto`` defines it."""

from __future__ import annotations

import numpy as np

from .mil_elementwise import GELU_SIGMOID_FACTOR, SQRT_2_OVER_PI
from .nnlayers import F32, LayerContext, always, layer

UNARY_EPSILON = 1e-6  # NeuralNetwork.proto: unary epsilon "defaults to 1e-6 if not set or set to 0"


# ------------------------------------------------------------------------------------------------ activations
def activation_fn(p, ctx: LayerContext):
    """The function an ``ActivationParams`` names (also the recurrent layers' activations)."""
    kind = p.WhichOneof("NonlinearityType")
    if kind == "ReLU":
        return lambda x: np.maximum(x, F32(0))
    if kind == "leakyReLU":
        alpha = F32(p.leakyReLU.alpha)
        return lambda x: np.where(x >= 0, x, alpha * x)
    if kind == "tanh":
        return np.tanh
    if kind == "scaledTanh":
        a, b = F32(p.scaledTanh.alpha), F32(p.scaledTanh.beta)
        return lambda x: a * np.tanh(b * x)
    if kind == "sigmoid":
        return lambda x: F32(1) / (F32(1) + np.exp(-x))
    if kind == "sigmoidHard":
        a, b = F32(p.sigmoidHard.alpha), F32(p.sigmoidHard.beta)
        return lambda x: np.clip(a * x + b, F32(0), F32(1))
    if kind == "linear":
        a, b = F32(p.linear.alpha), F32(p.linear.beta)
        return lambda x: a * x + b
    if kind == "ELU":
        alpha = F32(p.ELU.alpha)
        return lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, F32(0))))
    if kind == "thresholdedReLU":
        alpha = F32(p.thresholdedReLU.alpha)
        return lambda x: np.where(x >= alpha, x, F32(0))
    if kind == "softsign":
        return lambda x: x / (F32(1) + np.abs(x))
    if kind == "softplus":
        return lambda x: np.logaddexp(F32(0), x)
    if kind == "PReLU":
        alpha = ctx.vector(p.PReLU.alpha)

        def prelu(x):
            a = alpha.reshape((-1,) + (1,) * 2) if alpha.size > 1 else alpha.reshape(())  # channel axis -3
            return np.where(x >= 0, x, a * x)

        return prelu
    if kind == "parametricSoftplus":
        alpha, beta = ctx.vector(p.parametricSoftplus.alpha), ctx.vector(p.parametricSoftplus.beta)

        def softplus(x):  # one alpha and beta per channel (axis -3), or one for all
            a = alpha.reshape(-1, 1, 1) if alpha.size > 1 else alpha.reshape(())
            b = beta.reshape(-1, 1, 1) if beta.size > 1 else beta.reshape(())
            return a * np.logaddexp(F32(0), b * x)

        return softplus
    raise ctx.unsupported(f"uses activation {kind!r}, which the executor does not support")


@layer("activation")
def _activation(p, ctx: LayerContext):
    fn = activation_fn(p, ctx)
    return (lambda inputs: fn(inputs[0])), always


_UNARY = {
    0: lambda x, p, eps: np.sqrt(x),
    1: lambda x, p, eps: F32(1) / np.sqrt(x + eps),
    2: lambda x, p, eps: F32(1) / (x + eps),
    3: lambda x, p, eps: np.power(x, F32(p.alpha)),
    4: lambda x, p, eps: np.exp(x),
    5: lambda x, p, eps: np.log(x),
    6: lambda x, p, eps: np.abs(x),
    7: lambda x, p, eps: np.maximum(x, F32(p.alpha)),
}


@layer("unary")
def _unary(p, ctx: LayerContext):
    if p.type not in _UNARY:
        raise ctx.unsupported(f"uses unary function {p.type}, which the executor does not support")
    fn = _UNARY[p.type]
    eps = F32(p.epsilon or UNARY_EPSILON)
    scale, shift = F32(p.scale or 1.0), F32(p.shift)

    def run(inputs):
        x = inputs[0]
        if scale != 1 or shift != 0:
            x = scale * x + shift
        return fn(x, p, eps)

    return run, always


@layer("clip")
def _clip(p, ctx: LayerContext):
    return (lambda inputs: np.clip(inputs[0], F32(p.minVal), F32(p.maxVal))), always


@layer("gelu")
def _gelu(p, ctx: LayerContext):
    def run(inputs):
        x = inputs[0]
        if p.mode == 0:
            from scipy.special import erf

            return F32(0.5) * x * (F32(1) + erf(x / F32(np.sqrt(2.0))).astype(F32))
        if p.mode == 1:
            return F32(0.5) * x * (F32(1) + np.tanh(SQRT_2_OVER_PI * (x + F32(0.044715) * x * x * x)))
        return x / (F32(1) + np.exp(-GELU_SIGMOID_FACTOR * x))

    return run, always


# ------------------------------------------------------------------------------------------------ elementwise
def _fold(fn, alpha_default=None):
    def build(p, ctx: LayerContext):
        def run(inputs):
            if len(inputs) == 1 and alpha_default is not None:
                return fn(inputs[0], F32(p.alpha))
            out = inputs[0]
            for x in inputs[1:]:
                out = fn(out, x)
            return out

        return run, always

    return build


layer("add")(_fold(np.add, alpha_default=0.0))
layer("multiply")(_fold(np.multiply, alpha_default=1.0))
layer("max")(_fold(np.maximum))
layer("min")(_fold(np.minimum))
layer("addBroadcastable")(_fold(np.add))
layer("subtractBroadcastable")(_fold(np.subtract))
layer("multiplyBroadcastable")(_fold(np.multiply))
layer("divideBroadcastable")(_fold(np.divide))
layer("maxBroadcastable")(_fold(np.maximum))
layer("minBroadcastable")(_fold(np.minimum))
layer("powBroadcastable")(_fold(np.power))


@layer("average")
def _average(p, ctx: LayerContext):
    return (lambda inputs: sum(inputs[1:], inputs[0]) / F32(len(inputs))), always


@layer("copy")
def _copy(p, ctx: LayerContext):
    return (lambda inputs: inputs[0]), always


@layer("loadConstantND")
def _load_constant(p, ctx: LayerContext):
    value = ctx.weights(p.data, tuple(p.shape))
    return (lambda inputs: value), always
