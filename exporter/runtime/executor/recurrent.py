"""Recurrent cells shared by the NeuralNetwork layers (nnlayers_recurrent) and the ML Program ops (mil_recurrent).

Sequences are (Batch, Seq, Input) float32 arrays, states (Batch, H); weights are stored for ``x @ w`` ((Input, H)
and (H, H)). A cell runs the steps in order, or from the last with ``reverse``, and returns the outputs in
processing order with the final states. ``preclip`` bounds every pre-activation (NeuralNetwork.proto's clip() of
[-50, 50]; None for the ML Program ops, whose definitions have none)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

F32 = np.float32
Fn = Callable[[np.ndarray], np.ndarray]


# The activations a recurrent cell takes, by name. NeuralNetwork.proto fixes the parameters of two of them for the
# recurrent layers ("Scaled Tanh (alpha = 1.71, beta = 2/3), Hard sigmoid (alpha = 0.2, beta = 0.5)"; 1.7159 is
# LeCun's constant that 1.71 abbreviates) and coremltools writes them without parameters (as it writes Linear, the
# identity); the ML Program ops name the same set without parameters, and are given the same values.
SCALED_TANH_ALPHA, SCALED_TANH_BETA = F32(1.7159), F32(2.0 / 3.0)
HARD_SIGMOID_ALPHA, HARD_SIGMOID_BETA = F32(0.2), F32(0.5)
ACTIVATIONS: dict[str, Fn] = {
    "sigmoid": lambda v: F32(1) / (F32(1) + np.exp(-v)),
    "tanh": np.tanh,
    "relu": lambda v: np.maximum(v, F32(0)),
    "linear": lambda v: v,
    "hard_sigmoid": lambda v: np.clip(HARD_SIGMOID_ALPHA * v + HARD_SIGMOID_BETA, F32(0), F32(1)),
    "scaled_tanh": lambda v: SCALED_TANH_ALPHA * np.tanh(SCALED_TANH_BETA * v),
}


def _clip(v: np.ndarray, limit: F32 | None) -> np.ndarray:
    return v if limit is None else np.clip(v, -limit, limit)


def order(length: int, reverse: bool) -> range:
    return range(length - 1, -1, -1) if reverse else range(length)


def simple(x, y, w, r, b, f: Fn, preclip, reverse: bool):
    """``y_t = f(x_t W + y_{t-1} R + b)``."""
    steps = []
    for t in order(x.shape[1], reverse):
        y = f(_clip(x[:, t] @ w + y @ r + b, preclip))
        steps.append(y)
    return steps, y


def gru(x, y, w, r, b, f: Fn, g: Fn, preclip, reverse: bool, reset_inside: bool, hidden_bias=None):
    """Gates z (update), r (reset), o (output) from ``w``, ``r``, ``b`` (each a (z, r, o) triple): ``z = f(x W_z + y
    R_z + b_z)``, ``r = f(x W_r + y R_r + b_r)``, ``o = g(x W_o + (y * r) R_o + b_o)`` with ``reset_inside``
    (NeuralNetwork.proto) or ``g(x W_o + r * (y R_o) + b_o)`` (MIL's gru), then ``y = (1 - z) o + z y``."""
    (wz, wr, wo), (rz, rr, ro), (bz, br, bo) = w, r, b
    steps = []
    for t in order(x.shape[1], reverse):
        xt = x[:, t]
        z = f(_clip(xt @ wz + y @ rz + bz, preclip))
        reset = f(_clip(xt @ wr + y @ rr + br, preclip))
        recurrent = (y * reset) @ ro if reset_inside else reset * (y @ ro)
        o = g(_clip(xt @ wo + recurrent + bo, preclip))
        y = (F32(1) - z) * o + z * y
        steps.append(y)
    return steps, y


class LSTM:
    """One direction of an LSTM. ``w``, ``r``, ``b``: (input, forget, block input z, output) gates; ``p``: the
    (input, forget, output) peepholes (zeros for none); activations ``f`` (gates), ``g`` (block input), ``h``
    (output); ``coupled``: c = c (1 - i) + i z; ``cell_clip``: c bounded to [-cell_clip, cell_clip] (None: not)."""

    def __init__(self, w, r, b, p, f: Fn, g: Fn, h: Fn, coupled: bool, cell_clip, preclip):
        self.w, self.r, self.b, self.p = w, r, b, p
        self.f, self.g, self.h = f, g, h
        self.coupled, self.cell_clip, self.preclip = coupled, cell_clip, preclip

    def step(self, xt, y, c):
        w, r, b, p, clip = self.w, self.r, self.b, self.p, self.preclip
        i = self.f(_clip(xt @ w[0] + y @ r[0] + p[0] * c + b[0], clip))
        z = self.g(_clip(xt @ w[2] + y @ r[2] + b[2], clip))
        if self.coupled:
            c = c * (F32(1) - i) + i * z
        else:
            c = c * self.f(_clip(xt @ w[1] + y @ r[1] + p[1] * c + b[1], clip)) + i * z
        if self.cell_clip is not None:
            c = np.clip(c, -self.cell_clip, self.cell_clip)
        o = self.f(_clip(xt @ w[3] + y @ r[3] + p[2] * c + b[3], clip))
        return self.h(c) * o, c

    def run(self, x, y, c, reverse: bool):
        steps = []
        for t in order(x.shape[1], reverse):
            y, c = self.step(x[:, t], y, c)
            steps.append(y)
        return steps, y, c


def sequence(steps: list[np.ndarray], every: bool) -> np.ndarray:
    """(Batch, Seq, H) of every step's output, or (Batch, 1, H) of the last."""
    return np.stack(steps, axis=1) if every else steps[-1][:, None]


def bidirectional(fs, fy, bs, by, every: bool) -> np.ndarray:
    """[forward, backward] per step, the backward output of step t being the backward LSTM's after reading x_T ...
    x_t (its steps come in processing order), or of the last steps: (Batch, Seq or 1, 2H)."""
    if every:
        return np.concatenate([np.stack(fs, axis=1), np.stack(bs[::-1], axis=1)], axis=-1)
    return np.concatenate([fy, by], axis=-1)[:, None]
