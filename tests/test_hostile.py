"""Hostile and broken files (issue 15, docs/THREAT_MODEL.md): no code from a file runs without --trust-code, nothing
is read or written outside its place, memory stays bounded, and every failure is one bounded line with its
documented exit code, never exit 70."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import rehash_artifacts, sample
from test_faults import no_partial_output, one_line_error, run_cli, run_in_process

from exporter.errors import (
    ConfigError,
    ConversionError,
    DestinationError,
    ImageError,
    LabelsError,
    ModelLoadError,
    UnsafeModelError,
)

S = sample("mobilenet_v1_digits")
PRE = ["--preprocessing", str(S["preprocessing"])]
SMALL = ["--formats", "onnx", "--variants", "fp32"]
# A guard must answer at once: reading a FIFO or /dev/zero without one blocks or runs until memory is gone.
NO_HANG_SECONDS = 60
DEEP = 100_000  # JSON nesting far past Python's recursion limit


def _write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def _cli(argv, capsys):
    proc = run_in_process(argv, capsys)
    return proc, one_line_error(proc)


def _copy_export(small_export, dest: Path) -> Path:
    shutil.copytree(small_export[0], dest)
    return dest


def _edit_manifest(folder: Path, edit) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------------ code in files
def _evil_saved_model(folder: Path, marker: Path) -> Path:
    import tensorflow as tf

    class Evil(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(marker), "written by the model file")
            logits = tf.tile(tf.reduce_mean(x, axis=[1, 2]), [1, 4])[:, :10]
            return {"probabilities": tf.nn.softmax(logits)}

    module = Evil()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    assert not marker.exists()
    return folder


def test_saved_model_runs_nothing_without_trust_code(tmp_path, capsys, small_export):
    from exporter.loading import load_model
    from exporter.packaging import sha256_of
    from exporter.validation.parity import validate

    marker = tmp_path / "marker.txt"
    model = _evil_saved_model(tmp_path / "evil_sm", marker)
    proc, line = _cli(["convert", str(model), "--labels", str(S["labels"]), *PRE, "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert proc.returncode == 3 and "--trust-code" in line and "SavedModel" in line
    assert not marker.exists()
    # validate and xcode on an export whose manifest names the SavedModel (with its real hash) refuse it too
    export = _copy_export(small_export, tmp_path / "export")
    _edit_manifest(export, lambda m: m["source"].update(path=str(model), path_from_export=None, sha256=sha256_of(model)))
    with pytest.raises(UnsafeModelError):
        validate(export, small_export[1])
    proc, line = _cli(["xcode", str(export), "--images", str(small_export[1]), "--out", str(tmp_path / "pkg"), "--variant", "fp32"], capsys)
    assert proc.returncode == 3 and not marker.exists()
    # the file does run code: trusted, calling its graph writes the file
    loaded = load_model(model, trust_code=True)
    loaded.model(np.zeros((1, 32, 32, 3), np.float32))
    assert marker.exists()


@pytest.mark.parametrize("where", ["../../outside/evil.onnx", "/abs/evil.onnx", "sub/../../evil.onnx"])
def test_manifest_paths_stay_inside_the_export(tmp_path, small_export, where):
    from exporter.validation.parity import validate

    outside = tmp_path / "outside"
    outside.mkdir()
    export = _copy_export(small_export, tmp_path / "a" / "b" / "export")
    onnx_file = next(export.glob("*.onnx"))
    shutil.copy(onnx_file, outside / "evil.onnx")
    path = where if where != "/abs/evil.onnx" else str(outside / "evil.onnx")
    _edit_manifest(export, lambda m: next(a for a in m["artifacts"] if a["format"] == "onnx").update(path=path))
    with pytest.raises(DestinationError, match="malformed"):
        validate(export, small_export[1])


def test_symlink_escaping_the_export_is_refused(tmp_path, small_export):
    from exporter.validation.parity import validate

    export = _copy_export(small_export, tmp_path / "export")
    onnx_file = next(export.glob("*.onnx"))
    shutil.move(onnx_file, tmp_path / "elsewhere.onnx")
    onnx_file.symlink_to(tmp_path / "elsewhere.onnx")
    with pytest.raises(DestinationError, match="outside its folder"):
        validate(export, small_export[1])


def test_xcode_does_not_copy_a_package_from_outside(tmp_path, capsys, small_export):
    export = _copy_export(small_export, tmp_path / "a" / "export")
    pkg = next(export.glob("*.mlpackage"))
    shutil.copytree(pkg, tmp_path / "outside.mlpackage")
    _edit_manifest(export, lambda m: next(a for a in m["artifacts"] if a["format"] == "mlpackage").update(path="../../outside.mlpackage"))
    proc, line = _cli(["xcode", str(export), "--images", str(small_export[1]), "--out", str(tmp_path / "pkg"), "--variant", "fp32"], capsys)
    assert proc.returncode == 6 and "outside" in line
    assert not (tmp_path / "pkg").exists()


def test_artifact_name_cannot_inject_swift(tmp_path, capsys, small_export):
    export = _copy_export(small_export, tmp_path / "export")
    pkg = next(export.glob("*.mlpackage"))
    evil = 'x_fp32.mlpackage\nlet pwned = "yes"\n//'
    pkg.rename(export / evil)
    _edit_manifest(export, lambda m: next(a for a in m["artifacts"] if a["format"] == "mlpackage").update(path=evil))
    proc, line = _cli(["xcode", str(export), "--images", str(small_export[1]), "--out", str(tmp_path / "pkg"), "--variant", "fp32"], capsys)
    assert proc.returncode == 6 and "\n" not in line
    assert not (tmp_path / "pkg").exists()


def test_swift_template_values_are_checked():
    from exporter.xcode.package import render

    with pytest.raises(ConfigError, match="generated Swift"):
        render(
            "Package.swift.in",
            {
                "NAME": "Ok",
                "MODEL_FILE": "Model.mlpackage",
                "ARTIFACT": "a\nimport Evil",
                "EXPORTER_VERSION": "0",
                "VARIANT": "fp16",
                "TARGET": "iOS15",
                "RESIZE": "stretch",
                "CROP": "scaleFill",
            },
        )


@pytest.mark.parametrize("name", ["../escaped", "/tmp/abs-name", "a/b", "..", "x\ny", "é" * 3, "a" * 201, ".hidden"])
def test_name_is_validated_before_it_becomes_a_path(tmp_path, capsys, name):
    dest = tmp_path / "out"
    proc, line = _cli(["convert", str(S["model"]), "--labels", str(S["labels"]), *PRE, "--out", str(dest), "--name", name, *SMALL], capsys)
    assert proc.returncode == 2 and "--name" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ bounds
def _keras_with(tmp_path: Path, name: str, member: str, size: int, *, keep_config: bool = True) -> Path:
    """A copy of the sample .keras archive with ``member`` replaced by ``size`` bytes of zeros (highly compressible),
    written in chunks so the test itself never holds them."""
    out = tmp_path / name
    with zipfile.ZipFile(S["model"]) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename != member and (keep_config or info.filename != "config.json"):
                dst.writestr(info, src.read(info))
        with dst.open(member, "w", force_zip64=True) as f:
            if member in src.namelist():  # the real content, then padding that JSON and HDF5 readers skip over
                f.write(src.read(member))
            chunk = b" " * (1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    return out


@pytest.mark.parametrize("member,size", [("config.json", 80 << 20), ("model.weights.h5", 200 << 20), ("assets/big.bin", 200 << 20)])
def test_archive_bombs_are_refused_before_inflating(tmp_path, capsys, member, size):
    model = _keras_with(tmp_path, "big.keras", member, size)
    assert model.stat().st_size < 2_000_000
    t0 = time.perf_counter()
    proc, line = _cli(["convert", str(model), "--labels", str(S["labels"]), *PRE, "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert proc.returncode == 3 and "big.keras" in line, line
    assert "decompression bomb" in line or "over the limit" in line, line
    assert time.perf_counter() - t0 < 10  # refused from the declared sizes, not after inflating


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _in_thread(fn):
    """Run ``fn`` with a deadline: a FIFO read without a guard blocks forever."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            result["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(NO_HANG_SECONDS)
    assert not t.is_alive(), "hung on a special file"
    return result


@pytest.mark.parametrize("which", ["model", "labels", "preprocessing"])
def test_special_files_are_refused_without_hanging(tmp_path, which):
    from exporter.labels import read_labels
    from exporter.loading import load_model
    from exporter.preprocessing import Preprocessing

    fn, error = {
        "model": (lambda p: load_model(p), ModelLoadError),
        "labels": (read_labels, LabelsError),
        "preprocessing": (Preprocessing.from_file, ConfigError),
    }[which]
    fifo = _fifo(tmp_path / f"{which}.keras")
    result = _in_thread(lambda: fn(fifo))
    assert isinstance(result.get("error"), error) and "regular file" in str(result["error"])
    (tmp_path / "dev.json").symlink_to("/dev/zero")
    result = _in_thread(lambda: fn(tmp_path / "dev.json"))
    assert isinstance(result.get("error"), (ModelLoadError, error)), result


@pytest.mark.parametrize("kind", ["fifo", "dev_zero"])
def test_weight_file_that_is_not_a_regular_file(tmp_path, small_export, kind):
    from exporter.runtime.executor import CoreMLExecutor

    export = _copy_export(small_export, tmp_path / "export")
    weights = next(export.glob("*.mlpackage/**/weight.bin"))
    weights.unlink()
    _fifo(weights) if kind == "fifo" else weights.symlink_to("/dev/zero")
    pkg = next(export.glob("*.mlpackage"))
    result = _in_thread(lambda: CoreMLExecutor(pkg))
    assert isinstance(result.get("error"), ConversionError), result
    assert "weight" in str(result["error"])


def _rewrite_program(pkg: Path, edit) -> None:
    from coremltools.proto import Model_pb2

    proto = pkg / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(proto.read_bytes())
    edit(spec)
    proto.write_bytes(spec.SerializeToString())


def _huge_const(dims):
    def edit(spec):
        from coremltools.proto import MIL_pb2

        fn = spec.mlProgram.functions["main"]
        block = fn.block_specializations[fn.opset]
        op = MIL_pb2.Operation(type="const")
        out = op.outputs.add(name="huge")
        out.type.tensorType.dataType = MIL_pb2.FLOAT32
        out.type.tensorType.rank = len(dims)
        for d in dims:
            out.type.tensorType.dimensions.add().constant.size = d
        val = op.attributes["val"]
        val.type.CopyFrom(out.type)
        val.immediateValue.tensor.SetInParent()  # declared, no data
        block.operations.insert(0, op)

    return edit


@pytest.mark.parametrize("dims", [[20000, 20000], [10**10, 10**10]], ids=["20000x20000", "1e20"])
def test_declared_tensor_size_is_bounded(tmp_path, small_export, dims):
    from peakmem import peak_growth

    from exporter.runtime.executor import CoreMLExecutor

    export = _copy_export(small_export, tmp_path / "export")
    pkg = next(export.glob("*.mlpackage"))
    _rewrite_program(pkg, _huge_const(dims))
    with peak_growth() as peak, pytest.raises(ConversionError, match="memory budget") as info:
        CoreMLExecutor(pkg)
    assert pkg.name in str(info.value)
    assert peak.growth_bytes < 200 << 20  # the declared tensor was never allocated


def test_neuralnetwork_upsample_factor_is_bounded(tmp_path, small_export):
    import coremltools as ct

    from exporter.runtime.executor import CoreMLExecutor

    model = next(small_export[0].glob("*.mlmodel"))
    spec = ct.utils.load_spec(str(model))
    nn = spec.neuralNetworkClassifier
    image = spec.description.input[0].name
    for layer in nn.layers:
        layer.input[:] = ["up" if name == image else name for name in layer.input]
    up = nn.layers.add()
    up.name, up.input[:], up.output[:] = "up", [image], ["up"]
    up.upsample.scalingFactor[:] = [450, 450]
    nn.layers.insert(0, nn.layers.pop())
    evil = tmp_path / "up.mlmodel"
    ct.utils.save_spec(spec, str(evil))
    assert evil.stat().st_size < 2_000_000
    with pytest.raises(ConversionError, match="memory budget") as info:
        CoreMLExecutor(evil)
    assert "up.mlmodel" in str(info.value)


def test_center_crop_of_a_thin_strip_is_bounded(tmp_path):
    from PIL import Image

    from exporter.images import load_image
    from exporter.preprocessing import Preprocessing

    strip = tmp_path / "strip.png"
    Image.new("RGB", (600_000, 1)).save(strip)
    with pytest.raises(ImageError, match="over the limit") as info:
        load_image(strip, Preprocessing((32, 32), resize="center_crop"))
    assert "strip.png" in str(info.value)


# ------------------------------------------------------------------------------------------------ exit codes
def test_deeply_nested_json_is_a_clean_error(tmp_path, capsys, small_export):
    from exporter.validation.parity import validate

    deep = "[" * DEEP + "]" * DEEP
    model = tmp_path / "deep.keras"
    with zipfile.ZipFile(S["model"]) as src, zipfile.ZipFile(model, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, deep if info.filename == "config.json" else src.read(info))
    out = ["--out", str(tmp_path / "o"), *SMALL]
    proc, line = _cli(["convert", str(model), "--labels", str(S["labels"]), *PRE, *out], capsys)
    assert proc.returncode == 3 and "nested too deeply" in line
    proc, line = _cli(["convert", str(S["model"]), "--labels", str(_write(tmp_path / "l.json", deep)), *PRE, *out], capsys)
    assert proc.returncode == 2 and "nested too deeply" in line
    proc, line = _cli(
        ["convert", str(S["model"]), "--labels", str(S["labels"]), "--preprocessing", str(_write(tmp_path / "p.json", deep)), *out], capsys
    )
    assert proc.returncode == 2 and "nested too deeply" in line
    export = _copy_export(small_export, tmp_path / "export")
    _write(export / "manifest.json", deep)
    with pytest.raises(DestinationError, match="nested too deeply"):
        validate(export, small_export[1])


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '"text"',
        "null",
        '{"schema_version": 1}',
        '{"schema_version": 1, "labels": ["a", "b"], "preprocessing": {}, "source": {}, "artifacts": []}',
    ],
)
def test_manifest_of_the_wrong_shape(tmp_path, capsys, small_export, content):
    export = _copy_export(small_export, tmp_path / "export")
    _write(export / "manifest.json", content)
    proc, line = _cli(["validate", str(export), "--images", str(small_export[1])], capsys)
    assert proc.returncode == 6 and "manifest" in line


def test_preprocessing_path_that_is_a_folder(tmp_path, capsys):
    proc, line = _cli(
        ["convert", str(S["model"]), "--labels", str(S["labels"]), "--preprocessing", str(tmp_path), "--out", str(tmp_path / "o"), *SMALL],
        capsys,
    )
    assert proc.returncode == 2 and "directory" in line


@pytest.mark.parametrize("label", ["\ud800", "bad\x1b[31mred", "bare\rreturn", "tab\there", "line\u2028sep"])
def test_labels_with_control_characters_or_lone_surrogates(label):
    from exporter.labels import check_labels, parse_labels

    with pytest.raises(LabelsError):
        check_labels([label, "ok"])
    with pytest.raises(LabelsError):
        parse_labels(json.dumps([label, "ok"]))


def test_lone_surrogate_label_through_the_cli(tmp_path, capsys):
    labels = _write(tmp_path / "l.json", json.dumps(["\ud800"] + [str(i) for i in range(1, 10)]))
    proc, line = _cli(["convert", str(S["model"]), "--labels", str(labels), *PRE, "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert proc.returncode == 2 and "surrogate" in line
    no_partial_output(tmp_path / "o")


def test_long_label_and_odd_file_names_give_one_bounded_line(tmp_path, capsys):
    from exporter.errors import MAX_MESSAGE_CHARS

    big = "x" * 10_000_000
    labels = _write(tmp_path / "l.txt", "\n".join([big, big] + [str(i) for i in range(8)]) + "\n")
    proc, line = _cli(["convert", str(S["model"]), "--labels", str(labels), *PRE, "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert proc.returncode == 2 and "characters long, over the limit" in line and len(line) < MAX_MESSAGE_CHARS + 50
    odd = tmp_path / "evil\nname\x1b[2J.txt"
    proc, line = _cli(["convert", str(S["model"]), "--labels", str(odd), *PRE, "--out", str(tmp_path / "o"), *SMALL], capsys)
    assert proc.returncode == 2 and "\\n" in line and "\x1b" not in line


def _onnx_artifact(export: Path) -> Path:
    return next(export.glob("*.onnx"))


@pytest.mark.parametrize("damage,code", [("missing", 6), ("garbage", 5), ("external", 5)])
def test_broken_onnx_artifacts(tmp_path, capsys, small_export, damage, code):
    import onnx

    export = _copy_export(small_export, tmp_path / "a" / "export")
    path = _onnx_artifact(export)
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        _write(path, b"\x08garbage" * 1000)
    else:
        model = onnx.load(str(path))
        init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and i.raw_data)
        (tmp_path / "stolen.bin").write_bytes(init.raw_data)
        init.ClearField("raw_data")
        init.data_location = onnx.TensorProto.EXTERNAL
        init.external_data.add(key="location", value="../../stolen.bin")
        path.write_bytes(model.SerializeToString())
    rehash_artifacts(export)  # the manifest agrees with the damaged file: what the file itself does is tested
    proc, line = _cli(["validate", str(export), "--images", str(small_export[1])], capsys)
    assert proc.returncode == code and path.name in line, line


def test_report_path_that_is_a_folder_is_refused_first(tmp_path, capsys, small_export):
    export = _copy_export(small_export, tmp_path / "export")
    _edit_manifest(export, lambda m: m["source"].update(path=str(tmp_path / "no-such-model.keras")))
    proc, line = _cli(["validate", str(export), "--images", str(small_export[1]), "--json", str(tmp_path)], capsys)
    assert proc.returncode == 6 and "folder" in line  # before the model (which is missing: exit 3) is even looked at


def test_math_text_in_labels_does_not_break_the_html_report(small_export):
    from exporter.report import html
    from exporter.validation.parity import validate

    report = validate(*small_export)
    labels = ["$x_{$"] + [f"${i}" for i in range(1, len(report["labels"]))]
    report["labels"] = labels
    page = html.render(report)  # matplotlib's math text parser would raise on '$x_{$' in the confusion matrix
    assert page.count("data:image/png;base64,") >= 3


def test_long_out_name(tmp_path, capsys):
    proc, line = _cli(
        ["convert", str(S["model"]), "--labels", str(S["labels"]), *PRE, "--out", str(tmp_path / ("o" * 300)), *SMALL], capsys
    )
    assert proc.returncode == 6 and "limit" in line


@pytest.mark.parametrize("side", [4, 5000])
def test_model_input_size_out_of_range_names_the_model(tmp_path, capsys, side):
    import keras

    inputs = keras.Input((side, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Rescaling(1 / 255)(inputs))
    path = tmp_path / f"side{side}.keras"
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(path)
    labels = _write(tmp_path / "labels.txt", "a\nb\nc\n")
    proc, line = _cli(["convert", str(path), "--labels", str(labels), "--out", str(tmp_path / "out"), *SMALL], capsys)
    assert proc.returncode == 3 and path.name in line and f"{side}x8 pixels" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "scale,text",
    [("123", "must be a number"), (1e39, "finite in float32"), (["1", "2", "3"], "must be a number"), (True, "must be a number")],
)
def test_scale_values(scale, text):
    from exporter.preprocessing import Preprocessing

    with pytest.raises(ConfigError, match=text):
        Preprocessing.from_dict({"input_size": [32, 32], "scale": scale})


def test_no_tensorflow_log_lines_around_the_error(tmp_path):
    labels = _write(tmp_path / "l.txt", "a\nb\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = run_cli(["convert", str(S["model"]), "--labels", str(labels), *PRE, "--out", str(tmp_path / "o"), *SMALL], env=env)
    assert proc.returncode == 2
    one_line_error(proc)
    # only the toolkit's own lines: its progress ("[1/2] load model ...") and the error
    assert all(line.startswith(("[", "exporter: ")) for line in proc.stderr.splitlines()), proc.stderr


# ------------------------------------------------------------------------------------------------ concurrency, signals
def test_a_locked_destination_is_refused(tmp_path):
    from exporter.api import ExportOptions, export
    from exporter.packaging import destination_lock

    dest = tmp_path / "out"
    with destination_lock(dest.absolute()), pytest.raises(DestinationError, match="another export"):
        export(
            S["model"], S["labels"], dest, preprocessing=S["preprocessing"], options=ExportOptions(formats=("onnx",), variants=("fp32",))
        )
    no_partial_output(dest)


def test_live_staging_folders_are_kept_and_dead_ones_removed(tmp_path):
    from exporter.packaging import atomic_directory, hidden_name

    dest = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        live_stage = tmp_path / f"{hidden_name(dest, 'partial')}{sleeper.pid}-abcdefgh"
        dead_stage = tmp_path / f"{hidden_name(dest, 'partial')}{dead.pid}-abcdefgh"
        for p in (live_stage, dead_stage):
            (p / "x.mlpackage").mkdir(parents=True)
        with atomic_directory(dest) as stage:
            (stage / "manifest.json").write_text("{}")
        assert live_stage.exists() and not dead_stage.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_exports_at_once_do_not_both_succeed(tmp_path):
    dest = tmp_path / "out"
    argv = [sys.executable, "-m", "exporter", "convert", str(S["model"]), "--labels", str(S["labels"]), *PRE, "--out", str(dest), *SMALL]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    results = [(p.returncode, err) for p, err in zip(procs, errors, strict=True)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 6], results
    assert any("another export" in err or "already exists" in err for _, err in results)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert all((dest / a["path"]).exists() for a in manifest["artifacts"])


@pytest.mark.parametrize("auto", [False, True], ids=["partial", "auto"])
def test_sigterm_removes_staging_folders(tmp_path, auto):
    dest = tmp_path / "out"
    extra = ["--quantize", "auto", "--images", str(S["heldout"])] if auto else []
    argv = [
        sys.executable,
        "-m",
        "exporter",
        "convert",
        str(S["model"]),
        "--labels",
        str(S["labels"]),
        *PRE,
        "--out",
        str(dest),
        "--formats",
        "onnx",
        *extra,
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    pattern = ".out.partial-*"  # --quantize auto builds its candidates in the same staging folder
    deadline = time.time() + 240
    while time.time() < deadline and not list(tmp_path.glob(pattern)) and proc.poll() is None:
        time.sleep(0.05)
    assert list(tmp_path.glob(pattern)), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-1500:]
    assert not dest.exists()
    assert not [p.name for p in tmp_path.iterdir()]  # no .partial-, .auto- or lock file left


def test_out_that_contains_the_inputs_is_refused(tmp_path, capsys):
    folder = tmp_path / "mine"
    shutil.copytree(S["folder"], folder)
    image = next(p for p in S["heldout"].rglob("*") if p.suffix == ".png" or p.suffix == ".jpg")
    shutil.copy(image, folder / image.name)  # the folder also serves as --calibration-images below
    proc, line = _cli(
        [
            "convert",
            str(folder / "model.keras"),
            "--labels",
            str(folder / "labels.txt"),
            "--preprocessing",
            str(folder / "preprocessing.json"),
            "--out",
            str(folder),
            "--overwrite",
            *SMALL,
        ],
        capsys,
    )
    assert proc.returncode == 6 and "contains the input" in line
    assert (folder / "model.keras").read_bytes() == S["model"].read_bytes()
    proc, line = _cli(
        [
            "convert",
            str(S["model"]),
            "--labels",
            str(S["labels"]),
            *PRE,
            "--out",
            str(tmp_path),
            "--overwrite",
            "--calibration-images",
            str(tmp_path / "mine"),
            *SMALL,
        ],
        capsys,
    )
    assert proc.returncode == 6 and (folder / "model.keras").exists()


def test_a_legal_250_character_destination_name(tmp_path, capsys):
    dest = tmp_path / ("d" * 250)
    proc = run_in_process(["convert", str(S["model"]), "--labels", str(S["labels"]), *PRE, "--out", str(dest), *SMALL], capsys)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert (dest / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [dest.name]


def test_staging_names_fit_the_file_system_limit():
    from exporter.packaging import hidden_name
    from exporter.safety import NAME_MAX

    for kind in ("partial", "auto", "lock"):
        assert len(hidden_name(Path("d" * 255), kind).encode()) + 20 <= NAME_MAX


def test_probabilities_of_the_trusted_saved_model_come_from_its_graph(tmp_path):
    """The trusted path still works: a SavedModel loads and predicts with trust_code=True."""
    from exporter.loading import load_model

    model = _evil_saved_model(tmp_path / "sm", tmp_path / "m.txt")
    loaded = load_model(model, trust_code=True)
    x = np.random.default_rng(0).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    probs = np.asarray(loaded.model(x))
    means = np.tile(x.mean(axis=(1, 2)), (1, 4))[:, :10]
    expected = np.exp(means) / np.exp(means).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)


@pytest.mark.parametrize("kind", ["fifo", "symlink_out"])
def test_predict_refuses_an_artifact_that_is_a_fifo_or_points_outside(tmp_path, small_export, kind):
    # predict ran the manifest's artifact paths as they stood: a FIFO hung onnxruntime's read, a symlink ran a file
    # from outside the export (validate refused both)
    from exporter.predict import predict

    export = _copy_export(small_export, tmp_path / "export")
    onnx_file = next(export.glob("*.onnx"))
    onnx_file.unlink()
    if kind == "fifo":
        _fifo(onnx_file)
    else:
        onnx_file.symlink_to(next(small_export[0].glob("*.onnx")))
    image = next(small_export[1].rglob("*.png"))
    result = _in_thread(lambda: predict(export, [image]))
    assert isinstance(result.get("error"), DestinationError), result
    assert "regular file" in str(result["error"]) if kind == "fifo" else "outside" in str(result["error"])


def test_predict_on_a_file_with_a_broken_embedded_contract(tmp_path, capsys, small_export):
    import onnx

    model = onnx.load(str(next(small_export[0].glob("*.onnx"))))
    for prop in model.metadata_props:
        if prop.key == "exporter.preprocessing":
            prop.value = '{"input_size": [32, 32'
    lone = tmp_path / "lone.onnx"  # no manifest next to it: predict reads the contract the file embeds
    onnx.save(model, str(lone))
    proc, line = _cli(["predict", str(lone), str(next(small_export[1].rglob("*.png")))], capsys)
    assert proc.returncode == 5 and "lone.onnx" in line and "embedded preprocessing contract is not valid JSON" in line
