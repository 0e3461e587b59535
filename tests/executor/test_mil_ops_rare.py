"""ML Program ops that converters rarely emit for an image classifier but that a Core ML file made elsewhere may hold
(``exporter predict`` runs any classifier file): scatter, scatter_along_axis, scatter_nd, slice_update, one_hot,
band_part, reverse_sequence, sliding_windows, space_to_batch, batch_to_space, reshape_like, affine, resample and
scaled_dot_product_attention. Each case builds a small program around the op with the MIL builder, runs the saved
file through the executor and compares with an independent computation: TensorFlow doing the same operation, or
explicit loops over the definition in coremltools' ops/defs (iOS15-iOS18)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from executor_helpers import SIDE, check_op_case, ct, mb, tf

COVERS: set[str] = set()
I16, I17, I18 = ct.target.iOS16, ct.target.iOS17, ct.target.iOS18
IDX = np.array([2, 0, 2], np.int32)  # a repeated index: modes other than "update" accumulate it
SCATTER_W = np.random.default_rng(5).permutation(SIDE)[:3].astype(np.int32).reshape(1, 1, 1, 3).repeat(3, 1).repeat(SIDE, 2)


# ---------------------------------------------------------------------------------------------------------- references
def _scatter_loops(x, indices, updates, axis, mode):
    out = x.copy()
    combine = {
        "update": lambda a, b: b,
        "add": np.add,
        "sub": np.subtract,
        "mul": np.multiply,
        "div": np.divide,
        "max": np.maximum,
        "min": np.minimum,
    }[mode]
    for i, index in enumerate(indices):
        target = [slice(None)] * x.ndim
        source = [slice(None)] * x.ndim
        target[axis], source[axis] = index, i
        out[tuple(target)] = combine(out[tuple(target)], updates[tuple(source)])
    return out


def _scatter_along_axis_loops(x, indices, updates, axis, mode):
    out = x.copy()
    for n in range(len(x)):
        for position in itertools.product(*(range(s) for s in indices.shape[1:])):
            where = (n, *position)
            target = list(where)
            target[axis] = indices[(0, *position)]
            if mode == "update":
                out[tuple(target)] = updates[where]
            else:
                out[tuple(target)] += updates[where]
    return out


def _updates(v, axis, count):
    """Updates taken from the input itself (so they differ per image): the first ``count`` slices along ``axis``,
    doubled."""
    begin = [0, 0, 0, 0]
    size = [-1, -1, -1, -1]
    size[axis] = count
    return mb.mul(x=mb.slice_by_size(x=v, begin=begin, size=size), y=np.float32(2.0))


def _slices(x, axis, count):
    index = [slice(None)] * 4
    index[axis] = slice(0, count)
    return 2 * x[tuple(index)]


def _grid_loops(image, px, py, sampling, padding, pad):
    """(C, H, W) image sampled at pixel positions (px, py) (equal-shape arrays): the image padded with np.pad by
    ``padding`` (edge, reflect, symmetric or a constant: the definition's examples are np.pad's modes), then each
    point's nearest pixel or bilinear mix of four, in loops."""
    c, h, w = image.shape
    margin = 3 * max(h, w)
    np_mode = {"border": "edge", "reflection": "reflect", "symmetric": "symmetric", "constant": "constant"}[padding]
    kwargs = {"constant_values": pad} if padding == "constant" else {}
    padded = np.pad(image, ((0, 0), (margin, margin), (margin, margin)), mode=np_mode, **kwargs)
    out = np.zeros((c, *px.shape))
    for (i, j), x, y in zip(np.ndindex(px.shape), px.ravel(), py.ravel(), strict=True):
        y, x = y + margin, x + margin
        if sampling == "nearest":
            out[:, i, j] = padded[:, int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]
            continue
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        dy, dx = y - y0, x - x0
        out[:, i, j] = (
            padded[:, y0, x0] * (1 - dy) * (1 - dx)
            + padded[:, y0, x0 + 1] * (1 - dy) * dx
            + padded[:, y0 + 1, x0] * dy * (1 - dx)
            + padded[:, y0 + 1, x0 + 1] * dy * dx
        )
    return out


def _unnormalize(v, size, mode, align):
    if mode == "unnormalized":
        return v
    unit = (v + 1) / 2 if mode == "normalized_minus_one_to_one" else v
    return unit * (size - 1) if align else unit * size - 0.5


# Sample points in normalized [-1, 1] coordinates over 1.6 images either way, so every padding mode is exercised;
# none lands on a half pixel, where "nearest" would depend on how a tie rounds.
GRID = (np.random.default_rng(4).uniform(-1.6, 1.6, (1, 5, 7, 2)) + 0.0123).astype(np.float32)


def _resample_case(sampling, padding, coordinates, align, pad=0.0):
    grid = GRID if coordinates != "normalized_zero_to_one" else (GRID + 1) / 2
    if coordinates == "unnormalized":
        grid = ((GRID + 1) / 2 * (SIDE - 1)).astype(np.float32)

    def body(v):
        return mb.resample(
            x=v,
            coordinates=grid,
            sampling_mode=sampling,
            padding_mode=padding,
            padding_value=np.float32(pad),
            coordinates_mode=coordinates,
            align_corners=align,
        )

    def reference(x):
        px = _unnormalize(grid[0, ..., 0].astype(np.float64), SIDE, coordinates, align)
        py = _unnormalize(grid[0, ..., 1].astype(np.float64), SIDE, coordinates, align)
        return np.stack([_grid_loops(image, px, py, sampling, padding, pad) for image in x])

    return body, reference, {}


AFFINE = np.array([[0.8, -0.3, 0.1, 0.25, 1.1, -0.2]], np.float32)  # [a0, a1, a2, b0, b1, b2]


def _affine_case(align, out_h, out_w):
    def body(v):
        return mb.affine(
            x=v,
            transform_matrix=AFFINE,
            output_height=out_h,
            output_width=out_w,
            sampling_mode="bilinear",
            padding_mode="constant",
            padding_value=np.float32(0.0),
            coordinates_mode="normalized_minus_one_to_one",
            align_corners=align,
        )

    def reference(x):
        # torch.nn.functional.affine_grid's base grid: output pixel centres in [-1, 1]
        def base(n):
            return np.linspace(-1, 1, n) if align else (np.arange(n) * 2 + 1) / n - 1

        gy, gx = np.meshgrid(base(out_h), base(out_w), indexing="ij")
        a0, a1, a2, b0, b1, b2 = AFFINE[0].astype(np.float64)
        sx, sy = a0 * gx + a1 * gy + a2, b0 * gx + b1 * gy + b2
        px, py = (_unnormalize(s, SIDE, "normalized_minus_one_to_one", align) for s in (sx, sy))
        return np.stack([_grid_loops(image, px, py, "bilinear", "constant", 0.0) for image in x])

    return body, reference, {}


def _attention_inputs(v):
    """query [1, 3, 9, 9] (3 heads of 9 tokens of 9 features), key = query doubled, value = query shifted: three
    input-dependent operands."""
    return v, mb.mul(x=v, y=np.float32(2.0)), mb.add(x=v, y=np.float32(0.5))


def _qkv(v):
    return dict(zip(("query", "key", "value"), _attention_inputs(v), strict=True))


def _attention(x, mask=None):
    q, k, v = x, 2 * x, x + 0.5
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if mask is not None:
        scores = np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
    e = np.exp(scores - scores.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)) @ v


MASK_BOOL = np.random.default_rng(6).random((SIDE, SIDE)) > 0.4
MASK_BOOL[:, 0] = True  # every row keeps a key: a row masked everywhere is NaN by the definition
MASK_FLOAT = np.random.default_rng(7).normal(0, 2, (1, 3, SIDE, SIDE)).astype(np.float32)


def _nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _per_image(fn):
    """A reference for an op that moves the batch axis: the program holds one image, so the executor runs image by
    image; apply ``fn`` to each image alone and flatten its result."""
    return lambda x: np.stack([np.asarray(fn(image[None])).reshape(-1) for image in x])


# ---------------------------------------------------------------------------------------------------------- cases
def _cases():
    cases = {
        # scatter: every mode, a repeated index, a negative axis; iOS17 with validate_indices
        **{
            f"scatter:{mode}": (
                lambda v, mode=mode: mb.scatter(data=v, indices=IDX, updates=_updates(v, 2, 3), axis=2, mode=mode),
                lambda x, mode=mode: _scatter_loops(x, IDX, _slices(x, 2, 3), 2, mode),
                {},
            )
            for mode in ("update", "add", "sub", "mul", "max", "min")
        },
        "scatter:div_negative_axis_ios17": (
            lambda v: mb.scatter(
                data=v, indices=IDX, updates=mb.add(x=_updates(v, 3, 3), y=np.float32(3.0)), axis=-1, mode="div", validate_indices=True
            ),
            lambda x: _scatter_loops(x, IDX, _slices(x, 3, 3) + 3, 3, "div"),
            {"target": I17},
        ),
        "scatter:negative_indices_ios15": (
            lambda v: mb.scatter(data=v, indices=np.array([-1, 1], np.int32), updates=_updates(v, 1, 2), axis=1, mode="update"),
            lambda x: _scatter_loops(x, [2, 1], _slices(x, 1, 2), 1, "update"),
            {},
        ),
        "scatter_along_axis": (
            lambda v: mb.scatter_along_axis(
                data=v, indices=np.tile(IDX.reshape(1, 1, 3, 1), (1, 3, 1, SIDE)), updates=_updates(v, 2, 3), axis=2, mode="add"
            ),
            lambda x: _scatter_along_axis_loops(x, np.tile(IDX.reshape(1, 1, 3, 1), (1, 3, 1, SIDE)), _slices(x, 2, 3), 2, "add"),
            {},
        ),
        "scatter_along_axis:update_ios17": (
            lambda v: mb.scatter_along_axis(
                data=v, indices=SCATTER_W, updates=_updates(v, 3, 3), axis=3, mode="update", validate_indices=True
            ),
            lambda x: _scatter_along_axis_loops(x, SCATTER_W, _slices(x, 3, 3), 3, "update"),
            {"target": I17},
        ),
        "scatter_nd": (
            lambda v: mb.scatter_nd(
                data=v, indices=np.array([[0, 2], [0, 0], [0, 2]], np.int32), updates=mb.squeeze(x=_updates(v, 1, 3), axes=[0]), mode="add"
            ),
            lambda x: np.stack([_scatter_loops(image[None], [2, 0, 2], 2 * image[None, :3], 1, "add")[0] for image in x]),
            {},
        ),
        "scatter_nd:update_depth_3": (
            lambda v: mb.scatter_nd(
                data=v,
                indices=np.array([[0, 1, 4], [0, 2, 8]], np.int32),
                updates=mb.reshape(x=mb.slice_by_size(x=_updates(v, 1, 1), begin=[0, 0, 0, 0], size=[-1, -1, 2, -1]), shape=[2, SIDE]),
                mode="update",
            ),
            _scatter_nd_depth3,
            {},
        ),
        "slice_update": (
            lambda v: mb.slice_update(
                x=v,
                update=mb.mul(x=mb.slice_by_index(x=v, begin=[0, 0, 1, 0], end=[1, 3, 9, 9], stride=[1, 1, 3, 2]), y=np.float32(-1.0)),
                begin=[0, 0, 1, 0],
                end=[1, 3, 9, 9],
                stride=[1, 1, 3, 2],
            ),
            lambda x: _slice_update_reference(x, (slice(None), slice(None), slice(1, 9, 3), slice(0, 9, 2)), lambda r: -r),
            {"target": I18},
        ),
        "slice_update:masks_and_squeeze": (
            lambda v: mb.slice_update(
                x=v,
                update=mb.squeeze(x=mb.slice_by_size(x=v, begin=[0, 2, 0, 0], size=[-1, 1, -1, -1]), axes=[1]),
                begin=[0, 0, 0, 0],
                end=[1, 0, 5, 9],
                begin_mask=[True, False, True, True],
                end_mask=[True, False, True, True],
                squeeze_mask=[False, True, False, False],
            ),
            lambda x: _slice_update_reference(x, (slice(None), 0, slice(None), slice(None)), lambda r: None, source=2),
            {"target": I18},
        ),
        "one_hot": (
            lambda v: mb.one_hot(
                indices=mb.cast(x=mb.floor(x=mb.mul(x=mb.add(x=v, y=np.float32(1.0)), y=np.float32(2.0))), dtype="int32"),
                one_hot_vector_size=4,
                axis=2,
                on_value=np.float32(2.5),
                off_value=np.float32(-1.0),
            ),
            lambda x: tf().one_hot(np.floor((x + 1) * 2).astype(np.int32), 4, 2.5, -1.0, axis=2).numpy(),
            {},
        ),
        "band_part": (
            lambda v: mb.band_part(x=v, lower=1, upper=2),
            lambda x: tf().linalg.band_part(x, 1, 2).numpy(),
            {},
        ),
        "band_part:lower_triangle": (
            lambda v: mb.band_part(x=v, lower=-1, upper=0),
            lambda x: tf().linalg.band_part(x, -1, 0).numpy(),
            {},
        ),
        "reverse_sequence": (
            lambda v: mb.reverse_sequence(x=v, lengths=np.array([3, 0, 9], np.int32), seq_axis=3, batch_axis=1),
            lambda x: _reverse_sequence_loops(x, [3, 0, 9], 3, 1),
            {},
        ),
        "sliding_windows": (
            lambda v: mb.sliding_windows(x=v, axis=2, size=4, stride=2),
            lambda x: np.stack([x[:, :, s : s + 4] for s in range(0, SIDE - 4 + 1, 2)], 2),
            {},
        ),
        "sliding_windows:last_axis_stride_1": (
            lambda v: mb.sliding_windows(x=v, axis=-1, size=3),
            lambda x: np.stack([x[..., s : s + 3] for s in range(SIDE - 3 + 1)], 3),
            {},
        ),
        "space_to_batch": (
            lambda v: mb.space_to_batch(x=v, block_shape=np.array([2, 3], np.int32), paddings=np.array([[1, 0], [2, 1]], np.int32)),
            _per_image(lambda image: _nchw(tf().space_to_batch_nd(_nhwc(image), [2, 3], [[1, 0], [2, 1]]).numpy())),
            {},
        ),
        "batch_to_space": (
            lambda v: mb.batch_to_space(
                x=mb.space_to_batch(x=v, block_shape=np.array([2, 3], np.int32), paddings=np.array([[1, 0], [2, 1]], np.int32)),
                block_shape=np.array([3, 2], np.int32),
                crops=np.array([[2, 1], [0, 3]], np.int32),
            ),
            _per_image(
                lambda image: _nchw(
                    tf().batch_to_space(tf().space_to_batch_nd(_nhwc(image), [2, 3], [[1, 0], [2, 1]]), [3, 2], [[2, 1], [0, 3]]).numpy()
                )
            ),
            {},
        ),
        "reshape_like": (
            lambda v: mb.reshape_like(
                x=v,
                ref_tensors=(mb.slice_by_size(x=v, begin=[0, 0, 0, 0], size=[-1, 3, 3, -1]), mb.reduce_mean(x=v, axes=[2], keep_dims=True)),
                begins=(1, 1),
                ends=(3, 0),
                end_masks=(False, True),
            ),
            _per_image(lambda image: image.reshape(3, 3, 3, 1, 9)),
            {"target": I16},
        ),
        "affine": _affine_case(True, 7, 11),
        "affine:half_pixel_grid": _affine_case(False, 6, 9),
        "scaled_dot_product_attention": (
            lambda v: mb.scaled_dot_product_attention(**_qkv(v)),
            lambda x: _attention(x),
            {"target": I18},
        ),
        "scaled_dot_product_attention:bool_mask": (
            lambda v: mb.scaled_dot_product_attention(**_qkv(v), attn_mask=MASK_BOOL),
            lambda x: _attention(x, MASK_BOOL),
            {"target": I18},
        ),
        "scaled_dot_product_attention:float_mask": (
            lambda v: mb.scaled_dot_product_attention(**_qkv(v), attn_mask=MASK_FLOAT),
            lambda x: _attention(x, MASK_FLOAT),
            {"target": I18},
        ),
    }
    for sampling, padding in itertools.product(("bilinear", "nearest"), ("constant", "border", "reflection", "symmetric")):
        for coordinates, align in (("normalized_minus_one_to_one", True), ("normalized_minus_one_to_one", False)):
            name = f"resample:{sampling}_{padding}_{'align' if align else 'edges'}"
            cases[name] = _resample_case(sampling, padding, coordinates, align, 0.75)
    cases["resample:zero_to_one"] = _resample_case("bilinear", "reflection", "normalized_zero_to_one", False)
    cases["resample:unnormalized"] = _resample_case("bilinear", "constant", "unnormalized", True)
    return cases


def _scatter_nd_depth3(x):
    out = x.copy()
    for n, image in enumerate(x):
        out[n, 1, 4] = 2 * image[0, 0]
        out[n, 2, 8] = 2 * image[0, 1]
    return out


def _slice_update_reference(x, region, make, source=None):
    out = x.copy()
    out[region] = x[:, source] if source is not None else make(x[region])
    return out


def _reverse_sequence_loops(x, lengths, seq_axis, batch_axis):
    out = x.copy()
    for b, length in enumerate(lengths):
        for i in range(length):
            dst = [slice(None)] * x.ndim
            src = [slice(None)] * x.ndim
            dst[batch_axis] = src[batch_axis] = b
            dst[seq_axis], src[seq_axis] = i, length - 1 - i
            out[tuple(dst)] = x[tuple(src)]
    return out


@pytest.mark.parametrize("case", list(_cases()))
def test_rare_op(tmp_path, case):
    check_op_case(tmp_path, case, *_cases()[case])


COVERS |= {name.split(":")[0] for name in _cases()}
