"""The capability table (exporter/capabilities.py) and what reads it: lookups that list the valid keys, gates keyed by
format and variant, the CLI's choices, README's table, chained errors and the upstream adapter. No conversion runs
here except where a test says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from exporter import capabilities as caps
from exporter.cli import _parser
from exporter.errors import ConfigError, ConversionError, ExporterError, UpstreamAPIError, translating
from exporter.validation.tolerances import (
    FP16_MAX_ABS_PROB,
    FP32_MAX_ABS_PROB,
    Gate,
    check_gate_names,
    default_gate,
    gate_for,
    parse_gate,
)

ROOT = Path(__file__).resolve().parents[1]


def test_every_format_function_resolves_to_a_callable():
    for fmt in caps.FORMATS.values():
        for ref in (fmt.convert, fmt.finish, fmt.save, fmt.smoke_check, fmt.target, fmt.runner):
            assert callable(ref.resolve()), f"{fmt.name}: {ref}"


def test_every_variant_is_declared_once_with_a_known_format_and_a_unique_file_name():
    keys = [v.key for v in caps.VARIANTS]
    assert len(keys) == len(set(keys))
    assert {v.format for v in caps.VARIANTS} == set(caps.FORMATS)
    names = [v.filename("m") for v in caps.VARIANTS]
    assert len(names) == len(set(names))
    for v in caps.VARIANTS:
        assert v.filename("m").endswith(caps.FORMATS[v.format].suffix)
        assert 1 <= v.weight_bits <= 32
        assert v.transform is not None or v.weight_bits in (16, 32)


def test_file_names_follow_the_documented_pattern():
    assert caps.variant("mlpackage", "fp16").filename("squeezenet") == "squeezenet_fp16.mlpackage"
    assert caps.variant("mlmodel", "int8").filename("squeezenet") == "squeezenet_nn_int8.mlmodel"
    assert caps.variant("onnx", "int8-static").filename("squeezenet") == "squeezenet_int8_static.onnx"


def test_unknown_keys_raise_a_config_error_listing_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown format 'tflite'.*'mlpackage', 'mlmodel', 'onnx'"):
        caps.format_of("tflite")
    with pytest.raises(ConfigError, match=r"unknown variant onnx:palette4.*'int8-dynamic'"):
        caps.variant("onnx", "palette4")
    with pytest.raises(ConfigError, match=r"unknown variant onnx:palette4"):
        default_gate("onnx", "palette4")  # no silent 0.98 for a name the table does not know
    with pytest.raises(ConfigError, match="valid variants are"):
        caps.select(["onnx"], ["palette4"])


def test_gates_are_keyed_by_format_and_variant():
    assert default_gate("mlpackage", "fp32") == Gate(max_abs_prob=FP32_MAX_ABS_PROB)
    assert default_gate("onnx", "fp16").max_abs_prob == FP16_MAX_ABS_PROB
    loose = Gate(min_top1=0.5)
    strict = Gate(min_top1=0.99)
    overrides = {"int8": loose, "mlmodel:int8": strict}
    assert gate_for("mlmodel", "int8", overrides) is strict  # the format's own override wins
    assert gate_for("mlpackage", "int8", overrides) is loose  # a bare name applies to every format
    assert gate_for("onnx", "fp32", overrides) == default_gate("onnx", "fp32")


def test_parse_gate_accepts_format_variant_and_variant_alone():
    assert parse_gate("int8:min_top1=0.9") == ("int8", Gate(min_top1=0.9))
    assert parse_gate("onnx:int8-static:max_abs_prob=0.3,min_top1=0.95") == ("onnx:int8-static", Gate(max_abs_prob=0.3, min_top1=0.95))
    for bad, message in [
        ("tflite:fp32:min_top1=0.9", "unknown format 'tflite'"),
        ("onnx:palette4:min_top1=0.9", "unknown variant onnx:palette4"),
        ("fp8:min_top1=0.9", "unknown variant 'fp8'"),
        ("a:b:c:min_top1=1", "gate must look like"),
        ("fp32:min_top1=x", "must be a number"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_gate(bad)
    with pytest.raises(ConfigError, match="unknown variant 'fp8'"):
        check_gate_names({"fp8": Gate(min_top1=0.5)})


def test_cli_choices_come_from_the_table():
    sub = next(a for a in _parser()._actions if a.dest == "command").choices["convert"]
    choices = {a.dest: a.choices for a in sub._actions}
    assert list(choices["formats"]) == list(caps.FORMATS)
    assert sorted(choices["variants"]) == sorted(caps.variant_names())


def test_readme_table_is_the_one_the_code_writes():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert caps.with_readme_table(readme) == readme, "run `python -m exporter.capabilities README.md`"
    for v in caps.VARIANTS:  # and it names every variant (the table could not be empty and still pass)
        assert f"`{v.filename('NAME')}`" in readme


def test_golden_tolerances_use_the_core_ml_gate_of_each_name():
    from exporter.xcode.golden import tolerances

    out = tolerances()
    assert list(out) == caps.variant_names()
    for v in caps.VARIANTS:
        if caps.FORMATS[v.format].family == "coreml":  # golden.json keys gates by name; Core ML files share them
            assert out[v.name] == v.gate.to_dict()


def test_translating_keeps_the_cause_and_cuts_the_first_line():
    long = "x" * 5000
    with pytest.raises(ConversionError) as info, translating(ConversionError, "library failed", path="m.keras"):
        raise ValueError(f"{long}\nsecond line")
    err = info.value
    assert isinstance(err.__cause__, ValueError)
    assert "second line" not in str(err) and str(err).startswith("m.keras: library failed: xxx")
    assert len(str(err)) < 500
    with pytest.raises(ConfigError), translating(ConversionError, "never"):  # our own errors pass through
        raise ConfigError("already typed")
    with pytest.raises(KeyboardInterrupt), translating(ConversionError, "never"):
        raise KeyboardInterrupt


def test_upstream_adapter_fails_loudly_when_an_internal_disappears():
    from exporter import upstream

    class Renamed:  # stands for a library object whose private attribute was renamed
        pass

    with pytest.raises(UpstreamAPIError, match=r"no Renamed\._mil_program"):
        upstream.mil_program(Renamed())
    with pytest.raises(UpstreamAPIError, match=r"no Renamed\._inbound_nodes"):
        upstream.inbound_nodes(Renamed())
    assert issubclass(UpstreamAPIError, ExporterError) and UpstreamAPIError.exit_code == 70


def test_upstream_adapter_reads_the_installed_libraries():
    """The pinned coremltools and Keras still have what the adapter reads."""
    import keras

    from exporter import upstream

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Rescaling(0.5)(inputs)))
    assert len(upstream.inbound_nodes(model.layers[1])) == 1
    import coremltools.models.utils as model_utils

    assert callable(model_utils._apply_graph_pass)


def test_debug_shows_the_underlying_library_traceback(tmp_path):
    """A corrupt model: one line without --debug; with it, the traceback of the zipfile error underneath."""
    bad = tmp_path / "c.keras"
    bad.write_bytes(b"PK\x03\x04junk" * 50)
    argv = [sys.executable, "-m", "exporter", "convert", str(bad), "--labels", str(tmp_path / "l.txt"), "--out", str(tmp_path / "out")]
    quiet = subprocess.run(argv, capture_output=True, text=True)
    assert quiet.returncode == 3 and "Traceback" not in quiet.stderr
    loud = subprocess.run([*argv[:3], "--debug", *argv[3:]], capture_output=True, text=True)
    assert loud.returncode != 0
    assert "zipfile.BadZipFile" in loud.stderr
    assert "The above exception was the direct cause of the following exception" in loud.stderr
    assert "ModelLoadError" in loud.stderr


def test_entries_are_checked_when_built():
    with pytest.raises(ConfigError, match=r"format must be one of \['mlpackage', 'mlmodel', 'onnx'\], got 'tflite'"):
        caps.Variant("tflite", "fp32", 32, base=caps.Base(), transform=None, gate=caps.FP32_GATE, description="x")
    with pytest.raises(ConfigError, match="weight_bits must be between 1 and 32, got 0"):
        caps.Variant("onnx", "fp0", 0, base=caps.Base(), transform=None, gate=caps.FP32_GATE, description="x")
    with pytest.raises(ConfigError, match="base precision must be 'fp32' or 'fp16', got 'int8'"):
        caps.Base("int8")


def test_opt_in_variants_are_built_only_when_named_and_say_why():
    """The default export builds only variants that hold their gate on the sample models; the others are opt-in,
    each with its measured reason, and are built (and judged by the same gate) when named."""
    opt_in = {v.key for v in caps.VARIANTS if not v.default}
    assert opt_in == {
        "mlpackage:palette4",
        "mlpackage:palette4-fisher",
        "mlpackage:palette6-fisher",
        "mlpackage:palette-mixed",
        "onnx:int8-dynamic",
        "onnx:int8-static",
        "mlpackage:w8a8",
    }
    default_keys = {v.key for v in caps.select()}
    assert not default_keys & opt_in and {"mlpackage:palette6", "mlpackage:palette8", "onnx:int8-weights"} <= default_keys
    assert {v.key for v in caps.select(["mlpackage", "onnx"], ["palette4", "int8-dynamic"])} == {
        "mlpackage:palette4",
        "onnx:int8-dynamic",
    }
    for v in caps.VARIANTS:
        assert bool(v.opt_in_reason) == (not v.default), v.key
        assert v.default or v.gate.min_top1 == 0.98, v.key  # opt-in is not a looser gate
    with pytest.raises(ConfigError, match="opt_in_reason"):
        caps.Variant("onnx", "x", 8, base=caps.Base(), transform=None, gate=Gate(min_top1=0.98), description="d", default=False)
    table = caps.readme_table()
    assert table.count("**opt-in**") == len(opt_in)
