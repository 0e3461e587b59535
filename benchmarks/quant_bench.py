"""Size against decisions, side by side: coremltools' data-free palettes and this project's Fisher-weighted palettes at
2, 3, 4 and 6 bits, and the mixed bit widths (palette-mixed: measured per-layer effect, refined tables) under
average-bit budgets, on every sample model and on a full-size MobileNetV2 224.

For each file: bytes on disk and ratio to the fp32 .mlpackage, stored bits per weight (the weight file's bits over the
conv/linear/matmul weight count, so tables, biases and other constants count against it), top-1 agreement with Keras
and accuracy change, and top-1 agreement on the other task's held-out images (photos for the digit models and digits
for the photo model: images outside the model's classes, which a deployed classifier meets every day).
Calibration images are CALIBRATION_IMAGES drawn (seeded) from the model's held-out folder, as a user's export
calibrates on its held-out folder; agreement and accuracy are measured on the REST of that folder only, never on an
image calibrated on. The MobileNetV2 224 has random weights (no pretrained weights offline): its rows are sizes only.
Every Core ML file runs in the project's executor (float32 compute), as validation does off macOS.

    python -m benchmarks.quant_bench [--models NAME ...] [--files LABEL ...] [--readme README.md] [--from-results]

writes benchmarks/quant_results.json, benchmarks/quant_pareto.png and the table between README's quant-bench markers.
``--files`` (e.g. ``fp16 int8 palette8``) measures only those files (and fp32, the size reference) and replaces just
their rows in quant_results.json, keeping the others; every row records the commit it was measured on, and the README
text says which rows come from which commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
MODELS = ["mobilenet_v1_digits", "mobilenet_v2_digits", "squeezenet_digits", "transfer_photos"]
BITS = (2, 3, 4, 6)
MIXED_BUDGETS = (3.0, 3.5, 4.0)
CALIBRATION_IMAGES = 64  # drawn from the held-out folder; the benchmark measures on the others
SPLIT_SEED = 0
FULL_SIZE = "mobilenet_v2_224_random"
GROUP = 16  # output channels per lookup table, for both palettizers (coremltools' recommendation for 4 bits)
README_START = "<!-- quant-bench:start (written by `python -m benchmarks.quant_bench --readme README.md`) -->"
README_END = "<!-- quant-bench:end -->"
RESULTS = ROOT / "benchmarks" / "quant_results.json"
PLOT = ROOT / "benchmarks" / "quant_pareto.png"


def _package_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def _pixels(folder: Path, pre, labels: list[str] | None = None):
    from exporter.images import iter_batches, list_images

    items = list_images(folder)
    px = np.concatenate([b for _, b in iter_batches(items, pre, batch_size=128)])
    idx = None if labels is None else np.array([labels.index(it.label) for it in items])
    return px, idx


def _weight_elements(mlmodel) -> int:
    from exporter.quantize.coreml import _float_weights

    return sum(int(np.asarray(v).size) for _op, _c, v, _ch in _float_weights(mlmodel))


def _weight_file_bits(path: Path) -> int:
    return 8 * sum(f.stat().st_size for f in path.rglob("weight.bin"))


def _candidates(fp32, fp16, base18, sens, details: dict, **mixed_options) -> list[tuple[str, str, float, object]]:
    """(family, file label, bits per weight, build) of every file the benchmark compares, built lazily: the references,
    the shipped 8-bit files, coremltools' and the Fisher palettes at each of BITS, and palette-mixed at each of
    MIXED_BUDGETS (``mixed_options`` go to mixed.mixed; its per-layer details land in ``details``)."""
    from exporter.quantize import coreml as qc
    from exporter.quantize import mixed as qm
    from exporter.quantize import palettize as qp

    candidates: list[tuple[str, str, float, object]] = [
        ("reference", "fp32", 32, lambda: fp32),
        ("reference", "fp16", 16, lambda: fp16),
        ("8-bit", "int8", 8, lambda: qc.compress(fp16, qc.WEIGHT_ONLY_INT8)),
        ("8-bit", "palette8", 8, lambda: qc.compress(fp16, qc.PALETTE8)),
        # the default export's 6-bit file (capabilities.py: one data-free table per tensor, iOS 16)
        ("6-bit", "palette6", 6, lambda: qc.compress(fp16, qc.PALETTE6)),
    ]
    for bits in BITS:
        ct_spec = qc.CompressionSpec("palettize", bits, grouped=True)
        candidates.append(("coremltools k-means", f"ct-palette{bits}", bits, lambda s=ct_spec: qc.compress(base18, s)))
        ours = qp.PaletteSpec(bits, GROUP)
        candidates.append(("Fisher k-means", f"fisher-palette{bits}", bits, lambda s=ours: qp.palettize(base18, s, sens)))
    for budget in MIXED_BUDGETS:
        label = f"mixed-{budget:g}"

        def build(b=budget, key=label):
            return qm.mixed(base18, b, sens, details=details.setdefault(key, {}), **mixed_options)

        candidates.append(("mixed bits", label, budget, build))
    return candidates


def _commit() -> str:
    """The tree measured (benchmarks/readme_block.commit), read once, when the run starts: the code it imports is the
    code of that moment."""
    global _COMMIT
    if _COMMIT is None:
        from benchmarks.readme_block import commit

        _COMMIT = commit()
    return _COMMIT


_COMMIT: str | None = None


def _wanted(candidates: list, files: tuple[str, ...] | None) -> list:
    """The candidates named in ``files`` (all when None); fp32 always, as every ratio is measured against it."""
    return candidates if files is None else [c for c in candidates if c[1] == "fp32" or c[1] in files]


def _margins(p: np.ndarray) -> np.ndarray:
    """Per image, top-1 minus top-2 probability."""
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def bench_model(
    name: str,
    work: Path,
    say=print,
    files: tuple[str, ...] | None = None,
    split_seed: int = SPLIT_SEED,
    eval_folder: Path | None = None,
) -> list[dict]:
    """Every candidate file of sample model ``name``, calibrated on CALIBRATION_IMAGES of its held-out folder and
    measured on the rest of that folder, or on ``eval_folder`` (labelled sub-folders, none of them calibrated on) when
    given (benchmarks/fresh_crops.py)."""
    from exporter.convert.coreml import convert, save
    from exporter.loading import load_model
    from exporter.preprocessing import Preprocessing, resolve
    from exporter.provenance import ModelInfo
    from exporter.quantize import coreml as qc
    from exporter.quantize import mixed as qm
    from exporter.quantize import palettize as qp
    from exporter.runtime.executor import CoreMLExecutor

    folder = SAMPLES / name
    card = json.loads((folder / "card.json").read_text())
    loaded = load_model(folder / "model.keras")
    declared = json.loads((folder / "preprocessing.json").read_text())
    pre = resolve(Preprocessing.from_dict(declared) if declared else None, loaded.input_shape, loaded.in_model_preprocessing, source=name)
    labels = (folder / "labels.txt").read_text().split()
    info = ModelInfo(name=name, labels=labels, preprocessing=pre, source_sha256=loaded.sha256, source_file="model.keras")
    task = "photos" if "photos" in card["heldout_folder"] else "digits"
    other = "digits" if task == "photos" else "photos"
    all_px, all_idx = _pixels(SAMPLES / card["heldout_folder"], pre, labels)
    perm = np.random.default_rng(split_seed).permutation(len(all_px))
    cal_px = all_px[perm[:CALIBRATION_IMAGES]]
    px, label_idx = all_px[perm[CALIBRATION_IMAGES:]], all_idx[perm[CALIBRATION_IMAGES:]]
    if eval_folder is not None:
        px, label_idx = _pixels(eval_folder, pre, labels)
    out_px, _ = _pixels(SAMPLES / "heldout" / other, pre)
    ref = np.asarray(loaded.model.predict(pre.normalize(px), verbose=0, batch_size=128))
    ref_out = np.asarray(loaded.model.predict(pre.normalize(out_px), verbose=0, batch_size=128))
    keras_acc = float((ref.argmax(1) == label_idx).mean())
    rgb = (lambda a: a[..., ::-1]) if pre.channel_order == "BGR" else (lambda a: a)

    fp32 = convert(loaded.model, info, backend="mlprogram", precision="fp32")
    fp16 = convert(loaded.model, info, backend="mlprogram", precision="fp16")
    base18 = convert(loaded.model, info, backend="mlprogram", precision="fp16", target="iOS18")
    cal = pre.normalize(cal_px).astype(np.float32)
    t0 = time.perf_counter()
    sens = qp.weight_sensitivities(base18, loaded.model, qp.fisher(loaded.model, cal))
    fisher_seconds = time.perf_counter() - t0
    matched = f"{len(sens)}/{sum(1 for _ in qc._float_weights(base18))}"
    probe = qm._KerasProbe(loaded.model, cal)
    details: dict[str, dict] = {}

    candidates = _wanted(_candidates(fp32, fp16, base18, sens, details, probe=probe, refine_steps=qm.REFINE_STEPS), files)

    elements = _weight_elements(base18)
    rows, fp32_bytes = [], None
    for family, label, bits, build in candidates:
        t0 = time.perf_counter()
        path = work / name / f"{label}.mlpackage"
        save(build(), path)
        size = _package_bytes(path)
        fp32_bytes = fp32_bytes or size
        mixed_details = details.get(label, {}).get("mixed_bits")
        ex = CoreMLExecutor(path)
        got, got_out = ex.predict(rgb(px)), ex.predict(rgb(out_px))
        acc = float((got.argmax(1) == label_idx).mean())
        rows.append(
            {
                "model": name,
                "family": family,
                "file": label,
                "nominal_bits": bits,
                "stored_bits_per_weight": round(_weight_file_bits(path) / elements, 3),
                "mixed_average_bits": None if mixed_details is None else mixed_details["average_bits"],
                "mixed_layers": None
                if mixed_details is None
                else [{k: w[k] for k in ("weight", "elements", "bits", "kl")} for w in mixed_details["weights"]],
                "bytes": size,
                "ratio_to_fp32": round(size / fp32_bytes, 4),
                "top1_agreement": round(float((got.argmax(1) == ref.argmax(1)).mean()), 4),
                "flips": int((got.argmax(1) != ref.argmax(1)).sum()),
                "accuracy_change_points": round(100 * (acc - keras_acc), 2),
                "out_of_class_agreement": round(float((got_out.argmax(1) == ref_out.argmax(1)).mean()), 4),
                "max_abs_prob": round(float(np.abs(got - ref).max()), 4),
                "mean_max_abs_prob": round(float(np.abs(got - ref).max(axis=1).mean()), 4),
                # how close to a tie each image that changed its decision was in Keras (top-1 minus top-2 probability)
                "flipped_keras_margins": [round(float(m), 3) for m in _margins(ref)[got.argmax(1) != ref.argmax(1)]],
                "images": len(px),
                "calibration_images": len(cal_px),
                "out_of_class_images": len(out_px),
                "keras_accuracy": round(keras_acc, 4),
                "weights_matched": matched,
                "fisher_seconds": round(fisher_seconds, 1),
                "seconds": round(time.perf_counter() - t0, 1),
                "commit": _commit(),
            }
        )
        say(
            f"{name:22s} {label:18s} {size:>10,d} {rows[-1]['ratio_to_fp32']:.3f} agree {rows[-1]['top1_agreement']:.4f}"
            f" acc {rows[-1]['accuracy_change_points']:+.2f} out {rows[-1]['out_of_class_agreement']:.4f}"
        )
    return rows


def bench_full_size(work: Path, say=print, files: tuple[str, ...] | None = None) -> list[dict]:
    """keras.applications MobileNetV2 (alpha 1.0, 224 px, 1000 classes, 3.5 M weights) with RANDOM weights: file sizes
    and stored bits per weight only. A random classifier's outputs are near uniform, so agreement on it would prove
    nothing and is not measured. Fisher sensitivities from 4 held-out digits (resized); the mixed files use the Fisher
    estimate (no measured effect, no refinement): their size is what the row shows."""
    import keras

    from exporter.convert.coreml import convert, save
    from exporter.preprocessing import Preprocessing
    from exporter.provenance import ModelInfo
    from exporter.quantize import palettize as qp

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None, classes=1000)
    pre = Preprocessing.from_dict({"input_size": [224, 224], "scale": [1 / 127.5], "bias": [-1.0]})
    info = ModelInfo(name=FULL_SIZE, labels=[f"c{i}" for i in range(1000)], preprocessing=pre, source_sha256="0", source_file="-")
    fp32 = convert(model, info, backend="mlprogram", precision="fp32")
    fp16 = convert(model, info, backend="mlprogram", precision="fp16")
    base18 = convert(model, info, backend="mlprogram", precision="fp16", target="iOS18")
    px, _ = _pixels(SAMPLES / "heldout" / "digits", pre)
    sens = qp.weight_sensitivities(base18, model, qp.fisher(model, pre.normalize(px[:4]).astype(np.float32)))
    details: dict[str, dict] = {}
    candidates = _wanted(_candidates(fp32, fp16, base18, sens, details), files)
    elements = _weight_elements(base18)
    rows, fp32_bytes = [], None
    for family, label, bits, build in candidates:
        t0 = time.perf_counter()
        path = work / FULL_SIZE / f"{label}.mlpackage"
        save(build(), path)
        size = _package_bytes(path)
        fp32_bytes = fp32_bytes or size
        mixed_details = details.get(label, {}).get("mixed_bits")
        rows.append(
            {
                "model": FULL_SIZE,
                "family": family,
                "file": label,
                "nominal_bits": bits,
                "stored_bits_per_weight": round(_weight_file_bits(path) / elements, 3),
                "mixed_average_bits": None if mixed_details is None else mixed_details["average_bits"],
                "bytes": size,
                "ratio_to_fp32": round(size / fp32_bytes, 4),
                "top1_agreement": None,
                "accuracy_change_points": None,
                "out_of_class_agreement": None,
                "seconds": round(time.perf_counter() - t0, 1),
                "commit": _commit(),
            }
        )
        say(f"{FULL_SIZE:22s} {label:18s} {size:>10,d} {rows[-1]['ratio_to_fp32']:.3f} bits {rows[-1]['stored_bits_per_weight']:.3f}")
    return rows


def _cell(value, fmt: str) -> str:
    return "n/a (random weights)" if value is None else format(value, fmt)


# Issue 18's bar for a file at <= 4 bits per weight: top-1 agreement >= 0.99 and accuracy within 0.5 points of Keras.
BAR_AGREEMENT = 0.99
BAR_ACCURACY_POINTS = -0.5


def summary(rows: list[dict]) -> str:
    """Per sample model, the files of 4 nominal bits or fewer (2-4-bit palettes, mixed budgets up to 4) and whether
    each meets issue 18's bar. "budget bits" is what palette-mixed's budget counts (indices and tables of the
    conv/dense weights); "weight-file bits" counts every bit of weight.bin (biases and alignment padding too)."""
    head = (
        "| model | file | budget bits/weight | weight-file bits/weight | ratio to fp32 | top-1 agreement "
        "| accuracy change (points) | meets the bar |\n|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        if r["top1_agreement"] is None or r["nominal_bits"] > 4 or r["family"] == "reference":
            continue
        ok = r["top1_agreement"] >= BAR_AGREEMENT and r["accuracy_change_points"] >= BAR_ACCURACY_POINTS
        budget = "" if r.get("mixed_average_bits") is None else f"{r['mixed_average_bits']:.2f}"
        lines.append(
            f"| {r['model']} | {r['file']} | {budget} | {r['stored_bits_per_weight']:.2f} | {r['ratio_to_fp32']:.3f} "
            f"| {r['top1_agreement']:.4f} | {r['accuracy_change_points']:+.2f} | {'yes' if ok else 'no'} |"
        )
    return head + "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = (
        "| model | file | family | nominal bits | stored bits/weight | bytes | ratio to fp32 | top-1 agreement "
        "| accuracy change (points) | agreement outside the classes |\n|---|---|---|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(
        f"| {r['model']} | {r['file']} | {r['family']} | {r['nominal_bits']:g} | {r['stored_bits_per_weight']:.2f} "
        f"| {r['bytes']:,} | {r['ratio_to_fp32']:.3f} | {_cell(r['top1_agreement'], '.4f')} "
        f"| {_cell(r['accuracy_change_points'], '+.2f')} | {_cell(r['out_of_class_agreement'], '.4f')} |"
        for r in rows
    )


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows if r["top1_agreement"] is not None))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
    styles = {
        "coremltools k-means": ("o-", "tab:gray"),
        "Fisher k-means": ("s-", "tab:blue"),
        "mixed bits": ("D-", "tab:red"),
        "8-bit": ("^", "tab:green"),
        "6-bit": ("v", "tab:olive"),
        "reference": ("x", "black"),
    }
    for ax, model in zip(axes[0], models, strict=True):
        for family, (marker, color) in styles.items():
            pts = sorted((r["ratio_to_fp32"], r["top1_agreement"]) for r in rows if r["model"] == model and r["family"] == family)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker, color=color, label=family, markersize=5)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("size / fp32")
        ax.set_ylim(0.5, 1.005)
        ax.axhline(0.98, color="tab:orange", lw=0.8, ls="--")
        ax.axhline(BAR_AGREEMENT, color="tab:purple", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 agreement with Keras")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def provenance(rows: list[dict], fallback: str) -> str:
    """Which rows were measured on which commit (rows without a commit are from the run of ``fallback``): per commit,
    its files, each followed by the models it was measured for unless that is every model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    by: dict[str, dict[str, list[str]]] = {}
    for r in rows:
        by.setdefault(r.get("commit", fallback), {}).setdefault(r["file"], []).append(r["model"])
    if len(by) == 1:
        return f"Every row measured on commit {next(iter(by))}."
    parts = []
    for commit, files in by.items():
        groups: dict[tuple, list[str]] = {}
        for file, ms in files.items():
            groups.setdefault(tuple(ms), []).append(file)
        text = "; ".join(f"{', '.join(fs)} ({'every model' if len(ms) == len(models) else ', '.join(ms)})" for ms, fs in groups.items())
        parts.append(f"{commit}: {text}")
    return "Rows by the commit they were measured on: " + ". ".join(parts) + "."


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with every (model, file) row that ``new`` has replaced by its new measurement, order kept; fp32's
    bytes may differ slightly between runs, so ratios of the rows kept are not recomputed (they are of their run)."""
    fresh = {(r["model"], r["file"]): r for r in new}
    out = [fresh.pop((r["model"], r["file"]), r) for r in old]
    return out + list(fresh.values())


# The commit of the run that wrote the rows saved before rows recorded their commit (README: "One run, 2847 s").
FIRST_RUN_COMMIT = "cd99382"


def write_readme(readme: Path, rows: list[dict], seconds: int | None = None) -> None:
    from benchmarks.readme_block import replace_block

    took = "" if seconds is None else f"The full run took {seconds} s on the shared 2-core machine. "
    took += provenance(rows, FIRST_RUN_COMMIT) + " "
    body = (
        f"\n![size against top-1 agreement](benchmarks/{PLOT.name})\n\n{took}Files of 4 bits or fewer "
        f"against issue 18's bar (top-1 agreement >= {BAR_AGREEMENT}, accuracy within {-BAR_ACCURACY_POINTS} points):\n\n"
        f"{summary(rows)}\n\nEvery file:\n\n{table(rows)}\n"
    )
    replace_block(readme, README_START, README_END, body)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[*MODELS, FULL_SIZE], choices=[*MODELS, FULL_SIZE])
    p.add_argument("--readme", type=Path)
    p.add_argument(
        "--files", nargs="+", help="measure only these files (labels such as fp16, int8, mixed-4); merge their rows into the saved results"
    )
    p.add_argument(
        "--split-seed",
        type=int,
        default=SPLIT_SEED,
        help=f"seed of the calibration/held-out split (default {SPLIT_SEED}); another seed checks that a result is not one split's luck",
    )
    p.add_argument("--results", type=Path, default=RESULTS, help=f"where the rows go (default {RESULTS.relative_to(ROOT)})")
    p.add_argument("--from-results", action="store_true", help="measure nothing: rewrite the README table and the plot from --results")
    args = p.parse_args(argv)
    if args.split_seed != SPLIT_SEED and args.results == RESULTS:
        # one file holds one split: rows of another split merged into it would be read as the default split's
        p.error(f"--split-seed {args.split_seed} needs its own --results file ({RESULTS.name} holds split {SPLIT_SEED})")
    if args.from_results:
        saved = json.loads(args.results.read_text())
        rows = saved["rows"]
        if args.results == RESULTS:  # README's plot is of README's split
            plot(rows, PLOT)
        if args.readme:
            write_readme(args.readme, rows, saved.get("run_seconds"))
        print(table(rows))
        return
    rows, started = [], time.perf_counter()
    _commit()
    files = tuple(args.files) if args.files else None
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp:
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        for name in args.models:
            rows += (
                bench_full_size(Path(tmp), say, files) if name == FULL_SIZE else bench_model(name, Path(tmp), say, files, args.split_seed)
            )
    seconds: int | None = round(time.perf_counter() - started)
    if files is not None:  # a partial run: the other rows, and the full run's time, are those saved
        saved = json.loads(args.results.read_text()) if args.results.exists() else {"rows": []}
        rows = merge(saved["rows"], [r for r in rows if r["file"] in files])
        seconds = saved.get("run_seconds")
    args.results.write_text(
        json.dumps(
            {
                "rows": rows,
                "bits": BITS,
                "mixed_budgets": MIXED_BUDGETS,
                "group": GROUP,
                "calibration_images": CALIBRATION_IMAGES,
                "split_seed": args.split_seed,
                "run_seconds": seconds,
            },
            indent=1,
        )
        + "\n"
    )
    if args.results == RESULTS:
        plot(rows, PLOT)
    if args.readme:
        write_readme(args.readme, rows, seconds)
    print(table(rows))


if __name__ == "__main__":
    main()
