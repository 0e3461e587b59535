"""Hostile input, round 6 (docs/THREAT_MODEL.md): what rounds 1-5 (test_hostile*.py, test_fuzz.py, test_faults.py,
test_validation_isolation.py) left open. Each test fails without its fix."""

from __future__ import annotations

from test_hostile_3 import _cli, _copy_export, _image
from test_hostile_4 import _const, _onnx_with

from exporter.errors import ConversionError


# ------------------------------------------------------------------------------------------------ values alive together
def _many_kept_values(nodes, inits, image):
    # six 400 MB values, each within the per-value budget, all kept alive by one late reader: 2.4 GB together
    from onnx import helper

    nodes.append(helper.make_node("ConstantOfShape", [_const(inits, "big", [10_000, 10_000])], ["v0"]))
    for k in range(1, 6):
        nodes.append(helper.make_node("Neg", [f"v{k - 1}"], [f"v{k}"]))
    nodes.append(helper.make_node("Sum", [f"v{k}" for k in range(6)], ["together"]))
    return "together"


def test_onnx_values_alive_together_over_the_budget_are_refused_before_onnxruntime_runs(tmp_path, capsys, small_export):
    # each value was bounded (1 GiB) but not their sum: this file ran in onnxruntime with 2.8 GB of values alive
    export = _copy_export(small_export, tmp_path / "export")
    path = _onnx_with(export, _many_kept_values)
    proc, line = _cli(["predict", str(export), str(_image(small_export))], capsys)
    assert proc.returncode == ConversionError.exit_code, line
    assert path.name in line and "values alive together" in line and "2,147,483,648" in line, line


def test_onnx_images_per_run_keep_the_values_alive_together_within_the_budget():
    # a graph of 50 MB per image alive together ran 64 images at once: 3.2 GB
    import onnx
    from onnx import helper

    from exporter.runtime.onnx_bounds import images_per_run, value_bounds
    from exporter.safety import LIVE_ACTIVATION_BUDGET_BYTES

    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 256, 256, 3])  # 786 kB per image
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Neg", ["image" if k == 0 else f"v{k - 1}"], [f"v{k}"]) for k in range(63)]
    nodes.append(helper.make_node("Sum", [f"v{k}" for k in range(63)], ["out"]))
    model = helper.make_model(helper.make_graph(nodes, "g", [image], [out]), opset_imports=[helper.make_opsetid("", 17)])
    one = value_bounds(model, "chain.onnx")
    assert one.largest == 256 * 256 * 3 * 4 and one.alive == 65 * one.largest
    count = images_per_run(model, "chain.onnx", one.largest, one.alive)
    assert count * one.alive <= LIVE_ACTIVATION_BUDGET_BYTES < (count + 1) * one.alive
