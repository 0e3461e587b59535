"""NeuralNetwork (.mlmodel) recurrent layers (simpleRecurrent, gru, uniDirectionalLSTM, biDirectionalLSTM) in numpy,
each as ``NeuralNetwork.proto`` defines it.

Each takes a rank-5 sequence ``[Seq, Batch, inputVectorSize, 1, 1]`` and, optionally, initial states ``[1, Batch,
outputVectorSize, 1, 1]`` (zeros when absent); it returns the output (every step with ``sequenceOutput``, else the
last, ``[1, Batch, ...]``) and, when the file names more outputs, the final states. Every pre-activation is clipped to
[-RECURRENT_CLIP, RECURRENT_CLIP] and an LSTM's cell state to ``cellClipThreshold``. With ``reverseInput`` a layer
reads the sequence from its last step and emits its outputs in that processing order (as coremltools' own reference
for the MIL ops it maps onto these layers); a bidirectional LSTM's backward outputs are aligned with the steps they
end at (the proto's example: ``[yf_1, yb_3], [yf_2, yb_2], [yf_3, yb_1]``).
"""

from __future__ import annotations

import numpy as np

from . import recurrent
from .blob import bounded_count
from .nnlayers import F32, LayerContext, layer
from .nnlayers_legacy import batch_first, file_order

RECURRENT_CLIP = F32(50.0)  # NeuralNetwork.proto: clip() "constrains values between [-50.0, 50.0]"
CELL_CLIP_DEFAULT = 50.0  # LSTMParams.cellClipThreshold: "If 0, it is set to its default value = 50.0"


class _Weights:
    """One layer's matrices, decoded once: ``W`` [H, I] (input) and ``R`` [H, H] (recursion) per gate, row-major,
    stored transposed for ``x @ w``; ``b`` [H] per gate (zeros without biases) and the LSTM peepholes [H]."""

    def __init__(self, ctx: LayerContext, size_in: int, size_out: int):
        self.ctx, self.size_in, self.size_out = ctx, size_in, size_out

    def w(self, wp) -> np.ndarray:
        return self.ctx.weights(wp, (self.size_out, self.size_in)).T.copy()

    def r(self, wp) -> np.ndarray:
        return self.ctx.weights(wp, (self.size_out, self.size_out)).T.copy()

    def v(self, wp, present: bool) -> np.ndarray:
        return self.ctx.weights(wp, (self.size_out,)) if present else np.zeros(self.size_out, F32)


# ActivationParams kinds the recurrent layers take -> recurrent.ACTIVATIONS (their parameters are fixed there)
_KINDS = {
    "sigmoid": "sigmoid",
    "tanh": "tanh",
    "ReLU": "relu",
    "linear": "linear",
    "sigmoidHard": "hard_sigmoid",
    "scaledTanh": "scaled_tanh",
}


def _activation(params, ctx: LayerContext):
    kind = params.WhichOneof("NonlinearityType")
    if kind not in _KINDS:
        raise ctx.unsupported(f"uses activation {kind!r}; NeuralNetwork.proto's recurrent layers take {', '.join(_KINDS)}")
    return recurrent.ACTIVATIONS[_KINDS[kind]]


def _activations(params, count: int, ctx: LayerContext) -> list:
    found = list(params)
    if len(found) != count:
        raise ctx.fail(f"has {len(found)} activations; NeuralNetwork.proto says {count}")
    return [_activation(a, ctx) for a in found]


def _sequence(x: np.ndarray, size_in: int, ctx: LayerContext, size_out: int) -> np.ndarray:
    """The input as (Batch, Seq, inputVectorSize); the outputs of every step, (Batch, Seq, size_out), are bounded
    before the steps run (the hidden size comes from the file)."""
    x = batch_first(x, ctx)
    if x.shape[2:] != (size_in, 1, 1):
        raise ctx.fail(f"gets a sequence of {x.shape[2:]} values per step; it takes [{size_in}, 1, 1]")
    bounded_count((x.shape[0], x.shape[1], size_out), ctx.where, f"{ctx.kind} {ctx.name!r} outputs")
    return x.reshape(x.shape[0], x.shape[1], size_in)


def _state(inputs, index: int, batch: int, size: int, ctx: LayerContext) -> np.ndarray:
    """Initial state ``index`` (1 + position among the optional inputs) as (Batch, H), zeros when absent."""
    if len(inputs) <= index:
        return np.zeros((batch, size), F32)
    state = batch_first(inputs[index], ctx)
    if state.shape != (batch, 1, size, 1, 1):
        raise ctx.fail(f"gets an initial state of shape {state.shape}; it takes [1, {batch}, {size}, 1, 1]")
    return state.reshape(batch, size)


def _batch_rule(ctx: LayerContext):
    """Batch first in a rank-5 file, and without initial states: a state blob that does not derive from the image
    (a constant) has a batch of 1, not the pass's."""
    return lambda shapes: ctx.rank5 and len(shapes) == 1


def _blob(values: np.ndarray, ctx: LayerContext) -> np.ndarray:
    """(Batch, Seq, H) -> the rank-5 blob [Seq, Batch, H, 1, 1] in this file's order."""
    return file_order(values[..., None, None].astype(F32, copy=False), ctx)


def _outputs(y: np.ndarray, states: list[np.ndarray], ctx: LayerContext) -> list[np.ndarray]:
    """The output (Batch, Seq or 1, H) and the final states (Batch, H), as many as the file names."""
    values = [y] + [s[:, None] for s in states]
    if not 1 <= ctx.outputs <= len(values):
        raise ctx.fail(f"names {ctx.outputs} outputs; it has {len(values)} (the output, then its final states)")
    return [_blob(v, ctx) for v in values[: ctx.outputs]]


@layer("simpleRecurrent")
def _simple_recurrent(p, ctx: LayerContext):
    """``y_t = f(clip(W x_t + R y_{t-1} + b))``."""
    size_in, size = int(p.inputVectorSize), int(p.outputVectorSize)
    weights = _Weights(ctx, size_in, size)
    w, r, b = weights.w(p.weightMatrix), weights.r(p.recursionMatrix), weights.v(p.biasVector, p.hasBiasVector)
    f = _activation(p.activation, ctx)

    def run(inputs):
        x = _sequence(inputs[0], size_in, ctx, size)
        steps, y = recurrent.simple(x, _state(inputs, 1, x.shape[0], size, ctx), w, r, b, f, RECURRENT_CLIP, p.reverseInput)
        return _outputs(recurrent.sequence(steps, p.sequenceOutput), [y], ctx)

    return run, _batch_rule(ctx)


@layer("gru")
def _gru(p, ctx: LayerContext):
    """``z = f(clip(W_z x + R_z y + b_z))``, ``r = f(clip(W_r x + R_r y + b_r))``, ``o = g(clip(W_o x + R_o (y * r)
    + b_o))``, ``y = (1 - z) * o + z * y``."""
    size_in, size = int(p.inputVectorSize), int(p.outputVectorSize)
    weights = _Weights(ctx, size_in, size)
    w = [weights.w(m) for m in (p.updateGateWeightMatrix, p.resetGateWeightMatrix, p.outputGateWeightMatrix)]
    r = [weights.r(m) for m in (p.updateGateRecursionMatrix, p.resetGateRecursionMatrix, p.outputGateRecursionMatrix)]
    b = [weights.v(m, p.hasBiasVectors) for m in (p.updateGateBiasVector, p.resetGateBiasVector, p.outputGateBiasVector)]
    f, g = _activations(p.activations, 2, ctx)

    def run(inputs):
        x = _sequence(inputs[0], size_in, ctx, size)
        y0 = _state(inputs, 1, x.shape[0], size, ctx)
        steps, y = recurrent.gru(x, y0, w, r, b, f, g, RECURRENT_CLIP, p.reverseInput, reset_inside=True)
        return _outputs(recurrent.sequence(steps, p.sequenceOutput), [y], ctx)

    return run, _batch_rule(ctx)


def _lstm(wp, params, activations, ctx: LayerContext, size_in: int, size: int) -> recurrent.LSTM:
    """One direction from its ``LSTMWeightParams``, the shared ``LSTMParams`` and the activations [f, g, h]."""
    weights = _Weights(ctx, size_in, size)
    w = [weights.w(m) for m in (wp.inputGateWeightMatrix, wp.forgetGateWeightMatrix, wp.blockInputWeightMatrix, wp.outputGateWeightMatrix)]
    r = [
        weights.r(m)
        for m in (wp.inputGateRecursionMatrix, wp.forgetGateRecursionMatrix, wp.blockInputRecursionMatrix, wp.outputGateRecursionMatrix)
    ]
    bias = params.hasBiasVectors
    b = [weights.v(m, bias) for m in (wp.inputGateBiasVector, wp.forgetGateBiasVector, wp.blockInputBiasVector, wp.outputGateBiasVector)]
    if params.forgetBias:
        b[1] = b[1] + F32(1)
    peep = params.hasPeepholeVectors
    p = [weights.v(m, peep) for m in (wp.inputGatePeepholeVector, wp.forgetGatePeepholeVector, wp.outputGatePeepholeVector)]
    cell_clip = F32(params.cellClipThreshold or CELL_CLIP_DEFAULT)
    f, g, h = activations
    return recurrent.LSTM(w, r, b, p, f, g, h, params.coupledInputAndForgetGate, cell_clip, RECURRENT_CLIP)


@layer("uniDirectionalLSTM")
def _unidirectional_lstm(p, ctx: LayerContext):
    size_in, size = int(p.inputVectorSize), int(p.outputVectorSize)
    cell = _lstm(p.weightParams, p.params, _activations(p.activations, 3, ctx), ctx, size_in, size)

    def run(inputs):
        x = _sequence(inputs[0], size_in, ctx, size)
        batch = x.shape[0]
        steps, y, c = cell.run(x, _state(inputs, 1, batch, size, ctx), _state(inputs, 2, batch, size, ctx), p.reverseInput)
        return _outputs(recurrent.sequence(steps, p.params.sequenceOutput), [y, c], ctx)

    return run, _batch_rule(ctx)


@layer("biDirectionalLSTM")
def _bidirectional_lstm(p, ctx: LayerContext):
    """A forward and a backward LSTM over the sequence, their outputs concatenated per step ([forward, backward]);
    outputs y, then h and c forward, h and c backward."""
    size_in, size = int(p.inputVectorSize), int(p.outputVectorSize)
    if len(p.weightParams) != 2:
        raise ctx.fail(f"has {len(p.weightParams)} weight sets; NeuralNetwork.proto says 2 (forward, backward)")
    forward = _lstm(p.weightParams[0], p.params, _activations(p.activationsForwardLSTM, 3, ctx), ctx, size_in, size)
    backward = _lstm(p.weightParams[1], p.params, _activations(p.activationsBackwardLSTM, 3, ctx), ctx, size_in, size)

    def run(inputs):
        x = _sequence(inputs[0], size_in, ctx, 2 * size)
        batch = x.shape[0]
        fs, fy, fc = forward.run(x, _state(inputs, 1, batch, size, ctx), _state(inputs, 2, batch, size, ctx), False)
        bs, by, bc = backward.run(x, _state(inputs, 3, batch, size, ctx), _state(inputs, 4, batch, size, ctx), True)
        return _outputs(recurrent.bidirectional(fs, fy, bs, by, p.params.sequenceOutput), [fy, fc, by, bc], ctx)

    return run, _batch_rule(ctx)
