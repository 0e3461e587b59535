"""`exporter predict` gives the labels Keras gives, for an export folder and for one file taken out of it;
`exporter doctor` says what this machine can run."""

from __future__ import annotations

import json
import platform
import shutil

import numpy as np
import pytest
from conftest import sample

from exporter.api import ExportOptions, export
from exporter.cli import main
from exporter.doctor import doctor, format_doctor
from exporter.images import load_image
from exporter.loading import load_model
from exporter.predict import format_predictions, predict
from exporter.preprocessing import Preprocessing

S = sample("transfer_photos")  # colour photographs, five classes


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("predict") / "export"
    export(S["model"], S["labels"], out, preprocessing=S["preprocessing"], options=ExportOptions(formats="onnx", variants=("fp32", "fp16")))
    return out


@pytest.mark.slow
def test_predict_matches_keras_for_an_export_and_for_a_lone_file(onnx_export, tmp_path, capsys):
    images = sorted(S["heldout"].rglob("*.png"))[::40][:4] or sorted(S["heldout"].rglob("*.*"))[::40][:4]
    labels = S["labels"].read_text().splitlines()
    pre = Preprocessing.from_file(S["preprocessing"])
    keras = load_model(S["model"]).model
    pixels = np.stack([load_image(p, pre) for p in images])
    expected = np.asarray(keras(pre.normalize(pixels), training=False))  # the reference, computed independently

    result = predict(onnx_export, images, top_k=3)
    rows = result["predictions"]
    assert len(rows) == 2 * len(images)  # every image under both artifacts
    for row in rows:
        i = [str(p) for p in images].index(row["image"])
        assert len(row["top"]) == 3 and row["engine"]["name"] == "onnxruntime"
        assert row["top"][0]["label"] == labels[int(expected[i].argmax())]
        assert abs(row["top"][0]["probability"] - float(expected[i].max())) < 2e-2  # fp16's gate
        assert [t["probability"] for t in row["top"]] == sorted((t["probability"] for t in row["top"]), reverse=True)

    lone = tmp_path / "lone.onnx"  # no manifest beside it: labels and preprocessing come from the file itself
    shutil.copyfile(onnx_export / "transfer_photos_fp32.onnx", lone)
    alone = predict(lone, images[:1], top_k=1)["predictions"][0]
    assert alone["top"][0]["label"] == labels[int(expected[0].argmax())]

    text = format_predictions(result)
    assert str(images[0]) in text and "onnxruntime" in text
    with pytest.raises(SystemExit) as info:
        main(["predict", str(lone), str(images[0]), "--top-k", "2", "--json", str(tmp_path / "p.json")])
    assert info.value.code == 0
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"][0]["top"]) == 2
    assert "lone.onnx" in capsys.readouterr().out


def test_doctor_reports_what_can_run_here():
    found = doctor()
    can = found["can_run"]
    if platform.system() != "Darwin":
        assert can["coreml"]["available"] is False and "macOS" in can["coreml"]["why"]
    assert can["linux_coreml_executor"]["available"] is True
    assert can["onnxruntime"]["available"] and "CPUExecutionProvider" in can["onnxruntime"]["providers"]
    assert can["swift"]["available"] is (shutil.which("swift") is not None)
    text = format_doctor(found)
    assert "Core ML predictions" in text and "onnxruntime" in text and "Swift toolchain" in text
