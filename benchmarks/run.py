"""Benchmarks: speed, size and fidelity measured side by side in one run; prints a table and writes JSON.

    python benchmarks/run.py [--json benchmarks/results.json] [--quick]

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

import numpy as np  # noqa: E402

SAMPLES = ["mobilenet_v1_digits", "mobilenet_v2_digits", "squeezenet_digits", "transfer_photos"]
EXPORT_VARIANTS = ("fp32", "fp16", "int8", "palette8", "palette6", "palette4", "int8-dynamic", "int8-static")


def _sample(name: str) -> dict:
    folder = ROOT / "sample_models" / name
    card = json.loads((folder / "card.json").read_text())
    pre = json.loads((folder / "preprocessing.json").read_text())
    return {"model": folder / "model.keras", "labels": folder / "labels.txt",
            "preprocessing": None if pre.get("in_model") else folder / "preprocessing.json",
            "heldout": ROOT / "sample_models" / card["heldout_folder"]}


# ------------------------------------------------------------------------------------------------ 1. export overhead
def direct_conversions(model_path: Path, labels: list[str], pre, calibration: list[np.ndarray], out: Path) -> float:
    """The same conversions written as plain coremltools / tf2onnx / onnxruntime calls: the peer to beat."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from exporter.convert.prologue import for_conversion, imagetype_scale_bias

    t0 = time.perf_counter()
    model = keras.saving.load_model(model_path, compile=False)
    scale, bias, mult = imagetype_scale_bias(pre)
    h, w = pre.input_size
    src = for_conversion(model, mult)
    image = ct.ImageType(name="image", shape=(1, h, w, 3), scale=scale, bias=bias)

    def conv(precision, target):
        return ct.convert(src, inputs=[image], classifier_config=ct.ClassifierConfig(labels), convert_to="mlprogram",
                          compute_precision=precision, minimum_deployment_target=target, skip_model_load=True)

    conv(ct.precision.FLOAT32, ct.target.iOS15).save(str(out / "fp32.mlpackage"))
    fp16 = conv(ct.precision.FLOAT16, ct.target.iOS15)
    fp16.save(str(out / "fp16.mlpackage"))
    cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", granularity="per_channel", weight_threshold=1)
    cto.linear_quantize_weights(fp16, cto.OptimizationConfig(global_config=cfg)).save(str(out / "int8.mlpackage"))
    for nbits in (8, 6):
        cfg = cto.OpPalettizerConfig(nbits=nbits, mode="kmeans", weight_threshold=1)
        cto.palettize_weights(fp16, cto.OptimizationConfig(global_config=cfg)).save(str(out / f"p{nbits}.mlpackage"))
    cfg = cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=16,
                                 weight_threshold=1)
    cto.palettize_weights(conv(ct.precision.FLOAT16, ct.target.iOS18),
                          cto.OptimizationConfig(global_config=cfg)).save(str(out / "p4.mlpackage"))
    spec = (tf.TensorSpec((None, h, w, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(for_conversion(model, None, "input"), input_signature=spec, opset=17)
    onnx.save(proto, out / "fp32.onnx")
    onnx.save(convert_float_to_float16(proto, keep_io_types=True), out / "fp16.onnx")
    quantize_dynamic(out / "fp32.onnx", out / "dyn.onnx", weight_type=QuantType.QInt8, per_channel=True)

    class Reader:
        def __init__(self):
            self.it = iter({"input": b[i:i + 1]} for b in calibration for i in range(len(b)))

        def get_next(self):
            return next(self.it, None)

    quantize_static(out / "fp32.onnx", out / "static.onnx", Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return time.perf_counter() - t0


def bench_export(name: str, tmp: Path) -> dict:
    from exporter.api import ExportOptions, _calibration, export
    from exporter.labels import read_labels
    from exporter.preprocessing import Preprocessing, resolve

    s = _sample(name)
    t0 = time.perf_counter()
    manifest = export(s["model"], s["labels"], tmp / f"{name}-toolkit", preprocessing=s["preprocessing"],
                      options=ExportOptions(formats=("mlpackage", "onnx"), variants=EXPORT_VARIANTS,
                                            calibration_images=s["heldout"]))
    toolkit = time.perf_counter() - t0
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    calibration = [pre.normalize(b) for b in _calibration(s["heldout"], pre, 64)]
    (tmp / f"{name}-direct").mkdir()
    direct = direct_conversions(s["model"], read_labels(s["labels"]), pre if not pre.in_model else resolve(
        None, tuple(manifest["source"]["input_shape"]), ["rescale"]), calibration, tmp / f"{name}-direct")
    return {"model": name, "toolkit_seconds": round(toolkit, 2), "direct_seconds": round(direct, 2),
            "overhead_ratio": round(toolkit / direct, 3), "artifacts": manifest["artifacts"], "dir": str(tmp / f"{name}-toolkit")}


# ------------------------------------------------------------------------------------------------ 4. fidelity
def fidelity(export_dir: str, images: Path) -> list[dict]:
    from exporter.errors import ParityError
    from exporter.validation.parity import validate

    try:
        report = validate(export_dir, images)
    except ParityError as exc:
        report = exc.report
    return [{k: a.get(k) for k in ("path", "variant", "status", "top1_agreement", "max_abs_prob", "reason")}
            for a in report["artifacts"]]


# ------------------------------------------------------------------------------------------------ 5. validate memory
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
        code = ("import resource, sys, time; from exporter.validation.parity import validate; t=time.perf_counter(); "
                f"validate({export_dir!r}, {str(folder)!r}); dt=time.perf_counter()-t; "
                "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, dt)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        rss_kb, seconds = out.stdout.split()[-2:]
        rows.append({"images": count, "peak_rss_mb": round(int(rss_kb) / 1024, 1),
                     "images_per_second": round(count / float(seconds), 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results.json")
    parser.add_argument("--quick", action="store_true", help="one sample model, 100 and 1,000 images")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    names = SAMPLES[1:2] if args.quick else SAMPLES
    results: dict = {"machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.system()}",
                     "python": platform.python_version()}
    with tempfile.TemporaryDirectory(prefix="exporter-bench-") as tmp_name:
        tmp = Path(tmp_name)
        results["export"] = [bench_export(n, tmp) for n in names]
        results["fidelity"] = {r["model"]: fidelity(r["dir"], _sample(r["model"])["heldout"]) for r in results["export"]}
        executor = ROOT / "benchmarks" / "executor_bench.py"
        if executor.exists():
            out = subprocess.run([sys.executable, str(executor)], capture_output=True, text=True, cwd=ROOT)
            results["executor"] = out.stdout.strip() if out.returncode == 0 else f"failed: {out.stderr[-500:]}"
        v2 = next(r for r in results["export"] if r["model"] == "mobilenet_v2_digits")
        counts = (100, 1000) if args.quick else (200, 2000)
        results["validate"] = validate_memory(v2["dir"], _sample("mobilenet_v2_digits")["heldout"], counts, tmp)
    for r in results["export"]:
        del r["dir"]
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))


def render(results: dict) -> str:
    lines = [f"machine: {results['machine']}", "", "## Export time: toolkit vs direct library calls",
             "| model | toolkit s | direct s | overhead ratio (target <= 1.15) |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['toolkit_seconds']} | {r['direct_seconds']} | {r['overhead_ratio']} |"
              for r in results["export"]]
    lines += ["", "## Size and fidelity per variant",
              "| model | artifact | bytes | vs fp32 | limit | top-1 agree | max abs dp | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in results["export"]:
        fid = {f["path"]: f for f in results["fidelity"][r["model"]]}
        for a in r["artifacts"]:
            f = fid[a["path"]]
            agree = "not run" if f["status"] == "not run" else f"{f['top1_agreement']:.4f}"
            dp = "" if f["status"] == "not run" else f"{f['max_abs_prob']:.2e}"
            lines.append(f"| {r['model']} | {a['path']} | {a['bytes']:,} | {a['ratio_to_fp32']:.3f} | "
                         f"{a['details']['theoretical_ratio']:.3f} | {agree} | {dp} | {a['details']['seconds']} |")
    if "executor" in results:
        lines += ["", "## Core ML executor throughput (benchmarks/executor_bench.py)", "```", results["executor"], "```"]
    lines += ["", "## exporter validate: memory and throughput", "| images | peak RSS MB | images/s |", "|---|---|---|"]
    lines += [f"| {v['images']} | {v['peak_rss_mb']} | {v['images_per_second']} |" for v in results["validate"]]
    a, b = results["validate"][0], results["validate"][-1]
    lines.append(f"\npeak memory ratio {b['images']} vs {a['images']} images: {b['peak_rss_mb'] / a['peak_rss_mb']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
