"""A NeuralNetwork classifier (``spec.neuralNetworkClassifier``, the .mlmodel format) loaded into numpy layers.

Two image layouts exist. From specification 4 (iOS 13) a file may map its image to a rank-4 blob (N, C, H, W)
(``RANK4_IMAGE_MAPPING``); every file of specification 1-3, and later ones that keep the default, map it to a
rank-5 blob ``[Seq, Batch, C, H, W]`` (``RANK5_IMAGE_MAPPING``), and their layers work on rank-5 blobs. The executor
holds those blobs batch first, ``(Batch, Seq, C, H, W)``, so that the images of a pass lie on axis 0 as everywhere
else: the layers of specification 1-3 (``LEGACY_LAYERS``) treat every axis before the channel alike or, for the few
that address the sequence axis (permute, reshape, sequenceRepeat, concat along the sequence), read
``ctx.rank5`` to find it; any later layer in such a file gets its rank-5 inputs in the file's own order (the two
leading axes swapped back) and does not run on batches.

The file's image scaler is applied first, then the layers in file order (the format requires a topological order),
and the blob named by ``labelProbabilityLayerName`` is the class probabilities in label order. NeuralNetwork files
do not declare intermediate shapes, so loading runs one zero image through the network: that checks every layer
runs, and the shapes it records decide whether a batch can run at once (every image-derived blob led by the
batch axis of 1, every axis-dependent layer clear of that axis).
"""

from __future__ import annotations

import numpy as np

from ...errors import ConversionError, UnsupportedOperationError
from . import (  # noqa: F401  (layers register)
    live,
    nnlayers_elementwise,
    nnlayers_image,
    nnlayers_legacy,
    nnlayers_nd,
    nnlayers_nms,
    nnlayers_recurrent,
    nnlayers_scatter,
    nnlayers_shape,
)
from .image import ImageInput, scaler
from .nnlayers import LayerContext
from .registry import NN, SUPPORTED_LIST, never

F32 = np.float32
# NeuralNetworkImageShapeMapping: RANK5 maps an image to [Seq, Batch, C, H, W] (iOS 12 and earlier, and the default),
# RANK4 to [N, C, H, W]
RANK5_IMAGE_MAPPING, RANK4_IMAGE_MAPPING = 0, 1
# The layers of specifications 1-3 (NeuralNetwork.proto before iOS 13): on a rank-5 blob each treats the axes before
# the channel as batch, or finds the sequence axis from ``ctx.rank5``; they run on the executor's batch-first blobs.
LEGACY_LAYERS = frozenset(
    {
        "convolution",
        "pooling",
        "activation",
        "innerProduct",
        "embedding",
        "batchnorm",
        "mvn",
        "l2normalize",
        "softmax",
        "lrn",
        "crop",
        "padding",
        "upsample",
        "resizeBilinear",
        "unary",
        "add",
        "multiply",
        "average",
        "scale",
        "bias",
        "max",
        "min",
        "dot",
        "reduce",
        "loadConstant",
        "reshape",
        "flatten",
        "permute",
        "concat",
        "split",
        "sequenceRepeat",
        "reorganizeData",
        "slice",
        "simpleRecurrent",
        "gru",
        "uniDirectionalLSTM",
        "biDirectionalLSTM",
    }
)


# Layers that join their inputs along an axis or need them of one shape: one that does not derive from the image (a
# constant) keeps its leading 1 on a pass of N images, so such a layer runs image by image. (Elementwise layers
# broadcast a leading 1, and the others' second inputs are parameters: indices, shapes, K.)
JOINS = frozenset({"concat", "concatND", "stack", "dot"})


# Layers declined on purpose, with the reason the refusal gives (other unknown names are refused as unsupported).
NN.refuse(
    "gives an output whose shape depends on the input's values (the positions of its non-zero entries), so no "
    "fixed-shape pass or batch can be planned for it",
    "whereNonZero",
)
NN.refuse(
    "draws random numbers from Core ML's own generator, which cannot be reproduced, so its results could not be compared with Core ML's",
    *(f"random{kind}{form}" for kind in ("Normal", "Uniform", "Bernoulli") for form in ("Like", "Static", "Dynamic")),
    "categoricalDistribution",
)
NN.refuse("is a custom layer, code supplied by the app at run time, which the executor never runs", "custom")
NN.refuse("is control flow over nested networks", "branch", "loop", "loopBreak", "loopContinue")


class Layer:
    __slots__ = ("ctx", "run", "rule", "inputs", "outputs", "release")

    def __init__(self, ctx: LayerContext, run, rule, inputs: list[str], outputs: list[str]):
        self.ctx, self.run, self.rule, self.inputs, self.outputs = ctx, run, rule, inputs, outputs
        self.release: list[str] = []


def _swap_leading(value):
    return np.swapaxes(value, 0, 1) if isinstance(value, np.ndarray) and value.ndim == 5 else value


def _in_file_order(run):
    """A layer of specification 4 or later in a rank-5 file: its rank-5 inputs and outputs in the file's order
    ``[Seq, Batch, ...]`` (the executor holds them batch first)."""

    def wrapped(inputs):
        out = run([_swap_leading(x) for x in inputs])
        if isinstance(out, (list, tuple)):
            return [_swap_leading(np.asarray(v)) for v in out]
        return _swap_leading(np.asarray(out))

    return wrapped


class Network:
    """A loaded NeuralNetwork classifier. ``run(x)`` maps the (N, C, H, W) float32 image tensor to (N, K)."""

    def __init__(self, spec, image: ImageInput, where: str, fp16: bool):
        kind = spec.WhichOneof("Type")
        if kind != "neuralNetworkClassifier":
            raise UnsupportedOperationError(f"model type {kind!r} is not supported; the executor runs classifiers", path=where)
        nn = spec.neuralNetworkClassifier
        if nn.imageInputShapeMapping not in (RANK5_IMAGE_MAPPING, RANK4_IMAGE_MAPPING):
            raise UnsupportedOperationError(
                f"NeuralNetwork has image shape mapping {nn.imageInputShapeMapping}, which NeuralNetwork.proto does not define",
                path=where,
            )
        self.rank5 = nn.imageInputShapeMapping == RANK5_IMAGE_MAPPING
        self.where, self.fp16, self.image = where, fp16, image
        labels = nn.WhichOneof("ClassLabels")
        vector = nn.stringClassLabels.vector if labels == "stringClassLabels" else nn.int64ClassLabels.vector
        self.labels = [str(v) for v in vector]
        self.probabilities = nn.labelProbabilityLayerName or spec.description.predictedProbabilitiesName
        scale, bias = scaler(nn, image, where)
        self.scale, self.bias = scale[None], bias[None]  # (1, C, 1, 1); the bias (1, C, H, W) for a mean image
        self.decoded = live.Constants(where)  # the layers' weights together, bounded
        self.layers = [self._build(layer) for layer in nn.layers]
        self.peak_bytes: int = 0  # the most computed-value bytes alive at once for one image, over the passes run so far
        # released as soon as no later layer reads them, in the probe too: it kept every value (a 4000 x 4000 input
        # took 9.5 GB there)
        self._plan_release()
        self.batchable = self._probe()

    def _build(self, spec_layer) -> Layer:
        kind = spec_layer.WhichOneof("layer")
        if kind is None:  # a type that NeuralNetwork.proto (as coremltools ships it) does not define, or none at all
            raise UnsupportedOperationError(
                f"NeuralNetwork layer {spec_layer.name!r} has no layer type that NeuralNetwork.proto defines (a newer "
                f"specification's, or none); the executor runs the {len(NN.names())} types listed in {SUPPORTED_LIST}",
                path=self.where,
            )
        entry = NN.lookup(kind, f"layer {spec_layer.name!r}", self.where)
        ctx = LayerContext(
            spec_layer.name, kind, self.where, self.fp16, self.rank5, len(spec_layer.output), len(spec_layer.input), self.decoded
        )
        run, rule = entry.impl(getattr(spec_layer, kind), ctx)
        if self.rank5 and kind not in LEGACY_LAYERS:
            run, rule = _in_file_order(run), never
        return Layer(ctx, run, rule, list(spec_layer.input), list(spec_layer.output))

    def _probe(self) -> bool:
        """Run a zero image at batch 1; return whether the whole network may run on a batch."""
        derived = {self.image.name}
        for layer in self.layers:
            layer.ctx.batched = any(name in derived for name in layer.inputs)
            if layer.ctx.batched:
                derived.update(layer.outputs)
        x = np.zeros((1, self.image.channels, self.image.height, self.image.width), F32)
        shapes: dict[str, tuple] = {}
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
            if layer.ctx.kind in JOINS and not all(name in derived for name in layer.inputs):
                batchable = False  # a constant input keeps its batch of 1, which the pass's N images would not match
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
        if self.rank5:
            x = x[:, None]  # (Batch, Seq = 1, C, H, W): the file's [1, Batch, C, H, W], batch first (see the module)
        env = {self.image.name: x}
        if shapes is not None:
            shapes[self.image.name] = x.shape
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
        """(N, C, H, W) float32 -> (N, K) probabilities; ``observe(name, value)`` sees every layer output (in a
        rank-5 file, rank-5 values batch first, as the executor holds them: see the module)."""
        probs = np.asarray(self._forward(x, observe=observe), F32)
        return probs.reshape(x.shape[0], -1)
