"""README's Python API block run as written, end to end (export, validate, predict, xcode) in a folder holding what
it names; in its own file so that tests/test_ux_5.py stays well under 90 s (this one alone takes 40-70 s here).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_ux_5 import _check_documented, _readme_python_blocks


@pytest.mark.slow
def test_readme_python_example_runs_as_written(tmp_path):
    """README's Python API block, run as written in a folder holding what it names: model.keras, labels.txt and
    preprocessing.json (the MobileNet v1 sample), heldout/ (100 of its held-out digits: 64 calibrate int8-static,
    36 are left to judge) and photo.jpg. It used to read ``report.passed`` after a validate that raises on any
    failure, and its second ``exporter.xcode`` call in the same process would have met the subpackage."""
    import json
    import shutil

    from conftest import sample
    from PIL import Image

    (block,) = _readme_python_blocks()
    s = sample("mobilenet_v1_digits")
    for name in ("model", "labels", "preprocessing"):
        shutil.copy(s[name], tmp_path / s[name].name)
    for label_dir in sorted(p for p in s["heldout"].iterdir() if p.is_dir()):
        (tmp_path / "heldout" / label_dir.name).mkdir(parents=True)
        for p in sorted(label_dir.iterdir())[:10]:
            shutil.copy(p, tmp_path / "heldout" / label_dir.name / p.name)
    first = sorted((tmp_path / "heldout").rglob("*.png"))[0]
    Image.open(first).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    # the block's last expressions are what a notebook would show: print them, and what the test checks
    code = block + (
        "\nimport json\n"
        "print(json.dumps({'passed': report.passed, 'engine': report.artifact('onnx', 'fp16').engine['name'],"
        " 'left_out': report['calibration_images_left_out'], 'images': report['images'],"
        " 'int8': str(manifest.artifact('mlpackage', 'int8').path),"
        " 'report': json.dumps(report), 'predictions': json.dumps(exporter.predict('out/my_model', ['photo.jpg'], top_k=3)),"
        " 'package': sorted(p.name for p in (exporter.xcode('out/my_model', 'Again', images='heldout/', golden_count=2)).iterdir())}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = json.loads(proc.stdout.strip().splitlines()[-1])
    assert shown["engine"] == "onnxruntime" and shown["left_out"] == 64 and shown["images"] == 36
    assert shown["int8"] == str(tmp_path / "out" / "my_model" / "model_int8.mlpackage")
    predictions = json.loads(shown["predictions"])["predictions"]
    assert len(predictions) == 4 and all(len(p["top"]) == 3 for p in predictions) and "Package.swift" in shown["package"]
    assert (tmp_path / "MyModelPackage" / "Package.swift").is_file()
    # the package README tells an iOS developer the model's input, labels and the Vision request (README: "Xcode")
    package_readme = (tmp_path / "MyModelPackage" / "README.md").read_text()
    assert "`image`: a 32 × 32 pixel image (width × height; RGB" in package_readme and "the 10 labels" in package_readme
    assert "request.imageCropAndScaleOption = .scaleFill" in package_readme
    assert "VNCoreMLModel(for: ModelClassifier().model)" in package_readme  # module: the model name, "model"
    assert "Xcode generates no class for it" in package_readme  # an .mlpackage is copied: no generated class
    import coremltools as ct

    spec = ct.utils.load_spec(str(tmp_path / "out" / "my_model" / "model_fp16.mlpackage"))
    assert (spec.description.predictedFeatureName, spec.description.predictedProbabilitiesName) == ("classLabel", "classLabel_probs")
    # what --json writes for these, every key of it documented in SCHEMA.md
    manifest = json.loads((tmp_path / "out" / "my_model" / "manifest.json").read_text())
    assert "calibration" in manifest
    _check_documented("manifest.json", manifest, ("artifacts", "inference_model", "inference_model.head", "calibration"))
    report = json.loads(shown["report"])
    _check_documented("Parity report", report, ("artifacts", "artifacts.engine", "keras.against_labels", "environment"))
    _check_documented("Predictions", json.loads(shown["predictions"]), ("predictions", "predictions.top"))
