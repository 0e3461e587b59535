"""Command line: a parser and one API call per command; no logic of its own.

Exit codes: 0 success; 1 other toolkit error; 2 bad option, preprocessing or labels; 3 model cannot be loaded (or
refused as unsafe); 4 image error; 5 conversion failed; 6 destination problem; 7 parity gates failed; 8 parity
unchecked (every artifact that ran passed, one could not be run here); 70 internal error (a bug: please report it
with --debug output).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .capabilities import DEFAULT_CALIBRATION_COUNT, DEFAULT_OPSET, FORMATS, variant_names
from .report import terminal
from .validation.tolerances import GATE_SYNTAX

INTERNAL_ERROR = 70


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exporter", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="export a Keras classifier to Core ML and ONNX variants")
    c.add_argument("model", help=".keras, .h5 or SavedModel directory")
    c.add_argument("--labels", required=True, help="text file (one label per line) or JSON list")
    c.add_argument("--out", required=True, help="output directory (written atomically)")
    c.add_argument("--preprocessing", metavar="tf|torch|caffe|raw|FILE",
                   help="a keras.applications preprocess_input mode or a JSON contract; omit when the model has its "
                        "own Rescaling/Normalization layers")
    c.add_argument("--add-softmax", action="store_true",
                   help="the model ends in logits: append a softmax (one unit: sigmoid, then [1 - p, p])")
    c.add_argument("--formats", nargs="+", choices=list(FORMATS), help="default: all")
    c.add_argument("--variants", nargs="+", choices=sorted(variant_names()), help="default: all")
    c.add_argument("--calibration-images", type=Path, help="image folder for w8a8 and int8-static calibration")
    c.add_argument("--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT)
    c.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    c.add_argument("--float-input", action="store_true", help="ONNX takes normalised float input, no prologue")
    c.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    c.add_argument("--trust-code", action="store_true", help="allow Lambda layers / custom code in the model file")
    c.add_argument("--name", help="file name stem of the artifacts (default: from the model file)")
    c.add_argument("--author", default="")
    c.add_argument("--license", default="")
    c.add_argument("--model-version", default="")
    c.add_argument("--description", default="")
    c.add_argument("--quantize", choices=("all", "auto"), default="all",
                   help="auto: per format keep only the smallest variant that passes the parity gates on --images")
    c.add_argument("--images", type=Path, help="held-out images for --quantize auto")
    c.add_argument("--json", action="store_true", help="print the manifest as JSON")

    v = sub.add_parser("validate", help="check every artifact of an export against the Keras model on images")
    v.add_argument("export_dir")
    v.add_argument("--images", required=True, help="folder of held-out images (labels from sub-folder names)")
    v.add_argument("--model", help="the Keras model (default: the path recorded in manifest.json)")
    v.add_argument("--json", type=Path, help="write the report as JSON to this file (schema: exporter/report/SCHEMA.md)")
    v.add_argument("--html", type=Path, help="write a self-contained HTML report with plots to this file")
    v.add_argument("--gate", action="append", default=[], metavar=GATE_SYNTAX,
                   help="override a variant's default gate, of every format or of one (repeatable)")
    v.add_argument("--batch-size", type=int, default=32)
    v.add_argument("--trust-code", action="store_true")

    from .xcode import cli as xcode_cli

    xcode_cli.add_parser(sub)
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not args.debug:
        logging.getLogger().setLevel(logging.ERROR)
    if args.command == "xcode":
        from .xcode import cli as xcode_cli

        return xcode_cli.run(args)
    from . import api

    if args.command == "convert":
        options = api.ExportOptions(
            formats=tuple(args.formats) if args.formats else None,
            variants=tuple(args.variants) if args.variants else None, calibration_images=args.calibration_images,
            calibration_count=args.calibration_count, opset=args.opset, onnx_raw_input=not args.float_input,
            overwrite=args.overwrite, trust_code=args.trust_code, name=args.name, author=args.author,
            license=args.license, version=args.model_version, description=args.description,
            quantize=args.quantize, validation_images=args.images, add_softmax=args.add_softmax)
        manifest = api.export(args.model, args.labels, args.out, preprocessing=args.preprocessing, options=options,
                              progress=lambda line: print(line, file=sys.stderr))
        print(json.dumps(manifest, indent=2) if args.json else terminal.size_table(manifest))
        return 0
    from .errors import ParityError
    from .validation.tolerances import parse_gate

    gates = dict(parse_gate(g) for g in args.gate)
    try:
        report = api.validate(args.export_dir, args.images, model_path=args.model, batch_size=args.batch_size,
                              trust_code=args.trust_code, gates=gates, progress=sys.stderr.isatty())
    except ParityError as exc:
        if exc.report is not None:
            _write_reports(exc.report, args)
        raise
    _write_reports(report, args)
    return 0


def _write_reports(report: dict, args) -> None:
    print(terminal.parity_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.html:
        from .report import html

        html.write(report, args.html)


def main(argv: list[str] | None = None) -> None:
    from .errors import ExporterError, first_line

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = run(argv)
    except ExporterError as exc:
        if debug:
            raise
        print(f"exporter: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("exporter: interrupted; nothing was written to the destination", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug, not a user mistake: say so in one line, keep the traceback behind --debug
        if debug:
            raise
        print(f"exporter: internal error: {type(exc).__name__}: {first_line(exc)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        code = INTERNAL_ERROR
    sys.exit(code)
