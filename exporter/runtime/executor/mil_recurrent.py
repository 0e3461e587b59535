"""ML Program recurrent ops (rnn, gru, lstm; iOS15-iOS18) in numpy, each as its MIL definition states it, on the
cells of ``recurrent``.

``x`` is (Seq, Batch, Input); the ops return every step's hidden state (``output_sequence``) or the last, then the
final states. ``direction="reverse"`` reads the sequence from its last step and emits its outputs in that processing
order (coremltools' own reference for these ops); a bidirectional lstm aligns its backward outputs with the steps
they end at. The definitions have no clip of the pre-activations (NeuralNetwork.proto's [-50, 50] clip is its own);
lstm's ``clip`` bounds the cell state. Activations are named from ``recurrent.ACTIVATIONS``."""

from __future__ import annotations

import numpy as np

from . import recurrent
from .blob import bounded_count
from .registry import OpCall, op

F32 = np.float32


def _activation(c: OpCall, key: str, default: str):
    name = c.const(key, default)
    if name not in recurrent.ACTIVATIONS:
        raise c.unsupported(f"uses {key} {name!r}; the definition names {', '.join(recurrent.ACTIVATIONS)}")
    return recurrent.ACTIVATIONS[name]


def _parts(c: OpCall, key: str, count: int, size: int, width: int | None = None) -> list[np.ndarray]:
    """``count`` blocks of ``size`` rows of a stacked parameter (zeros when absent), matrices transposed for x @ w."""
    value = c.get(key)
    if value is None:
        return [np.zeros(size, F32)] * count
    value = np.asarray(value, F32)
    expected = (count * size,) if width is None else (count * size, width)
    if value.shape != expected:
        raise c.fail(f"has {key} of shape {value.shape}; it needs {expected}")
    blocks = np.split(value, count, axis=0)
    return blocks if width is None else [b.T.copy() for b in blocks]


def _sequence(c: OpCall, size_out: int) -> np.ndarray:
    """x as (Batch, Seq, Input); every step's outputs, (Seq, Batch, size_out), bounded before the steps run."""
    x = np.asarray(c["x"], F32)
    if x.ndim != 3:
        raise c.fail(f"has x of rank {x.ndim}; it takes (Seq, Batch, Input)")
    bounded_count((x.shape[0], x.shape[1], size_out), c.where, f"{c.op_type} op {c.name!r} outputs")
    return np.swapaxes(x, 0, 1)  # (Batch, Seq, Input)


def _state(c: OpCall, key: str, batch: int, size: int) -> np.ndarray:
    state = np.asarray(c[key], F32)
    if state.shape != (batch, size):
        raise c.fail(f"has {key} of shape {state.shape}; it needs {(batch, size)}")
    return state


def _direction(c: OpCall, allowed: tuple[str, ...]) -> str:
    direction = c.const("direction", "forward")
    if direction not in allowed:
        raise c.fail(f"has direction {direction!r}; the definition allows {', '.join(allowed)}")
    return direction


def _out(y: np.ndarray, dtype) -> np.ndarray:
    """(Batch, Seq, H) -> (Seq, Batch, H) in the input's dtype."""
    return np.swapaxes(y, 0, 1).astype(dtype)


@op("rnn")
def _rnn(c: OpCall):
    """``h_t = activation(W_ih x_t + W_hh h_{t-1} + b)``."""
    hidden = np.asarray(c["weight_hh"]).shape[0]
    x = _sequence(c, hidden)
    (w,) = _parts(c, "weight_ih", 1, hidden, x.shape[2])
    (r,) = _parts(c, "weight_hh", 1, hidden, hidden)
    (b,) = _parts(c, "bias", 1, hidden)
    reverse = _direction(c, ("forward", "reverse")) == "reverse"
    h0 = _state(c, "initial_h", x.shape[0], hidden)
    steps, h = recurrent.simple(x, h0, w, r, b, _activation(c, "activation", "tanh"), None, reverse)
    dtype = np.asarray(c["x"]).dtype
    return _out(recurrent.sequence(steps, bool(c.const("output_sequence", False))), dtype), h.astype(dtype)


@op("gru")
def _gru(c: OpCall):
    """``r = ra(W_ir x + W_hr h + b_r)``, ``z = ra(W_iz x + W_hz h + b_z)``, ``o = a(W_io x + r * (W_ho h) + b_o)``,
    ``h = (1 - z) * o + z * h``; weights and bias stacked (r, o, z). iOS18's ``reset_after`` and ``input_bias``,
    which the definition does not state precisely, are refused when set."""
    if c.const("reset_after", False) or (c.get("input_bias") is not None and np.any(np.asarray(c.get("input_bias")) != 0)):
        raise c.unsupported("sets reset_after or input_bias (iOS18), whose arithmetic the MIL definition does not state")
    hidden = np.asarray(c["weight_hh"]).shape[1]
    x = _sequence(c, hidden)
    wr, wo, wz = _parts(c, "weight_ih", 3, hidden, x.shape[2])
    rr, ro, rz = _parts(c, "weight_hh", 3, hidden, hidden)
    br, bo, bz = _parts(c, "bias", 3, hidden)
    reverse = _direction(c, ("forward", "reverse")) == "reverse"
    h0 = _state(c, "initial_h", x.shape[0], hidden)
    f, g = _activation(c, "recurrent_activation", "sigmoid"), _activation(c, "activation", "tanh")
    steps, h = recurrent.gru(x, h0, (wz, wr, wo), (rz, rr, ro), (bz, br, bo), f, g, None, reverse, reset_inside=False)
    dtype = np.asarray(c["x"]).dtype
    return _out(recurrent.sequence(steps, bool(c.const("output_sequence", False))), dtype), h.astype(dtype)


def _lstm_cell(c: OpCall, suffix: str, size_in: int, hidden: int, activations, clip) -> recurrent.LSTM:
    """One direction: weights, bias and peephole stacked (input, forget, output, cell) and (input, forget, output)."""
    wi, wf, wo, wz = _parts(c, "weight_ih" + suffix, 4, hidden, size_in)
    ri, rf, ro, rz = _parts(c, "weight_hh" + suffix, 4, hidden, hidden)
    bi, bf, bo, bz = _parts(c, "bias" + suffix, 4, hidden)
    peep = _parts(c, "peephole" + suffix, 3, hidden)
    f, g, h = activations
    return recurrent.LSTM([wi, wf, wz, wo], [ri, rf, rz, ro], [bi, bf, bz, bo], peep, f, g, h, False, clip, None)


@op("lstm")
def _lstm(c: OpCall):
    """``i, f, o = ra(W x + R h + p * c + b)``, ``z = ca(W_z x + R_z h + b_z)``, ``c = f * c + i * z`` (clipped to
    ``clip``), ``h = o * a(c)``; forward, reverse or bidirectional (``*_back`` parameters for the backward LSTM,
    states [forward | backward] along the hidden axis)."""
    hidden = np.asarray(c["weight_hh"]).shape[1]
    direction = _direction(c, ("forward", "reverse", "bidirectional"))
    x = _sequence(c, 2 * hidden if direction == "bidirectional" else hidden)
    activations = (
        _activation(c, "recurrent_activation", "sigmoid"),
        _activation(c, "cell_activation", "tanh"),
        _activation(c, "activation", "tanh"),
    )
    clip = c.const("clip", None)
    clip = None if clip is None else F32(clip)
    every = bool(c.const("output_sequence", False))
    dtype = np.asarray(c["x"]).dtype
    batch, size_in = x.shape[0], x.shape[2]
    forward = _lstm_cell(c, "", size_in, hidden, activations, clip)
    if direction != "bidirectional":
        h0, c0 = _state(c, "initial_h", batch, hidden), _state(c, "initial_c", batch, hidden)
        steps, h, cell = forward.run(x, h0, c0, direction == "reverse")
        return _out(recurrent.sequence(steps, every), dtype), h.astype(dtype), cell.astype(dtype)
    if c.get("weight_ih_back") is None or c.get("weight_hh_back") is None:
        raise c.fail("is bidirectional without weight_ih_back and weight_hh_back")
    backward = _lstm_cell(c, "_back", size_in, hidden, activations, clip)
    h0, c0 = _state(c, "initial_h", batch, 2 * hidden), _state(c, "initial_c", batch, 2 * hidden)
    fs, fh, fc = forward.run(x, h0[:, :hidden], c0[:, :hidden], False)
    bs, bh, bc = backward.run(x, h0[:, hidden:], c0[:, hidden:], True)
    out = recurrent.bidirectional(fs, fh, bs, bh, every)
    return _out(out, dtype), np.concatenate([fh, bh], axis=1).astype(dtype), np.concatenate([fc, bc], axis=1).astype(dtype)
