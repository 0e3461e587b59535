"""The measurement behind the default variant set (exporter/capabilities.py, ``default`` and each opt-in reason).

For each sample model (and, with ``--families``, the keras.applications stand-ins of sample_models.families, trained
with its recipe and cached in ``--cache``): export the chosen variants (opt-in ones included) with calibration
images drawn from the model's held-out folder, then validate on the held-out images the calibration did NOT see (top-1
agreement with Keras, accuracy change against the folder labels) and on the other task's held-out images (photos for
the digit models, digits for the photo model: images outside the model's classes). Core ML files run in the project's
executor.

    python benchmarks/quant_defaults.py [--models NAME ...] [--families NAME:SHAPE ...] [--variants V ...]
        [--json rows.json] [--before rows.json] [--out benchmarks/quant_defaults.md]

``--readme README.md`` also writes the table (without the brackets) between README's quant-defaults markers, with
the commit the rows were measured on (``--rows rows.json --readme README.md`` rewrites it from saved rows).

``--before`` takes the ``--json`` rows of an earlier run (the same command run with PYTHONPATH pointing at another
tree, e.g. main) and writes them next to this run's. Slow: one full export and two validations per model, minutes
each on a shared 2-core machine; a family stand-in is trained first (a few minutes, once per cache).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the sample models import from the tree
    sys.path.append(str(ROOT))
SAMPLES = ROOT / "sample_models"
HELDOUT = SAMPLES / "heldout"
MODELS = ["mobilenet_v1_digits", "mobilenet_v2_digits", "squeezenet_digits", "transfer_photos"]
# Held-out images given to the export as calibration (the exporter's default count); agreement is reported on the rest.
CALIBRATION_COUNT = 64
EIGHT_BIT = ("int8", "palette8", "w8a8", "int8-static", "int8-dynamic")


def split(folder: Path, work: Path, count: int = CALIBRATION_COUNT, seed: int = 0) -> tuple[Path, Path]:
    """(calibration folder, test folder): ``count`` images drawn with a seed and the rest, as symlinks that keep the
    class sub-folders, so no image is both calibrated on and measured."""
    import numpy as np

    from exporter.images import list_images

    items = list_images(folder)
    picked = set(np.random.default_rng(seed).permutation(len(items))[:count].tolist())
    cal, test = work / f"{folder.name}_calibration", work / f"{folder.name}_test"
    for i, item in enumerate(items):
        dst = (cal if i in picked else test) / item.path.relative_to(folder)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.symlink_to(item.path)
    return cal, test


def measure(
    name: str, paths: dict, task: str, work: Path, variants: tuple[str, ...] | None, formats: tuple[str, ...] | None = None
) -> list[dict]:
    from exporter.api import ExportOptions, export, validate
    from exporter.capabilities import VARIANTS, variant
    from exporter.errors import ParityError

    held = HELDOUT / task
    other = HELDOUT / ("photos" if task == "digits" else "digits")
    calibration, test = split(held, work)
    names = variants or tuple(dict.fromkeys(v.name for v in VARIANTS))
    out = work / name
    manifest = export(
        paths["model"],
        paths["labels"],
        out,
        preprocessing=paths["preprocessing"],
        options=ExportOptions(formats=formats, variants=names, calibration_images=calibration, overwrite=True),
    )
    reports = {}
    for tag, images in (("held", test), ("outside", other)):
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


def sample_paths(name: str) -> tuple[dict, str]:
    folder = SAMPLES / name
    card = json.loads((folder / "card.json").read_text())
    paths = {"model": folder / "model.keras", "labels": folder / "labels.txt", "preprocessing": folder / "preprocessing.json"}
    return paths, card["task"]


def family_paths(spec: str, cache: Path) -> tuple[dict, str]:
    """Build and train the stand-in ``family:shape`` once (sample_models.families' recipe), cached in ``cache``."""
    from sample_models import families

    family, shape = spec.split(":")
    folder = cache / f"{family}_{shape}"
    if not (folder / "model.keras").exists():
        built = families.build(family, shape)
        families.train(built)
        families.save(built, folder)
    pre = folder / "preprocessing.json"
    return {"model": folder / "model.keras", "labels": folder / "labels.txt", "preprocessing": pre if pre.exists() else None}, "digits"


README_START = "<!-- quant-defaults:start (written by `python benchmarks/quant_defaults.py --readme README.md`) -->"
README_END = "<!-- quant-defaults:end -->"
# The commit that wrote the rows saved before rows recorded their commit (benchmarks/quant_defaults_rows.json).
FIRST_RUN_COMMIT = "8b132c8"


def write_readme(readme: Path, rows: list[dict]) -> None:
    """The table of ``rows`` between README's quant-defaults markers, and which commit measured which models."""
    from benchmarks.readme_block import replace_block

    by: dict[str, list[str]] = {}
    for r in rows:
        models = by.setdefault(r.get("commit", FIRST_RUN_COMMIT), [])
        if r["model"] not in models:
            models.append(r["model"])
    where = "; ".join(f"commit {c}: {', '.join(m)}" for c, m in by.items())
    body = (
        f"\nMeasured on {where}. {CALIBRATION_COUNT} calibration images drawn (seeded) from each model's held-out folder; "
        'agreement and accuracy on the rest of it, "outside the classes" on the other task\'s held-out folder. '
        '"default": built by a plain export (exporter/capabilities.py, now).\n\n'
        f"<details><summary>every 8-bit file ({len(rows)} rows)</summary>\n\n{table(rows)}\n\n</details>\n"
    )
    replace_block(readme, README_START, README_END, body)


def _key(r: dict) -> tuple:
    return (r["model"], r["format"], r["variant"])


def table(rows: list[dict], before: list[dict] | None = None) -> str:
    old = {_key(r): r for r in before or []}
    measured_before = {r["model"] for r in before or []}
    head = "| model | file | default | ratio to fp32 | top-1 agreement | accuracy change (points) | agreement outside the classes |"
    if old:
        head = (
            "| model | file | default | ratio to fp32 (before) | top-1 agreement (before) | accuracy change, points (before) "
            "| agreement outside the classes (before) |"
        )
    out = [head, "|---|---|---|---|---|---|---|"]

    def cell(r: dict, key: str, fmt: str) -> str:
        value = r.get(key)
        text = "" if value is None else format(value, fmt)
        prev = old.get(_key(r), {}).get(key)
        if not old:
            return text
        if r["model"] not in measured_before:
            return f"{text} (n/m)"
        return f"{text} ({'' if prev is None else format(prev, fmt)})"

    from exporter.capabilities import variant

    for r in rows:  # the default column as the capability table says now (a --rows run may follow a change of it)
        default = variant(r["format"], r["variant"]).default
        out.append(
            f"| {r['model']} | {r['format']}:{r['variant']} | {'yes' if default else 'opt-in'} | {cell(r, 'ratio_to_fp32', '.3f')} "
            f"| {cell(r, 'top1_agreement', '.3f')} | {cell(r, 'accuracy_change_points', '+.1f')} "
            f"| {cell(r, 'outside_top1_agreement', '.3f')} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=MODELS, choices=MODELS)
    parser.add_argument("--families", nargs="*", default=[], help="family:shape stand-ins, e.g. mobilenet_v3_small:application")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "quant-defaults-families")
    parser.add_argument("--variants", nargs="+", help="default: every variant, opt-in ones included")
    parser.add_argument("--formats", nargs="+", help="default: every format")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--before", type=Path, help="rows of an earlier run (--json) to show in brackets")
    parser.add_argument("--out", type=Path, help="write the Markdown table here (default: print it)")
    parser.add_argument("--rows", type=Path, help="measure nothing: write the table of these rows (--json of a run)")
    parser.add_argument("--readme", type=Path, help="also write the table between this README's quant-defaults markers")
    args = parser.parse_args(argv)
    before = json.loads(args.before.read_text()) if args.before else None
    if args.rows:
        saved = json.loads(args.rows.read_text())
        if args.readme:
            write_readme(args.readme, saved)
        return _write(table(saved, before), args.out)
    from benchmarks.readme_block import commit as tree_commit

    commit = tree_commit()
    rows: list[dict] = []
    jobs = [(name, *sample_paths(name)) for name in args.models]
    with tempfile.TemporaryDirectory(prefix="quant-defaults-") as tmp:
        for spec in args.families:
            jobs.append((spec.replace(":", " "), *family_paths(spec, args.cache)))
        for name, paths, task in jobs:
            work = Path(tmp) / name.replace(" ", "_")
            variants = tuple(args.variants) if args.variants else None
            measured = measure(name, paths, task, work, variants, tuple(args.formats) if args.formats else None)
            rows += [{**r, "commit": commit} for r in measured]
            print(f"{name}: done", file=sys.stderr, flush=True)
            if args.json:
                args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    if args.readme:
        write_readme(args.readme, rows)
    return _write(table(rows, before), args.out)


HEADER = f"""# The 8-bit variants, measured

Written by `benchmarks/quant_defaults.py` (see its docstring for the command). Each model is exported with
{CALIBRATION_COUNT} calibration images drawn (seeded) from its held-out folder; "top-1 agreement" and "accuracy change" are
measured on the rest of that folder, "agreement outside the classes" on the other task's held-out images (photos for
the digit models, digits for the photo model), which no calibration saw. Core ML files run in the project's executor
(float32 arithmetic), ONNX files in onnxruntime. The family rows are sample_models.families stand-ins trained with its
recipe on digits. "default" is the capability table's (exporter/capabilities.py) at the time the table was written;
numbers in brackets are the same measurement of the code before (`--before`); an empty bracket: no such file then;
n/m: that model was not measured before.
The 8-bit gate is top-1 agreement >= 0.98.

"""


def _write(text: str, out: Path | None) -> int:
    text = HEADER + text
    if out:
        out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
