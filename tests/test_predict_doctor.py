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


def test_predict_runs_a_core_ml_classifier_made_elsewhere_from_its_own_image_input(tmp_path):
    """A Core ML classifier not written by `exporter convert` (coremltools, Create ML, a model gallery) embeds no
    exporter contract, and predict refused it ('the file embeds no preprocessing contract'), although the executor
    runs it and its image input holds its own normalisation. It now runs from the file's own input size, the image
    fitted as Vision does by default (centre crop), and gives the same answers as the exporter's own copy of the
    file on square images; a foreign ONNX file (whose input says nothing of its normalisation) is still refused."""
    import coremltools as ct

    from exporter.errors import ConfigError

    digits = sample("squeezenet_digits")
    out = tmp_path / "export"
    options = ExportOptions(formats="mlmodel", variants=("fp32",))
    export(digits["model"], digits["labels"], out, preprocessing=digits["preprocessing"], options=options)
    ours = next(out.glob("*.mlmodel"))
    spec = ct.utils.load_spec(str(ours))
    for key in [k for k in spec.description.metadata.userDefined if k.startswith("exporter.")]:
        del spec.description.metadata.userDefined[key]
    foreign = tmp_path / "elsewhere" / "classifier.mlmodel"
    foreign.parent.mkdir()
    ct.utils.save_spec(spec, str(foreign))
    from PIL import Image

    def is_square(path) -> bool:
        with Image.open(path) as im:
            return im.width == im.height

    square = [p for p in sorted(digits["heldout"].rglob("*.png"))[::7] if is_square(p)]
    images = square[:6]  # a centre crop of a square image is the whole image: the two contracts then agree exactly
    assert len(images) == 6

    mine = predict(ours, images, top_k=3)["predictions"]
    theirs = predict(foreign, images, top_k=3)["predictions"]
    assert len(theirs) == len(images)
    for a, b in zip(mine, theirs, strict=True):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert abs(a["top"][0]["probability"] - b["top"][0]["probability"]) < 1e-5
    assert "no exporter contract" in theirs[0]["engine"]["contract"] and "centre-cropped" in theirs[0]["engine"]["contract"]

    from onnx import helper

    bare = tmp_path / "elsewhere" / "bare.onnx"
    x, y = helper.make_tensor_value_info("x", 1, [1, 3]), helper.make_tensor_value_info("y", 1, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    bare.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ConfigError, match="ONNX file embeds no preprocessing contract"):
        predict(bare, images[:1])
