"""The executor's load-time plan computes what the program says: writing a result into an operand's buffer (the
swish ``x * sigmoid(x)`` with its operands swapped so the product lands in the sigmoid's output) changes no value."""

from __future__ import annotations

import numpy as np
import pytest

ct = pytest.importorskip("coremltools")
from coremltools.converters.mil.mil import Builder as mb  # noqa: E402

from exporter.runtime.executor import CoreMLExecutor  # noqa: E402

SIDE = 7
SCALE, BIAS = 1 / 127.5, -1.0
# float32 rounding of a 27-term convolution and a sigmoid, against a float64 reference
ATOL = 1e-5


def _program(tmp_path, body):
    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, SIDE, SIDE))], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.reshape(x=body(x), shape=[1, -1])

    count = int(np.prod(prog.functions["main"].outputs[0].shape))
    image = ct.ImageType(name="x", shape=(1, 3, SIDE, SIDE), scale=SCALE, bias=[BIAS] * 3)
    model = ct.convert(
        prog,
        inputs=[image],
        classifier_config=ct.ClassifierConfig([f"o{i}" for i in range(count)]),
        convert_to="mlprogram",
        minimum_deployment_target=ct.target.iOS15,
        skip_model_load=True,
        compute_precision=ct.precision.FLOAT32,
    )
    path = tmp_path / "p.mlpackage"
    model.save(str(path))
    return path


def _conv_reference(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """'valid' 3x3 convolution in float64, NCHW."""
    n, _, h, w = x.shape
    out = np.zeros((n, weight.shape[0], h - 2, w - 2))
    for i in range(3):
        for j in range(3):
            out += np.einsum("nchw,oc->nohw", x[:, :, i : i + h - 2, j : j + w - 2], weight[:, :, i, j])
    return out


def _check(executor, pixels, want) -> None:
    got = executor.predict(pixels)
    np.testing.assert_allclose(got, want.reshape(len(pixels), -1), atol=ATOL, rtol=0)
    np.testing.assert_array_equal(executor.predict(pixels), got)  # reused buffers leave nothing behind
    alone = np.concatenate([executor.predict(pixels[i : i + 1]) for i in range(len(pixels))])
    np.testing.assert_array_equal(alone, got)


@pytest.fixture()
def case():
    weight = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIDE, SIDE, 3), dtype=np.uint8)
    x = (pixels.astype(np.float64) * SCALE + BIAS).transpose(0, 3, 1, 2)
    return weight, pixels, _conv_reference(x, weight.astype(np.float64))


@pytest.mark.parametrize("conv_read_later", [False, True])
def test_swish_writes_into_its_input_only_when_nothing_reads_it_later(tmp_path, case, conv_read_later):
    """``conv * sigmoid(conv)`` (coremltools fuses it into one silu op): computed in the convolution's buffer, unless a
    later op still reads the convolution's output."""
    weight, pixels, conv = case

    def body(v):
        c = mb.conv(x=v, weight=weight, name="conv")
        swish = mb.mul(x=c, y=mb.sigmoid(x=c, name="gate"), name="swish")
        return mb.add(x=swish, y=c, name="residual") if conv_read_later else swish

    executor = CoreMLExecutor(_program(tmp_path, body))
    step = next(s for s in executor._engine.steps if s.outputs == ["swish"])
    assert step.call.op_type == "silu" and step.call.inplace == (not conv_read_later)
    _check(executor, pixels, conv / (1 + np.exp(-conv)) + (conv if conv_read_later else 0))


def test_product_goes_into_the_fresh_operand_when_the_other_is_read_later(tmp_path, case):
    """``mul(x=conv, y=relu(conv))`` followed by ``add(product, conv)``: x may not be overwritten, so the operands are
    swapped and the product written into relu's buffer."""
    weight, pixels, conv = case

    def body(v):
        c = mb.conv(x=v, weight=weight, name="conv")
        product = mb.mul(x=c, y=mb.relu(x=c, name="rectified"), name="product")
        return mb.add(x=product, y=c, name="residual")

    executor = CoreMLExecutor(_program(tmp_path, body))
    step = next(s for s in executor._engine.steps if s.outputs == ["product"])
    assert step.call.inplace and step.call.args["x"] == ["rectified"] and step.call.args["y"] == ["conv"]
    _check(executor, pixels, conv * np.maximum(conv, 0) + conv)


def _conv_float64(x: np.ndarray, weight: np.ndarray, pads, dilation) -> np.ndarray:
    """Direct NCHW convolution, unit stride, in float64."""
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pads[0], pads[1]), (pads[2], pads[3])))
    o, _, kh, kw = weight.shape
    ho = xp.shape[2] - (kh - 1) * dilation[0]
    wo = xp.shape[3] - (kw - 1) * dilation[1]
    out = np.zeros((x.shape[0], o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            window = xp[:, :, i * dilation[0] : i * dilation[0] + ho, j * dilation[1] : j * dilation[1] + wo]
            out += np.einsum("nchw,oc->nohw", window, weight[:, :, i, j].astype(np.float64))
    return out


@pytest.mark.parametrize(
    "kernel,pads,dilation", [((3, 3), (1, 1, 1, 1), (1, 1)), ((3, 2), (2, 0, 1, 1), (2, 1)), ((1, 3), (0, 0, 1, 1), (1, 1))]
)
def test_shifted_taps_convolution_matches_float64(kernel, pads, dilation):
    """Unit-stride convolutions with few output channels for their input's (DenseNet's 3x3 128 -> 32) take the
    shifted-taps path: every tap a product of the flat input shifted, summed, the grid's border dropped."""
    from exporter.runtime.executor import kernels

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 16, 11, 12)).astype(np.float32)
    weight = rng.normal(size=(5, 16) + kernel).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    cache: dict = {}
    got = kernels.conv2d(x, weight, bias, (1, 1), dilation, pads, 1, cache)
    assert "taps" in cache  # the path under test was taken
    want = _conv_float64(x, weight, pads, dilation) + bias.reshape(1, -1, 1, 1)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    single = np.concatenate([kernels.conv2d(x[i : i + 1], weight, bias, (1, 1), dilation, pads, 1, cache) for i in range(3)])
    np.testing.assert_array_equal(single, got)  # an image's result does not depend on its neighbours in the batch


def test_fp16_compute_rounds_only_what_the_file_declares_fp16(tmp_path):
    """compute="fp16" rounds the values a mixed-precision file declares float16 and leaves its float32 ones (the stem
    of our fp16 files, exporter/convert/fp16.py) alone: an fp32 mul by 1/3 keeps its float32 bits, the fp16 mul after
    the cast gives float16 values; with compute="fp32" neither is rounded (the cast to fp16 is a no-op)."""
    from executor_helpers import as_input, image_pixels, program_file

    third, seventh = np.float32(1 / 3), np.float16(1 / 7)

    def body(x):
        a = mb.mul(x=x, y=third)  # declared fp32
        b = mb.mul(x=mb.cast(x=a, dtype="fp16"), y=seventh)  # declared fp16
        return mb.concat(values=[a, mb.cast(x=b, dtype="fp32")], axis=1)

    path = program_file(tmp_path, body, optimize=False)
    pix = image_pixels(2)
    a = as_input(pix) * third  # float32 arithmetic
    b16 = (a.astype(np.float16).astype(np.float32) * np.float32(seventh)).astype(np.float16).astype(np.float32)
    got16 = CoreMLExecutor(path, compute="fp16").predict(pix).reshape(2, 6, *a.shape[2:])
    np.testing.assert_array_equal(got16[:, :3], a)  # the fp32 op: not rounded to fp16
    np.testing.assert_array_equal(got16[:, 3:], b16)
    assert not np.array_equal(a, a.astype(np.float16).astype(np.float32))  # a rounding would show
    got32 = CoreMLExecutor(path, compute="fp32").predict(pix).reshape(2, 6, *a.shape[2:])
    np.testing.assert_array_equal(got32[:, :3], a)
    np.testing.assert_array_equal(got32[:, 3:], a * np.float32(seventh))
