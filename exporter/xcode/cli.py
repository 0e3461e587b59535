"""``exporter xcode EXPORT_DIR --images FOLDER --out DIR``: the Swift package for one Core ML artifact of an export.

exporter/cli.py hooks this in with ``add_parser(sub)`` in its parser and ``return run(args)`` when
``args.command == "xcode"``; everything the command does is ``exporter.api.xcode``, whose parameters the options are
named after (exporter/arguments.py hands them over by name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMAND = "xcode"


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .package import DEFAULT_GOLDEN_COUNT

    x = subparsers.add_parser(
        COMMAND,
        help="write a ready-to-add Swift package (model, labels, classify API, golden parity test) for one Core ML artifact of an export",
    )
    x.add_argument("export_dir", help="folder written by `exporter convert`")
    x.add_argument("--images", required=True, type=Path, help="held-out images to draw the golden parity images from")
    x.add_argument("--out", required=True, type=Path, help="package folder to write (atomically)")
    x.add_argument(
        "--variant",
        default="fp16",
        help="Core ML variant: a name (fp16; .mlpackage preferred over .mlmodel) or FORMAT:NAME (mlmodel:fp16); default fp16",
    )
    x.add_argument(
        "--name", help="Swift package and module name (default: from the model name, e.g. squeezenet_digits -> SqueezenetDigits)"
    )
    x.add_argument(
        "--golden-count",
        type=int,
        default=DEFAULT_GOLDEN_COUNT,
        help=f"golden images to bundle for the parity test (default {DEFAULT_GOLDEN_COUNT})",
    )
    x.add_argument("--model", dest="model_path", type=Path, help="the Keras model (default: the path recorded in manifest.json)")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    x.add_argument("--trust-code", action="store_true", help="allow Lambda layers / custom code in the model file")
    return x


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..arguments import api_arguments

    (kwargs,) = api_arguments(args, api.xcode)
    out = api.xcode(**kwargs)
    print(f"wrote Swift package {out}", file=sys.stderr)
    print(
        "add it in Xcode with File > Add Package Dependencies... > Add Local...; `swift test` in it runs the golden "
        "parity test (Core ML parity on Apple platforms only)",
        file=sys.stderr,
    )
    print(out)
    return 0
