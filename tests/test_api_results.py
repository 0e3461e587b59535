"""The Python API: typed results, explicit options, reproducible bytes, folders with the user's permissions."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import sample

import exporter
from exporter.api import ExportOptions
from exporter.errors import ConfigError, ModelLoadError
from exporter.packaging import atomic_directory, find_source_model, source_paths
from exporter.results import Manifest, Report
from exporter.validation.parity import as_gate
from exporter.validation.tolerances import Gate

S = sample("mobilenet_v1_digits")


def test_one_format_or_variant_may_be_a_string():
    assert ExportOptions(formats="onnx").formats == ("onnx",)
    assert {v.key for v in ExportOptions(formats="onnx", variants="fp16").selected} == {"onnx:fp16"}
    with pytest.raises(ConfigError, match="did you mean 'onnx'"):
        ExportOptions(formats="onxx")
    with pytest.raises(ConfigError, match="did you mean 'palette4'"):
        ExportOptions(variants=["palete4"])


def test_gates_may_be_dicts():
    assert as_gate("int8", {"min_top1": 0.999}) == Gate(min_top1=0.999)
    assert as_gate("fp32", Gate(max_abs_prob=1e-4)) == Gate(max_abs_prob=1e-4)
    with pytest.raises(ConfigError, match="did you mean 'min_top1'"):
        as_gate("int8", {"min_top": 0.9})
    with pytest.raises(ConfigError, match="between 0 and 1"):
        as_gate("int8", {"min_top1": 2})


def test_errors_are_exported_from_the_package():
    assert exporter.ParityError is exporter.errors.ParityError
    assert issubclass(exporter.ConfigError, exporter.ExporterError)
    assert set(exporter.__all__) >= {"Manifest", "Report", "xcode", "predict", "ExporterError"}


def test_manifest_and_report_lookups(tmp_path):
    m = Manifest(
        {
            "artifacts": [
                {
                    "path": "m_int8.mlpackage",
                    "format": "mlpackage",
                    "variant": "int8",
                    "bytes": 3,
                    "sha256": "ab",
                    "minimum_deployment_target": "iOS16",
                }
            ]
        },
        tmp_path,
    )
    assert m.artifact("mlpackage", "int8").path == tmp_path.absolute() / "m_int8.mlpackage"
    assert json.loads(json.dumps(m))["artifacts"][0]["variant"] == "int8"  # still the JSON document
    with pytest.raises(ConfigError, match="no onnx:int8"):
        m.artifact("onnx", "int8")
    r = Report(
        {
            "export_dir": str(tmp_path),
            "passed": False,
            "artifacts": [
                {
                    "path": "a.onnx",
                    "format": "onnx",
                    "variant": "fp16",
                    "status": "failed",
                    "failures": ["x"],
                    "engine": {"name": "onnxruntime"},
                }
            ],
        }
    )
    assert not r.passed and r.artifact("onnx", "fp16").status == "failed"


def test_source_model_is_found_after_the_export_moves(tmp_path):
    model = tmp_path / "models" / "m.keras"
    model.parent.mkdir()
    model.write_bytes(b"x")
    manifest = {"source": source_paths(model, tmp_path / "exports" / "e")}
    assert manifest["source"]["path_from_export"] == "../../models/m.keras"
    # moved together (another root): the relative path still works, the absolute one does not
    moved = tmp_path / "elsewhere"
    (moved / "models").mkdir(parents=True)
    (moved / "exports" / "e").mkdir(parents=True)
    (moved / "models" / "m.keras").write_bytes(b"x")
    assert find_source_model(manifest, moved / "exports" / "e").resolve() == (moved / "models" / "m.keras").resolve()
    # the export alone moved: the absolute path is the fallback
    assert find_source_model(manifest, tmp_path / "x" / "y" / "z") == model.absolute()
    model.unlink()
    with pytest.raises(ModelLoadError, match="--model"):
        find_source_model(manifest, tmp_path / "x" / "y" / "z")


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_folders_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_directory(tmp_path / "out") as stage:
            (stage / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~umask


@pytest.mark.slow
def test_identical_exports_have_identical_manifests(fresh_exports):
    """Two exports in two fresh processes (as two users or two CI runs would make them), every format, with the
    calibrated variants: the manifests, hashes included, must be equal apart from the build times. One ran through
    the Python API and the other through the CLI, so this also proves that both write the same files."""
    import copy

    manifests = [copy.deepcopy(fresh_exports[k]["manifest"]) for k in ("api", "cli")]
    for m in manifests:
        for a in m["artifacts"]:
            a["details"].pop("seconds")
    assert {a["format"] for a in manifests[0]["artifacts"]} == {"mlpackage", "mlmodel", "onnx"}
    assert len(manifests[0]["artifacts"]) == 7  # mlpackage and mlmodel fp32, int8; onnx fp32, int8-static, int8-dynamic
    differ = [(a["path"], k) for a, b in zip(manifests[0]["artifacts"], manifests[1]["artifacts"], strict=True) for k in a if a[k] != b[k]]
    # The ONNX int8 files once differed here in 1 of 5 runs: tf2onnx numbers symbolic dimensions ("unk__429") with a
    # process-wide counter; onnx_canonical now renumbers them (test_symbolic_dimensions_are_renumbered).
    assert differ == []
    assert {k: v for k, v in manifests[0].items() if k != "artifacts"} == {k: v for k, v in manifests[1].items() if k != "artifacts"}


def test_symbolic_dimensions_are_renumbered():
    """Two graphs that differ only in tf2onnx's counters (names and symbolic dimensions) serialize to equal bytes, and
    a symbol shared by two values stays shared."""
    from onnx import TensorProto, helper

    from exporter.convert.onnx_canonical import canonical

    def graph(counter: int):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [f"unk__{counter}", 3])
        y = helper.make_tensor_value_info(f"y__{counter + 1}", TensorProto.FLOAT, [f"unk__{counter}", 3])
        z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [f"unk__{counter + 7}", 3])
        nodes = [
            helper.make_node("Relu", ["x"], [f"y__{counter + 1}"], name=f"relu__{counter}"),
            helper.make_node("Relu", [f"y__{counter + 1}"], ["z"]),
        ]
        return canonical(helper.make_model(helper.make_graph(nodes, "g", [x], [z], value_info=[y])))

    a, b = graph(429), graph(17)
    assert a.SerializeToString() == b.SerializeToString()
    dims = [v.type.tensor_type.shape.dim[0].dim_param for v in (*a.graph.input, *a.graph.value_info, *a.graph.output)]
    assert dims[0] == dims[1] != dims[2] and not any("429" in d for d in dims)


def test_canonical_bytes_do_not_depend_on_the_converters_names_merges_or_order():
    """What CI once caught (two exports of one model in two processes, fp32 ONNX files of different sizes): tf2onnx
    names values after whichever of several merged duplicates it met first, and may or may not have merged them. Three
    graphs computing the same thing with different names, node order and duplicate handling serialize to equal bytes,
    and the canonical graph computes what the original did."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from exporter.convert.onnx_canonical import canonical

    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    six = np.array(6, np.float32)

    def graph(names: dict, merged: bool, reverse: bool):
        inits = [numpy_helper.from_array(w, names["w"]), numpy_helper.from_array(six, names["six_a"])]
        if not merged:
            inits.append(numpy_helper.from_array(six, names["six_b"]))
        six_b = names["six_a"] if merged else names["six_b"]
        branches = [
            helper.make_node("MatMul", ["x", names["w"]], [names["h"]], name=names["mm"]),
            helper.make_node("Relu", [names["h"]], [names["r1"]], name=names["relu1"]),
            helper.make_node("Min", [names["r1"], names["six_a"]], [names["a"]], name="min_a"),
            helper.make_node("Abs", [names["h"]], [names["r2"]], name=names["abs"]),
            helper.make_node("Min", [names["r2"], six_b], [names["b"]], name="min_b"),
        ]
        if not merged:  # a duplicate node the converter did not merge this time
            branches.append(helper.make_node("Abs", [names["h"]], ["dup_abs"], name="dup"))
            branches[-2] = helper.make_node("Min", ["dup_abs", six_b], [names["b"]], name="min_b")
        nodes = [*branches, helper.make_node("Add", [names["a"], names["b"]], ["y"], name="add")]
        if reverse:  # still topological: the independent branches swapped
            nodes = [nodes[0], *nodes[3:-1], *nodes[1:3], nodes[-1]]
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
            inits,
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    one = {k: k for k in ("w", "six_a", "six_b", "h", "r1", "r2", "a", "b", "mm", "relu1", "abs")}
    other = {k: f"layer_{i}/{k}__{i * 7}" for i, k in enumerate(one)}
    other["six_a"], other["six_b"] = "conv_pw_3_relu/Relu6_min", "conv_dw_2_relu/Relu6_min"
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32) * 10

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    originals = [graph(one, True, False), graph(other, False, True), graph(other, True, True)]
    expected = run(originals[0])
    canon = [canonical(type(m).FromString(m.SerializeToString())) for m in originals]
    assert len({c.SerializeToString() for c in canon}) == 1
    for o, c in zip(originals, canon, strict=True):
        np.testing.assert_array_equal(run(o), expected)
        np.testing.assert_array_equal(run(c), expected)
    assert len(canon[0].graph.initializer) == 2 and len(canon[0].graph.node) == 6  # duplicates merged
    assert canonical(type(canon[0]).FromString(canon[0].SerializeToString())).SerializeToString() == canon[0].SerializeToString()


def test_a_reshape_left_unfolded_by_tf2onnx_settles_to_the_same_graph():
    """The form CI and the suite met (one process of two kept a Keras Reshape's Shape -> Gather -> Concat batch-size
    computation, the other had folded it into a constant shape): after the converter's second optimizer pass and
    canonical, both are the same bytes and compute the same."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from exporter.convert.onnx import _settled
    from exporter.convert.onnx_canonical import canonical

    w = numpy_helper.from_array(np.linspace(-1, 1, 4 * 3, dtype=np.float32).reshape(3, 4, 1, 1), "w")

    def graph(folded: bool):
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
        inits = [w]
        if folded:
            inits.append(numpy_helper.from_array(np.array([-1, 3], np.int64), "target"))
        else:
            inits += [numpy_helper.from_array(np.array([0], np.int64), "i0"), numpy_helper.from_array(np.array([3], np.int64), "k")]
            nodes += [
                helper.make_node("Shape", ["c"], ["s"], name="shape"),
                helper.make_node("Gather", ["s", "i0"], ["n"], axis=0, name="gather"),
                helper.make_node("Concat", ["n", "k"], ["target"], axis=0, name="concat"),
            ]
        nodes.append(helper.make_node("Reshape", ["c", "target"], ["y"], name="reshape"))
        g = helper.make_graph(
            nodes,
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 1, 1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
            inits,
        )
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x = np.random.default_rng(1).normal(size=(5, 4, 1, 1)).astype(np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    unfolded, folded = graph(False), graph(True)
    assert canonical(graph(False)).SerializeToString() != canonical(graph(True)).SerializeToString()  # what canonical alone left
    a, b = canonical(_settled(unfolded)), canonical(_settled(folded))
    assert a.SerializeToString() == b.SerializeToString()
    np.testing.assert_array_equal(run(a), run(unfolded))


def test_validate_leaves_out_the_images_the_export_calibrated_on(fresh_exports, tmp_path):
    """The manifest records each calibration file's SHA-256; validate judges on the other images only (copies
    recognised by content), and a folder of calibration images alone is refused, naming it."""
    import shutil

    from exporter.errors import ParityError
    from exporter.packaging import sha256_of

    export = fresh_exports["api"]
    recorded = set(export["manifest"]["calibration"]["sha256"])
    assert len(recorded) == export["manifest"]["calibration"]["images"] > 0
    heldout = sample("mobilenet_v1_digits")["heldout"]
    files = sorted(p for p in heldout.rglob("*") if p.is_file())
    calibration = [p for p in files if sha256_of(p) in recorded][:3]
    others = [p for p in files if sha256_of(p) not in recorded][:4]
    assert len(calibration) == 3 and len(others) == 4
    mixed, only = tmp_path / "mixed", tmp_path / "only"
    for folder, chosen in ((mixed, calibration + others), (only, calibration)):
        for i, p in enumerate(chosen):
            (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, folder / p.parent.name / f"copy{i}{p.suffix}")  # renamed: matched by content
    try:
        report = exporter.validate(export["out"], mixed)
    except ParityError as exc:  # 4 images can move a gate; what is asserted here is which images were judged
        report = exc.report
    assert report["images"] == 4 and report["calibration_images_left_out"] == 3
    assert all(a["images"] == 4 for a in report["artifacts"] if a["status"] != "not run")
    with pytest.raises(ConfigError, match="every image under .*only.* calibrated"):
        exporter.validate(export["out"], only)
