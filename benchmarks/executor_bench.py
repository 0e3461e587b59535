"""Throughput of the numpy Core ML executor against onnxruntime and Keras on the same MobileNetV2, same run.

    .venv/bin/python benchmarks/executor_bench.py [--batch 16] [--repeats 5] [--keep DIR]

Builds MobileNetV2 (alpha 1.0, 224 px, random weights: speed does not depend on training), exports the fp32
.mlpackage and the fp32 ONNX file through ``exporter.api.export``, then times each runtime on the same uint8 batch
and prints images per second and the executor's ratio to the others. Each runtime gets one warm-up call; the figure
is the median of ``--repeats`` timed calls.
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

INPUT_SIZE = 224
PREPROCESSING = {"input_size": [INPUT_SIZE, INPUT_SIZE], "scale": [0.00784313725490196], "bias": [-1.0]}
CLASSES = 10  # the head's size hardly matters to the throughput; ten keeps the labels file short


def _median_rate(fn, batch, repeats: int) -> float:
    fn(batch)  # warm-up: lazy initialisation and caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return len(batch) / statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="export into this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.getLogger("coremltools").setLevel(logging.ERROR)

    import keras
    import numpy as np

    from exporter.api import ExportOptions, export
    from exporter.preprocessing import Preprocessing
    from exporter.runtime import KerasRunner, OnnxRunner
    from exporter.runtime.executor import CoreMLExecutor

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = keras.applications.MobileNetV2(input_shape=(INPUT_SIZE, INPUT_SIZE, 3), alpha=1.0, weights=None,
                                               classes=CLASSES)
        model_path = work / "mobilenet_v2_224.keras"
        model.save(model_path)
        labels = [f"class_{i}" for i in range(CLASSES)]
        out = work / "export"
        manifest = export(model_path, labels, out, preprocessing=PREPROCESSING,
                          options=ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",), overwrite=True))
        files = {a["format"]: out / a["path"] for a in manifest["artifacts"]}
        pre = Preprocessing.from_dict(PREPROCESSING)
        pixels = np.random.default_rng(0).integers(0, 256, (args.batch, INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)

        executor = CoreMLExecutor(files["mlpackage"])
        onnx = OnnxRunner(files["onnx"], pre)
        keras_run = KerasRunner(model, pre)
        rates = {"executor": _median_rate(executor.predict, pixels, args.repeats),
                 "onnxruntime": _median_rate(onnx, pixels, args.repeats),
                 "keras": _median_rate(keras_run, pixels, args.repeats)}

    print(f"MobileNetV2 alpha 1.0, {INPUT_SIZE} px, fp32, batch {args.batch}, median of {args.repeats} "
          f"({os.cpu_count()} CPUs, numpy {np.__version__})")
    for name, rate in rates.items():
        print(f"  {name:12s} {rate:8.1f} images/s")
    print(f"  executor / onnxruntime = {rates['executor'] / rates['onnxruntime']:.2f}")
    print(f"  executor / keras       = {rates['executor'] / rates['keras']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
