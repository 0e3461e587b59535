"""The fp16 files keep their stem in float32 (exporter/convert/fp16.py): the ops before FP32_STEM_FRACTION of the
weights keep float32 weights and arithmetic, everything after is float16. Tiny graphs built directly (no Keras, no
conversion), so each test takes well under a second; the capability table measures the effect on real families."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.convert import fp16

# three dense layers: 4x64, 64x64, 64x10 weight elements (256, 4096, 640 of 4992); a fraction of 6 % (300 elements)
# holds the first layer only
SIZES = [(4, 64), (64, 64), (64, 10)]
FIRST_ONLY = 0.06


@pytest.mark.parametrize(
    ("sizes", "fraction", "expected"),
    [
        ([256, 0, 4096, 0, 640], FIRST_ONLY, 1),  # the first weighted op fits; the relu after it is past the cut
        ([256, 0, 4096, 0, 640], 0.05, 0),  # 5 % is 249.6 elements: not even the first op fits
        ([0, 10, 0, 10, 0, 980], 0.02, 4),  # ops without weights between kept ops stay in the stem
        ([10, 10, 980], 1.0, 3),
        ([0, 0], 0.5, 0),  # no weights at all: nothing to keep
    ],
)
def test_stem_length_keeps_ops_up_to_the_weight_budget(sizes, fraction, expected):
    assert fp16.stem_length(sizes, fraction) == expected


def _weights(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    # weights with more digits than float16 holds, so rounding them shows
    return [(rng.standard_normal(shape) / np.sqrt(shape[0]) * (1 + 1e-4 * np.pi)).astype(np.float32) for shape in SIZES]


def _onnx_mlp():
    from onnx import TensorProto, helper, numpy_helper

    ws = _weights()
    nodes, inits, x = [], [], "input"
    for i, w in enumerate(ws):
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"], name=f"matmul{i}"))
        x = f"mm{i}"
        if i < len(ws) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"relu{i}"], name=f"relu{i}"))
            x = f"relu{i}"
    nodes.append(helper.make_node("Softmax", [x], ["probs"], axis=-1, name="softmax"))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), ws


def test_onnx_fp16_keeps_the_stem_in_float32_without_rounding_between_its_nodes():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    model, ws = _onnx_mlp()
    assert fp16.onnx_stem(model, FIRST_ONLY) == {"matmul0"}
    converted = fp16.onnx_fp16(model, FIRST_ONLY)
    onnx.checker.check_model(converted, full_check=True)
    types = {t.name: t.data_type for t in converted.graph.initializer}
    assert types["w0"] == TensorProto.FLOAT
    assert types["w1"] == types["w2"] == TensorProto.FLOAT16
    producers = {out: n for n in converted.graph.node for out in n.output}

    def cast_to(node):
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    for node in converted.graph.node:  # no float32 -> float16 -> float32 round trip is left
        source = producers.get(node.input[0]) if node.input else None
        assert not (cast_to(node) == TensorProto.FLOAT and source is not None and cast_to(source) == TensorProto.FLOAT16), node.name
    # the first layer's product reaches the first float16 node unrounded: the file computes what numpy computes with the
    # stem in float32 and the rest from float16 inputs and weights (float16 products of this size are exact to ~1e-3)
    x = np.random.default_rng(1).standard_normal((8, 4)).astype(np.float32)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    h = np.maximum(x @ ws[0], 0).astype(np.float16).astype(np.float32)
    h = np.maximum(h @ ws[1].astype(np.float16).astype(np.float32), 0)
    logits = h @ ws[2].astype(np.float16).astype(np.float32)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(got, expected, atol=5e-3)


def test_drop_round_trips_keeps_a_graph_output_name():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cast", ["r"], ["r16"], to=TensorProto.FLOAT16, name="down"),
        helper.make_node("Cast", ["r16"], ["y"], to=TensorProto.FLOAT, name="up"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    out = fp16.drop_round_trips(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert [(n.op_type, list(n.input), list(n.output)) for n in out.graph.node] == [("Relu", ["x"], ["r"]), ("Identity", ["r"], ["y"])]


def test_mlprogram_selector_keeps_the_stem_ops_in_float32():
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.passes.defs.quantization import add_fp16_cast

    ws = _weights()

    @mb.program(input_specs=[mb.TensorSpec((1, 4))])
    def prog(x):
        for i, w in enumerate(ws):
            x = mb.linear(x=x, weight=w.T, name=f"dense{i}")
            if i < len(ws) - 1:
                x = mb.relu(x=x, name=f"relu{i}")
        return mb.softmax(x=x, axis=-1, name="probs")

    add_fp16_cast(op_selector=fp16.mlprogram_precision(FIRST_ONLY).op_selector).apply(prog)
    # the pass replaces each op it moves to float16 by a new one (new name), so ops are read in program order
    ops = [op for op in prog.functions["main"].operations if op.op_type not in ("const", "cast")]
    assert [op.op_type for op in ops] == ["linear", "relu", "linear", "relu", "linear", "softmax"]
    assert ops[0].weight.dtype == types.fp32 and ops[0].outputs[0].dtype == types.fp32
    assert [op.outputs[0].dtype for op in ops[1:]] == [types.fp16] * 5
    assert ops[2].weight.dtype == types.fp16
