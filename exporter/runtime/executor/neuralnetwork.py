"""A NeuralNetwork classifier (``spec.neuralNetworkClassifier``, the .mlmodel format) loaded into numpy layers.

The file's image scaler is applied first, then the layers in file order (the format requires a topological order),
and the blob named by ``labelProbabilityLayerName`` is the class probabilities in label order. NeuralNetwork files
do not declare intermediate shapes, so loading runs one zero image through the network: that checks every layer
runs, and the shapes it records decide whether a batch can run at once (every image-derived blob led by the
batch axis of 1, every axis-dependent layer clear of that axis).
"""

from __future__ import annotations

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from . import live, nnlayers_elementwise, nnlayers_image, nnlayers_nd, nnlayers_shape  # noqa: F401  (layers register)
from .image import ImageInput, scaler
from .nnlayers import LayerContext
from .registry import NN

F32 = np.float32
RANK4_IMAGE_MAPPING = 1  # NeuralNetworkImageShapeMapping: images are (N, C, H, W); rank 5 is the pre-iOS13 layout


class Layer:
    __slots__ = ("ctx", "run", "rule", "inputs", "outputs", "release")

    def __init__(self, ctx: LayerContext, run, rule, inputs: list[str], outputs: list[str]):
        self.ctx, self.run, self.rule, self.inputs, self.outputs = ctx, run, rule, inputs, outputs
        self.release: list[str] = []


class Network:
    """A loaded NeuralNetwork classifier. ``run(x)`` maps the (N, C, H, W) float32 image tensor to (N, K)."""

    def __init__(self, spec, image: ImageInput, where: str, fp16: bool):
        kind = spec.WhichOneof("Type")
        if kind != "neuralNetworkClassifier":
            raise UnsupportedOperationError(f"model type {kind!r} is not supported; the executor runs classifiers", path=where)
        nn = spec.neuralNetworkClassifier
        if nn.imageInputShapeMapping != RANK4_IMAGE_MAPPING:
            raise UnsupportedOperationError(
                "NeuralNetwork uses the rank-5 image layout of iOS 12 and earlier, which the executor does not support", path=where
            )
        self.where, self.fp16, self.image = where, fp16, image
        labels = nn.WhichOneof("ClassLabels")
        vector = nn.stringClassLabels.vector if labels == "stringClassLabels" else nn.int64ClassLabels.vector
        self.labels = [str(v) for v in vector]
        self.probabilities = nn.labelProbabilityLayerName or spec.description.predictedProbabilitiesName
        scale, bias = scaler(nn, image, where)
        self.scale, self.bias = scale.reshape(1, -1, 1, 1), bias.reshape(1, -1, 1, 1)
        self.decoded = live.Constants(where)  # the layers' weights together, bounded
        self.layers = [self._build(layer) for layer in nn.layers]
        self.peak_bytes: int = 0  # the most computed-value bytes alive at once for one image, over the passes run so far
        # released as soon as no later layer reads them, in the probe too: it kept every value (a 4000 x 4000 input
        # took 9.5 GB there)
        self._plan_release()
        self.batchable = self._probe()

    def _build(self, spec_layer) -> Layer:
        kind = spec_layer.WhichOneof("layer")
        entry = NN.lookup(str(kind), f"layer {spec_layer.name!r}", self.where)
        ctx = LayerContext(spec_layer.name, kind, self.where, self.fp16, self.decoded)
        run, rule = entry.impl(getattr(spec_layer, kind), ctx)
        return Layer(ctx, run, rule, list(spec_layer.input), list(spec_layer.output))

    def _probe(self) -> bool:
        """Run a zero image at batch 1; return whether the whole network may run on a batch."""
        derived = {self.image.name}
        for layer in self.layers:
            layer.ctx.batched = any(name in derived for name in layer.inputs)
            if layer.ctx.batched:
                derived.update(layer.outputs)
        x = np.zeros((1, self.image.channels, self.image.height, self.image.width), F32)
        shapes: dict[str, tuple] = {self.image.name: x.shape}
        with np.errstate(all="ignore"):
            self._forward(x, shapes)
        batchable = True
        for layer in self.layers:
            if not layer.ctx.batched:
                continue
            ins = [shapes[name] for name in layer.inputs]
            outs = [shapes[name] for name in layer.outputs]
            if not layer.rule(ins) or any(len(s) == 0 or s[0] != 1 for s in outs):
                batchable = False
        if self.probabilities not in shapes:
            raise ConversionError(f"no layer produces the probabilities {self.probabilities!r}", path=self.where)
        self.largest_activation: int = 4 * max(int(np.prod(s)) for s in shapes.values())  # bytes per image (float32)
        for layer in self.layers:  # a network that runs image by image keeps every shape as the file has it
            layer.ctx.batched = layer.ctx.batched and batchable
        return batchable

    def _plan_release(self) -> None:
        last: dict[str, int] = {}
        for i, layer in enumerate(self.layers):
            for name in layer.inputs:
                last[name] = i
        for name, i in last.items():
            if name not in (self.probabilities, self.image.name):
                self.layers[i].release.append(name)

    def _forward(self, x: np.ndarray, shapes: dict | None = None, observe=None) -> np.ndarray:
        x = x * self.scale + self.bias
        if self.fp16:
            x = x.astype(np.float16).astype(F32)
        env = {self.image.name: x}
        meter = live.Meter(x.nbytes, x.shape[0], self.where)
        for layer in self.layers:
            try:
                inputs = [env[name] for name in layer.inputs]
            except KeyError as exc:
                raise layer.ctx.fail(f"reads {exc.args[0]!r}, which no earlier layer produces") from exc
            out = layer.run(inputs)
            outs = out if isinstance(out, (list, tuple)) else [out]
            if len(outs) != len(layer.outputs):
                raise layer.ctx.fail(f"produced {len(outs)} outputs for {len(layer.outputs)} names")
            for name, value in zip(layer.outputs, outs, strict=True):
                value = np.asarray(value)
                if value.dtype == np.float64:
                    value = value.astype(F32)
                if self.fp16 and value.dtype == F32:
                    value = value.astype(np.float16).astype(F32)
                meter.add(value, env.get(name))
                env[name] = value
                if shapes is not None:
                    shapes[name] = value.shape
                if observe is not None:
                    observe(name, value)
            for name in layer.release:
                meter.remove(env.pop(name, None))
        self.peak_bytes = max(self.peak_bytes, meter.peak_per_image)
        return env[self.probabilities]

    def run(self, x: np.ndarray, observe=None) -> np.ndarray:
        """(N, C, H, W) float32 -> (N, K) probabilities; ``observe(name, value)`` sees every layer output."""
        probs = np.asarray(self._forward(x, observe=observe), F32)
        return probs.reshape(x.shape[0], -1)
