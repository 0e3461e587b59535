"""Throughput of the numpy Core ML executor against onnxruntime and Keras on the same model and the same batch.

    .venv/bin/python benchmarks/executor_bench.py [--batch 16] [--repeats 5]
    .venv/bin/python benchmarks/executor_bench.py --families [NAME ...] [--threads N] [--cache DIR] [--readme README.md]

Standalone, it builds the random-weight MobileNetV2 (alpha 1.0, 224 px) of benchmarks/export_bench.py and exports its
fp32 .mlpackage and ONNX files; benchmarks/run.py calls ``measure`` on the files its export section already wrote.
Each runtime gets one warm-up call; the figure is the median of ``repeats`` timed calls on one uint8 batch.

``--families`` measures executor / onnxruntime on every keras.applications family of FAMILIES at its default input
size (random weights: speed does not depend on them), each family in a child process of its own so one model's
memory and TensorFlow state do not weigh on the next. The two runtimes are called alternately on the same batch,
``repeats`` times each, so a neighbour's load lands on both sides alike; the ratio is of the two medians, and the
spread of the per-round ratios is reported with it. Both runtimes get the same number of threads: ``--threads N``
(default: the executor's own WORKERS) executor worker threads and onnxruntime intra-op threads. With one thread each
the ratio of CPU seconds is reported too, which holds on a machine other processes load (wall time there measures
the scheduler as much as the runtimes). The numbers go into ``executor_families`` of the results file (other sections
are kept) and, with ``--readme README.md``, into the table of README's "Measured" section. ``--cache DIR`` keeps the
exported files between runs. Every family of the families issue is measured, one model each (the smallest); VGG16 on
its convolutional base (see HEADLESS).
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


def measure(mlpackage: Path, onnx_file: Path, keras_file: Path, preprocessing: dict, batch: int = BATCH, repeats: int = REPEATS) -> dict:
    """Images per second of each runtime on the same uint8 batch, and the executor's ratios to the other two."""
    import keras
    import numpy as np

    from exporter.preprocessing import Preprocessing
    from exporter.runtime import KerasRunner, OnnxRunner
    from exporter.runtime.executor import CoreMLExecutor

    pre = Preprocessing.from_dict(preprocessing)
    h, w = pre.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)
    runners = {
        "executor": CoreMLExecutor(mlpackage).predict,
        "onnxruntime": OnnxRunner(onnx_file, pre),
        "keras": KerasRunner(keras.saving.load_model(keras_file, compile=False), pre),
    }
    rates = {name: round(_median_rate(fn, pixels, repeats), 1) for name, fn in runners.items()}
    return {
        "model": f"{mlpackage.name} / {onnx_file.name}",
        "batch": batch,
        "repeats": repeats,
        "images_per_second": rates,
        "numpy": np.__version__,
        "executor_vs_onnxruntime": round(rates["executor"] / rates["onnxruntime"], 3),
        "executor_vs_keras": round(rates["executor"] / rates["keras"], 3),
    }


# keras.applications constructor and default input size (pixels) of each family the benchmark measures: one model
# of every family of the families issue (13), the smallest of each (speed per family, not per depth).
FAMILIES = {
    "MobileNet": 224,
    "MobileNetV2": 224,
    "MobileNetV3Small": 224,
    "MobileNetV3Large": 224,
    "EfficientNetB0": 224,
    "EfficientNetV2B0": 224,
    "ResNet50": 224,
    "ResNet50V2": 224,
    "DenseNet121": 224,
    "NASNetMobile": 224,
    "Xception": 299,
    "InceptionV3": 299,
    "InceptionResNetV2": 299,
    "ConvNeXtTiny": 224,
    "VGG16": 224,
}
FAMILY_CLASSES = 10
# Families measured on their convolutional base (include_top=False, global average pooling) under a FAMILY_CLASSES
# softmax Dense, the usual transfer-learning classifier: VGG16's own top (two 4096-wide Dense layers after a 25088-wide
# Flatten, 120M of its 138M weights but under 1 % of its multiply-adds) makes both converters exceed this machine's
# per-process memory (coremltools past 11 GB, tf2onnx past 7 GB, measured at 224 px); the executor itself ran the full
# VGG16 file in 2 GB.
HEADLESS = {"VGG16"}
FAMILY_TARGET = 0.5  # executor / onnxruntime wanted on every family (issue 14)


def export_family(name: str, folder: Path) -> tuple[Path, Path]:
    """The family's fp32 .mlpackage and fp32 ONNX files (random weights), written once into ``folder``.

    Built with the exporter's own converters rather than ``export`` so that the benchmark does not depend on how the
    family's preprocessing is detected: every file gets the same [-1, 1] contract, which costs the same whatever the
    model does with it."""
    import keras
    import onnx

    from exporter.convert import coreml as cm
    from exporter.convert import onnx as ox
    from exporter.preprocessing import Preprocessing

    mlpackage, onnx_file = folder / f"{name}_fp32.mlpackage", folder / f"{name}_fp32.onnx"
    if mlpackage.exists() and onnx_file.exists():
        return mlpackage, onnx_file
    folder.mkdir(parents=True, exist_ok=True)
    size = FAMILIES[name]
    keras.utils.set_random_seed(0)
    if name in HEADLESS:
        base = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), include_top=False, pooling="avg")
        head = keras.layers.Dense(FAMILY_CLASSES, activation="softmax", name="predictions")(base.output)
        model = keras.Model(base.input, head, name=f"{name}_base")
    else:
        model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=FAMILY_CLASSES)
    labels = [f"class_{i}" for i in range(FAMILY_CLASSES)]
    pre = Preprocessing((size, size), scale=(1 / 127.5,) * 3, bias=(-1.0,) * 3)
    info = cm.ModelInfo(name=name, labels=labels, preprocessing=pre, source_sha256="", source_file=f"{name}.keras")
    cm.save(cm.convert(model, info, backend="mlprogram", precision="fp32"), mlpackage)
    core = ox.convert_core(model, pre, source=name)
    onnx.save(ox.wrap(core, pre, labels, {}), onnx_file)
    return mlpackage, onnx_file


def default_threads() -> int:
    """The executor's own number of worker threads (BLAS held to one thread in each); onnxruntime, whose intra-op pool
    defaults to the physical cores, is given the same number, so both runtimes use the same cores."""
    from exporter.runtime import executor

    return executor.WORKERS


def _onnx_runner(onnx_file: Path, pre, threads: int):
    """The toolkit's OnnxRunner, its session rebuilt with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    from exporter.runtime import OnnxRunner

    runner = OnnxRunner(onnx_file, pre)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    runner.session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    return runner


def measure_alternating(mlpackage: Path, onnx_file: Path, size: int, batch: int = BATCH, repeats: int = REPEATS, threads: int = 0) -> dict:
    """executor / onnxruntime on one uint8 batch, the two called in turn ``repeats`` times after a warm-up each.
    ``threads`` (0: each runtime's default, ``default_threads``) is given to both: the executor's worker threads and
    onnxruntime's intra-op threads."""
    import numpy as np

    from exporter.preprocessing import Preprocessing
    from exporter.runtime import executor
    from exporter.runtime.executor import CoreMLExecutor

    threads = threads or default_threads()
    executor.WORKERS = threads
    pre = Preprocessing((size, size), scale=(1 / 127.5,) * 3, bias=(-1.0,) * 3)
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    runners = {"executor": CoreMLExecutor(mlpackage).predict, "onnxruntime": _onnx_runner(onnx_file, pre, threads)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    cpu: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn(pixels)  # warm-up
    load_before = os.getloadavg()[0]
    for i in range(repeats):
        order = list(runners.items()) if i % 2 == 0 else list(runners.items())[::-1]
        for key, fn in order:
            c0, t0 = time.process_time(), time.perf_counter()
            fn(pixels)
            times[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    rounds = [o / e for e, o in zip(times["executor"], times["onnxruntime"], strict=True)]
    rates = {k: round(batch / statistics.median(v), 1) for k, v in times.items()}
    result = {
        "batch": batch,
        "repeats": repeats,
        "threads": threads,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # 1-minute, before and after the rounds
        "images_per_second": rates,
        "executor_vs_onnxruntime": round(rates["executor"] / rates["onnxruntime"], 3),
        "round_ratios": [round(min(rounds), 3), round(max(rounds), 3)],
    }
    if threads == 1:
        # One thread each: the process's CPU seconds are the work itself, whatever share of the cores the neighbours
        # leave (wall time on a loaded machine measures the scheduler as much). Not with more threads: onnxruntime's
        # pool spins while it waits, which CPU time would count as work.
        medians = {k: statistics.median(v) for k, v in cpu.items()}
        result["cpu_seconds"] = {k: round(v, 3) for k, v in medians.items()}
        result["executor_vs_onnxruntime_cpu"] = round(medians["onnxruntime"] / medians["executor"], 3)
    return result


def _family_child(name: str, cache: Path, batch: int, repeats: int, threads: int) -> dict:
    try:
        mlpackage, onnx_file = export_family(name, cache / name)
    except Exception as exc:  # a family that does not convert is reported, not fatal to the others
        return {"family": name, "status": "not converted", "reason": str(exc).splitlines()[0][:300]}
    result = measure_alternating(mlpackage, onnx_file, FAMILIES[name], batch, repeats, threads)
    model = "convolutional base, average pool, Dense" if name in HEADLESS else "keras.applications, top included"
    return {"family": name, "status": "measured", "input_size": FAMILIES[name], "model": model, **result}


def measure_families(
    names: list[str], cache: Path, batch: int = BATCH, repeats: int = REPEATS, threads: int = 0, done=lambda rows: None
) -> list[dict]:
    """One child process per family (see the module docstring); a child that fails is reported with its error.
    ``done(rows)`` is called after each family, so an interrupted run keeps what it measured."""
    import json
    import subprocess

    rows: list[dict] = []
    for name in names:
        child = [sys.executable, __file__, "--family-child", name, "--cache", str(cache), "--batch", str(batch), "--repeats", str(repeats)]
        out = subprocess.run([*child, "--threads", str(threads)], capture_output=True, text=True)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            # the last stderr line that is not a progress bar, and how the child ended (-9: killed, say for memory)
            said = [line for line in out.stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
            reason = f"child exited {out.returncode}: {said[-1][:300] if said else 'no message'}"
            rows.append({"family": name, "status": "failed", "reason": reason})
        else:
            rows.append(json.loads(lines[-1]))
        print(render_family(rows[-1]), flush=True)
        done(rows)
    return rows


def render_family(r: dict) -> str:
    if r["status"] != "measured":
        return f"  {r['family']:18s} {r['status']}: {r['reason']}"
    rates = r["images_per_second"]
    lo, hi = r["round_ratios"]
    mark = "" if r["executor_vs_onnxruntime"] >= FAMILY_TARGET else f"  (below {FAMILY_TARGET})"
    cpu = f", CPU {r['executor_vs_onnxruntime_cpu']:.2f}" if "executor_vs_onnxruntime_cpu" in r else ""
    return (
        f"  {r['family']:18s} {r['input_size']:3d} px  executor {rates['executor']:6.1f}  onnxruntime "
        f"{rates['onnxruntime']:6.1f} images/s  executor / onnxruntime = {r['executor_vs_onnxruntime']:.2f} "
        f"(rounds {lo:.2f}-{hi:.2f}{cpu}; load {r['load_average'][0]:.1f}/{r['load_average'][1]:.1f}){mark}"
    )


README_START = "<!-- executor-families:start (written by python benchmarks/executor_bench.py --families --readme README.md) -->"
README_END = "<!-- executor-families:end -->"


def render_families_markdown(rows: list[dict]) -> str:
    """The per-family table README's "Measured" section holds between README_START and README_END."""
    measured = [r for r in rows if r["status"] == "measured"]
    threads = sorted({r["threads"] for r in measured})
    lines = [
        f"Batch {measured[0]['batch'] if measured else BATCH}, fp32, random weights, {os.cpu_count()} cores; each runtime given "
        f"{' / '.join(map(str, threads)) or '?'} thread(s) (the executor's worker threads, onnxruntime's intra-op threads); "
        "one warm-up call each, then the two called in turn on the same uint8 batch, the ratio of the median times "
        "in one process. Wall ratio, the spread of the per-round ratios, and with one thread the ratio of CPU seconds "
        "(the work itself, whatever share of the cores other processes leave); the 1-minute load average before and "
        f"after the rounds. Target: executor / onnxruntime >= {FAMILY_TARGET} on every family.",
        "",
        "| family | px | executor images/s | onnxruntime images/s | executor / onnxruntime | rounds | CPU ratio | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "measured":
            lines.append(f"| {r['family']} | | | | {r['status']} | | | |")
            continue
        rates, (lo, hi) = r["images_per_second"], r["round_ratios"]
        cpu = r.get("executor_vs_onnxruntime_cpu")
        family = f"{r['family']} (base)" if r.get("model", "").startswith("convolutional base") else r["family"]
        lines.append(
            f"| {family} | {r['input_size']} | {rates['executor']} | {rates['onnxruntime']} | "
            f"{r['executor_vs_onnxruntime']:.2f} | {lo:.2f}-{hi:.2f} | {'' if cpu is None else f'{cpu:.2f}'} | "
            f"{r['load_average'][0]:.1f} / {r['load_average'][1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_readme(readme: Path, rows: list[dict]) -> None:
    """Replace the block between README_START and README_END."""
    from benchmarks.readme_block import replace_block

    replace_block(readme, README_START, README_END, f"\n{render_families_markdown(rows)}")


def render(r: dict) -> str:
    lines = [f"{r['model']}, batch {r['batch']}, median of {r['repeats']} ({os.cpu_count()} CPUs, numpy {r['numpy']})"]
    lines += [f"  {name:12s} {rate:8.1f} images/s" for name, rate in r["images_per_second"].items()]
    lines += [
        f"  executor / onnxruntime = {r['executor_vs_onnxruntime']:.2f}  (target >= 0.33)",
        f"  executor / keras       = {r['executor_vs_keras']:.2f}",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--threads", type=int, default=0, help="--families: threads given to each runtime (default 0: their defaults, which agree)"
    )
    parser.add_argument("--families", nargs="*", metavar="NAME", help=f"families to measure (default: all of {', '.join(FAMILIES)})")
    parser.add_argument("--cache", type=Path, help="folder keeping the families' exported files between runs")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).resolve().parent / "results.json",
        help="results file whose executor_families section --families rewrites",
    )
    parser.add_argument("--readme", type=Path, help="--families: also write the table into this README's Measured block")
    parser.add_argument("--family-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    logging.disable(logging.WARNING)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import json

    if args.family_child:
        print(json.dumps(_family_child(args.family_child, args.cache, args.batch, args.repeats, args.threads)))
        return
    if args.families is not None:
        names = args.families or list(FAMILIES)
        unknown = sorted(set(names) - set(FAMILIES))
        if unknown:
            parser.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
        print(
            f"executor / onnxruntime per family, batch {args.batch}, fp32, {args.repeats} alternating rounds ({os.cpu_count()} CPUs, "
            f"{args.threads or default_threads()} thread(s) each)",
            flush=True,
        )

        def write(rows: list[dict]) -> None:
            results = json.loads(args.json.read_text()) if args.json.exists() else {}
            results["executor_families"] = rows
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            if args.readme:
                write_readme(args.readme, rows)

        with tempfile.TemporaryDirectory(prefix="executor-families-") as tmp:
            measure_families(names, args.cache or Path(tmp), args.batch, args.repeats, args.threads, done=write)
        return

    from export_bench import build_large

    from exporter.api import ExportOptions, export

    with tempfile.TemporaryDirectory() as tmp:
        s = build_large(Path(tmp) / "model")
        out = Path(tmp) / "export"
        manifest = export(
            s["model"],
            s["labels"],
            out,
            preprocessing=s["preprocessing"],
            options=ExportOptions(formats=("mlpackage", "onnx"), variants=("fp32",)),
        )
        files = {a["format"]: out / a["path"] for a in manifest["artifacts"]}
        print(
            render(
                measure(files["mlpackage"], files["onnx"], s["model"], json.loads(s["preprocessing"].read_text()), args.batch, args.repeats)
            )
        )


if __name__ == "__main__":
    sys.exit(main())
