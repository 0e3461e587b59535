"""Throughput of the numpy Core ML executor against onnxruntime and Keras on the same model and the same batch.

    .venv/bin/python benchmarks/executor_bench.py [--batch 16] [--repeats 5]

Standalone, it builds the random-weight MobileNetV2 (alpha 1.0, 224 px) of benchmarks/export_bench.py and exports its
fp32 .mlpackage and ONNX files; benchmarks/run.py calls ``measure`` on the files its export section already wrote.
Each runtime gets one warm-up call; the figure is the median of ``repeats`` timed calls on one uint8 batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH = 16
REPEATS = 5


def _median_rate(fn, batch, repeats: int) -> float:
    fn(batch)  # warm-up: lazy initialisation and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return len(batch) / statistics.median(times)


def measure(mlpackage: Path, onnx_file: Path, keras_file: Path, preprocessing: dict, batch: int = BATCH,
            repeats: int = REPEATS) -> dict:
    """Images per second of each runtime on the same uint8 batch, and the executor's ratios to the other two."""
    import keras
    import numpy as np

    from exporter.preprocessing import Preprocessing
    from exporter.runtime import KerasRunner, OnnxRunner
    from exporter.runtime.executor import CoreMLExecutor

    pre = Preprocessing.from_dict(preprocessing)
    h, w = pre.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    runners = {"executor": CoreMLExecutor(mlpackage).predict, "onnxruntime": OnnxRunner(onnx_file, pre),
               "keras": KerasRunner(keras.saving.load_model(keras_file, compile=False), pre)}
    rates = {name: round(_median_rate(fn, pixels, repeats), 1) for name, fn in runners.items()}
    return {"model": f"{mlpackage.name} / {onnx_file.name}", "batch": batch, "repeats": repeats,
            "images_per_second": rates, "numpy": np.__version__,
            "executor_vs_onnxruntime": round(rates["executor"] / rates["onnxruntime"], 3),
            "executor_vs_keras": round(rates["executor"] / rates["keras"], 3)}


def render(r: dict) -> str:
    lines = [f"{r['model']}, batch {r['batch']}, median of {r['repeats']} ({os.cpu_count()} CPUs, numpy {r['numpy']})"]
    lines += [f"  {name:12s} {rate:8.1f} images/s" for name, rate in r["images_per_second"].items()]
    lines += [f"  executor / onnxruntime = {r['executor_vs_onnxruntime']:.2f}  (target >= 0.33)",
              f"  executor / keras       = {r['executor_vs_keras']:.2f}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    args = parser.parse_args(argv)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import json

    from export_bench import build_large

    from exporter.api import ExportOptions, export

    with tempfile.TemporaryDirectory() as tmp:
        s = build_large(Path(tmp) / "model")
        out = Path(tmp) / "export"
        manifest = export(s["model"], s["labels"], out, preprocessing=s["preprocessing"],
                          options=ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",)))
        files = {a["format"]: out / a["path"] for a in manifest["artifacts"]}
        print(render(measure(files["mlpackage"], files["onnx"], s["model"],
                             json.loads(s["preprocessing"].read_text()), args.batch, args.repeats)))


if __name__ == "__main__":
    sys.exit(main())
