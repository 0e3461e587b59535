"""The measurement behind the default variant set (exporter/capabilities.py, ``default`` and each opt-in reason).

For each sample model: export every variant (opt-in ones included) the way README's first command and the tests'
exports do (calibration images = the model's held-out folder), then validate on the held-out images (top-1 agreement
with Keras, accuracy change against the folder labels) and on the other task's held-out images (photos for the digit
models, digits for the photo model: images outside the model's classes). Core ML files run in the project's executor.

    python -m benchmarks.quant_defaults [--models NAME ...] [--variants V ...] [--out benchmarks/quant_defaults.md]

Slow (one full export and two validations per model; 10-15 minutes each on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODELS = ["mobilenet_v1_digits", "mobilenet_v2_digits", "squeezenet_digits", "transfer_photos"]


def measure(name: str, work: Path, variants: tuple[str, ...] | None) -> list[dict]:
    from exporter.api import ExportOptions, export, validate
    from exporter.capabilities import VARIANTS, variant
    from exporter.errors import ParityError

    folder = SAMPLES / name
    card = json.loads((folder / "card.json").read_text())
    held = SAMPLES / card["heldout_folder"]
    other = SAMPLES / "heldout" / ("photos" if card["task"] == "digits" else "digits")
    names = variants or tuple(dict.fromkeys(v.name for v in VARIANTS))
    out = work / name
    manifest = export(
        folder / "model.keras",
        folder / "labels.txt",
        out,
        preprocessing=folder / "preprocessing.json",
        options=ExportOptions(variants=names, calibration_images=held, overwrite=True),
    )
    reports = {}
    for tag, images in (("held", held), ("outside", other)):
        try:
            reports[tag] = validate(out, images)
        except ParityError as exc:
            reports[tag] = exc.report
    rows = []
    for art in manifest["artifacts"]:
        by = {tag: next(r for r in rep["artifacts"] if r["path"] == art["path"]) for tag, rep in reports.items()}
        labels = by["held"].get("against_labels") or {}
        rows.append(
            {
                "model": name,
                "format": art["format"],
                "variant": art["variant"],
                "default": variant(art["format"], art["variant"]).default,
                "ratio_to_fp32": art["ratio_to_fp32"],
                "status": by["held"]["status"],
                "top1_agreement": by["held"]["top1_agreement"],
                "accuracy_change_points": None if "accuracy_change" not in labels else 100 * labels["accuracy_change"],
                "outside_top1_agreement": by["outside"]["top1_agreement"],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    out = [
        "| model | file | default | ratio to fp32 | top-1 agreement | accuracy change (points) | agreement outside the classes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        acc = "" if r["accuracy_change_points"] is None else f"{r['accuracy_change_points']:+.1f}"
        out.append(
            f"| {r['model']} | {r['format']}:{r['variant']} | {'yes' if r['default'] else 'opt-in'} | {r['ratio_to_fp32']:.3f} "
            f"| {r['top1_agreement']:.3f} | {acc} | {r['outside_top1_agreement']:.3f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--variants", nargs="+", help="default: every variant, opt-in ones included")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="quant-defaults-") as tmp:
        for name in args.models:
            rows += measure(name, Path(tmp), tuple(args.variants) if args.variants else None)
            print(f"{name}: done", file=sys.stderr, flush=True)
    text = table(rows)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
