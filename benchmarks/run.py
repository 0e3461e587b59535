"""Benchmarks: speed, size and fidelity measured side by side in one run; prints a table and writes JSON.

    python benchmarks/run.py [--json benchmarks/results.json] [--quick] [--readme README.md]
    python benchmarks/run.py --render-only --readme README.md     # README's block again from the saved results

On the four trained sample models and on a random-weight MobileNetV2 (alpha 1.0, 224 px) built for the run:
1. export time per artifact, toolkit total vs the same conversions as direct library calls (export_bench.py);
2. the Linux Core ML executor's throughput vs onnxruntime and Keras on the 224 px fp32 files (executor_bench.py);
3. each variant's size vs fp32 and vs bits/32; 4. fidelity per variant against Keras on held-out images (trained
models only); 5. `exporter validate` peak memory and throughput at 200 and 2,000 images.

Absolute times on a shared 2-core machine are noise; the ratios (toolkit vs direct library calls, executor vs
onnxruntime and Keras, 2,000 vs 200 images) are measured in the same run and are what the targets are about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import executor_bench  # noqa: E402
import export_bench  # noqa: E402


# ------------------------------------------------------------------------------------------------ 4. fidelity
def fidelity(export_dir: str, images: Path) -> list[dict]:
    from exporter.errors import ParityError
    from exporter.validation.parity import validate

    try:
        report = validate(export_dir, images)
    except ParityError as exc:
        report = exc.report
    return [{k: a.get(k) for k in ("path", "variant", "status", "top1_agreement", "max_abs_prob", "reason")} for a in report["artifacts"]]


# ------------------------------------------------------------------------------------------------ 5. validate memory
# `exporter validate` in a fresh process, through the CLI entry point. Its peak is read from /proc/self/status
# (VmHWM: this process image only). getrusage's ru_maxrss is not used on Linux: it keeps the high-water mark of the
# parent's memory across fork and exec, so a child started by a large benchmark process reports the parent's peak.
_VALIDATE_CHILD = """
import resource, sys, time
from exporter.cli import run
from exporter.errors import ExporterError
t = time.perf_counter()
try:
    code = run(["validate", sys.argv[1], "--images", sys.argv[2]])
except ExporterError as exc:  # a failed gate still measured the whole run
    code = exc.exit_code
seconds = time.perf_counter() - t
try:
    status = open("/proc/self/status").read()
    peak_mb = int(next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]) / 1024
except OSError:  # macOS: ru_maxrss in bytes, and no inheritance across exec
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(round(peak_mb, 1), seconds, code)
"""


def validate_memory(export_dir: str, images: Path, counts: tuple[int, ...], tmp: Path) -> list[dict]:
    files = sorted(p for p in images.rglob("*") if p.suffix in (".png", ".jpg"))
    rows = []
    for count in counts:
        folder = tmp / f"images-{count}"
        for i in range(count):
            src = files[i % len(files)]
            dst = folder / src.parent.name / f"{i:05d}{src.suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        out = subprocess.run([sys.executable, "-c", _VALIDATE_CHILD, export_dir, str(folder)], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise RuntimeError(f"validate on {count} images failed: {out.stderr.strip()[-500:]}")
        peak_mb, seconds, code = out.stdout.split()[-3:]
        rows.append(
            {"images": count, "peak_rss_mb": float(peak_mb), "images_per_second": round(count / float(seconds), 1), "exit_code": int(code)}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--quick", action="store_true", help="one sample model and the 224 px model; 100 and 1,000 images")
    parser.add_argument("--readme", type=Path, help="also write the tables between this README's bench-run markers")
    parser.add_argument("--render-only", action="store_true", help="measure nothing: render the results saved in --json")
    args = parser.parse_args()
    if args.render_only:
        results = json.loads(args.json.read_text())
    else:
        results = measure(args.quick)
        # the file also holds sections other benchmarks write (executor_bench.py --families): keep them
        saved = json.loads(args.json.read_text()) if args.json.exists() else {}
        args.json.write_text(json.dumps({**saved, **results}, indent=2) + "\n")
    print(render_readme(results))  # what README shows, whether or not it is written
    if args.readme:
        from benchmarks.readme_block import replace_block

        replace_block(args.readme, README_START, README_END, "\n" + render_readme(results))


def measure(quick: bool) -> dict:
    import logging

    from benchmarks.readme_block import commit

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    names = export_bench.SAMPLES[1:2] if quick else export_bench.SAMPLES
    results: dict = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}",
        "python": platform.python_version(),
        "commit": commit(),
        "quick": quick,
        "load_average_start": round(os.getloadavg()[0], 1),
    }
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        export_bench.warm_up(tmp)
        models = [export_bench.sample(n) for n in names] + [export_bench.build_large(tmp / export_bench.LARGE)]
        results["export"] = [export_bench.bench_export(m, tmp, direct_first=i % 2 == 1) for i, m in enumerate(models)]
        cpu = [sum(r[k] for r in results["export"]) for k in ("toolkit_cpu_seconds", "direct_cpu_seconds")]
        results["export_total"] = {
            "toolkit_cpu_seconds": round(cpu[0], 2),
            "direct_cpu_seconds": round(cpu[1], 2),
            "overhead_ratio": round(cpu[0] / cpu[1], 3),
        }
        by_name = {m["name"]: m for m in models}
        results["fidelity"] = {r["model"]: fidelity(r["dir"], by_name[r["model"]]["heldout"]) for r in results["export"] if r["trained"]}
        large = results["export"][-1]
        files = {(a["format"], a["variant"]): Path(large["dir"]) / a["path"] for a in large["artifacts"]}
        large_model = by_name[export_bench.LARGE]
        results["executor"] = executor_bench.measure(
            files["mlpackage", "fp32"], files["onnx", "fp32"], large_model["model"], json.loads(large_model["preprocessing"].read_text())
        )
        v2 = next(r for r in results["export"] if r["model"] == "mobilenet_v2_digits")
        counts = (100, 1000) if quick else (200, 2000)
        results["validate"] = validate_memory(v2["dir"], by_name["mobilenet_v2_digits"]["heldout"], counts, tmp)
    for r in results["export"]:
        del r["dir"]
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["load_average_end"] = round(os.getloadavg()[0], 1)
    return results


README_START = "<!-- bench-run:start (written by `python benchmarks/run.py --readme README.md`) -->"
README_END = "<!-- bench-run:end -->"
# What each ratio is held to (README "Measured"): the toolkit's export may cost at most 15 % more CPU than the same
# conversions as direct library calls; the executor, a numpy interpreter, must reach a third of onnxruntime's speed.
EXPORT_OVERHEAD_TARGET = 1.15
EXECUTOR_VS_ONNXRUNTIME_TARGET = 0.33


def _variant_table(results: dict) -> list[str]:
    lines = [
        "| model | artifact | bytes | vs fp32 | bits/32 | top-1 agreement | max abs dp | build s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["export"]:
        fid = {f["path"]: f for f in results["fidelity"].get(r["model"], [])}
        for a in r["artifacts"]:
            f = fid.get(a["path"])
            if f is None or f.get("top1_agreement") is None:
                agree, dp = ("random weights" if f is None else f["status"]), ""
            else:
                agree, dp = f"{f['top1_agreement']:.4f}", f"{f['max_abs_prob']:.2e}"
            lines.append(
                f"| {r['model']} | {a['path']} | {a['bytes']:,} | {a['ratio_to_fp32']:.3f} | "
                f"{a['details']['theoretical_ratio']:.3f} | {agree} | {dp} | {a['details']['seconds']} |"
            )
    return lines


def render_readme(results: dict) -> str:
    """README's block: the run's provenance, the ratios against their targets, and every file's size and fidelity."""
    total, ex, val = results["export_total"], results["executor"], results["validate"]
    large = results["export"][-1]
    rates = ex["images_per_second"]
    small, big = val[0], val[-1]
    per_model = ", ".join(f"{r['model']} {r['overhead_ratio']:.2f}" for r in results["export"])
    sizes = "; ".join(
        f"{a['format']} {a['variant']} {a['ratio_to_fp32']:.3f} (bits/32 {a['details']['theoretical_ratio']:.3f})"
        for a in large["artifacts"]
        if a["variant"] not in ("fp32", "fp16")
    )
    lines = [
        f"Commit {results.get('commit', 'not recorded')}, {results['machine']}, Python {results['python']}; the whole run "
        f"took {results['total_seconds']} s, load average {results.get('load_average_start', '?')} at its start and "
        f"{results.get('load_average_end', '?')} at its end{' (--quick)' if results.get('quick') else ''}.",
        "",
        "| what | measured | target |",
        "|---|---|---|",
        f"| export, toolkit vs the same conversions as direct library calls, all models (CPU s) | "
        f"{total['toolkit_cpu_seconds']} vs {total['direct_cpu_seconds']} = {total['overhead_ratio']:.2f} | "
        f"<= {EXPORT_OVERHEAD_TARGET} |",
        f"| the same, per model | {per_model} | |",
        f"| Core ML executor vs onnxruntime, {ex['model']}, batch {ex['batch']} | {rates['executor']} vs "
        f"{rates['onnxruntime']} images/s = {ex['executor_vs_onnxruntime']:.2f} | >= {EXECUTOR_VS_ONNXRUNTIME_TARGET} |",
        f"| Core ML executor vs calling the Keras model, same model and batch | {rates['executor']} vs {rates['keras']} "
        f"images/s = {ex['executor_vs_keras']:.2f} | > 1 |",
        f"| {large['model']} size vs fp32 | {sizes} | bits/32 |",
        f"| `exporter validate` peak RSS, {big['images']:,} vs {small['images']:,} images | {big['peak_rss_mb']:,} vs "
        f"{small['peak_rss_mb']:,} MB = {big['peak_rss_mb'] / small['peak_rss_mb']:.2f} | flat |",
        f"| `exporter validate` throughput, {big['images']:,} vs {small['images']:,} images (whole command) | "
        f"{big['images_per_second']} vs {small['images_per_second']} images/s | |",
        "",
        "| model | ran first | toolkit CPU s (wall) | direct CPU s (wall) | ratio, CPU | ratio, wall |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['first']} | {r['toolkit_cpu_seconds']} ({r['toolkit_seconds']}) | "
        f"{r['direct_cpu_seconds']} ({r['direct_seconds']}) | {r['overhead_ratio']:.3f} | {r['overhead_ratio_wall']:.3f} |"
        for r in results["export"]
    ]
    files = sum(len(r["artifacts"]) for r in results["export"])
    lines += [
        "",
        f"<details><summary>size and fidelity of every file ({files})</summary>",
        "",
        *_variant_table(results),
        "",
        "</details>",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
