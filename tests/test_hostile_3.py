"""Hostile input, round 3 (issue 15, docs/THREAT_MODEL.md): what the earlier rounds (test_hostile.py,
test_hostile_h5.py, test_input_hunt.py, test_faults.py, test_fuzz.py) left open. Each test fails without its fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_faults import one_line_error, run_in_process

from exporter.errors import DestinationError


def _copy_export(small_export, dest: Path) -> Path:
    shutil.copytree(small_export[0], dest)
    return dest


def _cli(argv, capsys):
    proc = run_in_process(argv, capsys)
    return proc, one_line_error(proc)


def _image(small_export) -> Path:
    return next(small_export[1].rglob("*.png"))


# ------------------------------------------------------------------------------------------------ swapped artifacts
@pytest.mark.parametrize("command", ["validate", "predict"])
def test_an_artifact_swapped_after_the_export_is_named(tmp_path, capsys, small_export, command):
    # validate and predict ran whatever file sat under an artifact's name: an .onnx replaced by another model (here
    # the export's own file with one byte of its weights changed) was judged and reported as the export's
    export = _copy_export(small_export, tmp_path / "export")
    onnx_file = next(export.glob("*.onnx"))
    data = bytearray(onnx_file.read_bytes())
    data[-100] ^= 0x01  # inside the last initializer's raw data: still a valid model, a different one
    onnx_file.write_bytes(bytes(data))
    argv = [command, str(export), *(["--images", str(small_export[1])] if command == "validate" else [str(_image(small_export))])]
    proc, line = _cli(argv, capsys)
    assert proc.returncode == DestinationError.exit_code, line
    assert onnx_file.name in line and "changed since the export" in line and "SHA-256" in line


# ------------------------------------------------------------------------------------------------ image formats
def _digit(size: int = 40):
    """A real held-out digit as an RGB Pillow image (a stroke, not a flat colour, so decoding errors would show)."""
    from conftest import sample
    from PIL import Image

    path = next(sample("mobilenet_v1_digits")["heldout"].rglob("*.png"))
    return Image.open(path).convert("RGB").resize((size, size))


@pytest.mark.parametrize("suffix,fmt", [(".ico", "ICO"), (".avif", "AVIF")])
def test_ico_and_avif_files_in_a_folder_are_decoded_not_skipped(tmp_path, suffix, fmt):
    # list_images skipped them silently: a folder of .avif photos validated on none of them ("no image files"), and
    # in a mixed folder on fewer images than it holds
    import numpy as np

    from exporter.images import list_images, load_image
    from exporter.preprocessing import Preprocessing

    if fmt == "AVIF":
        from PIL import features

        if not features.check("avif"):
            pytest.skip("this Pillow has no AVIF codec (Pillow 11.2+ wheels have one)")
    img = _digit()
    (tmp_path / "seven").mkdir()
    img.save(tmp_path / "seven" / f"a{suffix}", format=fmt, **({"quality": 100} if fmt == "AVIF" else {"sizes": [img.size]}))
    img.save(tmp_path / "seven" / "b.png")
    items = list_images(tmp_path)
    assert sorted(it.path.name for it in items) == ["a" + suffix, "b.png"]
    pre = Preprocessing.from_dict({"input_size": [40, 40], "scale": [1.0], "bias": [0.0], "resize": "stretch"})
    decoded = load_image(tmp_path / "seven" / f"a{suffix}", pre).astype(int)
    original = np.asarray(img, dtype=int)
    # ICO is lossless; AVIF at quality 100 is lossy in its 4:2:0 chroma: the digit's pixels stay within a few levels
    assert np.abs(decoded - original).mean() < (0.01 if fmt == "ICO" else 6.0)


@pytest.mark.parametrize("suffix", [".jxl", ".psd", ".eps"])
def test_other_image_files_in_a_folder_are_refused_by_name(tmp_path, suffix):
    from exporter.errors import ImageError
    from exporter.images import list_images

    _digit().save(tmp_path / "ok.png")
    (tmp_path / f"photo{suffix}").write_bytes(b"\x00" * 64)
    with pytest.raises(ImageError, match=rf"photo\{suffix}: .*not supported"):
        list_images(tmp_path)


def test_a_postscript_file_named_png_never_reaches_ghostscript(tmp_path, monkeypatch):
    # Pillow picks its decoder by content and opens EPS by running Ghostscript on it: an untrusted "photo.png" holding
    # PostScript went to Ghostscript (a program with a long list of sandbox escapes) wherever one was installed
    from PIL import EpsImagePlugin

    from exporter.errors import ImageError
    from exporter.images import open_image

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a) or _digit())
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    evil = tmp_path / "photo.png"
    evil.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 40\n(/etc/passwd) (r) file pop\nshowpage\n%%EOF\n")
    with pytest.raises(ImageError, match=r"photo\.png: not an image of a supported format"):
        open_image(evil)
    assert calls == []


# ------------------------------------------------------------------------------------------------ report paths
@pytest.mark.skipif(not Path("/proc/version").is_file(), reason="needs Linux's /proc")
@pytest.mark.parametrize("option", ["--html", "--json"])
def test_a_report_path_that_takes_no_file_is_refused_before_the_validation(tmp_path, capsys, small_export, option):
    # /proc/version is a regular file that opens for writing (as root) but takes no report: the check passed and the
    # write failed only after the whole validation had run
    export = _copy_export(small_export, tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["source"].update(path=str(tmp_path / "no-such-model.keras"), path_from_export=None)
    (export / "manifest.json").write_text(json.dumps(manifest))
    proc, line = _cli(["validate", str(export), "--images", str(small_export[1]), option, "/proc/version"], capsys)
    assert proc.returncode == DestinationError.exit_code and "/proc/version" in line, line  # before the model (exit 3)


# ------------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize(
    "labels,message",
    [
        (["caf\u00e9", "cafe\u0301"], "once Unicode-normalized"),  # é as one code point and as e + combining acute
        (["\u212b", "\u00c5"], "once Unicode-normalized"),  # ANGSTROM SIGN and Å: canonically equivalent
        (["cat", "dog\u202etac"], "bidirectional formatting character"),  # RIGHT-TO-LEFT OVERRIDE: shows as "dogcat"
        (["cat", "\u2066dog\u2069"], "bidirectional formatting character"),  # isolates
    ],
)
def test_labels_that_display_or_compare_as_others_are_refused(labels, message):
    # both pairs passed: Swift's String == and Dictionary (the generated package's label checks, Core ML's
    # classLabel_probs) treat canonically equivalent strings as one, so the package's golden test failed on
    # "labels are not unique" and a class vanished from the probabilities; an override made one label read as another
    from exporter.errors import LabelsError
    from exporter.labels import check_labels

    with pytest.raises(LabelsError, match=message):
        check_labels(labels)


def test_labels_in_other_scripts_and_emoji_are_still_accepted():
    labels = ["قطة", "כלב", "猫", "🐈\u200d⬛", "naïve", "Ångström"]
    from exporter.labels import check_labels

    assert check_labels(labels) == labels


# ------------------------------------------------------------------------------------------------ terminal output
ESCAPES = ["\x1b]0;owned\x07", "\x1b[2J", "\u202e"]


def test_predict_table_escapes_image_names_from_a_folder(tmp_path, capsys, small_export):
    # an image folder's file names are untrusted: predict printed them raw, so a name holding ESC sequences retitled
    # or cleared the user's terminal, and an override reversed the line
    folder = tmp_path / "images"
    folder.mkdir()
    evil = folder / f"a{''.join(ESCAPES)}b.png"
    shutil.copy(_image(small_export), evil)
    proc = run_in_process(["predict", str(next(small_export[0].glob("*.onnx"))), str(folder)], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout and "\u202e" not in proc.stdout and "\x07" not in proc.stdout
    assert "a\\x1b]0;owned\\x07\\x1b[2J\\u202eb.png" in proc.stdout  # the name is still there to read


def _onnx_with_labels(small_export, dest: Path, labels: list[str]) -> Path:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(next(small_export[0].glob("*.onnx"))))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "exporter_labels":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(labels, dtype=object), init.name))
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize("bad", ["\x1b[2J", "cafe\u0301"], ids=["escape", "nfc-duplicate"])
def test_predict_refuses_a_file_whose_embedded_labels_are_unusable(tmp_path, capsys, small_export, bad):
    # a lone file's embedded labels were used unchecked: an ESC sequence went to the terminal as it was
    labels = json.loads((small_export[0] / "manifest.json").read_text())["labels"]
    labels = ["caf\u00e9", bad, *labels[2:]]
    lone = _onnx_with_labels(small_export, tmp_path / "lone.onnx", labels)
    proc, line = _cli(["predict", str(lone), str(_image(small_export))], capsys)
    assert proc.returncode == 5 and "lone.onnx" in line and "embedded labels" in line, line
    assert "\x1b" not in proc.stdout + proc.stderr


def test_error_lines_and_progress_lines_escape_bidi_overrides(tmp_path, capsys):
    import io

    from exporter.console import Progress, Step

    # an error naming a file whose name holds U+202E printed it raw: the rest of the line showed reversed
    odd = tmp_path / "labels\u202etxt.exe"
    from conftest import sample

    s = sample("mobilenet_v1_digits")
    argv = ["convert", str(s["model"]), "--labels", str(odd), "--preprocessing", str(s["preprocessing"]), "--out", str(tmp_path / "o")]
    proc, line = _cli(argv, capsys)
    assert proc.returncode != 0 and "\u202e" not in proc.stderr and "\\u202e" in line
    stream = io.StringIO()
    with Progress(stream, tty=False) as progress:
        progress(Step(1, 1, "load model", seconds=0.1, detail="m\x1b[2J\u202e.keras, 10 classes"))
    assert "\x1b" not in stream.getvalue() and "\u202e" not in stream.getvalue() and "m\\x1b[2J" in stream.getvalue()


# ------------------------------------------------------------------------------------------------ architecture sizes
# Dense units in the edited config: a (3, UNITS) float32 kernel of 1.5 GB, over the 1 GiB budget, in a file of a few kB
HUGE_UNITS = 125_000_000


def _tiny_classifier():
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax", name="head")(x))


def _with_units(config, units: int):
    for layer in config["config"]["layers"]:
        if layer["class_name"] == "Dense":
            layer["config"]["units"] = units
    return config


def _huge_keras(folder: Path) -> Path:
    import zipfile

    _tiny_classifier().save(folder / "tiny.keras")
    target = folder / "huge.keras"
    with zipfile.ZipFile(folder / "tiny.keras") as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "config.json":
                data = json.dumps(_with_units(json.loads(data), HUGE_UNITS)).encode()
            dst.writestr(info, data)
    return target


def _huge_h5(folder: Path) -> Path:
    import h5py

    target = folder / "huge.h5"
    _tiny_classifier().save(target)
    with h5py.File(target, "a") as f:
        raw = f.attrs["model_config"]
        f.attrs["model_config"] = json.dumps(_with_units(json.loads(raw), HUGE_UNITS))
    return target


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("make", [_huge_keras, _huge_h5], ids=["keras", "h5"])
def test_layer_sizes_in_the_architecture_are_bounded_before_keras_allocates(tmp_path, make):
    # Keras builds every layer from the config, allocating and randomly initializing its variables, before it reads a
    # weight: a few-kB file declaring Dense(125e6) took 1.5 GB (3e9 units: 36 GB) before anything checked it
    from peakmem import peak_growth

    from exporter.errors import ModelLoadError
    from exporter.loading import load_model

    evil = make(tmp_path)
    assert evil.stat().st_size < 100_000
    with peak_growth() as peak, pytest.raises(ModelLoadError, match="memory budget") as info:
        load_model(evil)
    assert evil.name in str(info.value) and "head" in str(info.value)
    assert peak.growth_bytes < 300 << 20  # the kernel was never allocated
    with peak_growth() as later:  # Keras' lazy-variable list was restored: a later symbolic build allocates none of it
        _tiny_classifier()
    assert later.growth_bytes < 300 << 20


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_a_weightless_layer_that_blows_up_activations_is_refused_before_running(tmp_path, nested):
    # UpSampling2D has no weights, so no weight or variable bound saw it: 32 px became 19200 px (4.4 GB per image)
    # when the classifier probe ran the model
    import keras

    from exporter.errors import ModelLoadError
    from exporter.loading import load_model

    def body(x):
        x = keras.layers.UpSampling2D(size=(600, 600), name="blow_up")(x)
        return keras.layers.GlobalAveragePooling2D()(x)

    inputs = keras.Input((32, 32, 3))
    if nested:
        inner_in = keras.Input((32, 32, 3))
        x = keras.Model(inner_in, body(inner_in), name="backbone")(inputs)
    else:
        x = body(inputs)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(tmp_path / "up.keras")
    with pytest.raises(ModelLoadError, match="memory budget") as info:
        load_model(tmp_path / "up.keras")
    assert "up.keras" in str(info.value) and "blow_up" in str(info.value)


# ------------------------------------------------------------------------------------------------ archive directories
def _many_members(path: Path, count: int, name_chars: int = 8) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for i in range(count):
            z.writestr(zipfile.ZipInfo(f"{i:0{name_chars}d}"), b"")
    return path


def _understate_count(path: Path) -> None:
    """Make the end record claim one member (zipfile reads the directory by its byte size, not this count)."""
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x05\x06")
    data[at + 8 : at + 12] = (1).to_bytes(2, "little") * 2
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("understated", [False, True], ids=["declared", "understated-count"])
def test_an_archive_directory_of_many_members_is_refused_before_it_is_parsed(tmp_path, understated):
    # zipfile.ZipFile parsed the whole central directory (~500 bytes of objects per 46-byte member) before check_zip
    # looked at a single size: a 100 MB .keras of 2 million empty members took a gigabyte
    from peakmem import peak_growth

    from exporter.errors import ModelLoadError
    from exporter.loading import inspect_model_file

    # 20,001 members: over safety.MAX_ARCHIVE_MEMBERS (10,000); or 25,000 with 200-character names (a 5.7 MB
    # directory, over MAX_CENTRAL_DIRECTORY_BYTES) behind an end record that claims one member
    evil = _many_members(tmp_path / "many.keras", 25_000 if understated else 20_001, 200 if understated else 8)
    if understated:
        _understate_count(evil)
    with peak_growth() as peak, pytest.raises(ModelLoadError, match="members") as info:
        inspect_model_file(evil)
    assert "many.keras" in str(info.value)
    assert peak.growth_bytes < 2 << 20  # no directory entry became an object


# ------------------------------------------------------------------------------------------------ code in the architecture
@pytest.mark.parametrize(
    "layer,what",
    [
        ({"class_name": "TFSMLayer", "config": {"name": "sm", "filepath": "/tmp/evil_saved_model"}}, "SavedModel"),
        ({"class_name": "TorchModuleWrapper", "config": {"name": "torch", "module": "gASV..."}}, "pickled"),
        ({"class_name": "StringLookup", "config": {"name": "vocab", "vocabulary": "/etc/passwd"}}, "/etc/passwd"),
    ],
    ids=["tfsm", "torch", "vocabulary-file"],
)
def test_keras_layers_that_load_programs_or_read_files_are_refused_by_the_scan(tmp_path, layer, what):
    # the scan refused Lambda layers and custom classes only: a keras.layers.TFSMLayer (a SavedModel, a program, from
    # any path), a TorchModuleWrapper (a pickle) or a lookup layer reading its vocabulary from a file passed it, and
    # only Keras' safe mode (the second line) stood between the file and running them
    import zipfile

    from exporter.errors import UnsafeModelError
    from exporter.loading import inspect_model_file

    config = {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {"name": "m", "layers": [{"module": "keras.layers", "registered_name": None, **layer}]},
    }
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("config.json", json.dumps(config))
        z.writestr("metadata.json", "{}")
    with pytest.raises(UnsafeModelError, match=what):
        inspect_model_file(evil)


# ------------------------------------------------------------------------------------------------ HTML report plots
@pytest.mark.parametrize("classes,long_label", [(1000, False), (3, True)], ids=["1000-classes", "20000-char-label"])
def test_confusion_plots_stay_bounded_images(classes, long_label):
    # the matrix was 0.45 inch per class: a 1000-class model's was a 40,000-pixel square, and one 20,000-character
    # label made the picture as wide; either raised MemoryError when the report was written, after the validation
    import base64
    import io

    import matplotlib
    import numpy as np
    from peakmem import peak_growth
    from PIL import Image

    from exporter.report.html import _confusion

    labels = [f"class_{i}" for i in range(classes)]
    if long_label:
        labels[0] = "x" * 20_000
    with peak_growth() as peak, matplotlib.rc_context({"text.parse_math": False}):
        url = _confusion(np.eye(classes, dtype=int).tolist(), labels, "Keras")
    png = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert max(png.size) <= 3000, png.size  # a few thousand pixels at most, whatever the labels
    assert peak.growth_bytes < 400 << 20


# ------------------------------------------------------------------------------------------------ names that are not UTF-8
def test_an_image_name_that_is_not_utf8_is_reported_not_a_crash(tmp_path, capsys, small_export):
    # Linux file names are bytes: b"\xff.png" reaches Python as "\udcff.png", which the HTML report could not encode:
    # exit 70 after the whole validation
    import os

    from exporter.validation.accumulate import KEEP_WORST

    images = tmp_path / "images"
    shutil.copytree(small_export[1], images)
    folders = sorted(p for p in images.iterdir() if p.is_dir())
    while sum(1 for p in images.rglob("*") if p.is_file()) > KEEP_WORST:  # every image is among the worst the report shows
        shutil.rmtree(folders.pop())
    first = folders[0]
    os.rename(next(first.iterdir()), os.path.join(os.fsencode(first), b"bad\xff\xfe.png"))
    html, report = tmp_path / "r.html", tmp_path / "r.json"
    proc = run_in_process(["validate", str(small_export[0]), "--images", str(images), "--html", str(html), "--json", str(report)], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "bad\\udcff\\udcfe.png" in html.read_text(encoding="utf-8")
    assert json.loads(report.read_text())["images"] == sum(1 for p in images.rglob("*") if p.is_file())


def test_a_model_name_that_is_not_utf8_reaches_metadata_and_manifests(tmp_path):
    # convert on b"m\xff.keras" ended in an internal error: the name went into ONNX / Core ML metadata (protobuf
    # strings must be UTF-8), and a manifest naming it could not be written
    import onnx
    from conftest import sample

    from exporter.packaging import write_json
    from exporter.preprocessing import Preprocessing
    from exporter.provenance import ModelInfo, coreml_metadata, onnx_metadata

    pre = Preprocessing.from_dict(json.loads(sample("mobilenet_v1_digits")["preprocessing"].read_text()))
    info = ModelInfo(name="m", labels=["a", "b"], preprocessing=pre, source_sha256="0" * 64, source_file="m\udcff.keras", author="\udcfe")
    for key, value in {**onnx_metadata(info, "onnx:fp32"), **coreml_metadata(info, "mlpackage:fp32")}.items():
        onnx.StringStringEntryProto(key=key, value=value).SerializeToString()  # raised on the surrogate
    assert info.source_file == "m\\udcff.keras"
    write_json(tmp_path / "manifest.json", {"source": {"path": "/models/m\udcff.keras"}})
    assert json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))["source"]["path"] == "/models/m\udcff.keras"


def test_golden_files_name_an_image_that_is_not_utf8_as_text(tmp_path, small_export):
    # with the name written as a JSON lone-surrogate escape, Swift's JSONDecoder refuses golden.json as a whole
    import os

    from exporter.xcode.golden import write_golden

    images = tmp_path / "images"
    (images / "0").mkdir(parents=True)
    shutil.copy(_image(small_export), os.path.join(os.fsencode(images / "0"), b"bad\xff.png"))
    write_golden(small_export[0], images, tmp_path / "golden")
    golden = json.loads((tmp_path / "golden" / "golden.json").read_text(encoding="utf-8"))
    json.dumps(golden, ensure_ascii=False).encode("utf-8")  # no lone surrogate left anywhere: raised before
    assert golden["images"][0]["source"] == "0/bad\\udcff.png"  # the name as text, its bad bytes escaped


# ------------------------------------------------------------------------------------------------ the manifest's model
def test_a_manifest_pointing_at_another_model_runs_none_of_its_code_even_trusted(tmp_path, small_export):
    # the manifest (untrusted) names the model to load; with --trust-code (the user trusts the model the export was
    # made from) a manifest pointing at another .keras ran that file's Lambda while Keras built it, and only then
    # did the SHA-256 check refuse the file
    import keras

    from exporter.errors import ModelLoadError
    from exporter.validation.parity import validate

    marker = tmp_path / "marker.txt"

    def writes(path: str):  # a Python lambda (saved as bytecode) that writes the marker whenever Keras builds or calls it
        return lambda x: (__import__("pathlib").Path(path).write_text("ran"), x)[1]

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(writes(str(marker)))(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x)).save(tmp_path / "other.keras")
    marker.unlink()
    export = _copy_export(small_export, tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["source"].update(path=str(tmp_path / "other.keras"), path_from_export=None)  # its recorded hash kept
    (export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="SHA-256 differs"):
        validate(export, small_export[1], trust_code=True)
    assert not marker.exists()


def test_onnx_external_data_in_a_fifo_is_one_line_and_never_opened(tmp_path, small_export):
    # predict built the onnxruntime session before it read the file's external data locations (validate did it the
    # other way round), and onnxruntime printed its own coloured multi-line error log before our one-line error
    import os

    import onnx
    from test_faults import run_cli

    model = onnx.load(str(next(small_export[0].glob("*.onnx"))))
    init = next(i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT and len(i.raw_data) > 1000)
    init.ClearField("raw_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    init.external_data.add(key="location", value="weights.bin")
    lone = tmp_path / "lone.onnx"  # no manifest next to it
    lone.write_bytes(model.SerializeToString())
    os.mkfifo(tmp_path / "weights.bin")
    proc = run_cli(["predict", str(lone), str(_image(small_export))], timeout=120)
    line = one_line_error(proc)
    assert proc.returncode == 5 and "weights.bin" in line and "regular file" in line, line
    assert proc.stderr.strip() == line, proc.stderr  # nothing but our line: no onnxruntime log
