"""fp32 numeric fidelity of every family stand-in: max |dp| of the fp32 .mlpackage and fp32 .mlmodel (through the
Linux executor) and of the fp32 ONNX file (onnxruntime) against a float64 Keras twin of the same weights, on the
held-out digits. Issue 13 asks for the Core ML error within 2x of onnxruntime's, and each fp32 Core ML file within
the validator's 1e-5 gate of float32 Keras.

    PYTHONPATH=$PWD python benchmarks/fp32_fidelity.py [family ...] [--shape application|nested] [--work DIR]

Trained models are cached in ``--work`` (model.keras per family and shape) so a re-run after a converter or executor
change measures the same weights; ``--fresh`` retrains. The reference input is normalised in float64 from the uint8
pixels (not the float32 normalisation either runtime does), so neither runtime's input rounding is favoured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# All 300 held-out digits: the maximum of |dp| over 64 images, which family_check uses, is a noisy statistic at float32
# rounding level (on the Xception nested stand-in, Core ML 1.0e-6 vs ONNX 3.0e-7 on the first 64 images, 2.4e-6 vs
# 1.9e-6 on all 300, with the same rms 1.46e-7), so the 2x criterion is judged on all of them, and the rms is shown.
IMAGES = 300
RATIO_TO_ONNX = 2.0  # issue 13: Core ML error against float64 Keras within 2x of onnxruntime's
FP32_GATE = 1e-5  # the validator's default fp32 max |dp| gate (against float32 Keras)
# below this, a difference is the rounding of a probability near 1 (half an ulp of 1.0 in float32 is 6e-8): a ratio
# of two such errors means nothing, so a row passes the 2x criterion when both are under it
PROBABILITY_ROUNDING = 1.2e-7


def measure(name: str, shape: str, work: Path, fresh: bool = False, steps: int = 60, reuse_export: bool = False) -> dict:
    import keras

    import exporter
    from exporter.images import iter_batches, list_images
    from exporter.preprocessing import Preprocessing
    from exporter.runtime import ExecutorRunner, OnnxRunner
    from exporter.validation.float64 import float64_twin
    from sample_models import families
    from sample_models.family_check import HELDOUT_DIGITS

    folder = work / f"{name}_{shape}"
    model_dir = folder / "model"
    row: dict = {"family": name, "shape": shape}
    built = families.build(name, shape)
    if fresh or not (model_dir / "model.keras").exists():
        row["train_accuracy"] = families.train(built, steps=steps)
        paths = families.save(built, model_dir)
        (model_dir / "train.json").write_text(json.dumps({"train_accuracy": row["train_accuracy"]}))
    else:
        paths = {"model": model_dir / "model.keras", "labels": model_dir / "labels.txt"}
        pj = model_dir / "preprocessing.json"
        paths["preprocessing"] = pj if pj.exists() else None
        row["train_accuracy"] = json.loads((model_dir / "train.json").read_text())["train_accuracy"]
    model = keras.saving.load_model(paths["model"], compile=False)
    out = folder / "export"
    t0 = time.perf_counter()
    if fresh or not reuse_export or not (out / "manifest.json").exists():
        exporter.export(
            paths["model"],
            paths["labels"],
            out,
            preprocessing=paths["preprocessing"],
            options=exporter.ExportOptions(formats=("mlpackage", "mlmodel", "onnx"), variants=("fp32",), overwrite=True),
        )
    row["export_s"] = round(time.perf_counter() - t0, 1)
    pre = Preprocessing.from_dict(json.loads((out / "manifest.json").read_text())["preprocessing"])
    labels = [str(i) for i in range(families.CLASSES)]
    items = list_images(HELDOUT_DIGITS)[:IMAGES]
    pixels = np.concatenate([b for _, b in iter_batches(items, pre, batch_size=64)])
    x64 = pixels.astype(np.float64)
    if not pre.in_model:
        x64 = x64 * np.asarray(pre.scale, np.float64) + np.asarray(pre.bias, np.float64)
    twin = float64_twin(model)
    ref = np.concatenate([np.asarray(twin(x64[i : i + 64], training=False), np.float64) for i in range(0, len(x64), 64)])
    keras32 = np.asarray(model.predict(pre.normalize(pixels), batch_size=64, verbose=0), np.float64)
    row["keras_fp32"] = float(np.abs(keras32 - ref).max())
    row["keras_fp32_rms"] = float(np.sqrt(((keras32 - ref) ** 2).mean()))
    row["spread"] = float(ref.std(axis=0).max())  # how much the probabilities depend on the image
    for art in json.loads((out / "manifest.json").read_text())["artifacts"]:
        fmt = art["format"]
        runner = (OnnxRunner if fmt == "onnx" else ExecutorRunner)(out / art["path"], pre, labels)
        probs = runner(pixels).astype(np.float64)
        row[fmt] = float(np.abs(probs - ref).max())
        row[f"{fmt}_rms"] = float(np.sqrt(((probs - ref) ** 2).mean()))
        row[f"{fmt}_gate"] = float(np.abs(probs - keras32).max())  # what validate's fp32 gate measures
    onnx = row.get("onnx", float("nan"))
    row["ok"] = all(
        row.get(f, np.inf) <= RATIO_TO_ONNX * onnx + PROBABILITY_ROUNDING and row.get(f"{f}_gate", np.inf) <= FP32_GATE
        for f in ("mlpackage", "mlmodel")
    )
    return row


def render(rows: list[dict]) -> str:
    """A markdown table of measured rows (the last row of each family and shape wins)."""
    latest = {(r["family"], r["shape"]): r for r in rows}
    head = (
        "| family | shape | train acc. | Keras fp32 | .mlpackage | .mlmodel | ONNX | rms .mlpackage / .mlmodel / ONNX "
        "| Core ML vs fp32 Keras (gate 1e-5) | ONNX vs fp32 Keras | 2x ONNX and gate |"
    )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for (family, shape), r in latest.items():
        if "error" in r:
            out.append(f"| {family} | {shape} | {r['error']} |" + " |" * 8)
            continue

        def e(key, r=r):
            return f"{r[key]:.2e}" if key in r else "-"

        gate = max(r.get("mlpackage_gate", np.nan), r.get("mlmodel_gate", np.nan))
        out.append(
            f"| {family} | {shape} | {r['train_accuracy']:.2f} | {e('keras_fp32')} | {e('mlpackage')} | {e('mlmodel')} | {e('onnx')} | "
            f"{e('mlpackage_rms')} / {e('mlmodel_rms')} / {e('onnx_rms')} | {gate:.2e} | {e('onnx_gate')} | {'yes' if r['ok'] else 'no'} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    from sample_models import families

    ap = argparse.ArgumentParser()
    ap.add_argument("families", nargs="*", default=list(families.FAMILIES))
    ap.add_argument("--shape", choices=families.SHAPES, action="append")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fp32_fidelity"))
    ap.add_argument("--fresh", action="store_true", help="retrain and re-export")
    ap.add_argument("--reuse-export", action="store_true", help="measure the files a previous run exported")
    ap.add_argument("--out", type=Path, help="append each row as a JSON line to this file")
    ap.add_argument("--render", type=Path, help="print the rows of this JSON-lines file as a markdown table and stop")
    args = ap.parse_args(argv)
    if args.render:
        print(render([json.loads(line) for line in args.render.read_text().splitlines() if line.strip()]))
        return 0
    print(f"{'family':27} {'shape':11} {'acc':>5} {'spread':>7} {'keras32':>9} {'mlpackage':>9} {'mlmodel':>9} {'onnx':>9} {'gate':>9}  ok")
    for name in args.families:
        for shape in args.shape or families.SHAPES:
            try:
                row = measure(name, shape, args.work, args.fresh, reuse_export=args.reuse_export)
            except Exception as exc:  # a failing family is a row of the table, not the end of the run
                row = {"family": name, "shape": shape, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"}
                print(f"{name:27} {shape:11} ERROR {row['error']}", flush=True)
            else:
                print(
                    f"{name:27} {shape:11} {row['train_accuracy']:5.2f} {row['spread']:7.3f} {row['keras_fp32']:9.2e} "
                    f"{row.get('mlpackage', np.nan):9.2e} {row.get('mlmodel', np.nan):9.2e} {row.get('onnx', np.nan):9.2e} "
                    f"{max(row.get('mlpackage_gate', np.nan), row.get('mlmodel_gate', np.nan)):9.2e}  "
                    f"{'yes' if row['ok'] else 'NO'}",
                    flush=True,
                )
            if args.out:
                with args.out.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
