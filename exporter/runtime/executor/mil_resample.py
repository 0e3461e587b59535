"""ML Program resampling ops in numpy (MIL opsets iOS15-iOS18): upsampling by scale factors, resizing to a size,
cropping boxes and resizing them, each as its MIL definition states it (coremltools ops/defs/iOS15-17
image_resizing.py). The sampling grids are in ``kernels_nd``."""

from __future__ import annotations

import numpy as np

from . import kernels_nd
from .mil_elementwise import F32
from .registry import OpCall, always, op


def _scaled(size: int, factor: float) -> int:
    """MIL's output size for a scale factor: ``floor(size * factor)``."""
    return int(np.floor(size * float(factor)))


@op("upsample_nearest_neighbor", batch=always)
def _upsample_nearest(c: OpCall):
    """Each output pixel copies input pixel ``floor(i * H_in / H_out)`` (per axis); the output is
    ``floor(H_in * scale)``. For integer factors this repeats every pixel ``scale`` times."""
    x = c["x"]
    h, w = x.shape[-2:]
    out_h = _scaled(h, c.const("scale_factor_height", 1))
    out_w = _scaled(w, c.const("scale_factor_width", 1))
    return kernels_nd.nearest(x, kernels_nd.nearest_floor(h, out_h), kernels_nd.nearest_floor(w, out_w))


@op("upsample_bilinear", batch=always)
def _upsample_bilinear(c: OpCall):
    """Bilinear to ``floor(H_in * scale)``, the grid recomputed from the output size: ``align_corners`` puts the
    corners on the corners (STRICT_ALIGN_CORNERS); otherwise ``half_pixel_centers`` (iOS16, default
    ``not align_corners``) samples at pixel centres (UNALIGN_CORNERS) or, when False, at ``i * H_in / H_out``
    (DEFAULT, TensorFlow's legacy resize)."""
    x = c["x"]
    out_h = _scaled(x.shape[-2], c.const("scale_factor_height", 1))
    out_w = _scaled(x.shape[-1], c.const("scale_factor_width", 1))
    align = bool(c.const("align_corners", True))
    half_pixel = bool(c.const("half_pixel_centers", not align))
    if align and half_pixel:
        raise c.fail("sets both align_corners and half_pixel_centers, which MIL does not define")
    mode = "STRICT_ALIGN_CORNERS" if align else "UNALIGN_CORNERS" if half_pixel else "DEFAULT"
    return kernels_nd.bilinear(x, out_h, out_w, mode)


def _sampling_mode(c: OpCall) -> str:
    mode = c.const("sampling_mode", "DEFAULT")
    if mode not in kernels_nd.SAMPLING_MODES:
        raise c.unsupported(f"has unknown sampling_mode {mode!r}")
    return mode


@op("resize_bilinear", batch=always)
def _resize_bilinear(c: OpCall):
    """Bilinear to (target_size_height, target_size_width) on the grid of ``sampling_mode``."""
    x = c["x"]
    return kernels_nd.bilinear(x, int(c.const("target_size_height", 1)), int(c.const("target_size_width", 1)), _sampling_mode(c))


@op("resize_nearest_neighbor", batch=always)
def _resize_nearest(c: OpCall):
    """Nearest neighbour to (target_size_height, target_size_width), sampling pixel centres: source index
    ``floor((i + 0.5) * H_in / H_out)`` (TensorFlow's resize with half_pixel_centers, which coremltools converts
    to this op)."""
    x = c["x"]
    h, w = x.shape[-2:]
    out_h, out_w = int(c.const("target_size_height")), int(c.const("target_size_width"))
    return kernels_nd.nearest(x, kernels_nd.nearest_half_pixel(h, out_h), kernels_nd.nearest_half_pixel(w, out_w))


def _nearest_index(size_in: int, size_out: int, mode: str) -> np.ndarray:
    if mode == "DEFAULT":
        return kernels_nd.nearest_half_pixel(size_in, size_out)
    return np.minimum(np.floor(kernels_nd.grid(size_in, size_out, mode) + 0.5).astype(np.int64), size_in - 1)


@op("resize", batch=always)
def _resize(c: OpCall):
    """iOS17: the last ``resized_dims`` axes (1 or 2) resized to the last entries of ``shape`` (0 keeps the
    input's size), by LINEAR interpolation on the ``sampling_mode`` grid or by NEAREST_NEIGHBOR (DEFAULT samples
    pixel centres as resize_nearest_neighbor; the other modes take the grid point rounded half up)."""
    x = c["x"]
    resized = int(c.const("resized_dims"))
    target = [int(v) for v in np.asarray(c["shape"]).reshape(-1)]
    if not 1 <= resized <= 2 or resized > len(target) or resized > x.ndim:
        raise c.unsupported(f"resizes {resized} axes; 1 or 2 (at most len(shape) and rank) are supported")
    sizes = [x.shape[x.ndim - resized + i] if t == 0 else t for i, t in enumerate(target[-resized:])]
    mode = _sampling_mode(c)
    interpolation = c.const("interpolation_mode", "LINEAR")
    out = np.asarray(x)
    for i, size in enumerate(sizes):
        axis = x.ndim - resized + i
        if interpolation == "LINEAR":
            out = kernels_nd.linear_along(out.astype(F32), axis, kernels_nd.grid(out.shape[axis], size, mode))
        elif interpolation == "NEAREST_NEIGHBOR":
            out = np.take(out, _nearest_index(out.shape[axis], size, mode), axis=axis)
        else:
            raise c.unsupported(f"has unknown interpolation_mode {interpolation!r}")
    return out


def _box_points(start: float, end: float, size_out: int, mode: str) -> np.ndarray:
    """Sample positions inside one box side [start, end] (input pixel coordinates) for ``mode``: the box plays the
    role of the input interval of resize_bilinear's grid."""
    length = end - start
    i = np.arange(size_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if size_out == 1:
            return np.full(1, start + length / 2 if mode == "ALIGN_CORNERS" else start)
        return start + i * (length / (size_out - 1))
    if mode == "DEFAULT":
        return start + i * (length / size_out)
    if mode == "OFFSET_CORNERS":
        delta = length / size_out
        return start + 0.5 * delta + i * delta
    spacing = length / size_out  # UNALIGN_CORNERS
    return start + i * spacing + 0.5 * spacing - 0.5


def _sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, pad: float) -> np.ndarray:
    """Bilinear samples of (C, H, W) ``image`` at every (row, col); points outside [0, size - 1] give ``pad``."""
    h, w = image.shape[-2:]

    def axis(points, size):
        lo = np.clip(np.floor(points), 0, size - 1).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        frac = (points - np.floor(points)).astype(F32)
        inside = (points >= 0) & (points <= size - 1)
        return lo, hi, frac, inside

    r_lo, r_hi, r_frac, r_in = axis(rows, h)
    c_lo, c_hi, c_frac, c_in = axis(cols, w)
    top = image[:, r_lo][:, :, c_lo] * (1 - c_frac) + image[:, r_lo][:, :, c_hi] * c_frac
    bottom = image[:, r_hi][:, :, c_lo] * (1 - c_frac) + image[:, r_hi][:, :, c_hi] * c_frac
    out = top * (1 - r_frac[:, None]) + bottom * r_frac[:, None]
    return np.where(r_in[:, None] & c_in[None, :], out, F32(pad))


BOX_MODES = ("CORNERS_HEIGHT_FIRST", "CORNERS_WIDTH_FIRST", "CENTER_SIZE_HEIGHT_FIRST", "CENTER_SIZE_WIDTH_FIRST")


def _corners(box, mode: str) -> tuple[float, float, float, float]:
    """(h_start, w_start, h_end, w_end) of a box in ``box_coordinate_mode``."""
    a, b, c_, d = (float(v) for v in box)
    if mode == "CORNERS_HEIGHT_FIRST":
        return a, b, c_, d
    if mode == "CORNERS_WIDTH_FIRST":
        return b, a, d, c_
    if mode == "CENTER_SIZE_HEIGHT_FIRST":
        return a - c_ / 2, b - d / 2, a + c_ / 2, b + d / 2
    return b - d / 2, a - c_ / 2, b + d / 2, a + c_ / 2


def crop_box(
    image: np.ndarray, box, box_mode: str, normalized: bool, scale: float, size: tuple[int, int], mode: str, pad: float = 0.0
) -> np.ndarray:
    """One box of a (C, H, W) image resized bilinearly to ``size``: coordinates in ``box_mode``, scaled by
    (H - 1, W - 1) when ``normalized``, then by ``scale``; samples outside the image are ``pad``."""
    h, w = image.shape[-2:]
    h0, w0, h1, w1 = _corners(box, box_mode)
    if normalized:
        h0, h1, w0, w1 = h0 * (h - 1), h1 * (h - 1), w0 * (w - 1), w1 * (w - 1)
    h0, h1, w0, w1 = h0 * scale, h1 * scale, w0 * scale, w1 * scale
    return _sample(image, _box_points(h0, h1, size[0], mode), _box_points(w0, w1, size[1], mode), pad)


@op("crop_resize")
def _crop_resize(c: OpCall):
    """Each box cut from its image and resized bilinearly to (target_height, target_width). iOS15/16: ``roi``
    [N, 1, 4 or 5, 1, 1] (a fifth leading value is the image index, otherwise every image), output
    [N, B, C, h, w]; iOS17: ``boxes`` [N, 4] and ``box_indices``, output [N, C, h, w]. Normalized coordinates are
    scaled by (H - 1, W - 1), then by ``spatial_scale``; samples outside the image give ``pad_value``."""
    x = np.asarray(c["x"], F32)
    b, channels, h, w = x.shape
    th, tw = int(c.const("target_height", 1)), int(c.const("target_width", 1))
    mode = _sampling_mode(c)
    box_mode = c.const("box_coordinate_mode", "CORNERS_HEIGHT_FIRST")
    if box_mode not in BOX_MODES:
        raise c.unsupported(f"has unknown box_coordinate_mode {box_mode!r}")
    normalized = bool(c.const("normalized_coordinates", False))
    scale = float(c.const("spatial_scale", 1.0))
    pad = float(c.const("pad_value", 0.0))

    def crop(image, box):
        return crop_box(image, box, box_mode, normalized, scale, (th, tw), mode, pad)

    if c.has("boxes"):  # iOS17
        boxes = np.asarray(c["boxes"], np.float64)
        indices = np.asarray(c["box_indices"]).astype(np.int64) if c.has("box_indices") else np.arange(len(boxes))
        return (
            np.stack([crop(x[i], box) for i, box in zip(indices, boxes, strict=True)])
            if len(boxes)
            else np.zeros((0, channels, th, tw), F32)
        )
    roi = np.asarray(c["roi"], np.float64).reshape(-1, c.shape("roi")[2] if c.shape("roi") else 4)
    out = np.zeros((len(roi), b, channels, th, tw), F32)
    for n, row in enumerate(roi):
        if len(row) == 5:
            out[n, int(row[0])] = crop(x[int(row[0])], row[1:])  # the other images of the batch stay 0
        else:
            for i in range(b):
                out[n, i] = crop(x[i], row)
    return out


# ------------------------------------------------------------------------------------------------ grid sampling
_COORDINATE_MODES = ("unnormalized", "normalized_minus_one_to_one", "normalized_zero_to_one")
_PADDING_MODES = ("constant", "border", "reflection", "symmetric")


def _to_pixels(points: np.ndarray, size: int, mode: str, align_corners: bool) -> np.ndarray:
    """Sample positions along one axis in input pixel units (0 = the first pixel's centre)."""
    if mode == "unnormalized":
        return points
    unit = (points + 1) / 2 if mode == "normalized_minus_one_to_one" else points  # now 0..1 across the image
    return unit * (size - 1) if align_corners else unit * size - 0.5


def _pixel(index: np.ndarray, size: int, padding: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer pixel positions, possibly outside [0, size), as the in-image pixel ``padding_mode`` pads with, and
    where they are inside (constant padding; None for the other modes, which always land on a pixel):
    reflection |1, 2, 3| -> |2, 3, 2, 1, 2, 3, 2, 1, 2| (mirrored about the edge pixels), symmetric
    |1, 2, 3| -> |3, 2, 1, 1, 2, 3, 3, 2, 1| (the edge pixels repeated), border the edge pixel."""
    if padding == "constant":
        return np.clip(index, 0, size - 1), (index >= 0) & (index < size)
    if padding == "border" or size == 1:
        return np.clip(index, 0, size - 1), None
    if padding == "reflection":
        folded = np.mod(index, 2 * (size - 1))
        return np.where(folded >= size, 2 * (size - 1) - folded, folded), None
    folded = np.mod(index, 2 * size)  # symmetric
    return np.where(folded >= size, 2 * size - 1 - folded, folded), None


def _grid_sample(image: np.ndarray, cols: np.ndarray, rows: np.ndarray, sampling: str, padding: str, pad: float):
    """(C, H, W) ``image``, padded without end by ``padding``, sampled at pixel positions (rows, cols), arrays of one
    shape (H2, W2) -> (C, H2, W2): the nearest pixel, or the bilinear mix of the four around the point."""
    channels, h, w = image.shape

    def value(r: np.ndarray, q: np.ndarray) -> np.ndarray:
        (ri, r_in), (qi, q_in) = _pixel(r, h, padding), _pixel(q, w, padding)
        got = image[:, ri, qi]
        return got if r_in is None or q_in is None else np.where(r_in & q_in, got, F32(pad))

    if sampling == "nearest":
        return value(np.floor(rows + 0.5).astype(np.int64), np.floor(cols + 0.5).astype(np.int64))
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    fr, fc = (rows - r0).astype(F32), (cols - c0).astype(F32)
    top = value(r0, c0) * (1 - fc) + value(r0, c0 + 1) * fc
    bottom = value(r0 + 1, c0) * (1 - fc) + value(r0 + 1, c0 + 1) * fc
    return top * (1 - fr) + bottom * fr


def _sampling_args(c: OpCall) -> tuple[str, str, float, str, bool]:
    sampling, padding = str(c.const("sampling_mode")).lower(), str(c.const("padding_mode")).lower()
    coordinates = str(c.const("coordinates_mode")).lower()
    if sampling not in ("bilinear", "nearest") or padding not in _PADDING_MODES or coordinates not in _COORDINATE_MODES:
        raise c.unsupported(f"has sampling_mode {sampling!r}, padding_mode {padding!r}, coordinates_mode {coordinates!r}")
    return sampling, padding, float(c.const("padding_value", 0.0)), coordinates, bool(c.const("align_corners"))


@op("resample", batch=always)
def _resample(c: OpCall):
    """Each image sampled at ``coordinates[b, h, w] = (x, y)`` (PyTorch's grid_sample): bilinear or nearest, the
    points mapped to pixels by ``coordinates_mode`` and ``align_corners``, outside points given by ``padding_mode``."""
    x, grid = np.asarray(c["x"], F32), np.asarray(c["coordinates"], np.float64)
    sampling, padding, pad, coordinates, align = _sampling_args(c)
    if x.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != x.shape[0]:
        raise c.fail(f"needs x [B, C, H, W] and coordinates [B, H2, W2, 2], has {x.shape} and {grid.shape}")
    h, w = x.shape[2:]
    return np.stack(
        [
            _grid_sample(
                image,
                _to_pixels(points[..., 0], w, coordinates, align),
                _to_pixels(points[..., 1], h, coordinates, align),
                sampling,
                padding,
                pad,
            )
            for image, points in zip(x, grid, strict=True)
        ]
    ).astype(F32)


@op("affine", batch=lambda c: (c.shape("transform_matrix") or [0])[0] == 1)
def _affine(c: OpCall):
    """Each output pixel (x, y), in [-1, 1] coordinates, sampled bilinearly at (a0 x + a1 y + a2, b0 x + b1 y + b2)
    of its image, with one [a0, a1, a2, b0, b1, b2] row for every image or one per image; outside points are
    ``padding_value`` (the only padding the definition allows)."""
    x, matrix = np.asarray(c["x"], F32), np.asarray(c["transform_matrix"], np.float64)
    sampling, padding, pad, coordinates, align = _sampling_args(c)
    if x.ndim != 4 or matrix.ndim != 2 or matrix.shape[1] != 6 or matrix.shape[0] not in (1, x.shape[0]):
        raise c.fail(f"needs x [B, C, H, W] and transform_matrix [1 or B, 6], has {x.shape} and {matrix.shape}")
    oh, ow = int(c.const("output_height")), int(c.const("output_width"))
    h, w = x.shape[2:]
    # output pixel centres in the same normalized coordinates as the input's (align_corners: -1 and 1 are the corner
    # pixels' centres; otherwise the image's edges)
    ys, xs = ((np.linspace(-1, 1, n) if align else (2 * np.arange(n) + 1) / n - 1) if n > 1 else np.zeros(1) for n in (oh, ow))
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    out = []
    for b, image in enumerate(x):
        a0, a1, a2, b0, b1, b2 = matrix[b if len(matrix) > 1 else 0]
        sx, sy = a0 * gx + a1 * gy + a2, b0 * gx + b1 * gy + b2
        out.append(
            _grid_sample(image, _to_pixels(sx, w, coordinates, align), _to_pixels(sy, h, coordinates, align), sampling, padding, pad)
        )
    return np.stack(out).astype(F32)
