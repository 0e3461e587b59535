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

