"""Xcode integration: golden files (written, lossless, parse back, agree with Keras) and the generated Swift package
(model, labels, golden files, shared Swift sources, atomic and refusing what it cannot do). The Swift side is tested by
ios_harness/run_tests.sh, which also builds the generated package."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from exporter.capabilities import VARIANTS
from exporter.errors import ConfigError, DestinationError, ModelLoadError
from exporter.images import ImageItem, load_image
from exporter.packaging import sha256_of
from exporter.preprocessing import Preprocessing
from exporter.validation.tolerances import default_gate
from exporter.xcode import write_golden, write_xcode_package
from exporter.xcode.golden import as_rgb, choose_images, read_golden, variant_names
from exporter.xcode.package import SWIFT_SOURCES, check_package_name, swift_name

ROOT = Path(__file__).resolve().parents[1]
LABELS = ["ant", "bee", "cat"]
# BGR and center_crop: the golden PNGs must come out RGB, cropped exactly as the exporter's image path crops.
CONTRACT = {"input_size": [16, 16], "channel_order": "BGR", "scale": 0.02, "bias": [-1.0, -2.0, -3.0], "resize": "center_crop"}


def _keras_model(path: Path, seed: int = 1) -> Path:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model exported to fp16 .mlpackage and .mlmodel, and a labelled image folder of odd sizes and modes."""
    from exporter.api import ExportOptions, export

    root = tmp_path_factory.mktemp("xcode")
    model = _keras_model(root / "tiny_net.keras")
    images = root / "images"
    rng = np.random.default_rng(0)
    for label in LABELS:
        (images / label).mkdir(parents=True)
        for i in range(4):
            h, w = (20 + 7 * i, 31 - 3 * i)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / label / f"{i}.png")
    Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(images / "cat" / "gray.png")
    export_dir = root / "export"
    manifest = export(
        model, LABELS, export_dir, preprocessing=CONTRACT, options=ExportOptions(formats=("mlpackage", "mlmodel"), variants=("fp16",))
    )
    return {"root": root, "model": model, "images": images, "export": export_dir, "manifest": manifest}


def test_golden_files_parse_back_lossless_and_agree_with_keras(setup, tmp_path):
    from exporter.loading import load_model

    out = tmp_path / "golden"
    written = write_golden(setup["export"], setup["images"], out, count=7)
    golden = read_golden(out)
    assert golden == json.loads(json.dumps(written))
    assert golden["schema_version"] == 1
    assert golden["labels"] == LABELS
    pre = Preprocessing.from_dict(golden["preprocessing"])
    assert golden["preprocessing"] == setup["manifest"]["preprocessing"]
    assert golden["source"]["sha256"] == setup["manifest"]["source"]["sha256"]
    assert {a["path"] for a in golden["artifacts"]} == {a["path"] for a in setup["manifest"]["artifacts"]}
    assert golden["image_format"] == {"type": "png", "color": "RGB", "bit_depth": 8, "height": 16, "width": 16}
    assert set(golden["tolerances"]) == set(variant_names())
    for name, tol in golden["tolerances"].items():  # keyed by name: the gate of its first format, ML Program first
        gate = default_gate(next(v.format for v in VARIANTS if v.name == name), name)
        assert tol == {"max_abs_prob": gate.max_abs_prob, "min_top1": gate.min_top1}
    images = golden["images"]
    assert len(images) == 7 and sorted({img["label"] for img in images}) == LABELS
    assert len({img["file"] for img in images}) == 7
    model = load_model(setup["model"]).model
    for img in images:
        src = setup["images"] / img["source"]
        png = Image.open(out / img["file"])
        assert png.format == "PNG" and png.mode == "RGB" and png.size == (16, 16)
        pixels = load_image(src, pre)  # BGR, centre-cropped
        np.testing.assert_array_equal(np.asarray(png), pixels[..., ::-1])  # lossless, RGB
        probs = np.asarray(model(pre.normalize(pixels[None]), training=False))[0]
        np.testing.assert_allclose(img["probabilities"], probs, atol=1e-6)
        assert abs(sum(img["probabilities"]) - 1) < 1e-5
        assert img["keras_top_index"] == int(np.argmax(img["probabilities"]))
        assert img["keras_top_label"] == LABELS[img["keras_top_index"]]
        assert img["label"] == Path(img["source"]).parts[0]


def test_all_images_when_no_count(setup, tmp_path):
    golden = write_golden(setup["export"], setup["images"], tmp_path / "g")
    assert len(golden["images"]) == 13


def test_golden_refuses_another_model_and_bad_counts_and_leaves_nothing(setup, tmp_path):
    other = _keras_model(tmp_path / "other.keras", seed=2)
    with pytest.raises(ModelLoadError, match="not the model this export was made from"):
        write_golden(setup["export"], setup["images"], tmp_path / "g", model_path=other)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="golden image count"):
            write_golden(setup["export"], setup["images"], tmp_path / "g", count=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.keras"]


def test_image_choice_is_seeded_and_takes_every_label_in_turn():
    items = [ImageItem(Path(f"{label}/{i}.png"), label) for label in "abc" for i in range(10)]
    items += [ImageItem(Path("loose.png"), None)]
    first = choose_images(items, 8)
    assert first == choose_images(items, 8) and first == sorted(first, key=lambda it: it.path)
    counts = {label: sum(it.label == label for it in first) for label in ("a", "b", "c", None)}
    assert counts == {"a": 3, "b": 2, "c": 2, None: 1}  # one round each, then another until 8
    assert choose_images(items, 100) == items


@pytest.mark.parametrize("order", ["RGB", "BGR", "L"])
def test_png_pixels_are_rgb_for_every_channel_order(order):
    pre = Preprocessing((8, 8), channel_order=order, scale=1.0, bias=0.0)
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    gray = rgb[..., :1]
    stored = {"RGB": rgb, "BGR": rgb[..., ::-1], "L": gray}[order]
    want = {"RGB": rgb, "BGR": rgb, "L": np.repeat(gray, 3, axis=2)}[order]
    np.testing.assert_array_equal(as_rgb(stored, pre), want)


def test_xcode_package_holds_model_labels_golden_files_and_swift_sources(setup, tmp_path):
    out = write_xcode_package(setup["export"], tmp_path / "pkg", images_folder=setup["images"], golden_count=5)
    assert out == (tmp_path / "pkg").absolute()
    name = "TinyNet"
    package_swift = (out / "Package.swift").read_text()
    assert package_swift.startswith("// swift-tools-version:5.9")
    # an fp16 ML Program needs iOS 15 (coremltools' deployment target for it), so the package starts there
    assert "platforms: [.iOS(.v15), .macOS(.v12), .tvOS(.v15), .watchOS(.v8)]" in package_swift
    assert f'.library(name: "{name}", targets: ["{name}"])' in package_swift
    # an .mlpackage is copied: command-line SwiftPM's .process flattens the files inside it (run_tests.sh builds this)
    assert f'.copy("Resources/{name}Model.mlpackage")' in package_swift and '.copy("Golden")' in package_swift
    resources = out / "Sources" / name / "Resources"
    art = next(a for a in setup["manifest"]["artifacts"] if a["format"] == "mlpackage")
    assert sha256_of(resources / f"{name}Model.mlpackage") == art["sha256"]
    assert (resources / "labels.txt").read_text() == "ant\nbee\ncat\n"
    info = json.loads((resources / "model.json").read_text())
    assert info["variant"] == "fp16" and info["format"] == "mlpackage" and info["sha256"] == art["sha256"]
    assert info["preprocessing"]["resize"] == "center_crop" and info["model_file"] == f"{name}Model.mlpackage"
    golden_dir = out / "Tests" / f"{name}Tests" / "Golden"
    golden = read_golden(golden_dir)
    assert len(golden["images"]) == 5 and all((golden_dir / img["file"]).is_file() for img in golden["images"])
    library = (out / "Sources" / name / f"{name}.swift").read_text()
    assert f"public final class {name}Classifier" in library and "#if canImport(CoreML)" in library
    assert "__" not in library.replace("__NAME__", "")  # no placeholder left
    tests = (out / "Tests" / f"{name}Tests" / f"{name}Tests.swift").read_text()
    assert "XCTSkip(" in tests and "testParityThroughVision" in tests
    assert (out / "Sources" / name / "ImageClassifier.swift").read_bytes() == (SWIFT_SOURCES / "ImageClassifier.swift").read_bytes()
    for file in ("GoldenFile.swift", "Parity.swift"):
        assert (out / "Tests" / f"{name}Tests" / file).read_bytes() == (SWIFT_SOURCES / file).read_bytes()
    assert ".centerCrop" in (out / "README.md").read_text()


def test_xcode_package_of_the_neuralnetwork_file_with_a_chosen_name(setup, tmp_path):
    out = write_xcode_package(
        setup["export"], tmp_path / "pkg", images_folder=setup["images"], variant="mlmodel:fp16", package_name="Bugs", golden_count=2
    )
    assert '.process("Resources/BugsModel.mlmodel")' in (out / "Package.swift").read_text()
    assert (out / "Sources" / "Bugs" / "Resources" / "BugsModel.mlmodel").is_file()
    assert json.loads((out / "Sources" / "Bugs" / "Resources" / "model.json").read_text())["format"] == "mlmodel"


@pytest.mark.parametrize(
    ("target", "tools", "ios", "macos"),
    [
        ("iOS13", "5.9", "v13", "v10_15"),
        ("iOS15", "5.9", "v15", "v12"),
        ("iOS16", "5.9", "v16", "v13"),
        ("iOS17", "5.9", "v17", "v14"),
        ("iOS18", "6.0", "v18", "v15"),
    ],
)
def test_package_platforms_follow_the_models_deployment_target(target, tools, ios, macos):
    """palette4 needs iOS 18 and must not build for iOS 16; an fp16 file runs from iOS 15 and must not exclude it."""
    from exporter.xcode.package import platforms_for

    got_tools, platforms = platforms_for(target)
    assert got_tools == tools and f".iOS(.{ios})" in platforms and f".macOS(.{macos})" in platforms
    with pytest.raises(ConfigError, match="minimum deployment target"):
        platforms_for("opset 17")


def test_xcode_package_refusals_leave_nothing_behind(setup, tmp_path):
    images = setup["images"]
    with pytest.raises(ConfigError, match=r"no Core ML artifact for variant 'int8'; available: mlpackage:fp16"):
        write_xcode_package(setup["export"], tmp_path / "a", images_folder=images, variant="int8")
    with pytest.raises(ConfigError, match="must be a Swift identifier"):
        write_xcode_package(setup["export"], tmp_path / "a", images_folder=images, package_name="my-model")
    with pytest.raises(ConfigError, match="golden image count"):
        write_xcode_package(setup["export"], tmp_path / "a", images_folder=images, golden_count=0)
    tampered = tmp_path / "export"
    shutil.copytree(setup["export"], tampered)
    weights = next((tampered / "tiny_net_fp16.mlpackage").rglob("weight.bin"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(DestinationError, match="changed since the export"):
        write_xcode_package(tampered, tmp_path / "a", images_folder=images)
    with pytest.raises(ModelLoadError):  # the golden step fails inside the staging folder: no package appears
        write_xcode_package(setup["export"], tmp_path / "a", images_folder=images, model_path=tmp_path / "none.keras")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    (tmp_path / "exists").mkdir()
    with pytest.raises(DestinationError, match="already exists"):
        write_xcode_package(setup["export"], tmp_path / "exists", images_folder=images)


def test_package_names():
    assert swift_name("squeezenet_digits") == "SqueezenetDigits"
    assert swift_name("mobileNet-v2") == "MobileNetV2"
    assert swift_name("3d_net") == "Model3dNet"
    for bad in ("my-model", "9lives", "", "Vision", "class"):
        with pytest.raises(ConfigError):
            check_package_name(bad)


def test_swift_sources_in_ios_harness_are_the_ones_packages_get():
    """One source: ios_harness/Sources holds symbolic links to exporter/xcode/swift (the package data a wheel ships
    as real files), so the harness builds and tests exactly what generated packages get."""
    harness = ROOT / "ios_harness" / "Sources"
    pairs = {"GoldenFile.swift": "GoldenParity", "Parity.swift": "GoldenParity", "ImageClassifier.swift": "CoreMLHarness"}
    assert sorted(p.name for p in SWIFT_SOURCES.glob("*.swift")) == sorted(pairs)
    for file, target in pairs.items():
        link = harness / target / file
        assert link.is_symlink(), f"{link} must be a link to exporter/xcode/swift/{file}, not a copy"
        assert link.resolve() == (SWIFT_SOURCES / file).resolve()
        assert not (SWIFT_SOURCES / file).is_symlink()  # the packaged side is the real file


def test_cli_command_writes_the_package(setup, tmp_path, capsys):
    from exporter.cli import _parser
    from exporter.xcode import cli

    args = _parser().parse_args(
        [
            "xcode",
            str(setup["export"]),
            "--images",
            str(setup["images"]),
            "--out",
            str(tmp_path / "pkg"),
            "--name",
            "Bugs",
            "--golden-count",
            "3",
        ]
    )
    assert args.command == cli.COMMAND
    assert cli.run(args) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "pkg").absolute())
    assert len(read_golden(tmp_path / "pkg" / "Tests" / "BugsTests" / "Golden")["images"]) == 3


def test_cli_module_imports_no_heavy_library():
    code = (
        "import sys, exporter.xcode.cli, exporter.xcode; "
        "print(any(m in sys.modules for m in ('tensorflow', 'keras', 'coremltools', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_sample_model_package_has_confident_golden_answers(tmp_path):
    """The SqueezeNet sample end to end: export, package with the default 100 golden images; Keras answers the
    held-out digits as the folder says on nearly all of them, so the golden set is a meaningful parity target."""
    from exporter.api import ExportOptions, export

    sample = ROOT / "sample_models" / "squeezenet_digits"
    heldout = ROOT / "sample_models" / "heldout" / "digits"
    export(
        sample / "model.keras",
        sample / "labels.txt",
        tmp_path / "export",
        options=ExportOptions(formats=("mlpackage",), variants=("fp16",)),
    )
    out = write_xcode_package(tmp_path / "export", tmp_path / "pkg", images_folder=heldout)
    golden = read_golden(out / "Tests" / "SqueezenetDigitsTests" / "Golden")
    assert len(golden["images"]) == 100
    assert {img["label"] for img in golden["images"]} == set(golden["labels"])
    agree = np.mean([img["keras_top_label"] == img["label"] for img in golden["images"]])
    assert agree >= 0.9
    assert golden["preprocessing"]["in_model"] is True  # detected from the model's Rescaling layer


def test_read_golden_reads_only_a_bounded_regular_file(tmp_path):
    """read_golden read golden.json whole with read_text: a golden.json that is a FIFO hung, a link to /dev/zero ran
    until memory was gone, and JSON nested 100,000 deep raised RecursionError (hostile6's leftover). It now reads a
    regular file within the file-size budget and parses it safely; each is one DestinationError naming the file."""
    import os

    from test_hostile import _in_thread

    from exporter.errors import DestinationError
    from exporter.xcode.golden import GOLDEN_NAME

    cases = {
        "fifo": lambda p: os.mkfifo(p),
        "zero": lambda p: p.symlink_to("/dev/zero"),
        "deep": lambda p: p.write_text("[" * 100_000 + "]" * 100_000),
    }
    for name, make in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        make(folder / GOLDEN_NAME)
        result = _in_thread(lambda folder=folder: read_golden(folder))
        assert isinstance(result.get("error"), DestinationError), (name, result)
        assert GOLDEN_NAME in str(result["error"])
    with pytest.raises(DestinationError, match="no golden.json"):
        read_golden(tmp_path)
