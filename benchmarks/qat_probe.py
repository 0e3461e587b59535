"""Quantization-aware fine-tuning as a fix for int8 activations outside the classes (issue 18): the measurement
recorded in exporter/quantize/coreml.py (the note after the per-op exclusion) and in the W8A8 / int8-static opt-in
reasons of exporter/capabilities.py. Not a toolkit feature: it did not help, and this script is how that was found.

    PYTHONPATH=$PWD python benchmarks/qat_probe.py mobilenet_v1_digits --steps 400 --lr 1e-4 [--synthetic 2048]

The sample model's Keras weights are distilled (KL to the float model, batch norm in inference mode, Adam, batches of
BATCH) through fake quantization at the points the converters quantize: every Conv2D / DepthwiseConv2D / Dense input
(uint8 affine, ranges measured on the calibration images), their kernels (int8 symmetric per output channel,
straight-through gradient) and a Dense layer's output (logits). The training inputs are ``distillation_images`` of the calibration images
(the palette refinement's augmented set), optionally plus synthetic smooth-noise images as out-of-class stand-ins. The
fine-tuned model is then exported as usual (fp32, W8A8, ONNX int8-static) and every file is compared with the ORIGINAL
Keras model on quant_defaults' split: held-out images the calibration did not see, and the other task's images.
``--steps 0`` reproduces the plain export's numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BATCH = 128
VARIANTS = ("fp32", "w8a8", "int8-static")


def synthetic_images(like: np.ndarray, count: int, seed: int = 5) -> np.ndarray:
    """Smooth random noise at 2-16 cells per side, bicubic-upsampled, with fine noise on top, mapped into the value
    range of ``like`` (normalised NHWC) at a random level and contrast."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    h, w, c = like.shape[1:]
    lo, hi = float(like.min()), float(like.max())
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    out = []
    for _ in range(count):
        cells = int(rng.choice([2, 4, 8, 16]))
        big = tf.image.resize(rng.normal(size=(1, cells, cells, c)).astype(np.float32), (h, w), method="bicubic").numpy()[0]
        big = big + rng.normal(size=big.shape) * rng.uniform(0, 0.3)
        big = (big - big.mean()) / (big.std() + 1e-6)
        out.append(np.clip(mid + rng.uniform(-0.5, 0.5) * half + big * rng.uniform(0.1, 0.6) * half, lo, hi))
    return np.stack(out).astype(np.float32)


class FakeQuant:
    """The model's weighted layers' calls replaced by fake-quantized ones (see the module docstring) until ``close``.
    ``mode``: "record" (float, activation ranges collected), "quant"."""

    def __init__(self, model):
        import keras

        self.kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
        from sample_models.families import all_layers

        self.layers = [layer for layer in all_layers(model) if isinstance(layer, self.kinds)]
        self.ranges: dict[str, list[float]] = {}
        self.mode = "record"
        for layer in self.layers:
            layer.call = self._call(layer)

    def close(self) -> None:
        for layer in self.layers:
            del layer.call

    def _act(self, key: str, x):
        import tensorflow as tf

        if self.mode == "record":
            r = self.ranges.setdefault(key, [0.0, 0.0])
            r[0], r[1] = min(r[0], float(tf.reduce_min(x))), max(r[1], float(tf.reduce_max(x)))
            return x
        lo, hi = self.ranges[key]
        return tf.quantization.fake_quant_with_min_max_args(x, min=lo, max=hi, num_bits=8)

    def _kernel(self, layer, k):
        import keras
        import tensorflow as tf

        if self.mode == "record":
            return k
        axes = (0, 1) if isinstance(layer, keras.layers.DepthwiseConv2D) else tuple(range(len(k.shape) - 1))
        s = tf.stop_gradient(tf.reduce_max(tf.abs(k), axis=axes, keepdims=True)) / 127.0
        s = tf.where(s > 0, s, 1.0)
        return k + tf.stop_gradient(tf.clip_by_value(tf.round(k / s), -127, 127) * s - k)

    def _call(self, layer):
        import keras

        def call(inputs, *_args, **_kwargs):
            x = self._act(layer.name + ":in", inputs)
            k = self._kernel(layer, layer.kernel)
            if isinstance(layer, keras.layers.Dense):
                y = keras.ops.matmul(x, k)
            else:
                op = keras.ops.depthwise_conv if isinstance(layer, keras.layers.DepthwiseConv2D) else keras.ops.conv
                y = op(x, k, strides=layer.strides, padding=layer.padding, data_format=layer.data_format, dilation_rate=layer.dilation_rate)
            if layer.use_bias:
                y = y + layer.bias
            if isinstance(layer, keras.layers.Dense):  # the logits are quantized; a softmax after them is not
                act = layer.activation
                return act(self._act(layer.name + ":out", y)) if act is not None else self._act(layer.name + ":out", y)
            return layer.activation(y) if layer.activation is not None else y

        return call


def fine_tune(model, teacher, x: np.ndarray, calibration_count: int, steps: int, lr: float, seed: int = 0) -> list[float]:
    """``model`` distilled from ``teacher`` through fake quantization for ``steps`` Adam steps on ``x``, whose first
    ``calibration_count`` images are the calibration images (the activation ranges); the losses every 50 steps."""
    import keras
    import tensorflow as tf

    fq = FakeQuant(model)
    try:
        model(x[:calibration_count], training=False)
        fq.mode = "quant"
        t = np.concatenate([np.asarray(teacher(x[i : i + 256], training=False)) for i in range(0, len(x), 256)])
        opt, variables = keras.optimizers.Adam(lr), list(model.trainable_variables)

        @tf.function
        def step(xb, tb):
            with tf.GradientTape() as tape:
                p = tf.clip_by_value(model(xb, training=False), 1e-7, 1.0)
                loss = tf.reduce_mean(tf.reduce_sum(tb * (tf.math.log(tf.clip_by_value(tb, 1e-7, 1.0)) - tf.math.log(p)), axis=1))
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
            return loss

        rng, losses = np.random.default_rng(seed), []
        for s in range(steps):
            pick = np.sort(rng.choice(len(x), min(BATCH, len(x)), replace=False))
            loss = float(step(tf.constant(x[pick]), tf.constant(t[pick])))
            if s % 50 == 0:
                losses.append(loss)
        return losses
    finally:
        fq.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a sample model's name (sample_models/NAME)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--inputs", type=int, default=2048, help="augmented calibration inputs (distillation_images)")
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic smooth-noise inputs added")
    args = parser.parse_args(argv)

    import keras
    import quant_defaults as qd

    from exporter.api import ExportOptions, _calibration, export, validate
    from exporter.errors import ParityError
    from exporter.loading import load_model
    from exporter.preprocessing import Preprocessing
    from exporter.quantize.mixed import distillation_images

    paths, task = qd.sample_paths(args.model)
    pre = Preprocessing.from_file(paths["preprocessing"])
    with tempfile.TemporaryDirectory(prefix="qat-probe-") as tmp:
        work = Path(tmp)
        cal_dir, test_dir = qd.split(qd.HELDOUT / task, work)
        cal = np.concatenate([pre.normalize(b) for b in _calibration(cal_dir, pre, qd.CALIBRATION_COUNT)[0]]).astype(np.float32)
        x = distillation_images(cal, args.inputs, seed=1)
        if args.synthetic:
            x = np.concatenate([x, synthetic_images(cal, args.synthetic)])
        model, teacher = keras.models.load_model(paths["model"]), keras.models.load_model(paths["model"])
        print("losses every 50 steps:", fine_tune(model, teacher, x, len(cal), args.steps, args.lr), flush=True)
        tuned = work / "tuned"
        tuned.mkdir()
        model.save(tuned / "model.keras")
        out = work / "export"
        export(
            tuned / "model.keras",
            paths["labels"],
            out,
            preprocessing=paths["preprocessing"],
            options=ExportOptions(variants=VARIANTS, calibration_images=cal_dir, overwrite=True),
        )
        # Compared with the ORIGINAL model: the export folder is this script's own, so its manifest is told that the
        # original is its source (validate refuses a model whose SHA-256 differs from the manifest's).
        manifest = json.loads((out / "manifest.json").read_text())
        manifest["source"]["sha256"] = load_model(paths["model"]).sha256
        (out / "manifest.json").write_text(json.dumps(manifest))
        other = qd.HELDOUT / ("photos" if task == "digits" else "digits")
        print(f"{'file':32} {'held-out':>9} {'outside':>9}")
        rows: dict[str, dict[str, float]] = {}
        for tag, images in (("held", test_dir), ("outside", other)):
            try:
                report = validate(out, images, model_path=paths["model"])
            except ParityError as exc:
                report = exc.report
            for a in report["artifacts"]:
                rows.setdefault(a["path"], {})[tag] = a["top1_agreement"]
        for path, r in rows.items():
            print(f"{path:32} {r['held']:9.3f} {r['outside']:9.3f}")
        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
