"""Keras classifier -> ONNX through tf2onnx, then the preprocessing and the labels put into the graph.

The graph that ships takes the raw 8-bit image (uint8, NHWC, RGB or grayscale, at the model's input size), casts it,
reorders channels for BGR models and applies the contract's scale and bias, all with standard ONNX operators. It
outputs ``probabilities`` (float32, one per class) and ``label`` (the top class name, a string, via ArgMax and Gather).
Quantization is applied to the core graph (float in, probabilities out) before this wrapping, so calibration sees the
same tensors as the Keras model and the wrapper stays in float32 whatever the variant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConversionError, translating
from ..preprocessing import Preprocessing
from ..provenance import onnx_metadata
from .prologue import for_conversion

if TYPE_CHECKING:
    from ..capabilities import Base, BuildContext, Format, Variant

# Opset 17 is the newest that tf2onnx 1.17 emits fully and that onnxruntime >= 1.14 runs on every provider.
DEFAULT_OPSET = 17
CORE_INPUT = "input"
IMAGE_INPUT = "image"
# The wrapped graph's outputs; runtime/ reads them by these names.
PROBS_OUTPUT = "probabilities"
LABEL_OUTPUT = "label"
LABELS_CONSTANT = "exporter_labels"  # the initializer holding the label strings the graph maps class indices to


def convert_core(model, pre: Preprocessing, *, opset: int = DEFAULT_OPSET, source: str = "model"):
    """The Keras model alone as ONNX: float32 NHWC input ``input`` (already normalised), probabilities out."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    from . import rewrite, tf_ops

    tf_ops.register_onnx()
    h, w = pre.input_size
    spec = (tf.TensorSpec((None, h, w, pre.channels), tf.float32, name=CORE_INPUT),)
    with translating(ConversionError, "tf2onnx could not convert the model", path=source):
        proto, _ = tf2onnx.convert.from_keras(
            for_conversion(rewrite.for_converters(model), None, CORE_INPUT), input_signature=spec, opset=opset
        )
    from .naming import unconvertible_onnx_nodes

    leftover = unconvertible_onnx_nodes(model, proto)
    if leftover:
        raise ConversionError(f"tf2onnx could not convert the model to ONNX: {leftover}", path=source)
    if len(proto.graph.output) != 1:
        raise ConversionError(f"tf2onnx produced {len(proto.graph.output)} outputs; expected one", path=source)
    return _saturating_casts(_settled(proto))


# Integer types whose casts from float TensorFlow saturates and onnxruntime wraps, with their range (exact in float16,
# float32 and float64). TensorFlow's cast of a float tensor of more than a few dozen elements (Eigen's vectorized path,
# every image-sized tensor) clamps to the type's range and truncates: -1 -> 0, 300 -> 255 for uint8; onnxruntime's
# Cast wraps (-1 -> 255, 300 -> 44), so a backbone saved with Input(dtype="uint8") inside a float model disagreed
# with Keras wherever its caller gave it values outside the range. 32- and 64-bit targets are left as they are (TF's
# out-of-range result there is neither a wrap nor a clamp).
SATURATED_CASTS = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767)}  # TensorProto UINT8 INT8 UINT16 INT16


def _saturating_casts(proto):
    """Every Cast from a float type to a ``SATURATED_CASTS`` type preceded by a Clip to that type's range, so the ONNX
    file computes what TensorFlow's saturating cast computes (the Core ML rewrite's ``trunc(clip(x))``,
    rewrite.integer_input_as_float); the Cast itself truncates in-range values toward zero, as TensorFlow does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    floats = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
    g = proto.graph
    casts = [n for n in g.node if n.op_type == "Cast" and next((a.i for a in n.attribute if a.name == "to"), None) in SATURATED_CASTS]
    if not casts:
        return proto
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.input, *inferred.value_info, *inferred.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    for k, node in enumerate(casts):
        dtype = floats.get(types.get(node.input[0], 0))
        if dtype is None:
            continue  # an integer source wraps in TensorFlow too
        low, high = SATURATED_CASTS[next(a.i for a in node.attribute if a.name == "to")]
        names = [f"saturating_cast_{k}_{part}" for part in ("min", "max", "clipped")]
        g.initializer.extend(numpy_helper.from_array(np.asarray(v, dtype), name) for v, name in ((low, names[0]), (high, names[1])))
        at = list(g.node).index(node)
        g.node.insert(at, helper.make_node("Clip", [node.input[0], names[0], names[1]], [names[2]], name=names[2]))
        node.input[0] = names[2]
    return proto


def _settled(proto):
    """tf2onnx's own graph optimizers run once more over its output. Its single pass does not always end in the same
    graph: in the test suite (two pytest-xdist workers, two exports of one model in two fresh processes) one process
    kept a Keras Reshape's batch-size computation (Shape, Gather, Concat: 105 nodes) that the other had folded into a
    constant shape (99 nodes), so identical exports gave different bytes; the cause inside tf2onnx was not found, and
    tf2onnx swallows an optimizer's exception (it only logs it). A second pass brought both to the same 98-node graph,
    with outputs equal to the bit. If the pass itself fails, tf2onnx returns the graph unchanged."""
    from tf2onnx.graph import GraphUtil

    return GraphUtil.optimize_model_proto(proto)


def _is_reserved(name: str) -> bool:
    return name in (IMAGE_INPUT, PROBS_OUTPUT, LABEL_OUTPUT) or name.startswith("exporter_")


def _rename_reserved(g) -> None:
    """Give the core graph's tensors and nodes that carry a name ``wrap`` adds (tf2onnx names them after Keras layers
    and models, so a model named ``image`` has a tensor ``image``) a free name, so the wrapped graph stays in single
    static assignment form."""
    names = {n for node in g.node for n in (*node.input, *node.output, node.name)}
    names |= {v.name for v in (*g.input, *g.output, *g.initializer, *g.value_info)}
    renamed: dict[str, str] = {}
    for name in sorted(n for n in names if _is_reserved(n)):
        i = 0
        while f"core_{name}_{i}" in names:
            i += 1
        renamed[name] = f"core_{name}_{i}"
        names.add(renamed[name])
    if not renamed:
        return
    for node in g.node:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
        node.name = renamed.get(node.name, node.name)
    for v in (*g.input, *g.output, *g.initializer, *g.value_info):
        v.name = renamed.get(v.name, v.name)


def wrap(core, pre: Preprocessing, labels: list[str], metadata: dict[str, str], *, raw_input: bool = True):
    """A new ModelProto: [uint8 image -> cast -> channel order -> scale, bias] -> core -> [probabilities, label]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(core)
    g = model.graph
    _rename_reserved(g)
    core_in = g.input[0].name
    core_out = g.output[0].name
    h, w = pre.input_size
    c = pre.channels
    prologue, inits = [], []
    if raw_input:
        del g.input[:]
        image = helper.make_tensor_value_info(IMAGE_INPUT, TensorProto.UINT8, ["batch", h, w, c])
        image.type.denotation = "IMAGE"
        for dim, name in zip(image.type.tensor_type.shape.dim, ["DATA_BATCH", "DATA_FEATURE", "DATA_FEATURE", "DATA_CHANNEL"], strict=True):
            dim.denotation = name
        g.input.append(image)
        x = "exporter_pixels_f32"
        prologue.append(helper.make_node("Cast", [IMAGE_INPUT], [x], to=TensorProto.FLOAT, name="exporter_cast"))
        if pre.channel_order == "BGR":  # the caller passes RGB; the model was trained on BGR
            inits.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), "exporter_bgr_index"))
            prologue.append(
                helper.make_node("Gather", [x, "exporter_bgr_index"], ["exporter_pixels_bgr"], axis=3, name="exporter_rgb_to_bgr")
            )
            x = "exporter_pixels_bgr"
        if pre.in_model:
            prologue.append(helper.make_node("Identity", [x], [core_in], name="exporter_pixels"))
        else:
            inits.append(numpy_helper.from_array(np.asarray(pre.scale, np.float32), "exporter_scale"))
            inits.append(numpy_helper.from_array(np.asarray(pre.bias, np.float32), "exporter_bias"))
            prologue.append(helper.make_node("Mul", [x, "exporter_scale"], ["exporter_scaled"], name="exporter_mul"))
            prologue.append(helper.make_node("Add", ["exporter_scaled", "exporter_bias"], [core_in], name="exporter_add"))
    inits.append(numpy_helper.from_array(np.array(labels, dtype=object), LABELS_CONSTANT))
    # a model whose last layer computes in float16 (Keras' mixed_float16 policy without a float32 output layer) gives
    # float16 probabilities; the file's output is float32 whatever the model computes in
    out_type = g.output[0].type.tensor_type.elem_type
    to_probabilities = (
        helper.make_node("Identity", [core_out], [PROBS_OUTPUT], name="exporter_probabilities")
        if out_type == TensorProto.FLOAT
        else helper.make_node("Cast", [core_out], [PROBS_OUTPUT], to=TensorProto.FLOAT, name="exporter_probabilities")
    )
    epilogue = [
        to_probabilities,
        helper.make_node("ArgMax", [core_out], ["exporter_top"], axis=1, keepdims=0, name="exporter_argmax"),
        helper.make_node("Gather", [LABELS_CONSTANT, "exporter_top"], [LABEL_OUTPUT], axis=0, name="exporter_label"),
    ]
    from .onnx_canonical import topological_order

    nodes = prologue + list(g.node) + epilogue
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {t.name for t in inits}
    nodes = [nodes[i] for i in topological_order(nodes, available)]
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(inits)
    del g.output[:]
    g.output.extend(
        [
            helper.make_tensor_value_info(PROBS_OUTPUT, TensorProto.FLOAT, ["batch", len(labels)]),
            helper.make_tensor_value_info(LABEL_OUTPUT, TensorProto.STRING, ["batch"]),
        ]
    )
    del model.metadata_props[:]
    image_meta = (
        {
            "Image.BitmapPixelFormat": {"RGB": "Rgb8", "BGR": "Rgb8", "L": "Gray8"}[pre.channel_order],
            "Image.ColorSpaceGamma": "SRGB",
            "Image.NominalPixelRange": "NominalRange_0_255",
        }
        if raw_input
        else {}
    )
    for key, value in {**image_meta, **metadata}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    model.doc_string = f"Image classifier with {len(labels)} classes; input {IMAGE_INPUT if raw_input else core_in}"
    model.producer_name = "exporter"
    return model


def check(model, *, source: str = "onnx") -> None:
    """onnx.checker with full_check (shape inference included); errors become ConversionError."""
    import onnx

    with translating(ConversionError, "ONNX checker rejected the graph", path=source):
        onnx.checker.check_model(model, full_check=True)


def convert_base(ctx: BuildContext, fmt: Format, base: Base):
    """The capability table's converter for ONNX: the core graph at the export's opset (float32; variants quantize
    it, and ``finish`` wraps it). Names are made canonical (onnx_canonical) so identical exports give identical bytes."""
    from .onnx_canonical import canonical

    return canonical(convert_core(ctx.model, ctx.info.preprocessing, opset=ctx.opset, source=ctx.source))


def finish(core, ctx: BuildContext, variant: Variant, details: dict):
    """The last step before saving: the image prologue, labels and provenance wrapped around the (quantized) core
    graph, then onnx.checker."""
    info = ctx.info
    from .onnx_canonical import canonical

    final = canonical(wrap(core, info.preprocessing, info.labels, onnx_metadata(info, variant.key), raw_input=ctx.raw_input))
    check(final, source=variant.filename(info.name))
    return final


def save(model, path: Path) -> None:
    import onnx

    onnx.save(model, path)


def deployment_target(model, ctx: BuildContext) -> str:
    return f"opset {ctx.opset}"


def smoke_check(path: Path, ctx: BuildContext) -> None:
    """Every ONNX artifact must load and run in onnxruntime before it is declared written."""
    import onnxruntime as ort

    pre = ctx.info.preprocessing
    with translating(ConversionError, "onnxruntime cannot run the exported file", path=path.name):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        h, w = pre.input_size
        x = np.full((1, h, w, pre.channels), 128, np.uint8)
        feed = x if ctx.raw_input else pre.normalize(x)
        session.run(None, {session.get_inputs()[0].name: feed})
