"""``exporter xcode EXPORT_DIR --images FOLDER --out DIR``: the Swift package for one Core ML artifact of an export.

exporter/cli.py hooks this in with ``add_parser(command)`` in its parser and ``return run(args)`` when
``args.command == "xcode"``; everything the command does is ``exporter.api.xcode``, whose parameters the options are
named after (exporter/arguments.py hands them over by name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMMAND = "xcode"


def add_parser(command) -> argparse.ArgumentParser:
    """The ``xcode`` command, made by exporter/cli.py's ``command(name, help, examples)`` so that its help reads
    like the others' (description, defaults shown, examples)."""
    from .package import DEFAULT_GOLDEN_COUNT

    x = command(
        COMMAND,
        "write a ready-to-add Swift package (model, labels, classify API, golden parity test) for one Core ML artifact of an export",
        "  exporter xcode out/m --images heldout/ --out MyModelPackage\n"
        "  exporter xcode out/m --images heldout/ --out MyModelPackage --variant mlmodel:fp16 --name MyModel",
    )
    x.add_argument("export_dir", metavar="EXPORT_DIR", help="folder written by `exporter convert`")
    x.add_argument("--images", required=True, type=Path, metavar="FOLDER", help="held-out images to draw the golden parity images from")
    x.add_argument("--out", required=True, type=Path, metavar="DIR", help="package folder to write (atomically)")
    x.add_argument(
        "--variant",
        default="fp16",
        metavar="VARIANT",
        help="Core ML variant: a name (fp16; .mlpackage preferred over .mlmodel) or FORMAT:NAME (mlmodel:fp16)",
    )
    x.add_argument(
        "--name", help="Swift package and module name (default: from the model name, e.g. squeezenet_digits -> SqueezenetDigits)"
    )
    x.add_argument(
        "--golden-count", type=int, default=DEFAULT_GOLDEN_COUNT, metavar="N", help="golden images to bundle for the parity test"
    )
    x.add_argument(
        "--model", dest="model_path", type=Path, metavar="MODEL", help="the Keras model (default: the path recorded in manifest.json)"
    )
    x.add_argument("--overwrite", action="store_true", help="replace an existing --out package folder (never another folder)")
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
