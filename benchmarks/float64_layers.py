"""Where along the network an fp32 file departs from the exact answer: layer by layer, the rms distance from a float64
Keras model of the same weights of Keras float32, of the fp32 .mlpackage (Linux executor, through its observe hook)
and of the fp32 ONNX file under onnxruntime with its default graph optimizations and with them off; then the
probabilities' max |dp| and max relative error (the statistic issue 13's 2x bar is judged on, family_check says why).

    PYTHONPATH=$PWD python benchmarks/float64_layers.py resnet_v2 [--shape application] [--work DIR] [--images 64]

The family is built, trained (the capability recipe, sample_models/families.py) and exported once into ``--work``
(model and fp32 files reused by later runs). Runtime tensors carry the converters' names, not Keras', so each Keras
layer's output is paired with the runtime value of the same shape closest to it; a layer whose output a runtime
never materialises (a convolution fused with its batch norm) shows ``-``.

What it showed on ResNetV2 (application, 64 digits): Keras float32 and the executor within 1-5 % of each other at
every layer, onnxruntime without optimizations 1.04-1.2x closer than both, onnxruntime's default NCHWc convolutions
1.8x closer from the first convolution on (rms at conv1: Keras 2.3e-7, Core ML 2.3e-7, ORT off 2.0e-7, ORT all
1.3e-7), narrowing to 1.1-1.2x at the last layers. In probabilities on those 64 digits max |dp| was 5.2e-7 (Keras),
4.6e-7 (Core ML), 2.2e-7 (ORT all) and 1.6e-6 (ORT off), all four on the same image (top p 0.82), the next worst
images at 1.4-2.3e-7; max relative error 1.5e-5, 1.3e-5, 8.4e-6, 1.6e-5.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A pairing further than this share of the layer's own scale is not the same tensor (a fused successor, another
# branch): float32 rounding keeps every real pairing under 1e-5 of it.
SAME_TENSOR = 1e-3


def prepare(name: str, shape: str, work: Path) -> Path:
    """work/<name>_<shape>: the trained model and its fp32 .mlpackage and .onnx (built once)."""
    import exporter
    from sample_models import families
    from sample_models.family_check import HELDOUT_DIGITS

    folder = work / f"{name}_{shape}"
    if (folder / "export" / "manifest.json").exists():
        return folder
    built = families.build(name, shape)
    families.train(built)
    paths = families.save(built, folder / "model")
    exporter.export(
        paths["model"],
        paths["labels"],
        folder / "export",
        preprocessing=paths["preprocessing"],
        options=exporter.ExportOptions(
            formats=("mlpackage", "onnx"), variants=("fp32",), calibration_images=HELDOUT_DIGITS, overwrite=True
        ),
    )
    return folder


def _onnx_values(path: Path, pixels: np.ndarray, optimized: bool) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    model = onnx.load(path)
    known = {o.name for o in model.graph.output}
    for node in model.graph.node:
        model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o not in known)
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: pixels})
    return {n: np.asarray(v, np.float64) for n, v in zip(names, values, strict=True) if np.asarray(v).dtype.kind == "f"}


def _executor_values(path: Path, pixels: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    from exporter.runtime.executor import CoreMLExecutor

    seen: dict[str, list[np.ndarray]] = {}
    probs = CoreMLExecutor(path).predict(pixels, observe=lambda n, v: seen.setdefault(n, []).append(np.array(v, np.float64)))
    return {n: np.concatenate(v) for n, v in seen.items()}, np.asarray(probs, np.float64)


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _paired(values: dict[str, np.ndarray], exact: np.ndarray) -> float | None:
    """rms distance of the value of ``exact``'s shape (NHWC, or NCHW transposed) closest to it; None if none is."""
    best = None
    for v in values.values():
        if v.ndim == 4 and v.shape != exact.shape and v.transpose(0, 2, 3, 1).shape == exact.shape:
            v = v.transpose(0, 2, 3, 1)
        if v.shape == exact.shape:
            d = _rms(v, exact)
            best = d if best is None else min(best, d)
    scale = float(np.sqrt(np.mean(exact**2))) or 1.0
    return best if best is not None and best <= SAME_TENSOR * scale else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("family")
    parser.add_argument("--shape", default="application", choices=["application", "nested"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "exporter_float64_layers")
    parser.add_argument("--images", type=int, default=64, help="held-out digits to run (default %(default)s)")
    args = parser.parse_args(argv)

    import keras

    from exporter.images import iter_batches, list_images
    from exporter.preprocessing import Preprocessing
    from exporter.validation.float64 import float64_twin, max_relative_error, normalize64
    from sample_models.family_check import HELDOUT_DIGITS

    folder = prepare(args.family, args.shape, args.work)
    manifest = json.loads((folder / "export" / "manifest.json").read_text())
    pre = Preprocessing.from_dict(manifest["preprocessing"])
    files = {a["format"]: folder / "export" / a["path"] for a in manifest["artifacts"] if a["variant"] == "fp32"}
    model = keras.models.load_model(folder / "model" / "model.keras")
    items = list_images(HELDOUT_DIGITS)[: args.images]
    pixels = np.concatenate([b for _, b in iter_batches(items, pre, batch_size=64)])
    twin = float64_twin(model)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    exact = keras.Model(twin.inputs, [twin.get_layer(layer.name).output for layer in layers])(normalize64(pre, pixels))
    single = keras.Model(model.inputs, [layer.output for layer in layers])(pre.normalize(pixels))
    core, core_probs = _executor_values(files["mlpackage"], pixels)
    ort_all, ort_off = _onnx_values(files["onnx"], pixels, True), _onnx_values(files["onnx"], pixels, False)

    def cell(value):
        return "        -" if value is None else f"{value:9.2e}"

    print(f"{'layer':34s} {'Keras f32':>9s} {'Core ML':>9s} {'ORT all':>9s} {'ORT off':>9s}   (rms distance from float64)")
    for layer, e, s in zip(layers, exact, single, strict=True):
        e, s = np.asarray(e, np.float64), np.asarray(s, np.float64)
        row = [_rms(s, e), _paired(core, e), _paired(ort_all, e), _paired(ort_off, e)]
        print(f"{layer.name[:34]:34s} " + " ".join(cell(v) for v in row))
    ref = np.asarray(exact[-1], np.float64)
    onnx_probs = {"ORT all": ort_all["probabilities"], "ORT off": ort_off["probabilities"]}
    for name, probs in {"Keras f32": np.asarray(single[-1], np.float64), "Core ML": core_probs, **onnx_probs}.items():
        dp = np.abs(probs - ref).max(1)
        worst = int(dp.argmax())
        print(
            f"{name:9s} probabilities: max |dp| {dp.max():.2e} (image {worst}, its top p {ref[worst].max():.2f}; next worst "
            f"image {np.sort(dp)[-2]:.2e}), max relative error {max_relative_error(probs, ref):.2e}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
