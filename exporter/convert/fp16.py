"""float16 files whose stem stays float32: the first operations of the network, up to ``FP32_STEM_FRACTION`` of its
weights, keep float32 weights (and, where the format computes in float16, float32 arithmetic); the rest is float16.

Why the stem. Rounding a weight to float16 is a relative error of up to 2**-11; what it does to the probabilities is
that error times how much every later layer amplifies it, so the same rounding costs most at the start of the network.
Measured on the MobileNet (alpha 0.25) application stand-in of the capability table (300 held-out digits, fp16
weights, float32 arithmetic): all weights in float16 moved probabilities by 0.034 (gate 0.02). Rounding one tensor at
a time, the five that moved them most (0.004-0.011 each) were the first five of the network (conv1 and its bias,
conv_dw_1, conv_pw_1); the final Dense and every later tensor moved them by less than 0.002. Keeping the first ops
that hold 1 % of the weights in float32 brought the whole file to 0.005, for 1 % more bytes (a stem is narrow: the
first 14 tensors of that MobileNet hold 1 % of its weights). With float16 activations too, as on the GPU and the
Neural Engine (every value the .mlpackage declares float16 rounded, the stem's float32 values not), the same file went
from 0.049 to 0.007.

The budget is a fraction of the weights, not a number of layers, so the size cost is bounded the same way on every
model: at most ``FP32_STEM_FRACTION`` of the weights double in size (a float16 file grows by at most that fraction).
Every operation before the cut stays float32, weighted or not, so the file has one float32 -> float16 boundary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# The share of a model's weight elements (convolution, dense and matmul weights, counted from the input) whose ops keep
# float32 in the fp16 files. 1 % was measured (see the module docstring) to take the MobileNet stand-in from 0.034 to
# 0.005 max |dp|; 0.5 % gave 0.006 and 2 % 0.004, so the first percent holds most of the gain.
FP32_STEM_FRACTION = 0.01
# Weights of fewer elements than this are biases, scales and shape constants, not what the budget counts.
MIN_WEIGHT_ELEMENTS = 2


def stem_length(sizes: Sequence[int], fraction: float = FP32_STEM_FRACTION) -> int:
    """How many leading ops (``sizes``: weight elements of each op in execution order, 0 for an op without weights)
    stay float32: every op up to the last weighted op whose weights, with all before it, fit in ``fraction`` of the
    total. 0 when even the first weighted op does not fit."""
    total = sum(sizes)
    budget = fraction * total
    seen, length = 0, 0
    for index, size in enumerate(sizes):
        if not size:
            continue
        if seen + size > budget:
            break
        seen += size
        length = index + 1
    return length


def _stem_names(ops: Iterable[tuple[str, int]], fraction: float) -> set[str]:
    ops = list(ops)
    return {name for name, _ in ops[: stem_length([size for _, size in ops], fraction)]}


# ------------------------------------------------------------------------------------------------ ML Program
def mlprogram_precision(fraction: float = FP32_STEM_FRACTION):
    """float16 everywhere except the stem, as coremltools' ``FP16ComputePrecision`` (its ``op_selector`` is what
    ``mlprogram_fp16`` gives the add_fp16_cast pass, which asks op by op in program order; the stem is worked out from
    the op's block on its first question)."""
    import coremltools as ct

    stems: dict[int, set[str]] = {}

    def in_float16(op) -> bool:
        if op.op_type == "classify":  # its inputs are the probabilities and the label list, nothing to compute
            return False
        block = op.enclosing_block
        if id(block) not in stems:
            stems[id(block)] = _stem_names(((o.name, _mil_weight_elements(o)) for o in block.operations if o.op_type != "const"), fraction)
        return op.name not in stems[id(block)]

    return ct.transform.FP16ComputePrecision(op_selector=in_float16)


def mlprogram_fp16(mlmodel, fraction: float = FP32_STEM_FRACTION):
    """The fp16 ML Program made from the fp32 one (a new model): coremltools' add_fp16_cast pass with the stem
    selector, run on the converted program rather than in a second conversion from TensorFlow (the same file, in
    about half the time). The export's transforms run inside ``upstream.compression_without_passes``; the pass is
    taken out of the pipeline the program is converted back with, which would otherwise cast the stem too."""
    from coremltools.converters.mil.mil.passes.defs.quantization import add_fp16_cast

    from ..errors import ConversionError, translating
    from ..upstream import apply_graph_pass, compression_without_passes
    from .coreml import SKIPPED_PASSES

    graph_pass = add_fp16_cast(op_selector=mlprogram_precision(fraction).op_selector)
    with (
        translating(ConversionError, "float16 conversion of the ML Program failed"),
        compression_without_passes((*SKIPPED_PASSES, "common::add_fp16_cast")),
    ):
        return apply_graph_pass(mlmodel, [graph_pass], spec_version=mlmodel.get_spec().specificationVersion)


def _mil_weight_elements(op) -> int:
    size = 0
    for var in op.inputs.values():
        for v in var if isinstance(var, (list, tuple)) else (var,):
            producer = getattr(v, "op", None)
            if (
                producer is not None
                and producer.op_type == "const"
                and getattr(v.val, "ndim", 0) >= 2
                and v.val.size >= MIN_WEIGHT_ELEMENTS
            ):
                size += int(v.val.size)
    return size


# ------------------------------------------------------------------------------------------------ NeuralNetwork
def neuralnetwork_layers(spec) -> list:
    kind = spec.WhichOneof("Type")
    if kind not in ("neuralNetworkClassifier", "neuralNetwork"):
        return []
    return list(getattr(spec, kind).layers)


def _nn_weight_elements(layer) -> int:
    params = getattr(layer, layer.WhichOneof("layer"))
    weights = getattr(params, "weights", None)
    if weights is None:
        return 0
    return max(len(weights.floatValue), len(weights.float16Value) // 2)


# coremltools refuses a whole model when one weight it is asked to store in float16 has |w| >= this (float16's largest
# finite value; coremltools' bound, ``_fp32_to_fp16_byte_array``): such a layer keeps its float32 weights.
FLOAT16_WEIGHT_LIMIT = 65504.0


def _fits_float16(layer) -> bool:
    """Every float weight of the NeuralNetwork ``layer`` within float16's range. Keras' ``UnitNormalization`` (a
    cosine-similarity head) and ``ops.normalize`` are converted with a constant 1e12 (``min(rsqrt(sum x^2), 1e12)``)
    that float16 cannot hold."""
    import numpy as np

    params = getattr(layer, layer.WhichOneof("layer"))
    for _field, value in params.ListFields():
        floats = getattr(value, "floatValue", None)
        if floats is not None and len(floats) and float(np.abs(np.asarray(floats, np.float32)).max()) >= FLOAT16_WEIGHT_LIMIT:
            return False
    return True


def neuralnetwork_fp16(mlmodel, fraction: float = FP32_STEM_FRACTION):
    """A NeuralNetwork (.mlmodel) model with float16 weights except the stem's and those of layers whose weights
    float16 cannot hold (``_fits_float16``); a new model."""
    from coremltools.models.neural_network import quantization_utils

    from ..quantize.coreml import neuralnetwork_weights

    stem = _stem_names(((layer.name, _nn_weight_elements(layer)) for layer in neuralnetwork_layers(mlmodel.get_spec())), fraction)

    class AfterStem(quantization_utils.QuantizedLayerSelector):
        def do_quantize(self, layer, **kwargs) -> bool:
            return layer.name not in stem and _fits_float16(layer) and super().do_quantize(layer, **kwargs)

    return neuralnetwork_weights(mlmodel, 16, selector=AfterStem())


# ------------------------------------------------------------------------------------------------ ONNX
def onnx_stem(core, fraction: float = FP32_STEM_FRACTION) -> set[str]:
    """Names of the ONNX nodes (in graph order, which tf2onnx writes topologically) that stay float32."""
    from onnx import TensorProto

    floats = {t.name: _elements(t) for t in core.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) >= 2}
    stem = _stem_names(((node.name, sum(floats.get(i, 0) for i in node.input)) for node in core.graph.node), fraction)
    return stem - {""}  # an unnamed node cannot be named in the block list (it would block every unnamed node)


def _elements(tensor) -> int:
    count = 1
    for d in tensor.dims:
        count *= int(d)
    return count


def onnx_fp16(core, fraction: float = FP32_STEM_FRACTION):
    """The core graph in float16 (inputs and outputs kept float32) except the stem's nodes; a new model."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from ..errors import ConversionError, translating

    clone = onnx.ModelProto()
    clone.CopyFrom(core)
    nodes = sorted(onnx_stem(clone, fraction))
    with translating(ConversionError, "fp16 conversion of the ONNX graph failed"):
        converted = convert_float_to_float16(
            clone, keep_io_types=True, disable_shape_infer=False, op_block_list=DEFAULT_OP_BLOCK_LIST, node_block_list=nodes
        )
    return drop_round_trips(converted)


def drop_round_trips(model):
    """Remove every float32 -> float16 -> float32 Cast pair, in place: onnxruntime's converter wraps each blocked node
    in its own casts, so between two stem nodes the activation was still rounded to float16 (and back), which is
    what the stem is there to avoid. A consumer of the pair's output reads the float32 value instead; a first Cast
    that nothing else reads goes too."""
    from onnx import TensorProto

    g = model.graph
    producers = {out: node for node in g.node for out in node.output}

    def cast_to(node) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    outputs = {o.name for o in g.output}
    renamed: dict[str, str] = {}
    dropped: set[int] = set()
    for node in g.node:
        first = producers.get(node.input[0]) if node.input else None
        if cast_to(node) != TensorProto.FLOAT or first is None or cast_to(first) != TensorProto.FLOAT16:
            continue
        if node.output[0] in outputs:  # the graph's output keeps its name: the second Cast becomes an Identity
            node.op_type = "Identity"
            del node.attribute[:]
            node.input[0] = first.input[0]
        else:
            renamed[node.output[0]] = first.input[0]
            dropped.add(id(node))
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    keep = [n for n in g.node if id(n) not in dropped]
    read = {name for n in keep for name in n.input} | outputs
    keep = [n for n in keep if n.op_type != "Cast" or any(o in read for o in n.output)]
    from .onnx_canonical import topological_order  # the converter appends its casts at the end of the node list

    available = {i.name for i in g.input} | {t.name for t in g.initializer}
    keep = [keep[i] for i in topological_order(keep, available)]
    del g.node[:]
    g.node.extend(keep)
    return model
