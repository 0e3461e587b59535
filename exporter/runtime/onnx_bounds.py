"""Memory bounds for an untrusted ONNX file, checked before onnxruntime opens it (docs/THREAT_MODEL.md).

onnxruntime allocates whatever the graph asks for: an Expand, Tile, Resize, ConstantOfShape or Reshape to a shape of
10^12 elements, built from a few bytes of constants, is an out-of-memory kill (or, folded as a constant, one while the
session loads), not an error. The Core ML executor refuses a declared tensor over the memory budget before it runs
(``executor.blob.bounded_count``); this is the ONNX file's equivalent: ONNX shape inference, with data propagation so
shapes computed from constants are known, runs on the graph with its input fixed to a batch of images, and every
value every node makes must then have a static shape within ``MEMORY_BUDGET_BYTES``. A value whose size is not known
before running (it depends on the image's data: NonZero, a shape read from the input) cannot be bounded and is
refused, as are subgraphs (Loop, Scan, If) and local functions, whose inner values inference does not report. The
file's own ``value_info`` shapes are dropped first: they are claims of the file, not inferred facts.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import NamedTuple

from .. import safety
from ..errors import ConversionError, translating
from ..safety import MEMORY_BUDGET_BYTES, check_elements, quote

# Initializers larger than this are weights, never shape operands; inference gets their type and dimensions only, so
# the graph it is handed is not a second copy of the weights. A shape tensor of more elements is a tensor of rank
# 4096+, which no operation accepts; its values stay unknown and whatever it shapes is refused as unbounded.
SHAPE_OPERAND_MAX_ELEMENTS = 4096
# Most images one session.run takes (validate's default batch is 32; onnxruntime on the CPU gains nothing from larger
# batches): the graph is checked again at this batch, so a value that grows faster than the batch is caught too.
MAX_IMAGES_PER_RUN = 64
# Bytes per element of a string tensor (the class label output): onnxruntime stores a std::string per element.
STRING_ITEMSIZE = 32


def _itemsize(elem_type: int) -> int:
    from onnx import TensorProto, helper

    if elem_type == TensorProto.STRING:
        return STRING_ITEMSIZE
    try:
        return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)
    except (KeyError, TypeError, ValueError):
        return 8


def _stripped(model, batch: int, where: str):
    """A copy of ``model`` for inference: weights reduced to their type and dimensions, the file's ``value_info`` and
    output shapes dropped, and the graph input's batch dimension fixed to ``batch``."""
    import onnx

    graph = onnx.GraphProto()
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    for init in model.graph.initializer:
        if math.prod(init.dims) <= SHAPE_OPERAND_MAX_ELEMENTS and not init.external_data:
            graph.initializer.append(init)
        else:
            graph.initializer.append(onnx.TensorProto(name=init.name, data_type=init.data_type, dims=init.dims))
    for out in model.graph.output:
        clean = graph.output.add()
        clean.name = out.name
        clean.type.tensor_type.elem_type = out.type.tensor_type.elem_type
    weights = {init.name for init in model.graph.initializer}
    for inp in graph.input:
        if inp.name in weights:
            continue
        dims = inp.type.tensor_type.shape.dim
        for k, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if k == 0:
                dim.Clear()
                dim.dim_value = batch
            else:
                raise ConversionError(
                    f"input {quote(inp.name)} has an open dimension {k} ({quote(dim.dim_param)}); only the batch may be open",
                    path=where,
                )
    copy = onnx.ModelProto(ir_version=model.ir_version, graph=graph)
    copy.opset_import.extend(model.opset_import)
    return copy


# Operations on small 1-D integer tensors that compute shapes (tf2onnx writes a Dense on a 4-D tensor as Shape, Gather,
# ReduceProd, Concat, Reshape): ONNX's data propagation leaves some of them (ReduceProd) unknown, so the graph's own
# arithmetic is evaluated here, on values of at most SHAPE_OPERAND_MAX_ELEMENTS elements and rank 1, whose results
# are no larger than their inputs (broadcasting vectors gives a vector). Nothing else is ever evaluated.
SHAPE_OPS = frozenset(
    "Shape Size Gather Cast Slice Concat Unsqueeze Squeeze Identity Add Sub Mul Div Neg Abs Floor Ceil Min Max "
    "ReduceProd ReduceSum ReduceMin ReduceMax Equal Less Greater Not Where".split()
)
MAX_FOLDING_ROUNDS = 16


def _inferred(copy, where: str):
    """``copy`` with its shapes inferred; shape arithmetic inference cannot follow (``SHAPE_OPS`` on values it
    knows) is evaluated, its results made constants, and inference run again until nothing more is learnt."""
    import onnx

    for _ in range(MAX_FOLDING_ROUNDS):
        with translating(ConversionError, "ONNX shape inference fails on the file", path=where):
            inferred = onnx.shape_inference.infer_shapes(copy, check_type=True, strict_mode=True, data_prop=True)
        folded = _fold_round(copy, inferred)
        if not folded:
            return inferred
        kept = [node for node in copy.graph.node if node.output[0] not in folded]
        del copy.graph.node[:]
        copy.graph.node.extend(kept)
        copy.graph.initializer.extend(folded.values())
    return inferred


def _inferred_values(inferred) -> dict[str, tuple[int, list[int] | None]]:
    """{value name: (element type, its static dimensions, or None when inference left any of them unknown)} of the
    graph's inputs, intermediate values and outputs."""
    values: dict[str, tuple[int, list[int] | None]] = {}
    for value in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        tensor = value.type.tensor_type
        static = tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim)
        values[value.name] = (tensor.elem_type, [d.dim_value for d in tensor.shape.dim] if static else None)
    return values


def _small(value) -> bool:
    return value.ndim <= 1 and value.size <= SHAPE_OPERAND_MAX_ELEMENTS


def _fold_round(copy, inferred) -> dict:
    """{output name: constant TensorProto} for every ``SHAPE_OPS`` node of ``copy`` whose inputs are known small
    values (a Shape: whose input has a static shape), evaluated one node at a time by ONNX's reference evaluator."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    shapes = {name: dims for name, (_, dims) in _inferred_values(inferred).items() if dims is not None}
    values: dict[str, np.ndarray] = {}
    for init in copy.graph.initializer:
        if math.prod(init.dims) <= SHAPE_OPERAND_MAX_ELEMENTS and len(init.dims) <= 1 and not init.external_data:
            with contextlib.suppress(Exception):  # a tensor without data (a stripped weight) stays unknown
                values[init.name] = numpy_helper.to_array(init)
    folded: dict[str, onnx.TensorProto] = {}
    for node in copy.graph.node:
        if node.op_type not in SHAPE_OPS or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        names = [i for i in node.input if i]
        if node.op_type == "Shape":
            if node.input[0] not in shapes:
                continue
            attrs = {a.name: a.i for a in node.attribute}
            dims = shapes[node.input[0]]
            out = np.asarray(dims, np.int64)[attrs.get("start", 0) : attrs.get("end", len(dims))]
        elif all(i in values for i in names) and len(names) == len(node.input):
            inputs = [helper.make_tensor_value_info(f"in{i}", 0, None) for i in range(len(names))]
            single = helper.make_node(node.op_type, [f"in{i}" for i in range(len(names))], ["out"])
            single.attribute.extend(node.attribute)
            graph = helper.make_graph([single], "fold", inputs, [helper.make_tensor_value_info("out", 0, None)])
            try:
                model = helper.make_model(graph, opset_imports=copy.opset_import, ir_version=copy.ir_version)
                feeds = {f"in{i}": values[n] for i, n in enumerate(names)}
                out = np.asarray(ReferenceEvaluator(model).run(None, feeds)[0])  # type: ignore[index]
            except Exception:  # noqa: BLE001 - what cannot be evaluated stays unknown, and unknown is refused later
                continue
        else:
            continue
        if _small(out):
            values[node.output[0]] = out
            folded[node.output[0]] = numpy_helper.from_array(out, node.output[0])
    return folded


class ValueBounds(NamedTuple):
    """What the values of one ``session.run`` take: the largest one (``largest``) and, at the node where it is
    highest, the sum of those alive together (``alive``)."""

    largest: int
    alive: int


def largest_value_bytes(model, path: str | Path, batch: int = 1) -> int:
    """The bytes of the largest value any node of ``model`` makes for ``batch`` images (see ``value_bounds``)."""
    return value_bounds(model, path, batch).largest


def value_bounds(model, path: str | Path, batch: int = 1) -> ValueBounds:
    """The bytes of the largest value any node of ``model`` makes for ``batch`` images (also a Conv's unfolded
    input, which onnxruntime allocates as its work space), and of the values alive together at the graph's highest
    point, refused (ConversionError, naming the node) when one value is over the memory budget or cannot be known
    before running, or the values alive together are over ``LIVE_ACTIVATION_BUDGET_BYTES``."""
    import onnx

    where = str(path)
    if model.functions:
        first, count = quote(model.functions[0].name), len(model.functions)
        message = f"the graph defines {count} local function(s) ({first}); their values cannot be bounded before running"
        raise ConversionError(message, path=where)
    if model.graph.sparse_initializer:  # onnxruntime densifies each at load, up to 2 GB, from a few bytes of file
        first = model.graph.sparse_initializer[0]
        raise ConversionError(
            f"the graph holds {len(model.graph.sparse_initializer)} sparse initializer(s) ({quote(first.values.name)}, "
            f"dimensions {list(first.dims)[:8]}); onnxruntime expands them to dense tensors at load, so they are refused",
            path=where,
        )
    for node in model.graph.node:
        if any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
            raise ConversionError(
                f"node {quote(node.name)} ({node.op_type}) holds a subgraph; its values cannot be bounded before running", path=where
            )
    inferred = _inferred(_stripped(model, batch, where), where)
    known = _inferred_values(inferred)
    for init in (*model.graph.initializer, *inferred.graph.initializer):  # the weights, and the shapes folded
        known[init.name] = (init.data_type, list(init.dims))
    sizes: dict[str, int] = {}
    largest = 0
    for node in model.graph.node:
        what = f"output {{}} of node {quote(node.name)} ({node.op_type})"
        for name in filter(None, node.output):
            elem_type, dims = known.get(name, (0, None))
            if dims is None:
                raise ConversionError(
                    f"the size of {what.format(quote(name))} is not known before running (it depends on the data), so its "
                    "memory cannot be bounded",
                    path=where,
                )
            itemsize = _itemsize(elem_type)
            count = check_elements(dims, itemsize=itemsize, error=ConversionError, where=where, what=what.format(quote(name)))
            sizes[name] = itemsize * count
            largest = max(largest, sizes[name])
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose"):
            largest = max(largest, _conv_workspace(node, known, where))
    return ValueBounds(largest, _alive_at_peak(model, known, sizes, where))


def _alive_at_peak(model, known: dict, sizes: dict[str, int], where: str) -> int:
    """The most bytes of values alive together while the nodes run in the file's order (ONNX requires it to be a
    topological order, and onnxruntime's planner frees a value after its last reader as this does): the graph's
    inputs and outputs for the whole run, every other value from its node to its last reader, a Conv's work space
    during its node. Refused over ``LIVE_ACTIVATION_BUDGET_BYTES``: each value within the per-value budget, a chain
    of many of them kept for a late reader (every layer's output summed at the end) is not."""
    last: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        for name in node.input:
            last[name] = index
    ends = len(model.graph.node)
    for out in model.graph.output:
        last[out.name] = ends
    inputs = {init.name for init in model.graph.initializer}
    alive = 0
    for inp in model.graph.input:
        if inp.name not in inputs:
            elem_type, dims = known.get(inp.name, (0, None))
            alive += _itemsize(elem_type) * math.prod(dims or [0])
    freed: dict[int, int] = {}
    peak = alive
    for index, node in enumerate(model.graph.node):
        for name in filter(None, node.output):
            alive += sizes[name]
            at = last.get(name, index)
            freed[at] = freed.get(at, 0) + sizes[name]
        during = _conv_workspace(node, known, where) if node.op_type in ("Conv", "ConvInteger", "QLinearConv", "ConvTranspose") else 0
        if alive + during > peak:
            peak = alive + during
            if peak > safety.LIVE_ACTIVATION_BUDGET_BYTES:
                raise ConversionError(
                    f"its values alive together at node {quote(node.name)} ({node.op_type}) need over {peak:,} bytes, more "
                    f"than the budget of {safety.LIVE_ACTIVATION_BUDGET_BYTES:,} for the values of one run",
                    path=where,
                )
        alive -= freed.pop(index, 0)
    return peak


def _conv_workspace(node, known: dict, where: str) -> int:
    """onnxruntime's CPU Conv unfolds its input (im2col): (input channels / group) x kernel area values per output
    pixel, per image, one group at a time; ConvTranspose likewise per input pixel. Bounded like any value
    (float32)."""
    at = 3 if node.op_type == "QLinearConv" else 1  # QLinearConv: x, x_scale, x_zero_point, w, ...
    weight = known.get(node.input[at], (0, None))[1] if len(node.input) > at else None
    data = known.get(node.input[0], (0, None))[1]
    out = known.get(node.output[0], (0, None))[1]
    if not weight or not data or not out or len(weight) < 3:
        return 0
    kernel = math.prod(weight[2:])
    if node.op_type == "ConvTranspose":
        dims = [data[0], weight[1] * kernel, *data[2:]]  # weight: (C, M / group, k...), per input pixel
    else:
        dims = [data[0], weight[1] * kernel, *out[2:]]  # weight: (M, C / group, k...), per output pixel
    what = f"the unfolded input (im2col work space) of node {quote(node.name)} ({node.op_type})"
    return 4 * check_elements(dims, itemsize=4, error=ConversionError, where=where, what=what)


def images_per_run(model, path: str | Path, largest_for_one: int, alive_for_one: int = 0) -> int:
    """How many images one ``session.run`` may take: as many as keep the largest value within the memory budget and
    the values alive together within ``LIVE_ACTIVATION_BUDGET_BYTES`` (at most ``MAX_IMAGES_PER_RUN``), checked again
    at that batch (a graph whose values grow faster than its batch is held to one image per run)."""
    count = min(MAX_IMAGES_PER_RUN, MEMORY_BUDGET_BYTES // max(largest_for_one, 1))
    count = max(1, min(count, safety.LIVE_ACTIVATION_BUDGET_BYTES // max(alive_for_one, 1)))
    if count > 1:
        try:
            value_bounds(model, path, batch=count)
        except ConversionError:
            return 1
    return count
