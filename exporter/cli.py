"""Command line: a parser and one API call per command; no logic of its own.

Exit codes: 0 success; 1 other toolkit error; 2 bad option, preprocessing or labels; 3 model cannot be loaded (or
refused as unsafe); 4 image error; 5 conversion failed; 6 destination problem; 7 parity gates failed; 8 parity
unchecked (every artifact that ran passed, one could not be run here); 130 / 143 interrupted by SIGINT / SIGTERM
(staging folders removed); 70 internal error (a bug: please report it with --debug output).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import __version__
from .arguments import GateAction
from .capabilities import DEFAULT_CALIBRATION_COUNT, DEFAULT_OPSET, FORMATS, VARIANTS, variant_names
from .quantize.auto import DEFAULT_MAX_ACCURACY_DROP
from .validation.tolerances import GATE_SYNTAX

INTERNAL_ERROR = 70
DESCRIPTION = (
    "Export a trained Keras image classifier to Core ML (.mlpackage, .mlmodel) and ONNX with its labels "
    "and preprocessing inside the files, quantized variants, and parity checked against Keras on your "
    "held-out images."
)
EXAMPLES = """\
examples:
  exporter convert model.keras --labels labels.txt --preprocessing preprocessing.json --out out/my_model
  exporter convert model.keras --labels labels.txt --out out/small --quantize auto --images heldout/
  exporter validate out/my_model --images heldout/ --json parity.json --html parity.html
  exporter predict out/my_model photo.jpg --top-k 3
  exporter xcode out/my_model --images heldout/ --out MyModelPackage
  exporter doctor

global options (--debug, --quiet, --verbose) go before or after the command.
exit codes: 0 ok; 1 other error; 2 bad option, labels or preprocessing; 3 model; 4 image; 5 conversion;
6 destination or export folder; 7 parity gates failed; 8 an artifact could not be run here (parity unchecked);
70 internal error (a bug); 130 / 143 interrupted (SIGINT / SIGTERM)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and shows every option's default that says something (not None, False, an
    empty string or list; not when the help already names the default)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, "", [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: {default})"


def _variants_help() -> str:
    by_format: dict[str, list[str]] = {}
    for v in VARIANTS:
        by_format.setdefault(v.format, []).append(v.name if v.default else f"({v.name})")
    return "; ".join(f"{fmt}: {' '.join(names)}" for fmt, names in by_format.items())


def _calibrated_variants() -> str:
    names = list(dict.fromkeys(v.name for v in VARIANTS if v.needs_calibration))
    return ", ".join(names[:-1]) + " and " + names[-1]


def choice(kind: str, valid) -> Callable[[str], str]:
    """An argparse ``type`` that accepts one of ``valid`` and says "did you mean" for a near miss."""
    valid = list(dict.fromkeys(valid))

    def check(text: str) -> str:
        if text not in valid:
            from .precheck import did_you_mean

            raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}{did_you_mean(text, valid)}; valid {kind}s are {', '.join(valid)}")
        return text

    check.__name__ = kind  # argparse names the type in its error when the check raises something else
    return check


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--debug/--quiet/--verbose on the top parser and on every command, so they work before or after it. On the
    commands their default is SUPPRESS, so a flag given before the command is not reset by the command's parser."""
    default: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = parser.add_argument_group("global options")
    g.add_argument("--debug", action="store_true", help="show Python tracebacks", **default)
    g.add_argument("-q", "--quiet", action="store_true", help="print errors and results only, no progress", **default)
    g.add_argument(
        "-v", "--verbose", action="store_true", help="also show the output of TensorFlow, coremltools and the other libraries", **default
    )


def _json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        type=str,
        help=f"write {what} as JSON to FILE (schema: exporter/report/SCHEMA.md); --json alone prints it to stdout instead of the table",
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="exporter", description=DESCRIPTION, epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"exporter {__version__}")
    _global_options(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, examples: str) -> argparse.ArgumentParser:
        c = sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog="examples:\n" + examples,
            formatter_class=HelpFormatter,
        )
        return c

    c = command(
        "convert",
        "export a Keras classifier to Core ML and ONNX variants",
        "  exporter convert model.keras --labels labels.txt --preprocessing pre.json --out out/m\n"
        "  exporter convert model.keras --labels labels.txt --out out/m --formats onnx --variants fp32 fp16\n"
        "  exporter convert model.keras --labels labels.txt --out out/m --quantize auto --images heldout/",
    )
    # Every option's dest is the name of the API parameter or ExportOptions field it sets (exporter/arguments.py).
    c.add_argument(
        "model_path",
        metavar="MODEL",
        help=".keras or .h5 file, or a model folder (a Keras one saved unzipped; a TensorFlow SavedModel needs --trust-code)",
    )
    given = c.add_argument_group("what the model needs")
    given.add_argument("--labels", required=True, metavar="FILE", help="text file (one label per line, in output order) or JSON list")
    given.add_argument(
        "--preprocessing",
        metavar="tf|torch|caffe|raw|FILE",
        help="a keras.applications preprocess_input mode or a JSON contract; omit when the model has its "
        "own Rescaling/Normalization layers or calls preprocess_input on its input (they are detected)",
    )
    given.add_argument(
        "--add-softmax", action="store_true", help="the model ends in logits: append a softmax (one unit: sigmoid, then [1 - p, p])"
    )
    given.add_argument(
        "--output",
        metavar="NAME",
        help="a model with several outputs (an auxiliary head): the classifier's output to export, by its layer or dict-key name",
    )
    given.add_argument("--trust-code", action="store_true", help="allow Lambda layers / custom code in the model file")
    written = c.add_argument_group("what to write")
    written.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically: complete or absent)")
    written.add_argument("--overwrite", action="store_true", help="replace an existing --out export folder (never another folder)")
    written.add_argument(
        "--formats",
        nargs="+",
        type=choice("format", list(FORMATS)),
        choices=list(FORMATS),
        metavar="FORMAT",
        help=f"formats to write: {' '.join(FORMATS)} (default: all)",
    )
    written.add_argument(
        "--variants",
        nargs="+",
        type=choice("variant", sorted(variant_names())),
        choices=sorted(variant_names()),
        metavar="VARIANT",
        help=f"variants to write (default: every variant of the chosen formats not in parentheses; those are opt-in, "
        f"built only when named); {_variants_help()}",
    )
    written.add_argument(
        "--calibration-images",
        type=Path,
        metavar="FOLDER",
        help=f"images to calibrate {_calibrated_variants()} on; required when one of them is named in --variants "
        "(--quantize auto calibrates on --images without it)",
    )
    written.add_argument(
        "--calibration-count", type=int, default=DEFAULT_CALIBRATION_COUNT, metavar="N", help="calibration images to sample"
    )
    written.add_argument("--opset", type=int, default=DEFAULT_OPSET, metavar="N", help="ONNX opset")
    written.add_argument(
        "--float-input",
        dest="onnx_raw_input",
        action="store_false",
        help="ONNX takes normalised float input, no preprocessing in the graph (default: uint8 image input)",
    )
    written.add_argument("--name", metavar="STEM", help="file name stem of the artifacts (default: from the model file)")
    meta = c.add_argument_group("metadata written into every file")
    meta.add_argument("--author", default="", help="author")
    meta.add_argument("--license", default="", help="license")
    meta.add_argument("--model-version", dest="version", default="", metavar="VERSION", help="model version")
    meta.add_argument("--description", default="", help="short description")
    auto = c.add_argument_group("--quantize auto: keep per format the smallest variant that passes")
    auto.add_argument(
        "--quantize",
        type=choice("quantize mode", ("all", "auto")),
        choices=("all", "auto"),
        default="all",
        help="all: every selected variant; auto: per format keep only the smallest variant that passes the parity gates on --images",
    )
    auto.add_argument("--images", dest="validation_images", type=Path, metavar="FOLDER", help="held-out images for --quantize auto")
    auto.add_argument(
        "--max-accuracy-drop",
        type=float,
        default=DEFAULT_MAX_ACCURACY_DROP,
        metavar="POINTS",
        help="largest accuracy loss on the labelled --images, in points",
    )
    auto.add_argument("--min-target", metavar="iOSNN", help="keep only Core ML files that run on this iOS version (default: any)")
    auto.add_argument(
        "--gate",
        dest="gates",
        action=GateAction,
        metavar=GATE_SYNTAX,
        help="replace a variant's default gate before the budget is applied (repeatable, as in validate)",
    )
    _json_option(c, "the manifest")

    v = command(
        "validate",
        "check every artifact of an export against the Keras model on images",
        "  exporter validate out/m --images heldout/\n"
        "  exporter validate out/m --images heldout/ --json parity.json --html parity.html\n"
        "  exporter validate out/m --images heldout/ --gate int8:min_top1=0.995 --model elsewhere/model.keras\n"
        "  exporter validate out/m --images heldout/ --gate onnx:int8-static:min_top1=0.99",
    )
    v.add_argument("export_dir", help="folder written by `exporter convert`")
    v.add_argument("--images", required=True, metavar="FOLDER", help="folder of held-out images (labels from sub-folder names)")
    v.add_argument(
        "--model",
        dest="model_path",
        metavar="MODEL",
        help="the Keras model (default: the path recorded in manifest.json, looked up relative to the export folder first)",
    )
    _json_option(v, "the report")
    v.add_argument("--html", type=Path, metavar="FILE", help="write a self-contained HTML report with plots")
    v.add_argument(
        "--gate",
        dest="gates",
        action=GateAction,
        metavar=GATE_SYNTAX,
        help="replace a variant's default gate, of every format or of one (repeatable; defaults in exporter/capabilities.py)",
    )
    v.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per batch")
    v.add_argument("--trust-code", action="store_true", help="allow Lambda layers / custom code in the model file")

    pr = command(
        "predict",
        "classify images with exported files (top-k labels per image and artifact)",
        "  exporter predict out/m photo.jpg\n  exporter predict out/m/m_int8.mlpackage a.png b.png --top-k 3 --json predictions.json",
    )
    pr.add_argument(
        "target",
        metavar="ARTIFACT_OR_EXPORT",
        help="an exported .mlpackage/.mlmodel/.onnx file, or an export folder (every artifact in it)",
    )
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    pr.add_argument("--top-k", type=int, default=5, metavar="K", help="labels to show per image")
    _json_option(pr, "the predictions")

    d = command("doctor", "show versions and what can run on this machine", "  exporter doctor\n  exporter doctor --json")
    _json_option(d, "the findings")

    from .xcode import cli as xcode_cli

    xcode_cli.add_parser(command)
    for each in sub.choices.values():  # last in each command's help
        _global_options(each, top=False)
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .console import Progress, quiet_libraries

    # preload=False: the API functions check their inputs before TensorFlow is imported (quietly) on first need.
    with Progress(sys.stderr) as printer, quiet_libraries(args.verbose, preload=False):
        return _dispatch(args, False if args.quiet else printer, printer.stream)


# The options that name files or folders a command reads (see check_report_not_an_input).
INPUT_ARGUMENTS = ("model_path", "labels", "preprocessing", "calibration_images", "validation_images", "export_dir", "images", "target")


def _as_list(value) -> list:
    return [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]


def _dispatch(args: argparse.Namespace, progress, stderr) -> int:
    """One API call per command, its arguments taken from ``args`` by name (exporter/arguments.py)."""
    from .arguments import api_arguments

    json_file = getattr(args, "json", None)
    from .packaging import check_report_not_an_input

    inputs = [v for name in INPUT_ARGUMENTS for v in _as_list(getattr(args, name, None))]
    for report in (None if json_file == "-" else json_file, getattr(args, "html", None)):
        check_report_not_an_input(report, inputs)
    _check_json_is_not_an_image(json_file)  # an image the command does not read, taken by a bare --json
    if json_file not in (None, "-"):  # a --json FILE that cannot be written, refused before any work
        from .packaging import check_report_path
        from .safety import contains

        # convert's JSON may go into the export folder it is about to create
        if not (args.command == "convert" and contains(Path(args.out), Path(json_file).absolute().parent)):
            check_report_path(json_file)

    if args.command == "xcode":
        import contextlib

        from .xcode import cli as xcode_cli

        with contextlib.redirect_stderr(stderr):  # its own notes go to the real stderr
            return xcode_cli.run(args)
    if args.command == "doctor":
        from .doctor import doctor, format_doctor

        found = doctor()
        _emit(found, args.json, lambda: format_doctor(found))
        return 0
    if args.command == "predict":
        from .predict import format_predictions, predict

        (kwargs,) = api_arguments(args, predict)
        result = predict(**kwargs)
        _emit(result, args.json, lambda: format_predictions(result))
        return 0
    from . import api
    from .console import format_seconds
    from .report import terminal

    if args.command == "convert":
        option_args, export_args = api_arguments(args, api.ExportOptions, api.export)
        manifest = api.export(**export_args, options=api.ExportOptions(**option_args), progress=progress)
        if progress:
            progress.message(f"wrote {len(manifest['artifacts'])} files to {args.out} in {format_seconds(progress.elapsed())}")
        _emit(manifest, args.json, lambda: terminal.size_table(manifest))
        return 0
    from .errors import ParityError
    from .packaging import check_report_path

    check_report_path(None if args.json == "-" else args.json)  # before the validation runs, not after
    check_report_path(args.html)
    (validate_args,) = api_arguments(args, api.validate)
    try:
        report = api.validate(**validate_args, progress=progress)
    except ParityError as exc:
        if getattr(exc, "report", None) is not None:
            _write_reports(exc.report, args)
        raise
    _write_reports(report, args)
    return 0


def _check_json_is_not_an_image(json_file: str | None) -> None:
    """``--json`` takes an optional FILE, so in ``exporter predict out/m --json a.png b.png`` it took a.png as the
    file to write, classified b.png only, and wrote the JSON over the photo a.png. An image file name is never the
    JSON file: refused before anything runs."""
    from .images import HEIF_SUFFIXES, IMAGE_SUFFIXES, UNDECODED_IMAGE_SUFFIXES

    if json_file in (None, "-"):
        return
    if Path(json_file).suffix.lower() in (*IMAGE_SUFFIXES, *HEIF_SUFFIXES, *UNDECODED_IMAGE_SUFFIXES):
        from .errors import ConfigError

        raise ConfigError(
            f"--json took the image {json_file!r} as the file to write the JSON to",
            hint="put --json after the images, or name its file: --json=predictions.json",
        )


def _emit(data: dict, json_target: str | None, table) -> None:
    """The table on stdout; with --json FILE also the JSON file; with --json alone (or -) the JSON on stdout."""
    if json_target == "-":
        print(json.dumps(data, indent=2))
        return
    print(table())
    if json_target:
        from .errors import DestinationError
        from .packaging import write_text_atomic

        try:
            write_text_atomic(json_target, json.dumps(data, indent=2) + "\n")
        except OSError as exc:
            raise DestinationError(f"cannot write the JSON file: {exc.strerror or exc}", path=json_target) from exc


def _terminal_columns() -> int | None:
    """The terminal's width when stdout is one (the table is then narrowed to fit), else None: piped output and logs
    keep every column."""
    import shutil

    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _write_reports(report: dict, args) -> None:
    from .errors import DestinationError
    from .report import terminal

    try:
        _emit(report, args.json, lambda: terminal.parity_table(report, width=_terminal_columns()))
        if args.html:
            from .report import html

            html.write(report, args.html)
    except OSError as exc:
        raise DestinationError(f"cannot write the report: {exc.strerror or exc}", path=exc.filename or args.html) from exc


def main(argv: list[str] | None = None) -> None:
    from .errors import ExporterError, first_line, one_line
    from .interrupts import clean_exit_on_signals
    from .tfquiet import quiet_environment

    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    if debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")  # --debug shows what TensorFlow logs
    quiet_environment()  # before anything imports TensorFlow
    try:
        with clean_exit_on_signals():
            code = run(argv)
    except ExporterError as exc:
        if debug:
            raise
        print(f"exporter: error: {one_line(str(exc))}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("exporter: interrupted; nothing was written to the destination", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug, not a user mistake: say so in one line, keep the traceback behind --debug
        if debug:
            raise
        print(
            f"exporter: internal error: {type(exc).__name__}: {one_line(first_line(exc))} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        code = INTERNAL_ERROR
    sys.exit(code)
