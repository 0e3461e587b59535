"""Per-artifact isolation in validation: off macOS, a Core ML file holding an operation the executor does not implement
is reported "not run" with the operation and the file named, every other artifact is still judged, and the exit code
(8) says that something could not be checked."""

from __future__ import annotations

import json
import platform
import shutil

import pytest
from conftest import rehash_artifacts, sample

from exporter.api import ExportOptions, export
from exporter.cli import main
from exporter.errors import NotCheckedError
from exporter.validation.parity import validate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(platform.system() == "Darwin", reason="on macOS validation runs real Core ML, which runs every op"),
]
NAME = "squeezenet_digits"
UNKNOWN_OP = "not_a_mil_op"


@pytest.fixture(scope="module")
def export_with_unknown_op(tmp_path_factory):
    """An export of a trained sample model in three formats whose .mlpackage has one op renamed to an op type no
    executor knows (its program protobuf patched in place)."""
    from coremltools.proto import Model_pb2

    s = sample(NAME)
    out = tmp_path_factory.mktemp("isolation") / "export"
    manifest = export(
        s["model"],
        s["labels"],
        out,
        preprocessing=s["preprocessing"],
        options=ExportOptions(formats=("mlpackage", "mlmodel", "onnx"), variants=("fp32",)),
    )
    package = out / next(a["path"] for a in manifest["artifacts"] if a["format"] == "mlpackage")
    program = next(package.rglob("model.mlmodel"))
    spec = Model_pb2.Model()
    spec.ParseFromString(program.read_bytes())
    block = next(iter(spec.mlProgram.functions["main"].block_specializations.values()))
    renamed = next(op for op in block.operations if op.type == "relu")
    renamed.type = UNKNOWN_OP
    program.write_bytes(spec.SerializeToString())
    rehash_artifacts(out)  # the manifest records the patched file, so validate runs it rather than refusing a changed file
    return out, package.name


def test_an_artifact_with_an_unknown_op_is_not_run_and_the_others_are_judged(export_with_unknown_op, tmp_path):
    out, package = export_with_unknown_op
    with pytest.raises(NotCheckedError) as info:
        validate(out, sample(NAME)["heldout"])
    message = str(info.value)
    assert UNKNOWN_OP in message and package in message
    rows = {row["format"]: row for row in info.value.report["artifacts"]}
    assert rows["mlpackage"]["status"] == "not run"
    assert UNKNOWN_OP in rows["mlpackage"]["reason"] and package in rows["mlpackage"]["reason"]
    assert "max_abs_prob" not in rows["mlpackage"]  # no verdict on what did not run
    for fmt in ("mlmodel", "onnx"):  # still validated, against their own gates
        assert rows[fmt]["status"] == "passed" and rows[fmt]["images"] > 0 and rows[fmt]["max_abs_prob"] <= 1e-5
    assert info.value.report["not_run"] == [rows["mlpackage"]["path"]] and info.value.report["passed"]


def test_the_cli_says_what_could_not_be_checked_and_exits_8(export_with_unknown_op, tmp_path, capsys):
    out, package = export_with_unknown_op
    with pytest.raises(SystemExit) as info:
        main(["validate", str(out), "--images", str(sample(NAME)["heldout"]), "--json", str(tmp_path / "r.json")])
    assert info.value.code == NotCheckedError.exit_code == 8
    captured = capsys.readouterr()
    assert "NOT RUN" in captured.out and UNKNOWN_OP in captured.err and package in captured.err
    report = json.loads((tmp_path / "r.json").read_text())
    assert [row["status"] for row in report["artifacts"]].count("passed") == 2


def test_a_failing_artifact_still_fails_with_exit_7_and_the_unchecked_one_named(export_with_unknown_op, tmp_path, capsys):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    out, package = export_with_unknown_op
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    path = next(broken.glob("*.onnx"))
    model = onnx.load(path)
    weights = [
        (i, numpy_helper.to_array(init)) for i, init in enumerate(model.graph.initializer) if init.data_type == onnx.TensorProto.FLOAT
    ]
    i, largest = max(weights, key=lambda item: item[1].size)  # a weight flipped in sign: the ONNX file now disagrees
    model.graph.initializer[i].CopyFrom(numpy_helper.from_array((-largest).astype(np.float32), model.graph.initializer[i].name))
    onnx.save(model, path)
    rehash_artifacts(broken)  # parity, not the hash check, must catch the flipped weight
    with pytest.raises(SystemExit) as info:
        main(["validate", str(broken), "--images", str(sample(NAME)["heldout"])])
    assert info.value.code == 7
    err = capsys.readouterr().err
    assert path.name in err and UNKNOWN_OP in err and package in err
