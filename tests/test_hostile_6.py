"""Hostile input, round 6 (docs/THREAT_MODEL.md): what rounds 1-5 (test_hostile*.py, test_fuzz.py, test_faults.py,
test_validation_isolation.py) left open. Each test fails without its fix."""

from __future__ import annotations

import pytest
from test_hostile_3 import _cli, _copy_export, _image
from test_hostile_4 import _const, _onnx_with

from exporter.errors import ConversionError, ModelLoadError


# ------------------------------------------------------------------------------------------------ values alive together
def _many_kept_values(nodes, inits, image):
    # six 400 MB values, each within the per-value budget, all kept alive by one late reader: 2.4 GB together
    from onnx import helper

    nodes.append(helper.make_node("ConstantOfShape", [_const(inits, "big", [10_000, 10_000])], ["v0"]))
    for k in range(1, 6):
        nodes.append(helper.make_node("Neg", [f"v{k - 1}"], [f"v{k}"]))
    nodes.append(helper.make_node("Sum", [f"v{k}" for k in range(6)], ["together"]))
    return "together"


def test_onnx_values_alive_together_over_the_budget_are_refused_before_onnxruntime_runs(tmp_path, capsys, small_export):
    # each value was bounded (1 GiB) but not their sum: this file ran in onnxruntime with 2.8 GB of values alive
    export = _copy_export(small_export, tmp_path / "export")
    path = _onnx_with(export, _many_kept_values)
    proc, line = _cli(["predict", str(export), str(_image(small_export))], capsys)
    assert proc.returncode == ConversionError.exit_code, line
    assert path.name in line and "values alive together" in line and "2,147,483,648" in line, line


def test_onnx_images_per_run_keep_the_values_alive_together_within_the_budget():
    # a graph of 50 MB per image alive together ran 64 images at once: 3.2 GB
    import onnx
    from onnx import helper

    from exporter.runtime.onnx_bounds import images_per_run, value_bounds
    from exporter.safety import LIVE_ACTIVATION_BUDGET_BYTES

    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 256, 256, 3])  # 786 kB per image
    out = helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Neg", ["image" if k == 0 else f"v{k - 1}"], [f"v{k}"]) for k in range(63)]
    nodes.append(helper.make_node("Sum", [f"v{k}" for k in range(63)], ["out"]))
    model = helper.make_model(helper.make_graph(nodes, "g", [image], [out]), opset_imports=[helper.make_opsetid("", 17)])
    one = value_bounds(model, "chain.onnx")
    assert one.largest == 256 * 256 * 3 * 4 and one.alive == 65 * one.largest
    count = images_per_run(model, "chain.onnx", one.largest, one.alive)
    assert count * one.alive <= LIVE_ACTIVATION_BUDGET_BYTES < (count + 1) * one.alive


def test_a_keras_op_that_blows_up_activations_is_refused_before_running(tmp_path):
    # the per-image bound walked model.layers, which leaves out the Keras ops a functional model calls on its
    # tensors: a keras.ops.tile to 9600 x 9600 px (1.1 GB per image) loaded, for the classifier probe to run on 6 images
    import keras

    from exporter.loading import load_model

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.ops.tile(inputs, (1, 300, 300, 1)))
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "tile.keras")
    with pytest.raises(ModelLoadError, match="over the memory budget") as info:
        load_model(tmp_path / "tile.keras")
    assert "tile.keras" in str(info.value) and "'tile'" in str(info.value)


@pytest.mark.parametrize("nested", [False, True], ids=["top", "nested"])
def test_keras_layer_outputs_alive_together_over_the_budget_are_refused_when_loaded(tmp_path, nested):
    # Keras keeps every layer's output until a call returns; each of these 180 ReLU outputs is 50 MB for one image, so
    # one image held 9 GB and the classifier probe's 6 images 54 GB, though each value was within the budget
    import keras

    from exporter.loading import load_model

    def body(x):
        for k in range(180):
            x = keras.layers.ReLU(name=f"relu_{k}")(x)
        return keras.layers.GlobalAveragePooling2D()(x)

    inputs = keras.Input((2048, 2048, 3))
    if nested:
        inner_in = keras.Input((2048, 2048, 3))
        x = keras.Model(inner_in, body(inner_in), name="backbone")(inputs)
    else:
        x = body(inputs)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "deep.keras")
    with pytest.raises(ModelLoadError, match="layer outputs at once") as info:
        load_model(tmp_path / "deep.keras")
    assert "deep.keras" in str(info.value)


def test_a_model_that_holds_gigabytes_for_one_image_as_efficientnet_b7_does_still_loads(tmp_path):
    """The one-image bound was the executor's live budget (2 GiB), which refused keras.applications' EfficientNetB6,
    B7 and V2L at their own input sizes (B7 at 600 px holds 3,991 MiB of layer outputs for one image). One image may
    now hold up to KERAS_ONE_IMAGE_BUDGET_BYTES; calls of several images are still cut to the live budget."""
    import keras

    from exporter import keras_memory, safety
    from exporter.loading import load_model

    inputs = keras.Input((2048, 2048, 3))
    x = inputs
    for k in range(60):  # 60 x 50 MB: 3 GB for one image, as EfficientNetB7's 4 GB
        x = keras.layers.ReLU(name=f"relu_{k}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "b7like.keras")
    loaded = load_model(tmp_path / "b7like.keras")
    per_image = keras_memory.activation_bytes(loaded.model, "b7like.keras", error=ModelLoadError)
    assert safety.LIVE_ACTIVATION_BUDGET_BYTES < per_image < safety.KERAS_ONE_IMAGE_BUDGET_BYTES
    assert keras_memory.images_per_call(per_image) == 1


def test_the_keras_reference_is_called_on_as_many_images_as_keep_its_outputs_within_the_budget(monkeypatch):
    # validate called the Keras model on the whole batch (32 images): DenseNet121 at 224 px holds 190 MiB of layer
    # outputs per image, 6 GB per call. The budget here is cut so a 4-image batch must be split.
    import keras
    import numpy as np

    from exporter import safety
    from exporter.keras_memory import activation_bytes
    from exporter.preprocessing import Preprocessing
    from exporter.runtime import KerasRunner

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    per_image = activation_bytes(model, "m", error=ModelLoadError)
    assert per_image == 4 * (16 * 16 * 3 + 14 * 14 * 4 + 4 + 3)
    pre = Preprocessing.from_dict({"input_size": [16, 16], "scale": [1 / 255], "bias": [0.0]})
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    whole = KerasRunner(model, pre)(pixels)
    monkeypatch.setattr(safety, "LIVE_ACTIVATION_BUDGET_BYTES", 2 * per_image)  # two images per call
    sizes: list[int] = []
    original = model.__call__
    monkeypatch.setattr(type(model), "__call__", lambda self, x, **kw: sizes.append(len(x)) or original(x, **kw))
    np.testing.assert_allclose(KerasRunner(model, pre)(pixels), whole, atol=1e-6)
    assert sizes == [2, 2, 1]


# ------------------------------------------------------------------------------------------------ C decoders' lines
def _corrupt_tiff(path, compression: str):
    import io

    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF", compression=compression)
    data = bytearray(buffer.getvalue())
    for i in range(100, 3000, 7):  # inside the compressed strip, past the header
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(("compression", "said"), [("tiff_lzw", "Using code not yet in table"), ("tiff_deflate", "ZIPDecode")])
def test_a_corrupt_tiff_is_one_line_with_libtiffs_reason_and_nothing_else_on_stderr(tmp_path, capfd, small_export, compression, said):
    # libtiff printed its own lines ("tempfile.tif: Using code not yet in table.", "ZIPDecode: Decoding error at
    # scanline 0, incorrect data check.") on the terminal around the one-line error, which said only "decoder error -2"
    from test_faults import run_in_process

    from exporter.errors import ImageError

    image = _corrupt_tiff(tmp_path / "scan.tif", compression)
    proc = run_in_process(["predict", str(small_export[0]), str(image)], capfd)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == ImageError.exit_code, proc.stderr
    assert len(lines) == 1 and "scan.tif" in lines[0] and said in lines[0], proc.stderr


# ------------------------------------------------------------------------------------------------ TIFF tiles
def _tiff_with_tiles(path, side: int):
    """A 64 x 64 deflate TIFF of 16 px tiles (tifffile, which scikit-image installs), its TileWidth and TileLength
    tags then rewritten to ``side``."""
    import struct

    import numpy as np
    import tifffile

    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    tifffile.imwrite(path, pixels, tile=(16, 16), compression="zlib", photometric="rgb")
    data = bytearray(path.read_bytes())
    assert data[:2] == b"II"
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry : entry + 4])
        if tag in (322, 323):  # TileWidth, TileLength
            data[entry + 8 : entry + 12] = struct.pack("<I", side) if kind == 4 else struct.pack("<HH", side, 0)
    path.write_bytes(bytes(data))
    return path


def test_a_tiff_declaring_huge_tiles_is_refused_before_libtiff_allocates_one(tmp_path):
    # libtiff allocates a whole tile before decoding it: this 1 kB file of a 64 x 64 image with 26000 x 26000 px tiles
    # took 2 GB of memory (a 2.03 GB tile buffer) before failing as "decoder error -2"
    import resource

    from exporter.errors import ImageError
    from exporter.images import open_image

    assert open_image(_tiff_with_tiles(tmp_path / "ok.tif", 16)).size == (64, 64)
    bomb = _tiff_with_tiles(tmp_path / "tiles.tif", 26000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="tiles of 26000x26000") as info:
        open_image(bomb)
    assert "tiles.tif" in str(info.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # kB: nothing near the tile's size


# ------------------------------------------------------------------------------------------------ manifest.json
@pytest.mark.parametrize("value", [5, ["model.keras"], {"path": "model.keras"}])
def test_a_manifest_whose_source_path_from_export_is_not_a_string_is_malformed(tmp_path, capsys, small_export, value):
    # read_manifest checked source.path and source.sha256 but not path_from_export, which find_source_model joins to
    # the export folder: an int or a list there was an internal error (TypeError, exit 70) in validate and xcode
    import json

    from exporter.errors import DestinationError

    export = _copy_export(small_export, tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["source"]["path_from_export"] = value
    (export / "manifest.json").write_text(json.dumps(manifest))
    proc, line = _cli(["validate", str(export), "--images", str(small_export[1])], capsys)
    assert proc.returncode == DestinationError.exit_code, line
    assert "manifest.json" in line and "path_from_export must be a string" in line, line


@pytest.mark.parametrize("name", ["a" * 5000, "model\x00.keras"])
def test_a_source_path_the_file_system_cannot_take_is_not_found_not_an_internal_error(tmp_path, name):
    # a name past the file system's limits made Path.exists raise OSError (File name too long): an internal error
    from exporter.errors import ModelLoadError
    from exporter.packaging import find_source_model

    other = tmp_path / "model.keras"
    other.write_bytes(b"model")
    assert find_source_model({"source": {"path_from_export": name, "path": str(other)}}, tmp_path) == other
    with pytest.raises(ModelLoadError, match="was not found") as info:
        find_source_model({"source": {"path_from_export": name, "path": "/" + name}}, tmp_path)
    assert len(str(info.value)) < 2000


def test_a_manifest_with_unusable_labels_names_the_manifest_first(tmp_path, capsys, small_export):
    # the line read "exporter: error: manifest.json is malformed: /path/manifest.json: labels ...", the file in the
    # middle of the line instead of first, as every other error puts it
    import json

    from exporter.errors import DestinationError

    export = _copy_export(small_export, tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["labels"] = [1, 2, 3]
    (export / "manifest.json").write_text(json.dumps(manifest))
    proc, line = _cli(["predict", str(export), str(_image(small_export))], capsys)
    assert proc.returncode == DestinationError.exit_code, line
    assert line.startswith(f"exporter: error: {export / 'manifest.json'}: manifest.json is malformed: labels must be"), line


# ------------------------------------------------------------------------------------------------ packed weights
def _unpacked_at_once(data, nbits, count, *, signed=False, msb_first=False):
    """The former one-piece unpacking, the reference for the values."""
    import numpy as np

    raw = np.frombuffer(data, np.uint8)
    bits = np.unpackbits(raw, bitorder="big" if msb_first else "little")[: count * nbits].reshape(count, nbits).astype(np.int64)
    values = bits @ ((1 << np.arange(nbits - 1, -1, -1)) if msb_first else (1 << np.arange(nbits)))
    return np.where(values >= 1 << (nbits - 1), values - (1 << nbits), values) if signed else values


@pytest.mark.parametrize(("nbits", "signed", "msb_first"), [(1, False, False), (3, False, False), (4, True, False), (6, False, True)])
def test_packed_weights_unpack_to_the_same_values_in_pieces(monkeypatch, nbits, signed, msb_first):
    import numpy as np

    from exporter.runtime.executor import blob

    monkeypatch.setattr(blob, "UNPACK_CHUNK_VALUES", 16)  # pieces that end inside a byte for 3 and 6 bits
    count = 1001
    data = np.random.default_rng(nbits).integers(0, 256, -(-count * nbits // 8), dtype=np.uint8).tobytes()
    got = blob.unpack_bits(data, nbits, count, signed=signed, msb_first=msb_first)
    np.testing.assert_array_equal(got, _unpacked_at_once(data, nbits, count, signed=signed, msb_first=msb_first))
    assert got.dtype == (np.int8 if signed else np.uint8)


def test_unpacking_a_large_packed_table_takes_memory_near_its_result():
    # a 6-bit lookup-table file's 16 million indices (12 MB of weight file) took 600 MB to unpack: every bit as a
    # byte, every value's bits as int32, the values as int64; a table at the memory budget's 268 million took 10 GB
    import numpy as np
    from peakmem import peak_growth

    from exporter.runtime.executor.blob import unpack_bits

    count, nbits = 16 << 20, 6
    data = np.random.default_rng(0).integers(0, 256, count * nbits // 8, dtype=np.uint8).tobytes()
    with peak_growth() as peak:
        values = unpack_bits(data, nbits, count)
    assert values.shape == (count,) and int(values.max()) <= 63
    assert peak.growth_bytes < 100 << 20, peak.growth_bytes


# ------------------------------------------------------------------------------------------------ Core ML constants
def _package_with_empty_constants(small_export, dest, count: int, elements: int):
    """A copy of the export's .mlpackage with ``count`` extra const ops, each declaring ``elements`` float32 values
    and holding none (the executor makes np.zeros of the declared shape): a few bytes of file each."""
    import shutil

    from coremltools.proto import MIL_pb2, Model_pb2

    shutil.copytree(next(small_export[0].glob("*.mlpackage")), dest)
    spec_path = dest / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    function = spec.mlProgram.functions["main"]
    block = function.block_specializations[function.opset]
    ghosts = []
    for i in range(count):
        op = MIL_pb2.Operation(type="const")
        out = op.outputs.add()
        out.name = f"ghost{i}"
        out.type.tensorType.dataType = MIL_pb2.FLOAT32
        out.type.tensorType.rank = 1
        out.type.tensorType.dimensions.add().constant.size = elements
        value = op.attributes["val"]
        value.type.CopyFrom(out.type)
        value.immediateValue.tensor.SetInParent()
        ghosts.append(op)
    operations = ghosts + list(block.operations)
    del block.operations[:]
    block.operations.extend(operations)
    spec_path.write_bytes(spec.SerializeToString())
    return dest


def test_core_ml_constants_are_bounded_together_not_only_one_by_one(tmp_path, small_export, monkeypatch):
    # each declared constant was held to the memory budget, their sum to nothing: three consts declaring 200 million
    # float32 values and holding none (a few bytes of file each) took 2.4 GB while the file loaded; thirty, 24 GB.
    # The budget stands at 100 MB here so that 3 x 40 MB shows it.
    from exporter import safety
    from exporter.runtime.executor import CoreMLExecutor

    package = _package_with_empty_constants(small_export, tmp_path / "ghosts.mlpackage", count=3, elements=10_000_000)
    monkeypatch.setattr(safety, "CONSTANT_BUDGET_BYTES", 100_000_000)
    with pytest.raises(ConversionError, match="constants decode to over 100,000,000 bytes together") as info:
        CoreMLExecutor(package)
    assert "ghosts.mlpackage" in str(info.value) and "'ghost2'" in str(info.value)


def test_neuralnetwork_weights_are_bounded_together(tmp_path, small_export, monkeypatch):
    # the same for a NeuralNetwork file's layers, whose quantized weights decode to up to 32 float32 bytes per byte
    # of file: the sample's 0.9 MB of weights stand for a file's gigabytes against a budget set at 200 kB
    from exporter import safety
    from exporter.runtime.executor import CoreMLExecutor

    model = next(small_export[0].glob("*.mlmodel"))
    assert CoreMLExecutor(model).labels
    monkeypatch.setattr(safety, "CONSTANT_BUDGET_BYTES", 200_000)
    with pytest.raises(ConversionError, match="constants decode to over 200,000 bytes together .reached at .* layer") as info:
        CoreMLExecutor(model)
    assert model.name in str(info.value)


# ------------------------------------------------------------------------------------------------ ONNX node count
def test_an_onnx_graph_of_countless_nodes_is_refused_before_it_is_checked(tmp_path, monkeypatch):
    # 450,000 Identity nodes (16 MB, under the protobuf field limit) took 3 minutes and 2.2 GB of shape inference,
    # bound checks and session loading before predict printed anything. 2,000 nodes stand for them against a
    # limit set at 1,000 here.
    import time

    import onnx
    from onnx import helper

    from exporter import runtime
    from exporter.preprocessing import Preprocessing

    image = helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 8, 8, 3])
    out = helper.make_tensor_value_info("id1999", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Identity", ["image" if k == 0 else f"id{k - 1}"], [f"id{k}"]) for k in range(2000)]
    path = tmp_path / "long.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [image], [out]), opset_imports=[helper.make_opsetid("", 17)]), path)
    monkeypatch.setattr(runtime, "MAX_ONNX_NODES", 1000, raising=False)  # before the fix: no limit at all
    start = time.perf_counter()
    with pytest.raises(ConversionError, match="2,000 nodes, over the limit of 1,000") as info:
        runtime.OnnxRunner(path, Preprocessing.from_dict({"input_size": [8, 8], "scale": [1 / 255], "bias": [0.0]}))
    assert "long.onnx" in str(info.value) and time.perf_counter() - start < 5


def test_a_core_ml_file_of_countless_layers_is_refused_before_it_is_built(tmp_path, small_export, monkeypatch):
    # 200,000 identity layers (8 MB, under the protobuf field limit) took 22 s and 1.5 GB to load and probe; 330,000
    # fit. 2,000 stand for them against a limit set at 1,000 here.
    import time

    from coremltools.proto import Model_pb2

    from exporter.runtime import executor

    spec = Model_pb2.Model()
    spec.ParseFromString(next(small_export[0].glob("*.mlmodel")).read_bytes())
    network = spec.neuralNetworkClassifier
    first, previous, added = network.layers[0], network.layers[0].input[0], []
    for k in range(2000):
        layer = Model_pb2.NeuralNetworkLayer(name=f"same{k}", input=[previous], output=[f"same{k}"])
        layer.activation.linear.alpha = 1.0
        added.append(layer)
        previous = f"same{k}"
    first.input[0] = previous
    layers = added + list(network.layers)
    del network.layers[:]
    network.layers.extend(layers)
    path = tmp_path / "long.mlmodel"
    path.write_bytes(spec.SerializeToString())
    monkeypatch.setattr(executor, "MAX_OPERATIONS", 1000, raising=False)  # before the fix: no limit at all
    start = time.perf_counter()
    with pytest.raises(ConversionError, match="2,[0-9]{3} layers or operations, over the limit of 1,000") as info:
        executor.CoreMLExecutor(path)
    assert "long.mlmodel" in str(info.value) and time.perf_counter() - start < 5


@pytest.mark.parametrize("layer", ["MultiHeadAttention", "Attention", "AdditiveAttention"])
def test_attention_scores_over_the_budget_are_refused_before_running(tmp_path, layer):
    # attention layers compute queries x keys scores inside the call, never among their outputs, so the per-layer
    # bound saw 65,536 values per feature where a MultiHeadAttention over a 256 px image's pixels computes 2 x 65,536
    # x 65,536 scores (34 GB): the model loaded, and the classifier probe would run it on 6 images
    import keras

    from exporter.loading import load_model

    inputs = keras.Input((256, 256, 1))
    x = keras.layers.Reshape((65536, 1))(inputs)
    if layer == "MultiHeadAttention":
        x = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4, name="attend")(x, x)
    else:
        x = getattr(keras.layers, layer)(name="attend")([x, x])
    x = keras.layers.GlobalAveragePooling1D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(tmp_path / "attend.keras")
    with pytest.raises(ModelLoadError, match="attention scores of layer 'attend'") as info:
        load_model(tmp_path / "attend.keras")
    assert "attend.keras" in str(info.value)


# ------------------------------------------------------------------------------------------------ labels
def test_a_label_of_millions_of_characters_is_refused_before_each_is_checked(tmp_path, capsys):
    # no label had a length limit: a 60 MB labels file holding one 30-million-character label took 26 s to check
    # character by character and was then accepted, to be written into every artifact's metadata, the Swift
    # package's labels.txt and the report's tables and plots
    import time

    from conftest import sample

    from exporter.errors import LabelsError
    from exporter.labels import parse_labels

    start = time.perf_counter()
    with pytest.raises(LabelsError, match="label 2 is 30,000,000 characters long, over the limit of 1,000"):
        parse_labels("cat\n" + "\u00e9" * 30_000_000 + "\n", source="labels.txt")
    assert time.perf_counter() - start < 3
    s = sample("mobilenet_v1_digits")
    labels = s["labels"].read_text().splitlines()
    labels[3] = "x" * 1001
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    proc, line = _cli(["convert", str(s["model"]), "--labels", str(tmp_path / "labels.txt"), "--out", str(tmp_path / "out")], capsys)
    assert proc.returncode == LabelsError.exit_code and "labels.txt" in line and "label 4 is 1,001 characters long" in line, line
    assert len(line) < 400 and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ unzipped Keras models
@pytest.mark.parametrize("member", ["config.json", "model.weights.h5"])
def test_an_unzipped_keras_model_whose_member_links_outside_its_folder_is_refused(tmp_path, member):
    # a model saved with zipped=False is a folder Keras reads by path: a config.json or model.weights.h5 that was a
    # symlink to a file elsewhere was read and the model loaded, from outside the folder given
    import os
    import shutil

    import keras

    from exporter.loading import load_model

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(inputs))
    folder = tmp_path / "model"
    keras.Model(inputs, outputs).save(folder, zipped=False)
    assert load_model(folder).num_classes == 3
    (tmp_path / "elsewhere").mkdir()
    shutil.move(folder / member, tmp_path / "elsewhere" / member)
    os.symlink(tmp_path / "elsewhere" / member, folder / member)
    with pytest.raises(ModelLoadError, match=f"'{member}' resolves outside its folder") as info:
        load_model(folder)
    assert str(folder) in str(info.value)
