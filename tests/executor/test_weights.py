"""How the executor decodes weights: blobs written by coremltools' own blob writer, packed sub-byte values, every
compression the exporter uses (plus sparse and blockwise int4), the iOS18 constexpr forms, and NeuralNetwork
quantized weights, each compared with coremltools' own view of the same weights or with the op's definition."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from executor_helpers import IMAGE_BIAS, IMAGE_SCALE, CoreMLExecutor, ct, image_pixels, mb, program_file

from exporter.errors import ConversionError
from exporter.preprocessing import Preprocessing

# The ops these tests run through the executor (test_registry checks every registered op is covered somewhere).
COVERS = {
    "constexpr_affine_dequantize",
    "constexpr_lut_to_dense",
    "constexpr_sparse_to_dense",
    "constexpr_blockwise_shift_scale",
    "constexpr_cast",
    "constexpr_lut_to_sparse",
    "constexpr_sparse_blockwise_shift_scale",
}


# ---------------------------------------------------------------------------------------------------------- blobs
BLOB_CASES = {  # writer method -> (blob type name, values)
    "write_float_data": ("fp32", np.linspace(-3, 3, 37, dtype=np.float32)),
    "write_fp16_data": ("fp16", np.linspace(-2, 2, 21).astype(np.float16)),
    "write_int8_data": ("int8", np.arange(-128, 128, 3, dtype=np.int8)),
    "write_uint8_data": ("uint8", np.arange(0, 256, 5, dtype=np.uint8)),
    "write_int16_data": ("int16", np.arange(-30000, 30000, 997, dtype=np.int16)),
    "write_uint16_data": ("uint16", np.arange(0, 65000, 1013, dtype=np.uint16)),
    "write_int32_data": ("int32", np.arange(-(10**6), 10**6, 40009, dtype=np.int32)),
    "write_uint32_data": ("uint32", np.arange(0, 4 * 10**9, 10**8 + 7, dtype=np.uint32)),
}
SUB_BYTE_CASES = {"int4": (-8, 8), "uint1": (0, 2), "uint2": (0, 4), "uint3": (0, 8), "uint4": (0, 16), "uint6": (0, 64)}


def test_weight_file_decodes_what_coremltools_writes(tmp_path):
    from coremltools.converters.mil.mil import types
    from coremltools.libmilstoragepython import _BlobStorageReader as Reader
    from coremltools.libmilstoragepython import _BlobStorageWriter as Writer

    from exporter.runtime.executor.blob import WeightFile

    rng = np.random.default_rng(0)
    path = tmp_path / "weight.bin"
    writer = Writer(str(path))
    written = []
    for method, (name, values) in BLOB_CASES.items():
        data = values.view(np.uint16) if name == "fp16" else values
        written.append((getattr(writer, method)(data), name, values))
    for name, (low, high) in SUB_BYTE_CASES.items():
        for count in (1, 7, 50):  # lengths that leave unused bits at the end
            dtype = types.np_int4_dtype if name == "int4" else types.string_to_nptype(name)
            values = rng.integers(low, high, count).astype(dtype)
            written.append((getattr(writer, f"write_{name}_data")(values), name, values))
    del writer  # flushes the file
    ours, reader = WeightFile(path, "test"), Reader(str(path))
    for offset, name, values in written:
        got = ours.read(offset, name, values.size)
        np.testing.assert_array_equal(got, values.astype(got.dtype))
        if name in SUB_BYTE_CASES:
            np.testing.assert_array_equal(got, getattr(reader, f"read_{name}_data")(offset).astype(got.dtype))


def test_weight_file_refuses_a_bad_record(tmp_path):
    from coremltools.libmilstoragepython import _BlobStorageWriter as Writer

    from exporter.runtime.executor.blob import WeightFile

    path = tmp_path / "weight.bin"
    writer = Writer(str(path))
    offset = writer.write_float_data(np.ones(4, np.float32))
    del writer
    blob = WeightFile(path, "m.mlpackage")
    with pytest.raises(ConversionError, match="holds fp32, the program declares fp16"):
        blob.read(offset, "fp16", 4)
    with pytest.raises(ConversionError, match="holds 4 fp32 values, the program declares 5"):
        blob.read(offset, "fp32", 5)
    with pytest.raises(ConversionError, match="no blob record at offset"):
        blob.read(offset + 8, "fp32", 4)
    with pytest.raises(ConversionError, match="outside weight.bin"):
        blob.read(1 << 20, "fp32", 4)


@pytest.mark.parametrize("nbits", [1, 2, 3, 4, 6, 8])
def test_packed_bits_match_both_coremltools_packers(nbits):
    from coremltools.models.neural_network.quantization_utils import _convert_array_to_nbit_quantized_bytes
    from coremltools.optimize import _utils as optimize_utils

    from exporter.runtime.executor.blob import unpack_bits

    values = np.random.default_rng(nbits).integers(0, 1 << nbits, 45).astype(np.uint8)
    lsb = optimize_utils.pack_elements_into_bits(values, nbits)  # ML Program: least significant bit first
    np.testing.assert_array_equal(unpack_bits(lsb, nbits, values.size), values)
    if nbits < 8:  # NeuralNetwork: most significant bit first
        msb = np.asarray(_convert_array_to_nbit_quantized_bytes(values, nbits), np.uint8)
        np.testing.assert_array_equal(unpack_bits(msb, nbits, values.size, msb_first=True), values)
    signed = np.random.default_rng(0).integers(-8, 8, 9).astype(np.int8)
    packed = optimize_utils.pack_elements_into_bits(signed, 4)
    np.testing.assert_array_equal(unpack_bits(packed, 4, 9, signed=True), signed)


# ---------------------------------------------------------------------------------------------------------- compression
def _tiny_model(path, channels=3, size=12):
    import keras

    keras.utils.set_random_seed(5)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(24, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, activation="relu")(x)
    x = keras.layers.Conv2D(40, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(6, activation="softmax")(x)).save(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    from exporter.convert.coreml import ModelInfo

    folder = tmp_path_factory.mktemp("tiny")
    model = keras.saving.load_model(_tiny_model(folder / "tiny.keras"))
    pre = Preprocessing((12, 12), scale=(IMAGE_SCALE,) * 3, bias=(IMAGE_BIAS,) * 3)
    info = ModelInfo(name="tiny", labels=[f"c{i}" for i in range(6)], preprocessing=pre, source_sha256="0", source_file="tiny.keras")
    return folder, model, info, pre


def _coremltools_constexpr_values(mlmodel) -> dict[str, np.ndarray]:
    """coremltools' own decompression of every constexpr op of an in-memory (just converted) model."""
    ops = mlmodel._mil_program.functions["main"].operations
    return {
        op.outputs[0].name: np.asarray(op.materialized_val_inference(), np.float32) for op in ops if op.op_type.startswith("constexpr_")
    }


def _compressed_variants(base16, base18):
    import coremltools.optimize.coreml as cto

    from exporter.quantize import coreml as q

    return {
        "int8_symmetric": q.compress(base16, q.CompressionSpec("linear", 8)),
        # the shipped spec, with its small-kernel threshold lifted: this tiny model's kernels would all stay float16
        "int8_affine": q.compress(base16, dataclasses.replace(q.WEIGHT_ONLY_INT8, min_elements=1)),
        "palette8": q.compress(base16, q.CompressionSpec("palettize", 8)),
        "palette6": q.compress(base16, q.CompressionSpec("palettize", 6)),
        "palette4_grouped": q.compress(base18, q.CompressionSpec("palettize", 4, grouped=True)),
        "sparse": cto.prune_weights(
            base16, cto.OptimizationConfig(global_config=cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=1))
        ),
        "int4_blockwise": cto.linear_quantize_weights(
            base18,
            cto.OptimizationConfig(
                global_config=cto.OpLinearQuantizerConfig(
                    mode="linear", dtype="int4", granularity="per_block", block_size=4, weight_threshold=1
                )
            ),
        ),
        "uint8_affine": cto.linear_quantize_weights(
            base16,
            cto.OptimizationConfig(
                global_config=cto.OpLinearQuantizerConfig(mode="linear", dtype="uint8", granularity="per_tensor", weight_threshold=1)
            ),
        ),
    }


def test_compressed_weights_decode_as_coremltools_decodes_them(tiny, tmp_path):
    from exporter.convert.coreml import convert

    _, model, info, pre = tiny
    base16 = convert(model, info, backend="mlprogram", precision="fp16")
    base18 = convert(model, info, backend="mlprogram", precision="fp16", target="iOS18")
    pixels = image_pixels(8, 12, 12)
    keras_probs = model(pre.normalize(pixels)).numpy()
    kinds = set()
    for name, mlmodel in _compressed_variants(base16, base18).items():
        expected = _coremltools_constexpr_values(mlmodel)
        assert expected, name
        path = tmp_path / f"{name}.mlpackage"
        mlmodel.save(str(path))
        executor = CoreMLExecutor(path)
        kinds |= {op.op_type for op in mlmodel._mil_program.functions["main"].operations}
        for const_name, want in expected.items():
            got = executor.constants[const_name]
            ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float32)  # the file stores float16
            assert np.all(np.abs(got - want) <= ulp), (name, const_name)
        probs = executor.predict(pixels)  # and the decompressed program still computes the model
        assert np.abs(probs - keras_probs).max() < 0.1, name
    assert {
        "constexpr_affine_dequantize",
        "constexpr_lut_to_dense",
        "constexpr_sparse_to_dense",
        "constexpr_blockwise_shift_scale",
    } <= kinds


def test_neuralnetwork_weights_decode_as_coremltools_dequantizes_them(tiny, tmp_path):
    from coremltools.models.neural_network import quantization_utils

    from exporter.convert.coreml import convert
    from exporter.quantize.coreml import neuralnetwork_weights
    from exporter.runtime.executor import nnweights

    _, model, info, pre = tiny
    base = convert(model, info, backend="neuralnetwork")
    float_layers = {layer.name: layer for layer in base.get_spec().neuralNetworkClassifier.layers}
    variants = {
        "fp16": neuralnetwork_weights(base, 16),
        # coremltools' 8-bit linear mode itself: the shipped neuralnetwork_weights(base, 8) leaves this tiny
        # model's small convolutions float (SMALL_WEIGHT_ELEMENTS), so nothing would be decoded
        "int8": quantization_utils.quantize_weights(base, nbits=8, quantization_mode="linear"),
        "lut5": quantization_utils.quantize_weights(base, nbits=5, quantization_mode="linear_lut"),
        "linear3": quantization_utils.quantize_weights(base, nbits=3, quantization_mode="linear"),
    }
    pixels = image_pixels(8, 12, 12)
    keras_probs = model(pre.normalize(pixels)).numpy()
    for name, quantized in variants.items():
        spec = quantized.get_spec()
        if name != "fp16":  # coremltools' own dequantization (it does not handle float16 fields)
            dequantized = quantization_utils.quantize_weights(quantized, nbits=8, quantization_mode="dequantization")
            reference = {layer.name: layer for layer in dequantized.get_spec().neuralNetworkClassifier.layers}
        checked = 0
        for layer in spec.neuralNetworkClassifier.layers:
            if layer.WhichOneof("layer") != "convolution":
                continue
            p = layer.convolution
            shape = (p.outputChannels, p.kernelChannels, *p.kernelSize)
            got = nnweights.decode(p.weights, shape, "test")
            original = np.asarray(float_layers[layer.name].convolution.weights.floatValue, np.float32).reshape(shape)
            if name == "fp16":
                want = original.astype(np.float16)
            else:
                want = np.asarray(reference[layer.name].convolution.weights.floatValue).reshape(shape)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            assert not np.array_equal(got, original)  # it really was compressed
            checked += 1
        assert checked == 3, name
        path = tmp_path / f"{name}.mlmodel"
        quantized.save(str(path))
        probs = CoreMLExecutor(path).predict(pixels)
        assert np.abs(probs - keras_probs).max() < 0.2, name


def _weight_through(tmp_path, make_weight, shape, target):
    """The weight a constexpr op decodes to, as the executor holds it, and the program's output with it."""

    def body(v):
        weight = make_weight()
        return mb.conv(x=v, weight=weight, name="out")

    path = program_file(tmp_path, body, target=target)
    executor = CoreMLExecutor(path)
    weights = [w for w in executor.constants.values() if w.shape == shape and w.dtype == np.float32]
    return weights, executor


def test_constexpr_forms_the_exporter_does_not_write_yet(tmp_path):
    """iOS18 vector lookup tables, iOS18 sparse masks and constexpr_cast, against their definitions."""
    rng = np.random.default_rng(8)
    from coremltools.converters.mil.mil import types

    # Vector palettization: 2-bit indices over (2, 3, 1, 3), each index naming a 2-vector laid along axis 0.
    indices = rng.integers(0, 4, (2, 3, 1, 3)).astype(np.uint8)
    lut = rng.normal(size=(1, 1, 1, 1, 4, 2)).astype(np.float16)
    want = np.moveaxis(lut[0, 0, 0, 0][indices], -1, 1).reshape(4, 3, 1, 3)  # row 2a+v is vector entry v of a
    got, _ = _weight_through(
        tmp_path / "lut",
        lambda: mb.constexpr_lut_to_dense(indices=indices.astype(types.np_uint2_dtype), lut=lut, vector_axis=0),
        (4, 3, 1, 3),
        ct.target.iOS18,
    )
    np.testing.assert_array_equal(got[0], want.astype(np.float32))
    # Sparse: a uint1 mask of the full shape and the kept values in row-major order.
    mask = rng.integers(0, 2, (2, 3, 3, 3)).astype(np.uint8)
    data = rng.normal(size=int(mask.sum())).astype(np.float16)
    dense = np.zeros(mask.shape, np.float16)
    dense[mask.astype(bool)] = data
    got, _ = _weight_through(
        tmp_path / "sparse",
        lambda: mb.constexpr_sparse_to_dense(nonzero_data=data, mask=mask.astype(types.np_uint1_dtype)),
        (2, 3, 3, 3),
        ct.target.iOS18,
    )
    np.testing.assert_array_equal(got[0], dense.astype(np.float32))
    source = rng.normal(size=(2, 3, 3, 3)).astype(np.float16)
    got, _ = _weight_through(
        tmp_path / "cast", lambda: mb.constexpr_cast(source_val=source, output_dtype="fp32"), (2, 3, 3, 3), ct.target.iOS16
    )
    np.testing.assert_array_equal(got[0], source.astype(np.float32))


def test_ios18_sparse_constexpr_forms_decode_as_defined(tmp_path):
    """constexpr_lut_to_sparse (vector palettes widen the mask along vector_axis) and
    constexpr_sparse_blockwise_shift_scale, each followed by constexpr_sparse_to_dense as coremltools writes them."""
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(11)
    # Palettized sparse weight: a (2, 3, 3, 3) mask, 2-bit indices of the kept entries, 2-vectors along axis 0.
    mask = rng.integers(0, 2, (2, 3, 3, 3)).astype(np.uint8)
    indices = rng.integers(0, 4, int(mask.sum())).astype(np.uint8)
    lut = rng.normal(size=(1, 1, 1, 1, 4, 2)).astype(np.float16)
    dense_index = np.zeros(mask.shape, np.int64)
    dense_index[mask.astype(bool)] = indices
    values = np.moveaxis(lut[0, 0, 0, 0][dense_index], -1, 1).reshape(4, 3, 3, 3)  # row 2a+v: entry v of a's vector
    want = values * np.repeat(mask, 2, axis=0)

    def palettized():
        out_mask, out_data = mb.constexpr_lut_to_sparse(
            indices_mask=mask.astype(types.np_uint1_dtype),
            indices_nonzero_data=indices.astype(types.np_uint2_dtype),
            lut=lut,
            vector_axis=0,
        )
        return mb.constexpr_sparse_to_dense(nonzero_data=out_data, mask=out_mask)

    got, _ = _weight_through(tmp_path / "lut_sparse", palettized, (4, 3, 3, 3), ct.target.iOS18)
    np.testing.assert_array_equal(got[0], want.astype(np.float32))
    # Quantized sparse weight: int8 kept values, one scale and offset per output channel (blocks of the dense shape).
    mask = rng.integers(0, 2, (4, 3, 3, 3)).astype(np.uint8)
    data = rng.integers(-100, 100, int(mask.sum())).astype(np.int8)
    scale = rng.uniform(0.01, 0.1, (4, 1, 1, 1)).astype(np.float16)
    offset = rng.integers(-5, 5, (4, 1, 1, 1)).astype(np.int8)
    dense = np.zeros(mask.shape, np.float64)
    dense[mask.astype(bool)] = data
    want = (dense - offset) * scale.astype(np.float64) * mask

    def quantized():
        out_mask, out_data = mb.constexpr_sparse_blockwise_shift_scale(
            data_mask=mask.astype(types.np_uint1_dtype), nonzero_data=data, scale=scale, offset=offset
        )
        return mb.constexpr_sparse_to_dense(nonzero_data=out_data, mask=out_mask)

    got, _ = _weight_through(tmp_path / "quant_sparse", quantized, (4, 3, 3, 3), ct.target.iOS18)
    ulp = np.spacing(np.abs(want).astype(np.float16)).astype(np.float64)  # the op's output is float16
    assert np.all(np.abs(got[0] - want) <= ulp)
