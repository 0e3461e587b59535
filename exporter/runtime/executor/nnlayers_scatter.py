"""NeuralNetwork (.mlmodel) layers of specification 4 and later (iOS 13+) that write into a copy of a tensor (scatter,
scatterAlongAxis, scatterND), build one from indices or masks (oneHot, matrixBandPart, lowerTriangular,
upperTriangular, embeddingND) or from values computed at run time (broadcastToDynamic, rangeDynamic), cut windows
(slidingWindows) or reverse sequences (reverseSeq), in numpy, each as ``NeuralNetwork.proto`` defines it (and as
coremltools maps the matching MIL op onto it). Every output whose size the file or the values choose is bounded
before it is allocated."""

from __future__ import annotations

import numpy as np

from .blob import bounded_count
from .mil_scatter import along_axis, band, combine
from .nnlayers import F32, LayerContext, always, layer
from .nnlayers_legacy import lookup_rows
from .registry import never

# ScatterMode (NeuralNetwork.proto) -> the shared scatter kernels' mode names
SCATTER_MODES = {0: "update", 1: "add", 2: "sub", 3: "mul", 4: "div", 5: "max", 6: "min"}


def _scatter_mode(p, ctx: LayerContext) -> str:
    mode = SCATTER_MODES.get(int(p.mode))
    if mode is None:
        raise ctx.unsupported(f"uses scatter mode {p.mode}, which NeuralNetwork.proto does not define")
    return mode


def _positions(values, size, ctx: LayerContext) -> np.ndarray:
    """Float index values as int64 positions (truncated, as the NeuralNetwork gather layers cast theirs) into an axis
    of ``size`` (per position when an array): negative ones count from the end; one outside [-size, size) is refused
    (Core ML leaves it undefined)."""
    index = np.asarray(values).astype(np.int64)
    if index.size and (np.any(index < -np.asarray(size)) or np.any(index >= size)):
        raise ctx.fail("has an index outside the axis it addresses")
    return np.where(index < 0, index + size, index)


@layer("scatter")
def _scatter(p, ctx: LayerContext):
    """The container with slice ``indices[i, ..., j]`` of ``axis`` combined with slice ``[i, ..., j]`` of
    ``updates`` (shape: the container's with that axis replaced by the indices' shape) by ``mode``."""
    mode, axis = _scatter_mode(p, ctx), int(p.axis)

    def run(inputs):
        out = np.array(inputs[0], F32, copy=True)
        a = axis % out.ndim
        index = _positions(inputs[1], out.shape[a], ctx)
        updates = np.asarray(inputs[2], F32)
        expected = out.shape[:a] + index.shape + out.shape[a + 1 :]
        if updates.shape != expected:
            raise ctx.fail(f"needs updates of shape {expected}, has {updates.shape}")
        flat = updates.reshape(out.shape[:a] + (index.size,) + out.shape[a + 1 :])
        combine(np.moveaxis(out, a, 0), (index.reshape(-1),), np.moveaxis(flat, a, 0), mode)
        return out

    return run, never


@layer("scatterAlongAxis")
def _scatter_along_axis(p, ctx: LayerContext):
    """``out[..., indices[..., i, ...], ...]`` combined with ``updates[..., i, ...]`` along ``axis``."""
    mode, axis = _scatter_mode(p, ctx), int(p.axis)

    def run(inputs):
        out = np.array(inputs[0], F32, copy=True)
        a = axis % out.ndim
        index = _positions(inputs[1], out.shape[a], ctx)
        updates = np.asarray(inputs[2], F32)
        return combine(out, along_axis(out.shape, index, updates, a, ctx.fail), updates, mode)

    return run, never


@layer("scatterND")
def _scatter_nd(p, ctx: LayerContext):
    """``out[indices[i_0, ..., i_{K-2}]]`` combined with ``updates[i_0, ..., i_{K-2}]``, each index addressing the
    first ``indices.shape[-1]`` axes of the container."""
    mode = _scatter_mode(p, ctx)

    def run(inputs):
        out = np.array(inputs[0], F32, copy=True)
        raw = np.asarray(inputs[1])
        depth = raw.shape[-1] if raw.ndim else 0
        if not 1 <= depth <= out.ndim:
            raise ctx.fail(f"needs indices whose last axis (1 to {out.ndim}) addresses the container, has shape {raw.shape}")
        index = _positions(raw, np.asarray(out.shape[:depth]), ctx)
        updates = np.asarray(inputs[2], F32)
        expected = raw.shape[:-1] + out.shape[depth:]
        if updates.shape != expected:
            raise ctx.fail(f"needs updates of shape {expected}, has {updates.shape}")
        flat = index.reshape(-1, depth)
        return combine(out, tuple(flat.T), updates.reshape((len(flat),) + out.shape[depth:]), mode)

    return run, never


@layer("oneHot")
def _one_hot(p, ctx: LayerContext):
    """A new axis at ``axis`` of ``oneHotVectorSize`` entries (the second input's value when there is one),
    ``onValue`` where it equals the index and ``offValue`` elsewhere (an index outside [0, size) gives a vector of
    ``offValue``, as MIL's one_hot, which coremltools maps onto this layer)."""
    axis, on, off = int(p.axis), F32(p.onValue), F32(p.offValue)

    def run(inputs):
        index = np.asarray(inputs[0])
        size = int(np.asarray(inputs[1]).reshape(-1)[0]) if len(inputs) > 1 else int(p.oneHotVectorSize)
        if size < 0:
            raise ctx.fail(f"has a negative one-hot size {size}")
        if not -index.ndim - 1 <= axis <= index.ndim:
            raise ctx.fail(f"has axis {axis} outside [{-index.ndim - 1}, {index.ndim}]")
        bounded_count(index.shape + (size,), ctx.where, f"oneHot {ctx.name!r} output")
        hot = np.expand_dims(index, -1) == np.arange(size, dtype=F32)
        return np.moveaxis(np.where(hot, on, off).astype(F32), -1, axis % (index.ndim + 1))

    return run, lambda shapes: axis % (len(shapes[0]) + 1) != 0


@layer("matrixBandPart")
def _matrix_band_part(p, ctx: LayerContext):
    """Row m, column n of the last two axes kept when (numLower < 0 or m - n <= numLower) and (numUpper < 0 or
    n - m <= numUpper), 0 elsewhere."""
    lower, upper = int(p.numLower), int(p.numUpper)
    return (lambda inputs: band(_matrices(inputs[0], ctx), lower, upper)), (lambda shapes: len(shapes[0]) > 2)


@layer("lowerTriangular")
def _lower_triangular(p, ctx: LayerContext):
    """Zero above diagonal ``k`` of the last two axes (k = 0 the main diagonal, k > 0 above it)."""
    k = int(p.k)
    return (lambda inputs: np.tril(_matrices(inputs[0], ctx), k)), (lambda shapes: len(shapes[0]) > 2)


@layer("upperTriangular")
def _upper_triangular(p, ctx: LayerContext):
    """Zero below diagonal ``k`` of the last two axes."""
    k = int(p.k)
    return (lambda inputs: np.triu(_matrices(inputs[0], ctx), k)), (lambda shapes: len(shapes[0]) > 2)


def _matrices(x: np.ndarray, ctx: LayerContext) -> np.ndarray:
    if x.ndim < 2:
        raise ctx.fail(f"gets a rank-{x.ndim} input; it works on the last two axes of rank 2 or more")
    return x


@layer("slidingWindows")
def _sliding_windows(p, ctx: LayerContext):
    """Windows of ``windowSize`` along ``axis``, one every ``step``: that axis of length L becomes two, (M, W), with
    M = (L - W) // step + 1."""
    axis, size, step = int(p.axis), int(p.windowSize), int(p.step)
    if size < 1 or step < 1:
        raise ctx.fail(f"has window size {size} and step {step}; both must be positive")

    def run(inputs):
        x = inputs[0]
        a = axis % x.ndim
        length = x.shape[a]
        if length < size:
            raise ctx.fail(f"takes windows of {size} along an axis of {length}")
        count = (length - size) // step + 1
        bounded_count(x.shape[:a] + (count, size) + x.shape[a + 1 :], ctx.where, f"slidingWindows {ctx.name!r} output")
        windows = np.lib.stride_tricks.sliding_window_view(x, size, axis=a)  # axis a: L - W + 1 starts; last: window
        windows = np.take(windows, np.arange(0, count * step, step), axis=a)
        return np.ascontiguousarray(np.moveaxis(windows, -1, a + 1))

    return run, lambda shapes: axis % len(shapes[0]) != 0


@layer("embeddingND")
def _embedding_nd(p, ctx: LayerContext):
    """Indices (..., 1) into ``vocabSize`` rows of the [embeddingSize, vocabSize] weights: (..., embeddingSize)."""
    vocab, size = int(p.vocabSize), int(p.embeddingSize)
    table = ctx.weights(p.weights, (size, vocab)).T.copy()
    if p.hasBias:
        table = table + ctx.weights(p.bias, (size,))

    def run(inputs):
        x = inputs[0]
        if x.ndim < 2 or x.shape[-1] != 1:
            raise ctx.fail(f"gets shape {x.shape}; NeuralNetwork.proto says rank 2 or more with the last axis 1")
        return lookup_rows(table, x[..., 0], ctx)

    return run, always


@layer("broadcastToDynamic")
def _broadcast_dynamic(p, ctx: LayerContext):
    """The first input broadcast to the shape the second input's values give."""

    def run(inputs):
        raw = np.asarray(inputs[1]).reshape(-1)
        shape = tuple(int(v) for v in raw)
        if any(v < 0 for v in shape) or np.any(raw != np.asarray(shape)):
            raise ctx.fail(f"is asked for shape {raw.tolist()}, not whole non-negative sizes")
        bounded_count(shape, ctx.where, f"broadcastToDynamic {ctx.name!r} output")
        return np.broadcast_to(inputs[0], shape).copy()

    return run, never


@layer("rangeDynamic")
def _range_dynamic(p, ctx: LayerContext):
    """``arange(start, end, step)``: end from the first input, start and step from the second and third when given,
    else ``startValue`` and ``stepSizeValue``."""

    def run(inputs):
        values = [float(np.asarray(v).reshape(-1)[0]) for v in inputs]
        end = values[0]
        start = values[1] if len(values) > 1 else float(p.startValue)
        step = values[2] if len(values) > 2 else float(p.stepSizeValue)
        if step == 0 or not np.isfinite([start, end, step]).all():
            raise ctx.fail(f"has range start {start}, end {end}, step {step}")
        bounded_count((max(0, int(np.ceil((end - start) / step))),), ctx.where, f"rangeDynamic {ctx.name!r} output")
        return np.arange(start, end, step, dtype=F32)

    return run, never


@layer("reverseSeq")
def _reverse_seq(p, ctx: LayerContext):
    """For each entry b of ``batchAxis``, the first ``lengths[b]`` entries along ``sequenceAxis`` reversed (the rest
    kept), as TensorFlow's reverse_sequence."""
    batch_axis, seq_axis = int(p.batchAxis), int(p.sequenceAxis)

    def run(inputs):
        x = inputs[0]
        b, s = batch_axis % x.ndim, seq_axis % x.ndim
        if b >= s:
            raise ctx.fail(f"has batch axis {b} not before sequence axis {s}")
        raw = np.asarray(inputs[1]).reshape(-1)
        lengths = raw.astype(np.int64)
        if len(lengths) != x.shape[b] or np.any(lengths != raw) or np.any(lengths < 0) or np.any(lengths > x.shape[s]):
            raise ctx.fail(f"needs {x.shape[b]} whole lengths in [0, {x.shape[s]}], has {raw.tolist()}")
        t = np.arange(x.shape[s])[None, :]
        order = np.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (batch, seq) source positions
        shape = [1] * x.ndim
        shape[b], shape[s] = x.shape[b], x.shape[s]
        index = np.broadcast_to(order.reshape(shape), x.shape)
        return np.take_along_axis(x, index, axis=s)

    return run, never
