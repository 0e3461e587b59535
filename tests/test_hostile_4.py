"""Hostile input, round 4 (docs/THREAT_MODEL.md): what the earlier rounds (test_hostile.py, test_hostile_h5.py,
test_hostile_3.py, test_input_hunt.py, test_fuzz.py) left open. Each test fails without its fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_faults import run_in_process
from test_hostile_3 import _cli, _copy_export, _image

from exporter.errors import DestinationError, LabelsError


# ------------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize(
    "labels,message",
    [
        (["cat", "c\u200bat"], "invisible format character"),  # ZERO WIDTH SPACE: shows as "cat"
        (["cat", "dog\u200c"], "invisible format character"),  # ZWNJ in Latin text: draws nothing
        (["cat", "d\u200dog"], "invisible format character"),  # ZWJ between letters of a script that does not join
        (["cat", "\u2060dog"], "invisible format character"),  # WORD JOINER
        (["cat", "do\ufeffg"], "invisible format character"),  # a BOM inside a label
        (["cat", "dog\U000e0041"], "invisible format character"),  # a TAG character
        (["cat", "do\u00adg"], "invisible format character"),  # SOFT HYPHEN: hidden unless the line breaks there
        (["cat", "\u3164"], "shows nothing"),  # HANGUL FILLER: a letter that draws nothing
        (["cat", "cat\ufe0f"], "as displayed"),  # a variation selector after a letter
        (["cat", "cat\u034f"], "as displayed"),  # COMBINING GRAPHEME JOINER
        (["cat", "\uff43\uff41\uff54"], "as displayed"),  # full-width "cat"
        (["a dog", "a\u00a0dog"], "as displayed"),  # a no-break space
    ],
)
def test_labels_with_invisible_characters_or_that_display_alike_are_refused(labels, message):
    # each pair was accepted: two classes that read the same in the terminal table, the HTML report and an app (or a
    # class whose name shows nothing), so a reader cannot tell which one a prediction names
    from exporter.labels import check_labels

    with pytest.raises(LabelsError, match=message):
        check_labels(labels)


def test_joiners_where_they_change_the_drawing_are_still_accepted():
    labels = [
        "\U0001f408\u200d\u2b1b",  # black cat: an emoji ZWJ sequence
        "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag: the ZWJ after an emoji presentation selector
        "\U0001f469\U0001f3fd\u200d\U0001f4bb",  # technologist with a skin tone
        "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian "mikhaham": ZWNJ between two Arabic-script letters
        "\u0915\u094d\u200d\u0937",  # Devanagari: ZWJ after a virama (a half form)
        "\u2764\ufe0f",  # a heart in emoji presentation
    ]
    from exporter.labels import check_labels

    assert check_labels(labels) == labels


def test_a_labels_file_with_a_zero_width_space_is_refused_through_the_cli(tmp_path, capsys):
    from conftest import sample

    s = sample("mobilenet_v1_digits")
    labels = s["labels"].read_text().splitlines()
    labels[1] = labels[0][:1] + "\u200b" + labels[0][1:]
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    proc, line = _cli(["convert", str(s["model"]), "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "out")], capsys)
    assert proc.returncode == LabelsError.exit_code, line
    assert "labels.txt" in line and "U+200B" in line and "\u200b" not in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ predict on one file
@pytest.mark.parametrize("suffix", [".onnx", ".mlmodel"])
def test_predict_on_one_artifact_of_an_export_checks_its_sha256(tmp_path, capsys, small_export, suffix):
    # `predict EXPORT` refused an artifact changed since the export, but `predict EXPORT/model.onnx` ran the changed
    # file with the manifest's preprocessing, as if it were the export's
    export = _copy_export(small_export, tmp_path / "export")
    artifact = next(export.glob(f"*{suffix}"))
    proc = run_in_process(["predict", str(artifact), str(_image(small_export))], capsys)
    assert proc.returncode == 0, proc.stderr
    data = bytearray(artifact.read_bytes())
    data[-100] ^= 0x01  # a weight of the last layer (.onnx) or in the file's metadata (.mlmodel): still a valid file
    artifact.write_bytes(bytes(data))
    proc, line = _cli(["predict", str(artifact), str(_image(small_export))], capsys)
    assert proc.returncode == DestinationError.exit_code, line
    assert artifact.name in line and "changed since the export" in line


def test_predict_on_a_copied_out_artifact_still_uses_its_own_metadata(tmp_path, capsys, small_export):
    # the check is against the manifest that lists the file: a file next to an unrelated or unreadable manifest runs
    # on what it embeds, as before
    artifact = next(small_export[0].glob("*.onnx"))
    shutil.copy(artifact, tmp_path / artifact.name)
    (tmp_path / "manifest.json").write_text("{not json")
    proc = run_in_process(["predict", str(tmp_path / artifact.name), str(_image(small_export))], capsys)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------------ ONNX run-time memory
def _onnx_with(export: Path, make) -> Path:
    """The export's ONNX file with ``make(nodes, initializers, image)`` -> a float value added to the probabilities
    (so it is on the path to the output, as a hostile file would put it), the manifest rehashed to agree."""
    import onnx
    from conftest import rehash_artifacts
    from onnx import helper

    from exporter.convert.onnx import PROBS_OUTPUT

    path = next(export.glob("*.onnx"))
    model = onnx.load(str(path))
    graph = model.graph
    producer = next(n for n in graph.node if PROBS_OUTPUT in n.output)
    producer.output[list(producer.output).index(PROBS_OUTPUT)] = "probs_before"
    nodes: list = []
    extra = make(nodes, graph.initializer, graph.input[0].name)
    nodes.append(helper.make_node("ReduceSum", [extra], ["extra_sum"], keepdims=0))
    nodes.append(helper.make_node("Add", ["probs_before", "extra_sum"], [PROBS_OUTPUT]))
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    rehash_artifacts(export)
    return path


def _const(initializers, name: str, values, dtype="int64"):
    import numpy as np
    from onnx import numpy_helper

    initializers.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
    return name


def _expand(nodes, inits, image):
    from onnx import helper

    nodes.append(helper.make_node("Expand", [_const(inits, "one", [1.0], "float32"), _const(inits, "big", [1, 20000, 20000])], ["huge"]))
    return "huge"


def _tile(nodes, inits, image):
    from onnx import helper

    nodes.append(helper.make_node("Tile", [_const(inits, "row", [[1.0] * 100], "float32"), _const(inits, "reps", [4000, 1000])], ["huge"]))
    return "huge"


def _constant_of_shape(nodes, inits, image):
    from onnx import helper

    nodes.append(helper.make_node("ConstantOfShape", [_const(inits, "big", [20000, 20000])], ["huge"]))
    return "huge"


def _resize(nodes, inits, image):
    from onnx import helper

    nodes += [
        helper.make_node("Cast", [image], ["image_f"], to=1),
        helper.make_node("Resize", ["image_f", "", _const(inits, "scales", [1.0, 400.0, 400.0, 1.0], "float32")], ["huge"]),
    ]
    return "huge"


def _data_dependent(nodes, inits, image):
    # a shape read from the image's pixels: NonZero makes one column per non-zero value, unknown until it runs
    from onnx import helper

    nodes += [helper.make_node("NonZero", [image], ["where"]), helper.make_node("Cast", ["where"], ["huge"], to=1)]
    return "huge"


@pytest.mark.parametrize(
    "make,message",
    [
        (_expand, "over the memory budget"),
        (_tile, "over the memory budget"),
        (_constant_of_shape, "over the memory budget"),
        (_resize, "over the memory budget"),
        (_data_dependent, "not known before running"),
    ],
)
def test_onnx_values_that_would_exhaust_memory_are_refused_before_onnxruntime_runs(tmp_path, capsys, small_export, make, message):
    # onnxruntime allocated whatever the graph asked for: a few bytes of constants asking for 1.6 GB here (or 10^12
    # elements) were allocated by predict and validate, an out-of-memory kill instead of an error
    export = _copy_export(small_export, tmp_path / "export")
    path = _onnx_with(export, make)
    proc, line = _cli(["predict", str(export), str(_image(small_export))], capsys)
    assert proc.returncode == 5, line
    assert path.name in line and message in line and ("huge" in line or "NonZero" in line), line


def test_a_value_that_grows_faster_than_the_batch_is_run_one_image_at_a_time():
    # the per-image bound alone would let 64 images into one run of a graph whose value grows with the batch squared
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from exporter.runtime.onnx_bounds import images_per_run, largest_value_bytes
    from exporter.safety import MEMORY_BUDGET_BYTES

    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 32, 32, 3])
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["row"]),  # (1, batch * 3072)
        helper.make_node("Transpose", ["row"], ["column"]),
        helper.make_node("MatMul", ["column", "row"], ["square"]),  # (batch * 3072)^2 values
        helper.make_node("ReduceSum", ["square"], ["out"], keepdims=0),
    ]
    shape = numpy_helper.from_array(np.asarray([1, -1], np.int64), "flat_shape")
    model = helper.make_model(helper.make_graph(nodes, "g", [image], [out], [shape]), opset_imports=[helper.make_opsetid("", 17)])
    one = largest_value_bytes(model, "square.onnx")
    assert one == 3072**2 * 4 and MEMORY_BUDGET_BYTES // one > 1  # 28 images would fit if it grew with the batch
    assert images_per_run(model, "square.onnx", one) == 1


# ------------------------------------------------------------------------------------------------ casts to small integers
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16"])
def test_onnx_casts_to_small_integers_saturate_like_tensorflow(dtype):
    # a nested backbone saved with Input(dtype="uint8") inside a float classifier casts what its caller gives it:
    # TensorFlow's cast of an image-sized float tensor saturates (Eigen's vectorized path: -1 -> 0, 300 -> 255), the
    # ONNX Cast onnxruntime runs wraps (-1 -> 255, 300 -> 44), so a model whose backbone sees values outside the
    # integer type's range (a contract's bias of -1 at pixel 0, a Rescaling before the backbone) disagreed with Keras
    # at fp32 and failed its 1e-5 gate in validate
    import keras
    import numpy as np
    import onnxruntime as ort

    from exporter.convert.onnx import CORE_INPUT, convert_core
    from exporter.preprocessing import Preprocessing

    keras.utils.set_random_seed(0)
    inner_in = keras.Input((8, 8, 3), dtype=dtype)
    h = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inner_in))
    backbone = keras.Model(inner_in, keras.layers.Dense(16, activation="relu")(h), name="backbone")
    outer_in = keras.Input((8, 8, 3))
    model = keras.Model(outer_in, keras.layers.Dense(4, activation="softmax")(backbone(outer_in)))
    pre = Preprocessing.from_dict({"input_size": [8, 8], "scale": [1.0], "bias": [0.0]})
    x = np.random.default_rng(0).uniform(-40000, 70000, (4, 8, 8, 3)).astype("float32")
    x[0] = np.rint(x[0])
    x[1] = np.random.default_rng(1).uniform(-2, 2, (8, 8, 3))  # fractions and negatives near zero
    session = ort.InferenceSession(convert_core(model, pre).SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {CORE_INPUT: x})[0]
    np.testing.assert_allclose(got, np.asarray(model(x)), atol=1e-6)


# ------------------------------------------------------------------------------------------------ preprocessing files
@pytest.mark.parametrize("scale", [1e-320, [1.0, -5e-324, 1.0]])
def test_a_scale_that_is_zero_in_float32_is_refused(tmp_path, capsys, scale):
    # 1e-320 passed the "not zero" check (a float64 subnormal), then became 0.0 in every file's float32 prologue: every
    # image gave the same prediction, and Keras fed the same zeros, so validate passed the broken export
    from conftest import sample

    s = sample("mobilenet_v1_digits")
    contract = json.loads(s["preprocessing"].read_text())
    contract.update(scale=scale, bias=0.0, in_model=False)
    (tmp_path / "pre.json").write_text(json.dumps(contract))
    argv = ["convert", str(s["model"]), "--labels", str(s["labels"]), "--preprocessing", str(tmp_path / "pre.json")]
    argv += ["--out", str(tmp_path / "o")]
    proc, line = _cli(argv, capsys)
    assert proc.returncode == 2 and "pre.json" in line and "must not be zero in float32" in line, line
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ partial reports
@pytest.mark.parametrize("option", ["--json", "--html"])
def test_a_report_cut_by_a_full_disk_leaves_the_previous_one_whole(tmp_path, capsys, small_export, option):
    # reports were written in place: a full disk, a file size limit or Ctrl-C in the middle left a truncated JSON or
    # HTML file where the previous complete report had been
    import resource
    import signal

    report = tmp_path / ("r.json" if option == "--json" else "r.html")
    report.write_text("previous report\n")
    command = ["validate", str(small_export[0]), "--images", str(small_export[1])] if option == "--html" else None
    command = command or ["predict", str(small_export[0]), str(small_export[1])]  # 10 images x 3 files: ~9 kB
    limit = 4096  # bytes any file this process writes may reach: less than either report
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit: EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        proc, line = _cli([*command, option, str(report)], capsys)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert proc.returncode == DestinationError.exit_code and report.name in line, line
    assert report.read_text() == "previous report\n"
    assert [p.name for p in tmp_path.iterdir()] == [report.name]  # no temporary file left beside it


def test_shape_arithmetic_that_inference_does_not_follow_is_evaluated_not_refused():
    # tf2onnx writes a Dense on a 4-D tensor as Shape, Gather, ReduceProd, Concat, Reshape; ONNX's data propagation
    # stops at ReduceProd, so the first bound refused the layer zoo's dense_4d file as "not known before running"
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from exporter.runtime.onnx_bounds import largest_value_bytes

    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 8, 8, 3])
    out = helper.make_tensor_value_info("rows", onnx.TensorProto.FLOAT, None)
    consts = [numpy_helper.from_array(np.asarray(v, np.int64), n) for n, v in (("free", [0, 1, 2]), ("channels", [3]), ("zero", [0]))]
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"]),
        helper.make_node("Gather", ["shape", "free"], ["free_dims"], axis=0),
        helper.make_node("ReduceProd", ["free_dims"], ["count"], keepdims=0),
        helper.make_node("Unsqueeze", ["count", "zero"], ["count_1d"]),
        helper.make_node("Concat", ["count_1d", "channels"], ["target"], axis=0),
        helper.make_node("Reshape", ["image", "target"], ["rows"]),
    ]
    model = helper.make_model(helper.make_graph(nodes, "g", [image], [out], consts), opset_imports=[helper.make_opsetid("", 17)])
    assert largest_value_bytes(model, "dense.onnx", batch=2) == 2 * 8 * 8 * 3 * 4


# ------------------------------------------------------------------------------------------------ a lone .mlpackage
def _lone_package(small_export, tmp_path) -> Path:
    package = tmp_path / "lone.mlpackage"
    shutil.copytree(next(small_export[0].glob("*.mlpackage")), package)
    return package


def test_predict_on_a_lone_package_holding_a_fifo_does_not_hang(tmp_path, small_export):
    # predict read a lone .mlpackage's metadata with coremltools' load_spec, which opened a FIFO standing in for its
    # model.mlmodel and waited forever; the package's files were never checked
    import os
    import subprocess
    import sys

    from conftest import USER_ENV

    package = _lone_package(small_export, tmp_path)
    spec = package / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec.unlink()
    os.mkfifo(spec)
    argv = [sys.executable, "-m", "exporter", "predict", str(package), str(_image(small_export))]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=USER_ENV)
    assert proc.returncode == 5 and "model.mlmodel" in proc.stderr and "not a regular file" in proc.stderr, proc.stderr[-2000:]


def test_predict_on_a_lone_package_never_reads_outside_it(tmp_path, capsys, small_export, monkeypatch):
    # the package's Manifest.json named "../secret.mlmodel" as its root model: coremltools read that file (outside the
    # package) before the executor's own check refused the path
    import coremltools

    package = _lone_package(small_export, tmp_path)
    shutil.copy(next(small_export[0].glob("*.mlmodel")), tmp_path / "secret.mlmodel")
    manifest = json.loads((package / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    manifest["itemInfoEntries"][root]["path"] = "../../secret.mlmodel"
    (package / "Manifest.json").write_text(json.dumps(manifest))
    read = []
    monkeypatch.setattr(coremltools.utils, "load_spec", lambda *a, **k: read.append(a) or pytest.fail("coremltools read the package"))
    proc, line = _cli(["predict", str(package), str(_image(small_export))], capsys)
    assert proc.returncode == 5 and "points outside" in line, line
    assert read == []


def test_predict_reads_a_lone_onnx_files_metadata_within_the_file_size_limit(tmp_path, capsys, small_export, monkeypatch):
    # a lone .onnx file's metadata was read with onnx.load, which reads a file of any size whole (the runner's own read
    # is capped at MAX_FILE_BYTES, but came after)
    import onnx

    from exporter import safety

    lone = tmp_path / "lone.onnx"
    shutil.copy(next(small_export[0].glob("*.onnx")), lone)
    monkeypatch.setattr(safety, "MAX_FILE_BYTES", 1000)  # the sample file stands in for one over the 1 GiB limit
    monkeypatch.setattr(onnx, "load", lambda *a, **k: pytest.fail("onnx.load read the whole file"))
    proc, line = _cli(["predict", str(lone), str(_image(small_export))], capsys)
    assert proc.returncode == 5 and "lone.onnx" in line and "over the limit of 1,000" in line, line


# ------------------------------------------------------------------------------------------------ reports over inputs
@pytest.mark.parametrize(
    "command,report",
    [
        ("validate", "export/manifest.json"),  # --json
        ("validate", "export/*.onnx"),  # --html
        ("predict", "export/*.mlmodel"),
        ("predict", "image"),  # the image predicted on
        ("convert", "labels.txt"),
    ],
)
def test_a_report_path_that_is_an_input_is_refused_before_any_work(tmp_path, capsys, small_export, command, report):
    # --json/--html were written over whatever they named: `validate EXPORT --json EXPORT/manifest.json` replaced the
    # export's manifest with the report (the export was then unreadable), `--html EXPORT/model.onnx` an artifact
    from conftest import sample

    export = _copy_export(small_export, tmp_path / "export")
    image = tmp_path / "photo.png"
    shutil.copy(_image(small_export), image)
    s = sample("mobilenet_v1_digits")
    shutil.copy(s["labels"], tmp_path / "labels.txt")
    target = image if report == "image" else next(tmp_path.glob(report))
    before = target.read_bytes()
    option = "--html" if report.endswith(".onnx") else "--json"
    argv = {
        "validate": ["validate", str(export), "--images", str(small_export[1])],
        "predict": ["predict", str(export), str(image)],
        "convert": ["convert", str(s["model"]), "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "out")],
    }[command]
    proc, line = _cli([*argv, option, str(target)], capsys)
    assert proc.returncode == DestinationError.exit_code and "is an input of this command" in line and target.name in line, line
    assert target.read_bytes() == before


def test_an_earlier_report_inside_the_export_may_be_replaced(tmp_path, capsys, small_export):
    export = _copy_export(small_export, tmp_path / "export")
    (export / "predictions.json").write_text("{}")
    proc = run_in_process(["predict", str(export), str(_image(small_export)), "--json", str(export / "predictions.json")], capsys)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((export / "predictions.json").read_text())["predictions"]


# ------------------------------------------------------------------------------------------------ protobuf field counts
@pytest.mark.parametrize("suffix", [".mlmodel", ".onnx"])
def test_a_protobuf_of_countless_tiny_fields_is_refused_before_parsing(tmp_path, capsys, small_export, monkeypatch, suffix):
    # parsed protobuf fields take ~45x their bytes: 10 MB of empty NeuralNetwork layers parsed to 446 MB, so a file
    # under the 1 GiB read limit could need tens of gigabytes; the count is now checked on the wire format first
    from exporter import safety

    def varint(v: int) -> bytes:
        out = b""
        while True:
            out += bytes([(v & 0x7F) | (0x80 if v > 0x7F else 0)])
            v >>= 7
            if not v:
                return out

    lone = tmp_path / f"lone{suffix}"
    empty_unknown_field = varint((9999 << 3) | 2) + b"\x00"  # kept by the parser as an unknown field
    lone.write_bytes(next(small_export[0].glob(f"*{suffix}")).read_bytes() + empty_unknown_field * 30_000)
    monkeypatch.setattr(safety, "MAX_PROTOBUF_FIELDS", 20_000)  # 30,000 stands in for hundreds of millions
    proc, line = _cli(["predict", str(lone), str(_image(small_export))], capsys)
    assert proc.returncode == 5 and lone.name in line and "over 20,000 protobuf fields" in line, line


# ------------------------------------------------------------------------------------------------ replaced after the check
def _plus_one(nodes, inits, image):
    return _const(inits, "one", [1.0], "float32")  # every probability raised by 1: a different model, within bounds


def test_onnxruntime_runs_the_graph_that_was_checked_not_the_file_again(tmp_path, small_export, monkeypatch):
    # the runner checked the bytes it read (external data, memory bounds), then gave onnxruntime the path: a file
    # replaced in between was run unchecked
    import numpy as np

    from exporter.preprocessing import Preprocessing
    from exporter.runtime import OnnxRunner, onnx_bounds

    export = _copy_export(small_export, tmp_path / "export")
    other = _onnx_with(_copy_export(small_export, tmp_path / "other"), _plus_one)
    path = next(export.glob("*.onnx"))
    checked = onnx_bounds.images_per_run

    def swap_after_the_check(*args, **kwargs):
        count = checked(*args, **kwargs)
        shutil.copy(other, path)
        return count

    monkeypatch.setattr(onnx_bounds, "images_per_run", swap_after_the_check)
    pre = Preprocessing.from_dict(json.loads((export / "manifest.json").read_text())["preprocessing"])
    probs = OnnxRunner(path, pre)(np.zeros((2, *pre.input_size, pre.channels), np.uint8))
    assert path.read_bytes() == other.read_bytes()  # the file was replaced ...
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)  # ... and the checked graph ran


# An artifact is checked (inside the folder, regular files, SHA-256 against manifest.json) by one read and was then
# loaded by another: a file replaced in between ran unchecked. Each case changes, right after artifact_file's check,
# a file the loader parses into a still valid file of another model (one weight byte flipped).
SWAPPED = [
    (".mlpackage", "Data/com.apple.CoreML/weights/weight.bin"),
    (".mlpackage", "Data/com.apple.CoreML/model.mlmodel"),
    (".mlmodel", ""),
    (".onnx", ""),
]


def _flip_a_weight(path: Path) -> None:
    """One bit of a weight: the first blob's data in a weight.bin (after its 64-byte header and first 64-byte record),
    else near the end (the last weights of an .onnx, the metadata of a Core ML protobuf). Still a valid file."""
    data = bytearray(path.read_bytes())
    data[200 if path.name == "weight.bin" else -100] ^= 0x01
    path.write_bytes(bytes(data))


def _changed_after_the_check(monkeypatch, module, export: Path, suffix: str, inner: str) -> Path:
    from exporter import packaging

    checked = packaging.artifact_file
    artifact = next(export.glob(f"*{suffix}"))
    victim = artifact / inner if inner else artifact

    def check_then_replace(root, art):
        target = checked(root, art)
        if target == artifact:
            _flip_a_weight(victim)
        return target

    monkeypatch.setattr(module, "artifact_file", check_then_replace)
    return artifact


@pytest.mark.parametrize("suffix,inner", SWAPPED)
def test_predict_runs_only_the_bytes_it_checked_against_the_manifest(tmp_path, capsys, small_export, monkeypatch, suffix, inner):
    from exporter import packaging

    export = _copy_export(small_export, tmp_path / "export")
    artifact = _changed_after_the_check(monkeypatch, packaging, export, suffix, inner)
    proc, line = _cli(["predict", str(export), str(_image(small_export))], capsys)
    assert proc.returncode == DestinationError.exit_code, (proc.stdout, line)
    assert artifact.name in line and "changed since the export" in line


def test_validate_runs_only_the_bytes_it_checked_against_the_manifest(tmp_path, small_export, monkeypatch):
    from exporter.preprocessing import Preprocessing
    from exporter.validation import parity

    export = _copy_export(small_export, tmp_path / "export")
    _changed_after_the_check(monkeypatch, parity, export, ".mlpackage", "Data/com.apple.CoreML/weights/weight.bin")
    manifest = json.loads((export / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == "mlpackage")
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    with pytest.raises(DestinationError, match="changed since the export"):
        parity._runner(art, export, pre, manifest["labels"])


@pytest.mark.parametrize("suffix", [".mlpackage", ".mlmodel"])
def test_core_ml_on_macos_loads_a_private_copy_of_the_checked_bytes(tmp_path, small_export, suffix):
    # coremltools loads from a path: CoreMLRunner gives it a copy of the bytes it checked, in a folder of its own
    import stat

    from exporter.packaging import sha256_of
    from exporter.runtime import private_copy

    export = _copy_export(small_export, tmp_path / "export")
    artifact = next(export.glob(f"*{suffix}"))
    expected = sha256_of(artifact)
    copy = private_copy(artifact, expected)
    assert stat.S_IMODE(Path(copy.name).stat().st_mode) == 0o700
    assert sha256_of(Path(copy.name) / artifact.name) == expected
    copy.cleanup()
    _flip_a_weight(artifact / "Data/com.apple.CoreML/weights/weight.bin" if suffix == ".mlpackage" else artifact)
    with pytest.raises(DestinationError, match="changed since the export"):
        private_copy(artifact, expected)


@pytest.mark.parametrize("suffix,inner", SWAPPED[:3])
def test_xcode_ships_only_the_bytes_it_checked_against_the_manifest(tmp_path, small_export, monkeypatch, suffix, inner):
    """write_xcode_package checked the artifact (artifact_file) and then copied the file from disk again: a file
    replaced in between went into the Swift package as the export's model."""
    from exporter.xcode import package

    export = _copy_export(small_export, tmp_path / "export")
    artifact = _changed_after_the_check(monkeypatch, package, export, suffix, inner)
    manifest = json.loads((export / "manifest.json").read_text())
    variant = next(f"{a['format']}:{a['variant']}" for a in manifest["artifacts"] if a["path"] == artifact.name)
    with pytest.raises(DestinationError, match="changed since the export"):
        package.write_xcode_package(export, tmp_path / "pkg", images_folder=small_export[1], variant=variant, golden_count=2)
    assert not (tmp_path / "pkg").exists()
