"""The photo sample's quantized files judged on many fresh held-out photos, where one image is a small step.

quant_bench measures agreement on the 136 held-out photos it did not calibrate on, so one image moves agreement by
0.74 points and issue 18's 4-bit bar (0.99 agreement, accuracy within 0.5 points) asks for zero net loss there: a pass
or a fail can be one split's luck. The photo sample's held-out region of every photograph (x >= HELDOUT_START of its
width, never trained on; sample_models/data.py) holds many more crops than the folder's 40 per class, so this writes
PER_CLASS new crops per class from it (another seed than the folder's; the folder's boxes, sizes, modes and formats)
and measures quant_bench's files on them, calibrated as quant_bench does (64 images of the held-out folder). Each row
also gives a 95 % Wilson interval for the agreement.

    python -m benchmarks.fresh_crops [--per-class 200] [--files fp16 int8 ...] [--readme README.md]

writes benchmarks/fresh_crops_results.json and the table between README's fresh-crops markers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.quant_bench import ROOT, bench_model

MODEL = "transfer_photos"
PER_CLASS = 200
CROP_SEED = 777  # the held-out folder's crops come from data.SEED + 1; these are other boxes of the same regions
FILES = ("fp16", "int8", "palette8", "palette6", "ct-palette6", "ct-palette4", "fisher-palette4", "mixed-3.5", "mixed-4")
RESULTS = ROOT / "benchmarks" / "fresh_crops_results.json"
README_START = "<!-- fresh-crops:start (written by `python -m benchmarks.fresh_crops --readme README.md`) -->"
README_END = "<!-- fresh-crops:end -->"
WILSON_Z = 1.96  # two-sided 95 %


def write_crops(folder: Path, per_class: int, seed: int) -> int:
    """``per_class`` crops of every photo class's held-out region into ``folder``/<label>/, varied in mode and format as
    the held-out folder is; returns how many."""
    from sample_models import data

    count = 0
    for label, n, _box, img, ext, fmt in data.heldout_photo_crops(np.random.default_rng(seed), per_class):
        data._save(img, folder / label / f"{label}_{n:04d}.{ext}", fmt)
        count += 1
    return count


def wilson(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def table(rows: list[dict]) -> str:
    head = (
        "| file | stored bits/weight | ratio to fp32 | top-1 agreement (95 % interval) | flips | accuracy change (points) "
        "| mean max \\|dp\\| |\n|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        lo, hi = wilson(r["images"] - r["flips"], r["images"])
        lines.append(
            f"| {r['file']} | {r['stored_bits_per_weight']:.2f} | {r['ratio_to_fp32']:.3f} | {r['top1_agreement']:.4f} "
            f"({lo:.3f}-{hi:.3f}) | {r['flips']} of {r['images']} | {r['accuracy_change_points']:+.2f} "
            f"| {r['mean_max_abs_prob']:.4f} |"
        )
    return head + "\n".join(lines)


def write_readme(readme: Path, saved: dict) -> None:
    from benchmarks.readme_block import replace_block

    rows = saved["rows"]
    commits = ", ".join(sorted({r["commit"] for r in rows}))
    body = (
        f"\n{MODEL}, {rows[0]['images']} fresh held-out crops (seed {saved['seed']}), Keras accuracy "
        f"{rows[0]['keras_accuracy']:.4f} on them; measured on {commits} in {saved['run_seconds']} s on the shared 2-core "
        f"machine:\n\n{table(rows)}\n"
    )
    replace_block(readme, README_START, README_END, body)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-class", type=int, default=PER_CLASS)
    p.add_argument("--seed", type=int, default=CROP_SEED)
    p.add_argument("--files", nargs="+", default=list(FILES), help="quant_bench file labels to measure (fp32 always)")
    p.add_argument("--readme", type=Path)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--from-results", action="store_true", help="measure nothing: rewrite the README table from --results")
    args = p.parse_args(argv)
    if args.from_results:
        saved = json.loads(args.results.read_text())
    else:
        started = time.perf_counter()
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        with tempfile.TemporaryDirectory(prefix="fresh-crops-") as tmp:
            crops = Path(tmp) / "crops"
            say(f"{write_crops(crops, args.per_class, args.seed)} crops written")
            rows = bench_model(MODEL, Path(tmp), say, tuple(args.files), eval_folder=crops)
        saved = {"rows": rows, "per_class": args.per_class, "seed": args.seed, "run_seconds": round(time.perf_counter() - started)}
        args.results.write_text(json.dumps(saved, indent=1) + "\n")
    if args.readme:
        write_readme(args.readme, saved)
    print(table(saved["rows"]))


if __name__ == "__main__":
    main()
