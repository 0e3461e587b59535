"""The CLI is thin over the Python API: every option of every command reaches an API parameter of the same name
(exporter/arguments.py), every ExportOptions field has an option, and nothing is dropped on the way."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from exporter import api
from exporter.arguments import api_arguments, parameter_names
from exporter.cli import _parser
from exporter.errors import ConfigError
from exporter.predict import predict
from exporter.validation.tolerances import Gate

CONVERT = [
    "convert", "m.keras", "--labels", "l.txt", "--out", "o", "--preprocessing", "tf", "--add-softmax", "--output", "probs",
    "--formats", "onnx", "--variants", "fp32", "fp16", "--calibration-images", "cal", "--calibration-count", "7",
    "--opset", "15", "--float-input", "--overwrite", "--trust-code", "--name", "n", "--author", "a", "--license", "L",
    "--model-version", "3", "--description", "d", "--quantize", "auto", "--images", "held", "-v",
    "--max-accuracy-drop", "2.5", "--min-target", "iOS16", "--gate", "fp16:min_top1=0.9",
]  # fmt: skip


def test_convert_sets_every_export_option_by_name():
    option_args, export_args = api_arguments(_parser().parse_args(CONVERT), api.ExportOptions, api.export)
    options = api.ExportOptions(**option_args)
    # every field a user can set has a command-line option (none left at its default by the full command above)
    defaults = api.ExportOptions()
    unset = [f.name for f in dataclasses.fields(options) if f.init and getattr(options, f.name) == getattr(defaults, f.name)]
    assert unset == []
    assert options.formats == ("onnx",) and options.variants == ("fp32", "fp16")
    assert options.onnx_raw_input is False  # --float-input
    assert (options.version, options.validation_images, options.calibration_count) == ("3", Path("held"), 7)
    assert (options.max_accuracy_drop, options.min_target) == (2.5, "iOS16")
    assert options.gates == {"fp16": Gate(min_top1=0.9)} and options.output == "probs"
    assert export_args == {"model_path": "m.keras", "labels": "l.txt", "out": "o", "preprocessing": "tf", "verbose": True}


def test_validate_xcode_and_predict_reach_their_api_parameters():
    p = _parser()
    args = p.parse_args(
        ["validate", "e", "--images", "i", "--model", "k.keras", "--gate", "int8:min_top1=0.9", "--gate", "onnx:fp16:max_abs_prob=0.01"]
        + ["--batch-size", "4", "--trust-code", "--json", "r.json", "--html", "r.html"]
    )
    (kwargs,) = api_arguments(args, api.validate)
    assert kwargs["gates"] == {"int8": Gate(min_top1=0.9), "onnx:fp16": Gate(max_abs_prob=0.01)}
    assert {k: kwargs[k] for k in ("export_dir", "images", "model_path", "batch_size", "trust_code")} == {
        "export_dir": "e",
        "images": "i",
        "model_path": "k.keras",
        "batch_size": 4,
        "trust_code": True,
    }
    args = p.parse_args(["xcode", "e", "--images", "i", "--out", "o", "--variant", "int8", "--name", "N", "--golden-count", "3"])
    (kwargs,) = api_arguments(args, api.xcode)
    assert set(kwargs) == set(parameter_names(api.xcode))  # every parameter of api.xcode has its option
    (kwargs,) = api_arguments(p.parse_args(["predict", "e", "a.png", "b.png", "--top-k", "2"]), predict)
    assert kwargs == {"target": "e", "images": ["a.png", "b.png"], "top_k": 2, "verbose": False}


def test_an_option_no_parameter_takes_is_a_bug_not_silence():
    with pytest.raises(TypeError, match="stray"):
        api_arguments(argparse.Namespace(command="x", export_dir="e", images="i", stray=1), api.validate)


def test_bad_gate_is_a_config_error_naming_it():
    with pytest.raises(ConfigError, match="fp8"):
        _parser().parse_args(["validate", "e", "--images", "i", "--gate", "fp8:min_top1=0.9"])
