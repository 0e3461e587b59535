"""NeuralNetwork files the executor refused before: the rank-5 image layout of specifications 1-3 ([Seq, Batch, C, H,
W] blobs), the old layers that address those axes (permute, reshape, reduce, embedding, dot, sequenceRepeat, concat
along the sequence) and the N-D layers it lacked. Each case builds a small .mlmodel with coremltools'
NeuralNetworkBuilder, runs the saved file through the executor and compares with a numpy computation of
NeuralNetwork.proto's definition on the file's own [Seq, Batch, C, H, W] (or N-D) values."""

from __future__ import annotations

import numpy as np
import pytest
from executor_helpers import (
    IMAGE_BIAS,
    IMAGE_SCALE,
    NN_SIDE,
    OP_ATOL,
    OP_RTOL,
    CoreMLExecutor,
    as_input,
    check_op_case,
    ct,
    image_pixels,
    mb,
    op_types,
    tf,
)

from exporter.errors import ConversionError, UnsupportedOperationError

# The layer types this module's tests are the cases of (each test checks its file holds them); test_registry checks
# that every registered layer is covered here or in test_nn_layers.
COVERS = {"permute", "reshape", "reduce", "embedding", "dot", "sequenceRepeat"}
RNG = np.random.default_rng(11)
W_CONV = RNG.normal(size=(3, 3, 3, 4)).astype(np.float32)  # builder layout (kh, kw, in, out)
B_CONV = RNG.normal(size=4).astype(np.float32)
W_DENSE = (0.1 * RNG.normal(size=(5, 4 * 4 * 4))).astype(np.float32)  # (out, in); small, so the softmax is not saturated
EMBED = RNG.normal(size=(4, 3)).astype(np.float32)  # [outputChannels, inputDim]
EMBED_BIAS = RNG.normal(size=4).astype(np.float32)
CONST = RNG.normal(size=(3, NN_SIDE, NN_SIDE)).astype(np.float32)


def nn5_file(tmp_path, build, count: int, name="nn5", rank5=True):
    """A NeuralNetwork classifier on a (3, 8, 8) image scaled to [-1, 1] with the rank-5 image layout (the builder's
    default, specification 1): ``build(builder, "image")`` adds the layers and returns a blob [1, Batch, K, 1, 1] or
    [1, Batch, C, H, W], flattened (old flatten layer) into the ``count`` "probabilities"."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder(
        [("image", datatypes.Array(3, NN_SIDE, NN_SIDE))], [("probs", None)], mode="classifier", disable_rank5_shape_mapping=not rank5
    )
    out = build(builder, "image")
    if rank5:
        builder.add_flatten("flat", 0, out, "probs")
    else:
        builder.add_flatten_to_2d("flat", out, "probs", axis=1)
    builder.set_class_labels([f"o{i}" for i in range(count)], predicted_feature_name="label", prediction_blob="probs")
    builder.set_pre_processing_parameters(
        image_input_names=["image"], image_scale=IMAGE_SCALE, red_bias=IMAGE_BIAS, green_bias=IMAGE_BIAS, blue_bias=IMAGE_BIAS
    )
    path = tmp_path / f"{name}.mlmodel"
    ct.utils.save_spec(builder.spec, str(path))
    return path


def check(tmp_path, build, reference, layers, n=3, rank5=True, name="nn5"):
    """The file ``build`` makes holds ``layers``; the executor's output on ``n`` images matches ``reference`` of the
    file's blob ([1, N, C, H, W] for a rank-5 file, (N, C, H, W) otherwise; its result must have Seq 1)."""
    pix = image_pixels(n, NN_SIDE, NN_SIDE)
    x = as_input(pix).astype(np.float64)
    want = np.asarray(reference(x[None] if rank5 else x), np.float64)
    if rank5:
        assert want.shape[0] == 1, "the reference must end with a sequence of 1"
        want = want[0]
    want = want.reshape(n, -1)
    path = nn5_file(tmp_path, build, want.shape[1], name=name, rank5=rank5)
    found = op_types(path)
    assert set(layers) <= found, f"the file lacks {set(layers) - found}"
    executor = CoreMLExecutor(path)
    got = executor.predict(pix)
    np.testing.assert_allclose(got, want, atol=OP_ATOL, rtol=OP_RTOL)
    return executor, pix, got


def _nhwc(x):
    return np.float32(x).transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------ rank-5 image layout
def test_a_rank5_file_runs_a_classic_cnn_and_its_images_as_one_batch(tmp_path):
    """Specification 1 (iOS 11): convolution, ReLU, max pooling, flatten, inner product and softmax on [1, B, C, H, W]
    blobs. Before, the whole file was refused ("the rank-5 image layout of iOS 12 and earlier")."""

    def build(b, x):
        b.add_convolution("c", 3, 4, 3, 3, 1, 1, "same", 1, W_CONV, B_CONV, True, input_name=x, output_name="c")
        b.add_activation("r", "RELU", "c", "r")
        b.add_pooling("p", 2, 2, 2, 2, "MAX", "VALID", "r", "p")
        b.add_flatten("f", 0, "p", "f")
        b.add_inner_product("d", W_DENSE, None, 64, 5, False, "f", "d")
        b.add_softmax("s", "d", "s")
        return "s"

    def reference(x5):
        x = x5[0]
        c = tf().nn.conv2d(_nhwc(x), W_CONV, 1, "SAME").numpy() + B_CONV
        p = tf().nn.max_pool2d(np.maximum(c, 0), 2, 2, "VALID").numpy().transpose(0, 3, 1, 2)  # (N, 4, 4, 4)
        d = p.reshape(len(x), -1) @ W_DENSE.T.astype(np.float64)
        e = np.exp(d - d.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True))[None]

    executor, pix, got = check(
        tmp_path, build, reference, ["convolution", "activation", "pooling", "flatten", "innerProduct", "softmax"], n=5
    )
    assert executor.batchable and executor.chunk > 1  # the images run together, batch first
    one = np.concatenate([executor.predict(pix[i : i + 1]) for i in range(len(pix))])
    np.testing.assert_allclose(one, got, atol=OP_ATOL, rtol=OP_RTOL)  # a batch's matrix products round differently


def test_permute_moves_the_sequence_axis_and_reshape_folds_it_back(tmp_path):
    """permute [3, 1, 2, 0] puts W on the sequence axis ([W, B, C, H, Seq]); reshape to a 4-long target [1, 192, 1, 1]
    lays each image's [Seq, C, H, W] out again in row-major order (CHANNEL_FIRST)."""

    def build(b, x):
        b.add_permute("p", [3, 1, 2, 0], x, "p")
        b.add_reshape("r", "p", "r", [1, 3 * NN_SIDE * NN_SIDE, 1, 1], 0)
        return "r"

    def reference(x5):
        y = x5.transpose(4, 1, 2, 3, 0)  # [W, B, C, H, 1]
        return np.stack([y[:, b].reshape(1, -1, 1, 1) for b in range(y.shape[1])], axis=1)

    check(tmp_path, build, reference, ["permute", "reshape"])


@pytest.mark.parametrize("axes", [[0, 3, 1, 2], [0, 2, 3, 1], [0, 1, 3, 2]])
def test_permute_of_channel_height_width(tmp_path, axes):
    def build(b, x):
        b.add_permute("p", axes, x, "p")
        return "p"

    check(tmp_path, build, lambda x5: x5.transpose([0, 1] + [1 + a for a in axes[1:]]), ["permute"])


@pytest.mark.parametrize("mode", [0, 1])
def test_reshape_to_a_three_long_target_keeps_the_sequence(tmp_path, mode):
    """[C, H, W] = [3, 8, 8] -> [6, 4, 8]: CHANNEL_FIRST in row-major order; CHANNEL_LAST flattened as (H, W, C),
    reshaped to (H_out, W_out, C_out) and permuted to (C_out, H_out, W_out)."""

    def build(b, x):
        b.add_reshape("r", x, "r", [6, 4, 8], mode)
        return "r"

    def reference(x5):
        s, n = x5.shape[:2]
        if mode == 0:
            return x5.reshape(s, n, 6, 4, 8)
        return x5.transpose(0, 1, 3, 4, 2).reshape(s, n, 4, 8, 6).transpose(0, 1, 4, 2, 3)

    check(tmp_path, build, reference, ["reshape"])


def test_sequence_repeat_then_reshape_channel_last_over_the_sequence(tmp_path):
    """sequenceRepeat 2 ([2, B, 3, 8, 8]); reshape CHANNEL_LAST to [1, 6, 8, 8]: each step flattened as (H, W, C),
    the steps one after the other, reshaped to (1, H_out, W_out, C_out) and permuted."""

    def build(b, x):
        b.add_sequence_repeat("q", 2, x, "q")
        b.add_reshape("r", "q", "r", [1, 6, NN_SIDE, NN_SIDE], 1)
        return "r"

    def reference(x5):
        q = np.concatenate([x5, x5], axis=0)  # [2, B, C, H, W]
        out = []
        for b in range(q.shape[1]):
            flat = q[:, b].transpose(0, 2, 3, 1).reshape(-1)  # each step (H, W, C), steps in order
            out.append(flat.reshape(1, NN_SIDE, NN_SIDE, 6).transpose(0, 3, 1, 2))
        return np.stack(out, axis=1)

    check(tmp_path, build, reference, ["sequenceRepeat", "reshape"])


def test_concat_along_the_sequence_axis(tmp_path):
    def build(b, x):
        b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=0.5)
        b.add_elementwise("c", [x, "h"], "c", "SEQUENCE_CONCAT")
        b.add_reshape("r", "c", "r", [1, 6, NN_SIDE, NN_SIDE], 0)
        return "r"

    def reference(x5):
        c = np.concatenate([x5, 0.5 * x5], axis=0)  # [2, B, C, H, W]
        return np.stack([c[:, b].reshape(1, 6, NN_SIDE, NN_SIDE) for b in range(c.shape[1])], axis=1)

    check(tmp_path, build, reference, ["concat"])


def test_convolution_and_pooling_treat_the_sequence_as_images(tmp_path):
    """Convolution and pooling on [2, B, C, H, W] (every axis before the channel is batch, NeuralNetwork.proto)."""

    def build(b, x):
        b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=-0.5)
        b.add_elementwise("c", [x, "h"], "c", "SEQUENCE_CONCAT")
        b.add_convolution("k", 3, 4, 3, 3, 1, 1, "valid", 1, W_CONV, None, False, input_name="c", output_name="k")
        b.add_pooling("p", 2, 2, 2, 2, "AVERAGE", "VALID", "k", "p")  # [2, B, 4, 3, 3]
        b.add_reshape("r", "p", "r", [1, 8, 3, 3], 0)
        return "r"

    def reference(x5):
        out = []
        for step in (x5[0], -0.5 * x5[0]):
            k = tf().nn.conv2d(_nhwc(step), W_CONV, 1, "VALID").numpy()
            out.append(tf().nn.avg_pool2d(k, 2, 2, "VALID").numpy().transpose(0, 3, 1, 2))
        seq = np.stack(out)  # [2, B, 4, 3, 3]
        return np.stack([seq[:, b].reshape(1, 8, 3, 3) for b in range(seq.shape[1])], axis=1)

    check(tmp_path, build, reference, ["convolution", "pooling", "concat", "reshape"])


def test_a_later_layer_in_a_rank5_file_sees_the_files_own_axis_order(tmp_path):
    """concatND on axis 0 of a rank-5 blob joins along Seq (the file's order), whatever order the executor holds."""

    def build(b, x):
        b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=0.5)
        b.add_concat_nd("c", [x, "h"], "c", axis=0)
        b.add_reshape("r", "c", "r", [1, 6, NN_SIDE, NN_SIDE], 0)
        return "r"

    def reference(x5):
        c = np.concatenate([x5, 0.5 * x5], axis=0)
        return np.stack([c[:, b].reshape(1, 6, NN_SIDE, NN_SIDE) for b in range(c.shape[1])], axis=1)

    executor, _, _ = check(tmp_path, build, reference, ["concatND"])
    assert not executor.batchable  # a later layer's axes are the file's: it runs image by image


def test_a_constant_of_a_rank5_file_is_a_rank5_blob(tmp_path):
    """loadConstant gives [1, 1, C, H, W] (NeuralNetwork.proto), which permute (rank 5 only) takes. Before, it
    gave [C, H, W] and the permute was refused ("gets a rank-3 input")."""

    def build(b, x):
        b.add_load_constant("k", "k", CONST.ravel(), [3, NN_SIDE, NN_SIDE])
        b.add_permute("t", [0, 1, 3, 2], "k", "t")
        b.add_elementwise("s", [x, "t"], "s", "ADD")
        return "s"

    check(tmp_path, build, lambda x5: x5 + CONST.transpose(0, 2, 1), ["loadConstant", "permute", "add"])


@pytest.mark.parametrize("mode", ["DEPTH_TO_SPACE", "SPACE_TO_DEPTH"])
def test_reorganize_data_on_a_sequence_of_two(tmp_path, mode):
    """reorganizeData on [2, B, C, H, W] (every axis before the channel is batch). Before, any input of rank other
    than 4 failed inside the kernel."""

    def build(b, x):
        b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=0.5)
        b.add_elementwise("c", [x, "h"], "c", "SEQUENCE_CONCAT")
        b.add_elementwise("f", ["c", "c"], "f", "CONCAT")
        b.add_elementwise("g", ["f", "f"], "g", "CONCAT")  # [2, B, 12, 8, 8]
        b.add_reorganize_data("r", "g", "r", mode, 2)
        b.add_reshape("o", "r", "o", [1, 2 * 12 * NN_SIDE * NN_SIDE, 1, 1], 0)
        return "o"

    def reference(x5):
        c = np.concatenate([x5, 0.5 * x5], axis=0)
        g = np.concatenate([c, c, c, c], axis=2)  # [2, B, 12, 8, 8]
        t = tf().nn.depth_to_space if mode == "DEPTH_TO_SPACE" else tf().nn.space_to_depth
        r = np.stack([t(_nhwc(step), 2).numpy().transpose(0, 3, 1, 2) for step in g])
        return np.stack([r[:, b].reshape(1, -1, 1, 1) for b in range(r.shape[1])], axis=1)

    check(tmp_path, build, reference, ["reorganizeData", "concat", "reshape"])


# ------------------------------------------------------------------------------------------------ reduce, embedding, dot
REDUCE_AXES = {"CHW": (2, 3, 4), "HW": (3, 4), "C": (2,), "H": (3,), "W": (4,)}
REDUCE_MODES = {
    "sum": lambda x, a: x.sum(a, keepdims=True),
    "avg": lambda x, a: x.mean(a, keepdims=True),
    "prod": lambda x, a: (1.5 * x).prod(a, keepdims=True),
    "logsum": lambda x, a: np.log(x + 1.5 + 1e-3).sum(a, keepdims=True),
    "sumsquare": lambda x, a: (x * x).sum(a, keepdims=True),
    "L1": lambda x, a: np.abs(x).sum(a, keepdims=True),
    "L2": lambda x, a: np.sqrt((x * x).sum(a, keepdims=True)),
    "max": lambda x, a: x.max(a, keepdims=True),
    "min": lambda x, a: x.min(a, keepdims=True),
    "argmax": lambda x, a: np.expand_dims(x.argmax(a[0]), a[0]),
}


@pytest.mark.parametrize("mode", list(REDUCE_MODES))
def test_reduce_every_operation_over_every_axis(tmp_path, mode):
    """The old reduce layer: each operation over CHW, HW, C, H and W (ARGMAX over one axis only), keeping the axes."""
    for axis, axes in REDUCE_AXES.items():
        if mode == "argmax" and len(axes) > 1:
            continue

        def build(b, x, axis=axis):
            if mode == "logsum":
                b.add_elementwise("s", [x], "s", "ADD", alpha=1.5)
                x = "s"
            elif mode == "prod":
                b.add_elementwise("s", [x], "s", "MULTIPLY", alpha=1.5)
                x = "s"
            b.add_reduce("r", x, "r", axis, mode, epsilon=1e-3)
            return "r"

        check(tmp_path, build, lambda x5, axes=axes: REDUCE_MODES[mode](x5, axes), ["reduce"], name=f"{mode}_{axis}")


def test_embedding_of_rank5_indices(tmp_path):
    """Indices [1, B, 1, 1, 1] (the channel argmax, its maximum over H and W) select columns of the [outputChannels,
    inputDim] weights, plus the bias: [1, B, outputChannels, 1, 1]."""

    def build(b, x):
        b.add_reduce("a", x, "a", "C", "argmax")
        b.add_reduce("m", "a", "m", "HW", "max")
        b.add_embedding("e", EMBED, EMBED_BIAS, 3, 4, True, "m", "e")
        return "e"

    def reference(x5):
        index = x5.argmax(2).max((2, 3)).astype(int)  # [1, B]
        return (EMBED.T[index] + EMBED_BIAS)[..., None, None]

    check(tmp_path, build, reference, ["embedding", "reduce"])


def test_embedding_of_rank4_indices(tmp_path):
    def build(b, x):
        b.add_reduce_mean("m", x, "m", axes=[1, 2, 3], keepdims=True)
        b.add_elementwise("s", ["m"], "s", "MULTIPLY", alpha=40.0)
        b.add_elementwise("t", ["s"], "t", "ADD", alpha=1.0)
        b.add_clip("c", "t", "c", 0.0, 2.0)
        b.add_floor("f", "c", "f")
        b.add_embedding("e", EMBED, None, 3, 4, False, "f", "e")
        return "e"

    def reference(x):
        index = np.floor(np.clip(40 * x.mean((1, 2, 3)) + 1, 0, 2)).astype(int)
        return EMBED.T[index][..., None, None]

    check(tmp_path, build, reference, ["embedding"], rank5=False, n=4)


@pytest.mark.parametrize("cosine", [False, True])
def test_dot_product_of_two_vectors(tmp_path, cosine):
    def build(b, x):
        b.add_pooling("g", 0, 0, 1, 1, "AVERAGE", "VALID", x, "g", is_global=True)  # [1, B, 3, 1, 1]
        b.add_scale("s", np.float32([0.5, -2.0, 1.5]), np.float32([0.1, 0.2, -0.3]), True, "g", "s", shape_scale=[3], shape_bias=[3])
        b.add_elementwise("d", ["g", "s"], "d", "COS" if cosine else "DOT")
        return "d"

    def reference(x5):
        g = x5.mean((3, 4), keepdims=True)
        s = g * np.reshape([0.5, -2.0, 1.5], (3, 1, 1)) + np.reshape([0.1, 0.2, -0.3], (3, 1, 1))
        if cosine:
            g = g / np.sqrt((g * g).sum(2, keepdims=True))
            s = s / np.sqrt((s * s).sum(2, keepdims=True))
        return (g * s).sum(2, keepdims=True)

    check(tmp_path, build, reference, ["dot", "pooling", "scale"])


# ------------------------------------------------------------------------------------------------ refusals
def _spec_with(tmp_path, edit, name="bad"):
    """A small rank-5 file (permute) whose spec ``edit(spec)`` changes before it is saved."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    builder = NeuralNetworkBuilder([("image", datatypes.Array(3, NN_SIDE, NN_SIDE))], [("probs", None)], mode="classifier")
    builder.add_permute("p", [0, 1, 2, 3], "image", "p")
    builder.add_flatten("probs", 0, "p", "probs")
    builder.set_class_labels([f"o{i}" for i in range(3 * NN_SIDE * NN_SIDE)], predicted_feature_name="label", prediction_blob="probs")
    builder.set_pre_processing_parameters(image_input_names=["image"])
    spec = builder.spec
    edit(spec)
    path = tmp_path / f"{name}.mlmodel"
    ct.utils.save_spec(spec, str(path))
    return path


def test_unknown_image_mapping_and_bad_legacy_parameters_are_refused_in_one_line(tmp_path):
    def mapping(spec):
        spec.neuralNetworkClassifier.imageInputShapeMapping = 7

    def permutation(spec):
        del spec.neuralNetworkClassifier.layers[0].permute.axis[:]
        spec.neuralNetworkClassifier.layers[0].permute.axis.extend([0, 1, 1, 3])

    cases = [
        (mapping, UnsupportedOperationError, "image shape mapping 7"),
        (permutation, ConversionError, "permute layer 'p' has axis [0, 1, 1, 3]"),
    ]
    for i, (edit, error, text) in enumerate(cases):
        path = _spec_with(tmp_path, edit, name=f"bad{i}")
        with pytest.raises(error) as info:
            CoreMLExecutor(path)
        message = str(info.value)
        assert text in message and path.name in message and "\n" not in message


def test_layers_declined_on_purpose_are_refused_with_the_reason(tmp_path):
    """Data-dependent shapes, random numbers, app code and control flow: one line naming the layer, the file and why."""
    reasons = {
        "whereNonZero": "depends on the input's values",
        "randomUniformStatic": "draws random numbers",
        "categoricalDistribution": "draws random numbers",
        "custom": "custom layer",
        "branch": "control flow",
    }
    for kind, reason in reasons.items():

        def edit(spec, kind=kind):
            layer = spec.neuralNetworkClassifier.layers[0]
            getattr(layer, kind).SetInParent()  # the layer's oneof becomes ``kind``

        path = _spec_with(tmp_path, edit, name=kind)
        with pytest.raises(UnsupportedOperationError) as info:
            CoreMLExecutor(path)
        message = str(info.value)
        assert f"'{kind}'" in message and reason in message and path.name in message and "\n" not in message


# ------------------------------------------------------------------------------------------------ N-D layers (iOS 13+)
COVERS |= {
    "scatter",
    "scatterAlongAxis",
    "scatterND",
    "oneHot",
    "matrixBandPart",
    "lowerTriangular",
    "upperTriangular",
    "slidingWindows",
    "embeddingND",
    "broadcastToDynamic",
    "rangeDynamic",
    "reverseSeq",
}
UPDATES = RNG.normal(size=(1, 2, NN_SIDE, NN_SIDE)).astype(np.float32)
ALONG_INDEX = np.stack([np.full((3, NN_SIDE), 1), np.full((3, NN_SIDE), 6)], axis=1)[None].astype(np.float32)  # (1, 3, 2, 8)
ALONG_INDEX[0, :, 1, ::2] = 3  # rows 1 and 3 or 6: distinct within each column, so "update" is well defined
ALONG_UPDATES = RNG.normal(size=(1, 3, 2, NN_SIDE)).astype(np.float32)
ND_INDEX = np.float32([[0, 1, 2], [0, 2, -1]])  # (N, C, H) positions; -1 counts from the end
ND_UPDATES = RNG.normal(size=(2, NN_SIDE)).astype(np.float32) + 2.0  # away from 0: "div" divides by them
COMBINE = {
    "UPDATE": lambda a, u: u,
    "ADD": np.add,
    "SUB": np.subtract,
    "MUL": np.multiply,
    "DIV": np.divide,
    "MAX": np.maximum,
    "MIN": np.minimum,
}


def _k(b, value, name):
    value = np.asarray(value, np.float32)
    b.add_load_constant_nd(name, name, value, shape=list(value.shape))
    return name


def _index_of(b, x, scale=4.0, shift=2.0, top=4.0):
    """Whole numbers 0..top from the image: floor(clip(scale * x + shift, 0, top))."""
    b.add_elementwise("is", [x], "is", "MULTIPLY", alpha=scale)
    b.add_elementwise("ia", ["is"], "ia", "ADD", alpha=shift)
    b.add_clip("ic", "ia", "ic", 0.0, top)
    b.add_floor("if", "ic", "if")
    return "if"


def _index_ref(x, scale=4.0, shift=2.0, top=4.0):
    return np.floor(np.clip(scale * np.float32(x) + np.float32(shift), 0, top))


@pytest.mark.parametrize("mode", list(COMBINE))
def test_scatter_every_mode_with_a_negative_and_a_repeated_index(tmp_path, mode):
    """Slices [2, -1] of the channel axis (both channel 2: repeated; "update" writes the last, the others combine
    both in turn) take the updates."""
    index = [0, -1] if mode == "UPDATE" else [2, -1]

    def build(b, x):
        b.add_scatter("s", [x, _k(b, index, "i"), _k(b, UPDATES, "u")], "s", axis=1, mode=mode)
        return "s"

    def reference(x):
        out = x.copy()
        for n in range(len(x)):
            for i, c in enumerate(index):
                out[n, c] = COMBINE[mode](out[n, c], UPDATES[0, i])
        return out

    check(tmp_path, build, reference, ["scatter"], rank5=False, name=f"scatter_{mode}")


@pytest.mark.parametrize("mode", ["UPDATE", "ADD", "MAX"])
def test_scatter_along_axis(tmp_path, mode):
    def build(b, x):
        b.add_scatter_along_axis("s", [x, _k(b, ALONG_INDEX, "i"), _k(b, ALONG_UPDATES, "u")], "s", axis=2, mode=mode)
        return "s"

    def reference(x):
        out = x.copy()
        for n in range(len(x)):
            for c in range(3):
                for i in range(2):
                    for w in range(NN_SIDE):
                        h = int(ALONG_INDEX[0, c, i, w])
                        out[n, c, h, w] = COMBINE[mode](out[n, c, h, w], ALONG_UPDATES[0, c, i, w])
        return out

    check(tmp_path, build, reference, ["scatterAlongAxis"], rank5=False, name=f"along_{mode}")


@pytest.mark.parametrize("mode", ["SUB", "MUL", "DIV", "MIN"])
def test_scatter_nd(tmp_path, mode):
    def build(b, x):
        b.add_scatter_nd("s", [x, _k(b, ND_INDEX, "i"), _k(b, ND_UPDATES, "u")], "s", mode=mode)
        return "s"

    def reference(x):
        out = x.copy()
        for n in range(len(x)):
            for (_, c, h), row in zip(ND_INDEX.astype(int), ND_UPDATES, strict=True):
                out[n, c, h] = COMBINE[mode](out[n, c, h], row)
        return out

    check(tmp_path, build, reference, ["scatterND"], rank5=False, name=f"nd_{mode}")


@pytest.mark.parametrize("axis", [-1, 1])
def test_one_hot_with_an_index_outside_the_size(tmp_path, axis):
    """Indices 0..4, size 4: index 4 gives a vector of offValue. The size comes from the parameter, or from a second
    input (axis 1)."""

    def build(b, x):
        index = _index_of(b, x)
        if axis == 1:
            b.add_one_hot("h", [index, _k(b, [4.0], "d")], "h", axis=axis, on_value=2.5, off_value=-0.5)
        else:
            b.add_one_hot("h", [index], "h", one_hot_vector_size=4, axis=axis, on_value=2.5, off_value=-0.5)
        return "h"

    def reference(x):
        hot = np.where(_index_ref(x)[..., None] == np.arange(4), 2.5, -0.5)
        return np.moveaxis(hot, -1, axis % 5)

    check(tmp_path, build, reference, ["oneHot"], rank5=False, name=f"hot{axis}")


@pytest.mark.parametrize(
    "case",
    [
        ("matrixBandPart", lambda b, x: b.add_matrix_band_part("m", x, "m", num_lower=1, num_upper=2), (1, 2)),
        ("matrixBandPart", lambda b, x: b.add_matrix_band_part("m", x, "m", num_lower=-1, num_upper=0), (-1, 0)),
        ("lowerTriangular", lambda b, x: b.add_lower_triangular("m", x, "m", k=-1), None),
        ("upperTriangular", lambda b, x: b.add_upper_triangular("m", x, "m", k=2), None),
    ],
    ids=["band_1_2", "band_all_0", "lower", "upper"],
)
def test_band_and_triangular_parts(tmp_path, case):
    kind, add, limits = case

    def build(b, x):
        add(b, x)
        return "m"

    def reference(x):
        m, n = np.indices((NN_SIDE, NN_SIDE))
        if kind == "lowerTriangular":
            keep = n - m <= -1
        elif kind == "upperTriangular":
            keep = n - m >= 2
        else:
            lower, upper = limits
            keep = ((lower < 0) | (m - n <= lower)) & ((upper < 0) | (n - m <= upper))
        return np.where(keep, x, 0.0)

    check(tmp_path, build, reference, [kind], rank5=False, name=kind)


@pytest.mark.parametrize("axis,size,step", [(3, 3, 2), (-2, 4, 1)])
def test_sliding_windows(tmp_path, axis, size, step):
    def build(b, x):
        b.add_sliding_windows("w", x, "w", axis=axis, window_size=size, step=step)
        return "w"

    def reference(x):
        a = axis % 4
        starts = range(0, NN_SIDE - size + 1, step)
        windows = [np.take(x, np.arange(s, s + size), axis=a) for s in starts]
        return np.stack(windows, axis=a)  # (..., M, W, ...)

    check(tmp_path, build, reference, ["slidingWindows"], rank5=False, name=f"win{axis}")


def test_embedding_nd(tmp_path):
    def build(b, x):
        b.add_reduce_mean("m", x, "m", axes=[1, 2, 3], keepdims=True)  # (N, 1, 1, 1): the last axis is 1
        index = _index_of(b, "m", scale=40.0, shift=1.0, top=2.0)
        b.add_embedding_nd("e", index, "e", 3, 4, EMBED, EMBED_BIAS)
        return "e"

    def reference(x):
        index = _index_ref(x.mean((1, 2, 3), keepdims=True), 40.0, 1.0, 2.0).astype(int)[..., 0]
        return EMBED.T[index] + EMBED_BIAS

    check(tmp_path, build, reference, ["embeddingND"], rank5=False, n=4)


def test_broadcast_to_dynamic_range_dynamic_and_reverse_seq(tmp_path):
    """The channel mean broadcast back to the image's shape (getShape), plus arange(0.5, 8) along W and arange(-4,
    4, 1) along H (rangeDynamic, one and three inputs); then the first [8, 3, 0] entries of W reversed per channel."""

    def build(b, x):
        b.add_reduce_mean("m", x, "m", axes=[1], keepdims=True)
        b.add_get_shape("sh", x, "sh")
        b.add_broadcast_to_dynamic("bc", ["m", "sh"], "bc")
        b.add_range_dynamic("rw", [_k(b, [8.0], "end")], "rw", start=0.5, step=1.0)
        b.add_range_dynamic("rh", [_k(b, [4.0], "e2"), _k(b, [-4.0], "start"), _k(b, [1.0], "st")], "rh")
        b.add_expand_dims("rhe", "rh", "rhe", axes=[-1])
        b.add_add_broadcastable("s1", ["bc", "rw"], "s1")
        b.add_add_broadcastable("s2", ["s1", "rhe"], "s2")
        b.add_add_broadcastable("s3", ["s2", x], "s3")
        b.add_reverse_sequence("rv", ["s3", _k(b, [8.0, 3.0, 0.0], "len")], "rv", batch_axis=1, seq_axis=3)
        return "rv"

    def reference(x):
        s = x.mean(1, keepdims=True) + np.arange(0.5, 8)[None, :] + np.arange(-4, 4)[:, None] + x
        out = s.copy()
        for c, length in enumerate([8, 3, 0]):
            out[:, c, :, :length] = s[:, c, :, :length][..., ::-1]
        return out

    check(tmp_path, build, reference, ["broadcastToDynamic", "rangeDynamic", "reverseSeq"], rank5=False)


@pytest.mark.parametrize("bgr", [False, True])
def test_a_mean_image_is_subtracted_in_the_channel_order_the_network_receives(tmp_path, bgr):
    """Caffe-era files subtract a [C, H, W] mean image (NeuralNetworkMeanImage) instead of scaling; for a BGR input
    the mean's channels are B, G, R. Before, the file was refused ("image preprocessing 'meanImage'")."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder

    mean = RNG.uniform(0, 255, size=(3, NN_SIDE, NN_SIDE)).astype(np.float32)
    builder = NeuralNetworkBuilder([("image", datatypes.Array(3, NN_SIDE, NN_SIDE))], [("probs", None)], mode="classifier")
    builder.add_elementwise("s", ["image"], "s", "MULTIPLY", alpha=1 / 255)
    builder.add_flatten("probs", 0, "s", "probs")
    count = 3 * NN_SIDE * NN_SIDE
    builder.set_class_labels([f"o{i}" for i in range(count)], predicted_feature_name="label", prediction_blob="probs")
    builder.set_pre_processing_parameters(image_input_names=["image"], is_bgr=bgr)
    step = builder.spec.neuralNetworkClassifier.preprocessing[0]
    step.meanImage.meanImage.extend(mean.ravel().tolist())  # replaces the scaler (a oneof)
    path = tmp_path / "mean.mlmodel"
    ct.utils.save_spec(builder.spec, str(path))
    pix = image_pixels(3, NN_SIDE, NN_SIDE)
    tensor = pix[..., ::-1] if bgr else pix
    want = ((tensor.astype(np.float64).transpose(0, 3, 1, 2) - mean) / 255).reshape(3, -1)
    np.testing.assert_allclose(CoreMLExecutor(path).predict(pix), want, atol=OP_ATOL, rtol=OP_RTOL)


# ------------------------------------------------------------------------------------------------ recurrent layers
COVERS |= {"simpleRecurrent", "gru", "uniDirectionalLSTM", "biDirectionalLSTM", "NonMaximumSuppression"}
HIDDEN, STEPS, FEATURES = 4, NN_SIDE, 3 * NN_SIDE  # the image as 8 steps of 24 values
REC = np.random.default_rng(21)


def _mats(count, rows, cols, scale=0.3):
    return [(scale * REC.normal(size=(rows, cols))).astype(np.float32) for _ in range(count)]


W_SIMPLE, R_SIMPLE, B_SIMPLE = _mats(1, HIDDEN, FEATURES)[0], _mats(1, HIDDEN, HIDDEN)[0], _mats(1, HIDDEN, 1)[0].ravel()
W_GRU, R_GRU, B_GRU = _mats(3, HIDDEN, FEATURES), _mats(3, HIDDEN, HIDDEN), [v.ravel() for v in _mats(3, HIDDEN, 1)]
W_LSTM, R_LSTM, B_LSTM = _mats(4, HIDDEN, FEATURES), _mats(4, HIDDEN, HIDDEN), [v.ravel() for v in _mats(4, HIDDEN, 1)]
P_LSTM = [v.ravel() for v in _mats(3, HIDDEN, 1)]
W_BACK, R_BACK, B_BACK = _mats(4, HIDDEN, FEATURES), _mats(4, HIDDEN, HIDDEN), [v.ravel() for v in _mats(4, HIDDEN, 1)]
P_BACK = [v.ravel() for v in _mats(3, HIDDEN, 1)]
W_H0 = _mats(1, HIDDEN, 3, scale=1.0)[0]  # the initial state: the image's channel means through a dense layer


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _c50(v):
    return np.clip(v, -50, 50)


def _as_sequence(b, x):
    """[1, B, 3, 8, 8] -> [8, B, 24, 1, 1]: each image's values in row-major order, 24 a step."""
    b.add_reshape("seq", x, "seq", [STEPS, FEATURES, 1, 1], 0)
    return "seq"


def _initial_state(b, x, name):
    b.add_pooling(name + "_g", 0, 0, 1, 1, "AVERAGE", "VALID", x, name + "_g", is_global=True)
    b.add_inner_product(name, W_H0, None, 3, HIDDEN, False, name + "_g", name)
    return name


def _ref_sequence(x5):
    return x5[0].reshape(len(x5[0]), STEPS, FEATURES)  # (B, Seq, I)


def _ref_initial(x5):
    return x5[0].mean((2, 3)) @ W_H0.T.astype(np.float64)  # (B, H)


def _ref_blob(y, steps):
    """(B, Seq, H) per-image outputs -> [1, B, Seq * H, 1, 1] (the files reshape each image's outputs so)."""
    return y.reshape(1, len(y), steps * y.shape[-1], 1, 1) if steps else y


def _gather_sequence(b, out, steps, width=HIDDEN):
    b.add_reshape("back", out, "back", [1, steps * width, 1, 1], 0)
    return "back"


@pytest.mark.parametrize("reverse", [False, True])
def test_simple_recurrent_every_step(tmp_path, reverse):
    def build(b, x):
        h0 = _initial_state(b, x, "h0")
        b.add_simple_rnn(
            "rnn",
            R_SIMPLE,
            W_SIMPLE,
            B_SIMPLE,
            HIDDEN,
            FEATURES,
            "TANH",
            [_as_sequence(b, x), h0],
            ["y", "yT"],
            output_all=True,
            reverse_input=reverse,
        )
        return _gather_sequence(b, "y", STEPS)

    def reference(x5):
        seq, y = _ref_sequence(x5), _ref_initial(x5)
        out = []
        for t in range(STEPS)[::-1] if reverse else range(STEPS):
            y = np.tanh(_c50(seq[:, t] @ W_SIMPLE.T + y @ R_SIMPLE.T + B_SIMPLE))
            out.append(y)
        return _ref_blob(np.stack(out, 1), STEPS)

    check(tmp_path, build, reference, ["simpleRecurrent"])


@pytest.mark.parametrize("sequence,reverse", [(False, False), (True, True)])
def test_gru(tmp_path, sequence, reverse):
    def build(b, x):
        h0 = _initial_state(b, x, "h0")
        b.add_gru(
            "gru",
            R_GRU,
            W_GRU,
            B_GRU,
            HIDDEN,
            FEATURES,
            [_as_sequence(b, x), h0],
            ["y", "yT"],
            activation="TANH",
            inner_activation="SIGMOID",
            output_all=sequence,
            reverse_input=reverse,
        )
        return _gather_sequence(b, "y", STEPS if sequence else 1)

    def reference(x5):
        seq, y = _ref_sequence(x5), _ref_initial(x5)
        (wz, wr, wo), (rz, rr, ro), (bz, br, bo) = W_GRU, R_GRU, B_GRU
        out = []
        for t in range(STEPS)[::-1] if reverse else range(STEPS):
            xt = seq[:, t]
            z = _sig(_c50(xt @ wz.T + y @ rz.T + bz))
            r = _sig(_c50(xt @ wr.T + y @ rr.T + br))
            o = np.tanh(_c50(xt @ wo.T + (y * r) @ ro.T + bo))
            y = (1 - z) * o + z * y
            out.append(y)
        return _ref_blob(np.stack(out, 1) if sequence else y[:, None], STEPS if sequence else 1)

    check(tmp_path, build, reference, ["gru"])


def _lstm_ref(seq, y, c, w, r, bias, peep, forget_bias, coupled, clip, order):
    (wi, wf, wo, wz), (ri, rf, ro, rz), (bi, bf, bo, bz) = w, r, bias
    pi, pf, po = peep
    bf = bf + (1.0 if forget_bias else 0.0)
    out = []
    for t in order:
        xt = seq[:, t]
        i = _sig(_c50(xt @ wi.T + y @ ri.T + pi * c + bi))
        z = np.tanh(_c50(xt @ wz.T + y @ rz.T + bz))
        if coupled:
            c = c * (1 - i) + i * z
        else:
            c = c * _sig(_c50(xt @ wf.T + y @ rf.T + pf * c + bf)) + i * z
        c = np.clip(c, -clip, clip)
        o = _sig(_c50(xt @ wo.T + y @ ro.T + po * c + bo))
        y = np.tanh(c) * o
        out.append(y)
    return out, y, c


@pytest.mark.parametrize("variant", ["peephole_forget_bias", "coupled_cell_clip", "reverse_sequence"])
def test_unidirectional_lstm_and_its_final_states(tmp_path, variant):
    """y, h and c (the three outputs) of one LSTM: peepholes with forgetBias; the coupled input and forget gate with a
    cell clip of 0.3 (which it reaches); reverseInput with every step's output."""
    coupled, clip = variant == "coupled_cell_clip", 0.3 if variant == "coupled_cell_clip" else 50.0
    forget_bias, reverse = variant == "peephole_forget_bias", variant == "reverse_sequence"
    sequence = reverse
    peep = P_LSTM if variant == "peephole_forget_bias" else None

    def build(b, x):
        h0, c0 = _initial_state(b, x, "h0"), _initial_state(b, x, "c0")
        b.add_unilstm(
            "lstm",
            R_LSTM,
            W_LSTM,
            B_LSTM,
            HIDDEN,
            FEATURES,
            [_as_sequence(b, x), h0, c0],
            ["y", "hT", "cT"],
            peep=peep,
            output_all=sequence,
            forget_bias=forget_bias,
            coupled_input_forget_gate=coupled,
            cell_clip_threshold=clip,
            reverse_input=reverse,
        )
        y = _gather_sequence(b, "y", STEPS if sequence else 1)
        b.add_elementwise("all", [y, "hT", "cT"], "all", "CONCAT")
        return "all"

    def reference(x5):
        seq, h0 = _ref_sequence(x5), _ref_initial(x5)
        order = range(STEPS)[::-1] if reverse else range(STEPS)
        zeros = [np.zeros(HIDDEN)] * 3
        out, y, c = _lstm_ref(seq, h0, h0, W_LSTM, R_LSTM, B_LSTM, peep or zeros, forget_bias, coupled, clip, order)
        ys = np.stack(out, 1) if sequence else y[:, None]
        flat = ys.reshape(len(ys), -1)
        return np.concatenate([flat, y, c], axis=1)[None, ..., None, None]

    check(tmp_path, build, reference, ["uniDirectionalLSTM", "concat"])


@pytest.mark.parametrize("sequence", [False, True])
def test_bidirectional_lstm(tmp_path, sequence):
    """Forward and backward LSTMs; step t holds [forward after x_1..x_t, backward after x_T..x_t]; the four final
    states follow."""

    def build(b, x):
        h0 = _initial_state(b, x, "h0")
        b.add_bidirlstm(
            "bi",
            R_LSTM,
            W_LSTM,
            B_LSTM,
            R_BACK,
            W_BACK,
            B_BACK,
            HIDDEN,
            FEATURES,
            [_as_sequence(b, x), h0, h0, h0, h0],
            ["y", "hf", "cf", "hb", "cb"],
            peep=P_LSTM,
            peep_back=P_BACK,
            output_all=sequence,
        )
        y = _gather_sequence(b, "y", STEPS if sequence else 1, 2 * HIDDEN)
        b.add_elementwise("all", [y, "hf", "cf", "hb", "cb"], "all", "CONCAT")
        return "all"

    def reference(x5):
        seq, h0 = _ref_sequence(x5), _ref_initial(x5)
        fs, fy, fc = _lstm_ref(seq, h0, h0, W_LSTM, R_LSTM, B_LSTM, P_LSTM, False, False, 50.0, range(STEPS))
        bs, by, bc = _lstm_ref(seq, h0, h0, W_BACK, R_BACK, B_BACK, P_BACK, False, False, 50.0, range(STEPS)[::-1])
        if sequence:
            ys = np.concatenate([np.stack(fs, 1), np.stack(bs[::-1], 1)], axis=-1)
        else:
            ys = np.concatenate([fy, by], axis=-1)[:, None]
        flat = ys.reshape(len(ys), -1)
        return np.concatenate([flat, fy, fc, by, bc], axis=1)[None, ..., None, None]

    check(tmp_path, build, reference, ["biDirectionalLSTM", "concat"])


# ------------------------------------------------------------------------------------------------ inputs and attributes
# the executor ignored before (a silently wrong result) or refused
W_INPUT = RNG.normal(size=(4, 3, 3, 3)).astype(np.float32)  # [outputChannels, kernelChannels, kH, kW]


def test_concat_nd_interleave(tmp_path):
    """interleave (iOS 14) takes one slice of each input in turn; before, it was ignored (a plain concatenation)."""

    def build(b, x):
        b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=0.5)
        b.add_concat_nd("c", [x, "h"], "c", axis=2, interleave=True)
        return "c"

    def reference(x):
        out = np.zeros((len(x), 3, 2 * NN_SIDE, NN_SIDE))
        out[:, :, 0::2], out[:, :, 1::2] = x, 0.5 * x
        return out

    check(tmp_path, build, reference, ["concatND"], rank5=False)


def test_tile_reps_from_the_second_input(tmp_path):
    """reps given as a second input (the parameter then empty); before, the input came back untiled."""

    def build(b, x):
        b.add_tile("t", [x, _k(b, [1, 1, 2, 3], "reps")], "t")
        return "t"

    check(tmp_path, build, lambda x: np.tile(x, (1, 1, 2, 3)), ["tile"], rank5=False)


def test_cumsum_axis_from_the_second_input(tmp_path):
    """The second input is the axis (2), overriding the parameter (-1); before, the parameter's axis was used."""

    def build(b, x):
        b.add_cumsum("c", [x, _k(b, [2.0], "axis")], "c", axis=-1)
        return "c"

    check(tmp_path, build, lambda x: np.cumsum(x, 2), ["cumSum"], rank5=False)


def test_slice_dynamic_masks_from_inputs(tmp_path):
    """Inputs 5-7 replace beginMasks, endMasks and squeezeMasks; before, they were ignored (the parameters' all-False
    masks sliced x[0:1, 1:3, 2:7:2, 5:2:3], an empty slice)."""

    def build(b, x):
        ins = [x, _k(b, [0, 1, 2, 5], "bg"), _k(b, [1, 3, 7, 2], "en"), _k(b, [1, 1, 2, 3], "st")]
        ins += [_k(b, [1, 0, 0, 1], "bm"), _k(b, [1, 0, 0, 1], "em"), _k(b, [0, 0, 0, 0], "sm")]
        b.add_slice_dynamic("s", ins, "s", begin_masks=[False] * 4, end_masks=[False] * 4)
        return "s"

    check(tmp_path, build, lambda x: x[:, 1:3, 2:7:2, ::3], ["sliceDynamic"], rank5=False)


@pytest.mark.parametrize("case", ["second_input", "to_given_size"])
def test_constant_pad_amounts_from_an_input_or_as_output_sizes(tmp_path, case):
    """Pad amounts as a second input (before: ignored, no padding), and padToGivenOutputSizeMode, where H is padded
    after its values to 11 rows and W before them to 10 columns (before: refused)."""

    def build(b, x):
        if case == "second_input":
            b.add_constant_pad("p", [x, _k(b, [0, 0, 0, 0, 1, 2, 3, 0], "amounts")], "p", value=-0.5)
        else:
            b.add_constant_pad("p", [x], "p", value=-0.5, pad_to_given_output_size_mode=True, pad_amounts=[0, 0, 0, 0, 0, 11, 10, 0])
        return "p"

    def reference(x):
        widths = ((1, 2), (3, 0)) if case == "second_input" else ((0, 3), (2, 0))
        return np.pad(x, ((0, 0), (0, 0)) + widths, constant_values=-0.5)

    check(tmp_path, build, reference, ["constantPad"], rank5=False, name=case)


def test_scatter_with_indices_of_rank_two(tmp_path):
    """Indices [[0, 7], [3, -2]] along H: updates of shape container[:axis] + (2, 2) + container[axis + 1:]
    (NeuralNetwork.proto's rank > 1 case)."""
    index = np.float32([[0, 7], [3, -2]])
    updates = RNG.normal(size=(1, 3, 2, 2, NN_SIDE)).astype(np.float32)

    def build(b, x):
        b.add_scatter("s", [x, _k(b, index, "i"), _k(b, updates, "u")], "s", axis=2, mode="ADD")
        return "s"

    def reference(x):
        out = x.copy()
        for i in range(2):
            for j in range(2):
                out[:, :, int(index[i, j])] += updates[0, :, i, j]
        return out

    check(tmp_path, build, reference, ["scatter"], rank5=False)


def test_convolution_with_its_weights_as_the_second_input(tmp_path):
    """A convolution whose weights are a blob (here a constant, [outputChannels, kernelChannels, kH, kW]); before, its
    empty weight parameters were refused as a malformed file."""

    def build(b, x):
        w = _k(b, W_INPUT, "w")
        b.add_convolution("c", 3, 4, 3, 3, 1, 1, "same", 1, None, None, False, input_name=[x, w], output_name="c")
        return "c"

    def reference(x):
        return tf().nn.conv2d(_nhwc(x), W_INPUT.transpose(2, 3, 1, 0), 1, "SAME").numpy().transpose(0, 3, 1, 2)

    check(tmp_path, build, reference, ["convolution"], rank5=False)


def test_batchnorm_with_batch_statistics(tmp_path):
    """computeMeanVar without instanceNormalization: mean and variance over the whole batch, every axis but the
    channel; a prediction is one image, so here (Seq 2 of a rank-5 file) over Seq, H and W. Before, it was refused."""
    gamma, beta = np.float32([0.5, -1.0, 2.0]), np.float32([0.1, 0.2, 0.3])

    def build(b, x):
        b.add_elementwise("h", [x], "h", "MULTIPLY", alpha=-2.0)
        b.add_elementwise("c", [x, "h"], "c", "SEQUENCE_CONCAT")
        b.add_batchnorm(
            "n", 3, gamma, beta, input_name="c", output_name="n", compute_mean_var=True, instance_normalization=True, epsilon=1e-3
        )
        b.spec.neuralNetworkClassifier.layers[-1].batchnorm.instanceNormalization = False  # the builder declines to write it
        b.add_reshape("r", "n", "r", [1, 6, NN_SIDE, NN_SIDE], 0)
        return "r"

    def reference(x5):
        c = np.concatenate([x5, -2 * x5], axis=0)  # [2, B, 3, 8, 8]
        out = []
        for b in range(c.shape[1]):
            v = c[:, b]  # [2, 3, 8, 8]
            mean = v.mean((0, 2, 3), keepdims=True)
            var = v.var((0, 2, 3), keepdims=True)
            n = (v - mean) / np.sqrt(var + 1e-3) * gamma.reshape(3, 1, 1) + beta.reshape(3, 1, 1)
            out.append(n.reshape(1, 6, NN_SIDE, NN_SIDE))
        return np.stack(out, axis=1)

    executor, _, _ = check(tmp_path, build, reference, ["batchnorm", "concat", "reshape"])
    assert not executor.batchable  # its statistics span the batch: one image a pass


def test_every_old_layer_case_gives_the_same_values_in_a_rank5_file(tmp_path):
    """Each test_nn_layers case built only of specification 1-3 layers, built again with the rank-5 image layout
    ([1, B, C, H, W] blobs, batch first inside the executor): the same values per image, on a batch of three."""
    import test_nn_layers

    from exporter.runtime.executor.neuralnetwork import LEGACY_LAYERS

    pix = image_pixels(3, NN_SIDE, NN_SIDE)
    x = as_input(pix).astype(np.float64)
    ran = set()
    for case, (build, reference) in test_nn_layers._cases().items():
        want = np.asarray(reference(x), np.float64).reshape(len(x), -1)
        path = nn5_file(tmp_path, build, want.shape[1], name=case.replace(":", "_"))
        layers = op_types(path)
        if not layers <= LEGACY_LAYERS:
            continue  # a later layer's axes mean other things on a rank-5 blob
        got = CoreMLExecutor(path).predict(pix)
        np.testing.assert_allclose(got, want, atol=OP_ATOL, rtol=OP_RTOL, err_msg=case)
        ran.add(case.split(":")[0])
    assert len(ran) >= 20, sorted(ran)


# (x, y, w, h): boxes 0-2 overlap one another, 3 and 4 overlap, 5 stands alone
NMS_BOXES = np.float32([[[2, 2, 4, 4], [2.5, 2, 4, 4], [3, 3, 4, 4], [8, 8, 2, 2], [8.5, 8, 2, 2], [14, 1, 3, 3]]])
W_NMS = RNG.normal(size=(3, 12)).astype(np.float32)


def _nms_reference(scores, iou_limit, score_limit, most, per_class):
    def iou(a, b):
        lo = np.maximum(a[:2] - a[2:] / 2, b[:2] - b[2:] / 2)
        hi = np.minimum(a[:2] + a[2:] / 2, b[:2] + b[2:] / 2)
        inter = np.prod(np.clip(hi - lo, 0, None))
        return inter / (a[2] * a[3] + b[2] * b[3] - inter)

    boxes = NMS_BOXES[0].astype(np.float64)
    best, label = scores.max(1), scores.argmax(1)
    kept = []
    for i in sorted(range(len(best)), key=lambda i: -best[i]):
        if best[i] < score_limit or len(kept) == most:
            continue
        if all(iou(boxes[i], boxes[j]) <= iou_limit for j in kept if not per_class or label[j] == label[i]):
            kept.append(i)
    kept = kept or [int(best.argmax())]
    out = np.zeros((most, 4 + 2 + 1))
    out[:, 6] = -1
    for k, i in enumerate(kept):
        out[k, :4], out[k, 4:6], out[k, 6] = boxes[i], scores[i], i
    return np.concatenate([out[:, :4].ravel(), out[:, 4:6].ravel(), out[:, 6], [len(kept)]])


@pytest.mark.parametrize("per_class,score_limit", [(False, 0.3), (True, 0.3), (False, 0.99)])
def test_non_maximum_suppression(tmp_path, per_class, score_limit):
    """Six boxes with two class scores each from the image; suppression across classes or per class; a score threshold
    no box reaches keeps the best box alone. Before, the layer was unknown to the executor."""

    def build(b, x):
        b.add_reduce_mean("m", x, "m", axes=[2, 3], keepdims=False)  # (1, 3)
        b.add_batched_mat_mul("s", ["m"], "s", weight_matrix_rows=3, weight_matrix_columns=12, W=W_NMS)
        b.add_reshape_static("sr", "s", "sr", [1, 6, 2])
        b.add_activation("sig", "SIGMOID", "sr", "sig")
        b.add_nms("nms", [_k(b, NMS_BOXES, "boxes"), "sig"], ["ob", "os", "oi", "on"], 0.3, score_limit, 4, per_class)
        for name in ("ob", "os", "oi"):
            b.add_reshape_static(name + "f", name, name + "f", [1, -1])
        b.add_expand_dims("onf", "on", "onf", axes=[0])
        b.add_concat_nd("all", ["obf", "osf", "oif", "onf"], "all", axis=1)
        return "all"

    def reference(x):
        scores = 1 / (1 + np.exp(-(x.mean((2, 3)) @ W_NMS.astype(np.float64)).reshape(len(x), 6, 2)))
        return np.stack([_nms_reference(s, 0.3, score_limit, 4, per_class) for s in scores])

    check(tmp_path, build, reference, ["NonMaximumSuppression"], rank5=False, name=f"nms_{per_class}_{score_limit}")


def test_reshape_static_that_infers_an_axis_after_the_batch(tmp_path):
    """reshapeStatic to [1, -1] (a flatten, as converters write it): the file was refused as malformed ("can only
    specify one unknown dimension"), the executor having made the leading 1 a second -1 for batching."""

    def build(b, x):
        b.add_reshape_static("r", x, "r", [1, -1])
        return "r"

    executor, _, _ = check(tmp_path, build, lambda x: x.reshape(len(x), -1), ["reshapeStatic"], rank5=False)
    assert not executor.batchable


def test_recurrent_activations_take_the_fixed_parameters(tmp_path):
    """coremltools writes a recurrent layer's Linear, Hard sigmoid and Scaled tanh without parameters (alpha = beta =
    0); NeuralNetwork.proto fixes them for these layers (hard sigmoid 0.2, 0.5; scaled tanh 1.7159, 2/3; linear the
    identity). Before, the zero parameters were applied: every gate was 0 (hard sigmoid) and the output 0."""

    def build(b, x):
        b.add_unilstm(
            "lstm", R_LSTM, W_LSTM, B_LSTM, HIDDEN, FEATURES, [_as_sequence(b, x)], ["y"],
            inner_activation="SIGMOID_HARD", cell_state_update_activation="SCALED_TANH", output_activation="LINEAR",
            output_all=True,
        )  # fmt: skip
        return _gather_sequence(b, "y", STEPS)

    def reference(x5):
        seq = _ref_sequence(x5)
        y = c = np.zeros((len(seq), HIDDEN))
        (wi, wf, wo, wz), (ri, rf, ro, rz), (bi, bf, bo, bz) = W_LSTM, R_LSTM, B_LSTM
        hard = lambda v: np.clip(0.2 * _c50(v) + 0.5, 0, 1)  # noqa: E731
        out = []
        for t in range(STEPS):
            xt = seq[:, t]
            i, f = hard(xt @ wi.T + y @ ri.T + bi), hard(xt @ wf.T + y @ rf.T + bf)
            z = 1.7159 * np.tanh(2 / 3 * _c50(xt @ wz.T + y @ rz.T + bz))
            c = np.clip(c * f + i * z, -50000.0, 50000.0)
            y = c * hard(xt @ wo.T + y @ ro.T + bo)
            out.append(y)
        return _ref_blob(np.stack(out, 1), STEPS)

    check(tmp_path, build, reference, ["uniDirectionalLSTM"])


# ------------------------------------------------------------------------------------------------ ML Program recurrent ops
MIL_COVERS = {"rnn", "gru", "lstm"}  # test_registry counts these among the ML Program ops' cases
MH, MS, MI = 4, 9, 27  # hidden size; the 9 x 9 image as 9 steps of 27 values
MIL_REC = np.random.default_rng(31)


def _mil(count, rows, cols=None):
    shape = (count * rows,) if cols is None else (count * rows, cols)
    return (0.3 * MIL_REC.normal(size=shape)).astype(np.float32)


M_WIH, M_WHH, M_B, M_P = _mil(4, MH, MI), _mil(4, MH, MH), _mil(4, MH), _mil(3, MH)
M_WIH_B, M_WHH_B, M_B_B, M_P_B = _mil(4, MH, MI), _mil(4, MH, MH), _mil(4, MH), _mil(3, MH)
G_WIH, G_WHH, G_B = _mil(3, MH, MI), _mil(3, MH, MH), _mil(3, MH)
R_WIH, R_WHH, R_B = _mil(1, MH, MI), _mil(1, MH, MH), _mil(1, MH)
M_H0, M_C0 = _mil(1, 2 * MH).reshape(1, -1), _mil(1, 2 * MH).reshape(1, -1)


def _mil_sequence(x):
    return x.reshape(len(x), MS, MI)  # (B, S, I): each image in row-major order (the program's reshape)


def _mil_body(op, *outputs):
    """A program: the image as a (9, 1, 27) sequence through ``op``, its outputs flattened and joined."""

    def body(x):
        seq = mb.reshape(x=x, shape=[MS, 1, MI])
        results = op(seq)
        results = results if isinstance(results, (list, tuple)) else [results]
        return mb.concat(values=[mb.reshape(x=results[i], shape=[1, -1]) for i in outputs], axis=1)

    return body


def _act(name):
    return {
        "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
        "tanh": np.tanh,
        "relu": lambda v: np.maximum(v, 0),
        "hard_sigmoid": lambda v: np.clip(0.2 * v + 0.5, 0, 1),
    }[name]


def _steps(reverse):
    return range(MS)[::-1] if reverse else range(MS)


@pytest.mark.parametrize("reverse,every,activation", [(False, False, "tanh"), (True, True, "relu")])
def test_mil_rnn(tmp_path, reverse, every, activation):
    def op(seq):
        return mb.rnn(
            x=seq, initial_h=M_H0[:, :MH], weight_ih=R_WIH, weight_hh=R_WHH, bias=R_B,
            direction="reverse" if reverse else "forward", output_sequence=every, activation=activation,
        )  # fmt: skip

    def reference(x):
        seq, out = _mil_sequence(x), []
        h = np.repeat(M_H0[:, :MH], len(x), 0).astype(np.float64)
        for t in _steps(reverse):
            h = _act(activation)(seq[:, t] @ R_WIH.T + h @ R_WHH.T + R_B)
            out.append(h)
        y = np.stack(out, 1) if every else h[:, None]
        return np.concatenate([y.reshape(len(x), -1), h], 1)

    check_op_case(tmp_path, "rnn", _mil_body(op, 0, 1), reference, {})


@pytest.mark.parametrize("reverse,every", [(False, True), (True, False)])
def test_mil_gru(tmp_path, reverse, every):
    """Weights and bias stacked (r, o, z); the reset gate multiplies W_ho h (the MIL definition)."""

    def op(seq):
        return mb.gru(
            x=seq, initial_h=M_H0[:, :MH], weight_ih=G_WIH, weight_hh=G_WHH, bias=G_B,
            direction="reverse" if reverse else "forward", output_sequence=every, recurrent_activation="hard_sigmoid",
        )  # fmt: skip

    def reference(x):
        seq, out = _mil_sequence(x), []
        (wr, wo, wz), (rr, ro, rz), (br, bo, bz) = np.split(G_WIH, 3), np.split(G_WHH, 3), np.split(G_B, 3)
        h = np.repeat(M_H0[:, :MH], len(x), 0).astype(np.float64)
        for t in _steps(reverse):
            xt = seq[:, t]
            r = _act("hard_sigmoid")(xt @ wr.T + h @ rr.T + br)
            z = _act("hard_sigmoid")(xt @ wz.T + h @ rz.T + bz)
            o = np.tanh(xt @ wo.T + r * (h @ ro.T) + bo)
            h = (1 - z) * o + z * h
            out.append(h)
        y = np.stack(out, 1) if every else h[:, None]
        return np.concatenate([y.reshape(len(x), -1), h], 1)

    check_op_case(tmp_path, "gru", _mil_body(op, 0, 1), reference, {})


def _mil_lstm_ref(seq, h, c, wih, whh, b, p, clip, order):
    (wi, wf, wo, wz), (ri, rf, ro, rz), (bi, bf, bo, bz) = np.split(wih, 4), np.split(whh, 4), np.split(b, 4)
    pi, pf, po = np.split(p, 3)
    out = []
    for t in order:
        xt = seq[:, t]
        i = _act("sigmoid")(xt @ wi.T + h @ ri.T + pi * c + bi)
        f = _act("sigmoid")(xt @ wf.T + h @ rf.T + pf * c + bf)
        z = np.tanh(xt @ wz.T + h @ rz.T + bz)
        c = f * c + i * z
        if clip is not None:
            c = np.clip(c, -clip, clip)
        o = _act("sigmoid")(xt @ wo.T + h @ ro.T + po * c + bo)
        h = o * np.tanh(c)
        out.append(h)
    return out, h, c


@pytest.mark.parametrize("direction,every", [("forward", False), ("reverse", True), ("bidirectional", True), ("bidirectional", False)])
def test_mil_lstm(tmp_path, direction, every):
    """Peepholes and a cell clip of 0.4 (reached); bidirectional: *_back weights, states [forward | backward]."""
    two = direction == "bidirectional"
    width = 2 * MH if two else MH
    back = {"weight_ih_back": M_WIH_B, "weight_hh_back": M_WHH_B, "bias_back": M_B_B, "peephole_back": M_P_B} if two else {}

    def op(seq):
        return mb.lstm(
            x=seq, initial_h=M_H0[:, :width], initial_c=M_C0[:, :width], weight_ih=M_WIH, weight_hh=M_WHH, bias=M_B,
            peephole=M_P, direction=direction, output_sequence=every, clip=0.4, **back,
        )  # fmt: skip

    def reference(x):
        seq, n = _mil_sequence(x), len(x)
        h0, c0 = np.repeat(M_H0[:, :width], n, 0).astype(np.float64), np.repeat(M_C0[:, :width], n, 0).astype(np.float64)
        fs, fh, fc = _mil_lstm_ref(seq, h0[:, :MH], c0[:, :MH], M_WIH, M_WHH, M_B, M_P, 0.4, _steps(direction == "reverse"))
        if not two:
            y = np.stack(fs, 1) if every else fh[:, None]
            return np.concatenate([y.reshape(n, -1), fh, fc], 1)
        bs, bh, bc = _mil_lstm_ref(seq, h0[:, MH:], c0[:, MH:], M_WIH_B, M_WHH_B, M_B_B, M_P_B, 0.4, _steps(True))
        y = np.concatenate([np.stack(fs, 1), np.stack(bs[::-1], 1)], -1) if every else np.concatenate([fh, bh], -1)[:, None]
        return np.concatenate([y.reshape(n, -1), fh, bh, fc, bc], 1)

    check_op_case(tmp_path, "lstm", _mil_body(op, 0, 1, 2), reference, {})


def test_mil_gru_reset_after_is_refused_in_one_line(tmp_path):
    """iOS18's gru reset_after, whose arithmetic the MIL definition leaves unstated, is refused naming the op."""
    from executor_helpers import program_file

    def op(seq):
        return mb.gru(x=seq, initial_h=M_H0[:, :MH], weight_ih=G_WIH, weight_hh=G_WHH, reset_after=True)

    path = program_file(tmp_path, _mil_body(op, 0), optimize=False, target=ct.target.iOS18)
    with pytest.raises(UnsupportedOperationError) as info:
        CoreMLExecutor(path)
    message = str(info.value)
    assert "gru op" in message and "reset_after" in message and path.name in message and "\n" not in message


@pytest.mark.parametrize("case", ["sequenceRepeat", "rangeDynamic", "oneHot", "tile"])
def test_sizes_a_file_chooses_are_bounded_before_allocation(tmp_path, case):
    """A repeat count, range end, one-hot size or tile count that would need terabytes is refused in one line
    (ConversionError, the memory budget), before anything is allocated."""
    rank5 = case == "sequenceRepeat"

    def build(b, x):
        if case == "sequenceRepeat":
            b.add_sequence_repeat("big", 10**9, x, "big")
        elif case == "rangeDynamic":
            b.add_range_dynamic("big", [_k(b, [1e12], "end")], "big")
            b.add_add_broadcastable("sum", [x, "big"], "sum")
            return "sum"
        elif case == "oneHot":
            b.add_one_hot("big", [x], "big", one_hot_vector_size=10**9)
        else:
            b.add_tile("big", x, "big", reps=[1, 1, 10**5, 10**5])
        return "big"

    path = nn5_file(tmp_path, build, 3, name=case, rank5=rank5)
    with pytest.raises(ConversionError, match="memory budget") as info:
        CoreMLExecutor(path)
    assert path.name in str(info.value) and "\n" not in str(info.value)


W_DECONV3D = RNG.normal(size=(2, 1, 2, 3, 3)).astype(np.float32)  # stored [outputChannels, inputChannels, kD, kH, kW]


@pytest.mark.parametrize("padding", ["custom", "same"])
def test_convolution3d_deconvolution(tmp_path, padding):
    """A 3-D transposed convolution, weights stored [outputChannels / nGroups, inputChannels, kD, kH, kW]
    (NeuralNetwork.proto); custom padding crops (front 0, back 1, top 1, bottom 0, left 0, right 1) from the full
    output, same keeps D * stride. Before, it was refused."""
    pads = {"padding_back": 1, "padding_top": 1, "padding_right": 1} if padding == "custom" else {}

    def build(b, x):
        b.add_expand_dims("e", x, "e", axes=[1])  # (N, 1, 3, 8, 8)
        b.add_convolution3d(
            "d",
            1,
            2,
            2,
            3,
            3,
            W_DECONV3D.transpose(1, 0, 2, 3, 4),
            None,
            False,
            stride_height=2,
            stride_width=2,
            padding_mode=padding,
            is_deconv=True,
            input_name="e",
            output_name="d",
            **pads,
        )  # fmt: skip  (the builder transposes its W argument into the stored layout)
        return "d"

    def reference(x):
        filters = W_DECONV3D.transpose(2, 3, 4, 0, 1)  # TensorFlow's (kD, kH, kW, out, in)
        full = tf().nn.conv3d_transpose(np.float32(x)[..., None], filters, (len(x), 4, 17, 17, 2), [1, 1, 2, 2, 1], "VALID").numpy()
        out = full[:, :3, 1:17, :16] if padding == "custom" else full[:, :3, :16, :16]
        return out.transpose(0, 4, 1, 2, 3)

    check(tmp_path, build, reference, ["convolution3d"], rank5=False, name=padding)


def test_mvn_epsilon_defaults_when_unset(tmp_path):
    """NeuralNetwork.proto: mvn's epsilon "defaults to 1e-6 if not set or set to 0". Before, an unset epsilon was 0,
    so a constant region (variance 0) gave 0 / 0 = NaN instead of 0."""

    def build(b, x):
        b.add_elementwise("z", [x], "z", "MULTIPLY", alpha=0.0)
        b.add_mvn("m", "z", "m", across_channels=False, normalize_variance=True, epsilon=1e-3)
        b.spec.neuralNetworkClassifier.layers[-1].mvn.epsilon = 0.0  # unset, as a file may leave it
        b.add_elementwise("s", [x, "m"], "s", "ADD")
        return "s"

    check(tmp_path, build, lambda x: x, ["mvn"], rank5=False)


def test_a_recurrent_layer_with_constant_initial_states_runs_image_by_image(tmp_path):
    """Initial states from constants ([1, 1, H, 1, 1]) have a batch of 1: the layer cannot run on a pass of several
    images (before, its batch rule let it, and a batch of three failed on the states' shape)."""
    h0 = (0.5 * REC.normal(size=(1, 1, HIDDEN, 1, 1))).astype(np.float32)

    def build(b, x):
        b.add_load_constant("h0", "h0", h0.ravel(), [HIDDEN, 1, 1])
        b.add_simple_rnn("rnn", R_SIMPLE, W_SIMPLE, B_SIMPLE, HIDDEN, FEATURES, "TANH", [_as_sequence(b, x), "h0"], ["y"])
        return "y"

    def reference(x5):
        seq, y = _ref_sequence(x5), np.repeat(h0.reshape(1, HIDDEN), x5.shape[1], 0).astype(np.float64)
        for t in range(STEPS):
            y = np.tanh(_c50(seq[:, t] @ W_SIMPLE.T + y @ R_SIMPLE.T + B_SIMPLE))
        return y[None, :, :, None, None]

    executor, _, _ = check(tmp_path, build, reference, ["simpleRecurrent", "loadConstant"])
    assert not executor.batchable


@pytest.mark.parametrize("rank5", [False, True])
def test_joining_the_image_with_a_constant_runs_image_by_image(tmp_path, rank5):
    """concatND of the image and a constant (rank 4), and concat along the sequence of the image and a loadConstant
    (rank 5): the constant's leading 1 cannot follow a pass of several images. Before, passes of several images
    failed as an executor bug ('all the input array dimensions except for the concatenation axis must match')."""

    def build(b, x):
        if rank5:
            b.add_load_constant("k", "k", CONST.ravel(), [3, NN_SIDE, NN_SIDE])
            b.add_elementwise("c", [x, "k"], "c", "SEQUENCE_CONCAT")
            b.add_reshape("r", "c", "r", [1, 6, NN_SIDE, NN_SIDE], 0)
            return "r"
        b.add_concat_nd("c", [x, _k(b, CONST[None], "k")], "c", axis=1)
        return "c"

    def reference(x):
        n = x.shape[1] if rank5 else len(x)
        joined = np.concatenate([x[0] if rank5 else x, np.repeat(CONST[None], n, 0)], axis=1)
        return joined.reshape(1, n, 6, NN_SIDE, NN_SIDE) if rank5 else joined

    executor, _, _ = check(tmp_path, build, reference, ["concat" if rank5 else "concatND"], rank5=rank5, n=4)
    assert not executor.batchable


@pytest.mark.parametrize("op", ["concat", "stack"])
def test_an_ml_program_joining_the_image_with_a_constant_runs_image_by_image(tmp_path, op):
    """The ML Program counterpart: concat or stack of the image and a constant (1, 3, 9, 9). Before, passes of several
    images failed as an executor bug."""
    from executor_helpers import SIDE, program_file

    k = MIL_REC.normal(size=(1, 3, SIDE, SIDE)).astype(np.float32)

    def body(x):
        return mb.concat(values=[x, k], axis=1) if op == "concat" else mb.stack(values=[x, k], axis=1)

    def reference(x):
        ks = np.repeat(k, len(x), 0)
        return np.concatenate([x, ks], axis=1) if op == "concat" else np.stack([x, ks], axis=1)

    path = program_file(tmp_path, body, optimize=False)
    pix = image_pixels(4, SIDE, SIDE)
    executor = CoreMLExecutor(path)
    want = reference(as_input(pix).astype(np.float64)).reshape(4, -1)
    np.testing.assert_allclose(executor.predict(pix), want, atol=OP_ATOL, rtol=OP_RTOL)
    assert not executor.batchable
