"""Data-aware palettization: k-means lookup tables weighted by how much each weight matters to the decisions.

coremltools' palettizer clusters weights by value alone, so a 4-bit table spends its 16 entries where weights are
dense, not where errors cost decisions. Here each weight gets a sensitivity, the diagonal of the Fisher information
of the Keras model's own output distribution, estimated on calibration images:

    F_w = mean over images x of (d log p(y | x) / d w)^2,   y drawn from the model's own p(. | x)

(the Hessian of the KL divergence between the model and a perturbed copy, at the model: the second-order cost of
moving w). The squared gradients come from TensorFlow's GradientTape on the Keras model, one image at a time. The
Keras kernels are then matched to the Core ML weights they became (transposed, and for convolutions followed by batch
normalization scaled per output channel; the sensitivity is divided by that scale squared), and every table is a
weighted k-means (Lloyd's algorithm in one dimension) over its group of output channels. The tables are written as
ordinary Core ML lookup tables (``constexpr_lut_to_dense``) through coremltools' ``palettize_weights`` with a custom
``lut_function``, so the file is exactly what coremltools would write for the same tables.

A pure transform ``(mlmodel, spec, keras model, calibration) -> new mlmodel``; ``details`` records per weight what was
matched and the table layout. mixed.py builds the mixed bit widths (palette-mixed) on these tables.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, ConversionError, translating

# Fisher estimates from a few dozen images are noisy and exactly zero for weights no calibration image exercises
# (a ReLU that never fires); a weight the calibration set never needed can still matter on other images. Each
# weight's sensitivity is floored at this fraction of its tensor's mean, which keeps the weighting data-driven
# where the data speaks and plain k-means where it is silent.
SENSITIVITY_FLOOR = 0.1
# Lloyd's algorithm in one dimension, from each of five starts (weighted_kmeans_1d): 50 steps end within 10 % of
# scikit-learn's k-means objective on a heavy-tailed kernel (tests/test_quantize_coreml.py) at a fraction of its time.
KMEANS_ITERATIONS = 50
# k-means++ seeding draws from at most this many values: the seeds only need to land in the right regions, and a
# full pass per seed over a million-weight tensor would cost more than the clustering.
KMEANS_PLUSPLUS_SAMPLE = 20_000
# Images whose Fisher contributions are summed. The estimate's relative noise falls as 1/sqrt(n); 64 matches the
# activation calibration count and costs one backward pass each.
FISHER_IMAGES = 64
# The Fisher diagonal is E_{y ~ p(y|x)}[(d log p(y|x) / dw)^2]. It was estimated with one label drawn per image (seeded),
# so the same 64 calibration images in another order gave other sensitivities, another allocation of bits and on the
# transfer sample's palette-mixed 4-bit file 0.9926 or 0.9706 agreement on the held-out photos. The expectation is now
# taken exactly over the most probable classes that hold this much of each image's probability (renormalised over them,
# at most FISHER_MAX_CLASSES): deterministic and order-free. On in-class calibration images that is one or two classes,
# so it costs about one backward pass per image, as the draw did; a 1000-class model is bounded by the cap.
FISHER_MASS = 0.99
FISHER_MAX_CLASSES = 8
# A Keras kernel matches a Core ML weight when the weight is the kernel times one scale per output channel (batch
# norm folded in) up to float16 rounding (relative 5e-4 per element): 1 % relative residual leaves room for that.
MATCH_TOLERANCE = 1e-2


@dataclass(frozen=True)
class PaletteSpec:
    nbits: int
    group_size: int = 0  # output channels per lookup table; 0: one table per tensor
    weighted: bool = True  # False: the same k-means without sensitivities (the data-free baseline, for comparison)

    def __post_init__(self) -> None:
        if self.nbits not in (1, 2, 3, 4, 6, 8):
            raise ConfigError(f"palette bits must be one of [1, 2, 3, 4, 6, 8], got {self.nbits}")
        if self.group_size < 0:
            raise ConfigError(f"palette group_size must be >= 0, got {self.group_size}")


# ------------------------------------------------------------------------------------------------ sensitivities
def _kernels(model) -> list:
    """Every convolution and dense kernel variable of ``model`` (nested models included), trainable or frozen."""
    seen, out = set(), []
    for v in model.variables:
        name = v.path if hasattr(v, "path") else v.name
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("kernel", "depthwise_kernel", "pointwise_kernel") and len(v.shape) in (2, 4) and id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def fisher(model, images: np.ndarray) -> dict[int, np.ndarray]:
    """{id(kernel variable): E_y[squared gradient of log p(y|x)]} averaged over ``images`` (normalised float NHWC), the
    expectation over the model's own prediction taken exactly over the classes that hold FISHER_MASS of it (see
    there): deterministic, and the same whatever the order of the images."""
    import tensorflow as tf

    kernels = _kernels(model)

    @tf.function(reduce_retracing=True)
    def grads(x, y):
        with tf.GradientTape() as tape:
            for k in kernels:
                tape.watch(k.value if hasattr(k, "value") else k)
            p = model(x, training=False)
            logp = tf.math.log(tf.clip_by_value(p[0, y], 1e-12, 1.0))
        return tape.gradient(logp, [k.value if hasattr(k, "value") else k for k in kernels])

    totals = [np.zeros(k.shape, np.float64) for k in kernels]
    from ..errors import ConversionError
    from ..keras_memory import activation_bytes, images_per_call

    per_call = images_per_call(activation_bytes(model, "the Keras model", error=ConversionError))
    probs = np.asarray(model.predict(images, verbose=0, batch_size=min(32, per_call)), np.float64)
    for i in range(len(images)):
        p = probs[i] / probs[i].sum()
        order = np.argsort(-p, kind="stable")
        classes = order[: int(np.searchsorted(np.cumsum(p[order]), FISHER_MASS)) + 1][:FISHER_MAX_CLASSES]
        weights = p[classes] / p[classes].sum()
        for y, weight in zip(classes, weights, strict=True):
            for t, g in zip(totals, grads(tf.constant(images[i : i + 1]), tf.constant(int(y))), strict=True):
                if g is not None:
                    t += weight * np.square(np.asarray(g, np.float64))
    return {id(k): t / max(len(images), 1) for k, t in zip(kernels, totals, strict=True)}


def _layouts(kernel: np.ndarray):
    """(name, Keras -> Core ML, Core ML -> Keras) for the layouts a Keras kernel can take: conv (O, I, kh, kw),
    depthwise (I*M, 1, kh, kw), linear (O, I), matmul y (I, O)."""
    if kernel.ndim == 4:
        kh, kw, cin, cout = kernel.shape
        yield "conv", lambda a: np.transpose(a, (3, 2, 0, 1)), lambda a: np.transpose(a, (2, 3, 1, 0))
        yield (
            "depthwise",
            lambda a: np.transpose(a, (2, 3, 0, 1)).reshape(cin * cout, 1, kh, kw),
            lambda a: np.transpose(a.reshape(cin, cout, kh, kw), (2, 3, 0, 1)),
        )
    else:
        yield "linear", lambda a: a.T, lambda a: a.T
        yield "matmul", lambda a: a, lambda a: a


def weight_sensitivities(mlmodel, keras_model, kernel_fisher: dict[int, np.ndarray]) -> dict[str, dict]:
    """{Core ML const name: {"fisher": array in the weight's layout, "keras": kernel path, "layout": ..., "variable":
    the Keras variable, "to_keras": Core ML value -> Keras kernel (folded scale undone)}} for every Core ML
    conv/linear/matmul weight matched to a Keras kernel (see MATCH_TOLERANCE)."""
    from .coreml import _float_weights

    kernels = [(k, np.asarray(k.numpy(), np.float64)) for k in _kernels(keras_model)]
    out: dict[str, dict] = {}
    for op, const, value, _channels in _float_weights(mlmodel):
        w = np.asarray(value, np.float64)
        axis = (
            0
            if op.op_type != "matmul" or w.ndim < 2
            else (0 if (op.inputs.get("transpose_y") is not None and op.inputs["transpose_y"].val) else w.ndim - 1)
        )
        best = None
        for var, k in kernels:
            for layout, fn, inverse in _layouts(k):
                kk = fn(k)
                if kk.shape != w.shape:
                    continue
                reduce = tuple(i for i in range(w.ndim) if i != axis)
                denom = np.sum(kk * kk, axis=reduce, keepdims=True)
                scale = np.where(denom > 0, np.sum(w * kk, axis=reduce, keepdims=True) / np.where(denom > 0, denom, 1), 1.0)
                residual = float(np.linalg.norm(w - scale * kk)) / max(float(np.linalg.norm(w)), 1e-30)
                if residual <= MATCH_TOLERANCE and (best is None or residual < best[0]):
                    safe = np.where(np.abs(scale) > 1e-12, scale, 1.0)
                    best = (
                        residual,
                        {
                            "fisher": fn(kernel_fisher[id(var)]) / np.square(safe),
                            "keras": getattr(var, "path", var.name),
                            "layout": layout,
                            "variable": var,
                            "to_keras": lambda a, inverse=inverse, safe=safe: inverse(np.asarray(a, np.float64) / safe),
                            # d loss / d Core ML weight from d loss / d Keras kernel (the layouts are permutations)
                            "from_keras_grad": lambda g, fn=fn, safe=safe: fn(g) / safe,
                        },
                    )
        if best is not None:
            out[const.name] = best[1]
    return out


# ------------------------------------------------------------------------------------------------ weighted k-means
def weighted_kmeans_1d(
    values: np.ndarray, weights: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k,), index of the nearest centroid per value) minimising sum(weights * (values - centroid)^2).

    Deterministic: Lloyd's algorithm from five starts, keeping the best: weighted quantiles (where the mass is),
    evenly over the range (so rare large weights, which quantiles lump with their neighbours, get entries of their
    own), half of each, and two seeded k-means++ draws. An empty cluster keeps its centroid."""
    v = np.asarray(values, np.float64).ravel()
    w = np.asarray(weights, np.float64).ravel()
    order = np.argsort(v, kind="stable")
    vs, ws = v[order], w[order]
    cum = np.cumsum(ws)

    def quantiles(n: int) -> np.ndarray:
        targets = (np.arange(n) + 0.5) / max(n, 1) * cum[-1]
        return vs[np.minimum(np.searchsorted(cum, targets), len(vs) - 1)]

    def lloyd(centroids: np.ndarray) -> tuple[float, np.ndarray]:
        centroids = np.unique(centroids)
        for _ in range(iterations):
            idx = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, vs)
            mass = np.bincount(idx, ws, minlength=len(centroids))
            moment = np.bincount(idx, ws * vs, minlength=len(centroids))
            new = np.sort(np.where(mass > 0, moment / np.where(mass > 0, mass, 1), centroids))
            if np.array_equal(new, centroids):
                break
            centroids = new
        idx = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, vs)
        return float(np.sum(ws * (vs - centroids[idx]) ** 2)), centroids

    def plusplus(seed: int) -> np.ndarray:  # k-means++ seeding (weight x squared distance), on a subsample
        rng = np.random.default_rng(seed)
        pick = rng.choice(len(vs), size=min(len(vs), KMEANS_PLUSPLUS_SAMPLE), replace=False)
        sv, sw = vs[pick], ws[pick] + 1e-300
        chosen = [sv[rng.choice(len(sv), p=sw / sw.sum())]]
        dist = (sv - chosen[0]) ** 2
        for _ in range(k - 1):
            score = sw * dist
            if score.sum() <= 0:
                break
            chosen.append(sv[rng.choice(len(sv), p=score / score.sum())])
            dist = np.minimum(dist, (sv - chosen[-1]) ** 2)
        return np.array(chosen)

    half = k // 2
    starts = (
        quantiles(k),
        np.linspace(vs[0], vs[-1], k),
        np.concatenate([quantiles(half), np.linspace(vs[0], vs[-1], k - half)]),
        plusplus(0),
        plusplus(1),
    )
    _, centroids = min((lloyd(c) for c in starts), key=lambda t: t[0])
    if len(centroids) < k:  # fewer distinct values than entries: pad with the last one (never indexed)
        centroids = np.concatenate([centroids, np.full(k - len(centroids), centroids[-1])])
    bounds = (centroids[1:] + centroids[:-1]) / 2
    return centroids, np.searchsorted(bounds, v)


def _group_tables(
    w: np.ndarray, f: np.ndarray | None, nbits: int, group: int, axis: int, floor: float = SENSITIVITY_FLOOR
) -> dict[bytes, tuple]:
    """{bytes of a group's values as coremltools passes them: (lut, indices)} for every group of ``group`` channels
    on ``axis`` (the whole tensor when group is 0), computed the way coremltools splits the weight."""
    a = np.swapaxes(w, 0, axis) if axis else w
    fa = (np.swapaxes(f, 0, axis) if axis else f) if f is not None else None
    channels = a.shape[0]
    size = group or channels
    tables = {}
    for start in range(0, channels, size):
        block = np.ascontiguousarray(a[start : start + size])
        weights = np.ones(block.shape) if fa is None else fa[start : start + size]
        if fa is not None:
            weights = weights + floor * max(float(weights.mean()), 1e-30)
        lut, idx = weighted_kmeans_1d(block.astype(np.float64), weights, 2**nbits)
        tables[block.tobytes()] = (lut.astype(block.dtype), idx.astype(np.uint8))
    return tables


def palettize(mlmodel, spec: PaletteSpec, sensitivities: dict[str, dict] | None = None, details: dict | None = None):
    """A new MLModel whose conv/linear/matmul weights are ``spec.nbits``-bit lookup tables from weighted k-means
    (``sensitivities`` from ``weight_sensitivities``; a weight without one is clustered unweighted, and ``details``
    says which)."""
    import coremltools.optimize.coreml as cto

    from .coreml import MIN_WEIGHT_ELEMENTS, _float_weights

    sensitivities = sensitivities or {}
    per_op, layout = {}, []
    for op, const, value, channels in _float_weights(mlmodel):
        w = np.asarray(value)
        if w.size <= 2**spec.nbits:
            continue  # a table would not be smaller than the weight
        axis = 0 if op.op_type != "matmul" or (op.inputs.get("transpose_y") is not None and op.inputs["transpose_y"].val) else w.ndim - 1
        group = math.gcd(channels, spec.group_size) if spec.group_size else 0
        sens = sensitivities.get(const.name) if spec.weighted else None
        fisher_w = None if sens is None else sens["fisher"]
        tables = _group_tables(w, fisher_w, spec.nbits, group, axis)
        if not group and axis:  # one table: coremltools may pass the tensor unswapped; same table either way
            tables.update(_group_tables(w, fisher_w, spec.nbits, 0, 0))

        def lut_function(val, tables=tables, name=const.name):
            key = np.ascontiguousarray(val).tobytes()
            if key not in tables:
                raise ConversionError(f"palettize: coremltools passed a weight group of {name} in an unexpected layout")
            return tables[key]

        per_op[const.name] = cto.OpPalettizerConfig(
            mode="custom",
            lut_function=lut_function,
            granularity="per_grouped_channel" if group else "per_tensor",
            group_size=group,
            channel_axis=axis,
            weight_threshold=MIN_WEIGHT_ELEMENTS,
        )
        layout.append(
            {
                "weight": const.name,
                "elements": int(w.size),
                "tables": len(tables),
                "group_channels": group or int(channels),
                "sensitivity": "none (unweighted)" if sens is None else f"fisher from {sens['keras']}",
            }
        )
    if details is not None:
        details["palette"] = {"nbits": spec.nbits, "group_size": spec.group_size, "weighted": spec.weighted, "weights": layout}
    return _palettize_by_op(mlmodel, per_op, f"data-aware {spec.nbits}-bit palettization failed")


def data_aware(mlmodel, spec: PaletteSpec, keras_model, calibration: list[np.ndarray], normalize, details: dict | None = None):
    """The whole transform: Fisher sensitivities of ``keras_model`` on up to FISHER_IMAGES calibration images
    (uint8 NHWC batches, ``normalize`` turns them into the model's input), matched to ``mlmodel``'s weights, then
    ``palettize``."""
    if not calibration:
        raise ConversionError("data-aware palettization needs calibration images")
    images = np.concatenate([normalize(b) for b in calibration])[:FISHER_IMAGES].astype(np.float32)
    sens = weight_sensitivities(mlmodel, keras_model, fisher(keras_model, images))
    return palettize(mlmodel, spec, sens, details)


def _palettize_by_op(mlmodel, per_op: dict, failure: str):
    """coremltools' palettizer with one config per weight; a library error becomes ``failure: its first line``."""
    import coremltools.optimize.coreml as cto

    with translating(ConversionError, failure), warnings.catch_warnings():
        # k-means on a small kernel finds fewer distinct values than table entries: harmless, entries repeat.
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        return cto.palettize_weights(mlmodel, cto.OptimizationConfig(op_name_configs=per_op))
