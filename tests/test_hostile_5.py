"""Hostile input, round 5 (docs/THREAT_MODEL.md): what the earlier rounds (test_hostile.py, test_hostile_h5.py,
test_hostile_3.py, test_hostile_4.py, test_input_hunt.py, test_fuzz.py) left open. Each test fails without its fix."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.preprocessing import Preprocessing

TINY = Preprocessing(input_size=(32, 32))


# ------------------------------------------------------------------------------------------------ images
# Decoded images of this many pixels (16 MP, a phone photo) keep the test fast while a copy of them is tens of MB.
BIG_SIDE = 4000
# What decoding and converting one image may take per pixel: the decoded image and its copy turned by its EXIF
# orientation (up to 4 bytes a pixel each), the RGB result (3) and slack for one band and the allocator (measured:
# 8.7 for 16-bit, 7.5 for RGBA). Before the fix a 16-bit image took 38 bytes a pixel (four float64 copies of it)
# and an RGBA one 20 (full-size RGBA copies on the way to RGB).
MAX_DECODE_BYTES_PER_PIXEL = 12


@pytest.mark.parametrize("mode", ["I;16", "RGBA"])
def test_a_large_16_bit_or_transparent_image_is_converted_without_copies_of_its_size(tmp_path, mode):
    # a 16-bit PNG of 64 MP (a 140 kB file, under MAX_PIXELS) took 2.4 GB to decode and reduce to 8 bits: the whole
    # image became four float64 arrays; a transparent one was copied three times as RGBA before compositing
    from peakmem import peak_growth
    from PIL import Image

    from exporter.images import load_image

    path = tmp_path / "big.png"
    Image.new(mode, (BIG_SIDE, BIG_SIDE), 1000 if mode == "I;16" else (10, 20, 30, 128)).save(path)
    with peak_growth() as peak:
        pixels = load_image(path, TINY)
    assert pixels.shape == (32, 32, 3)
    assert peak.growth_bytes < MAX_DECODE_BYTES_PER_PIXEL * BIG_SIDE * BIG_SIDE, peak.growth_bytes / BIG_SIDE**2


def _odd_mode_images() -> dict:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((97, 61, 3)) * 255).astype(np.uint8))
    images = {m: rgb.convert(m) for m in ("RGB", "RGBA", "L", "LA", "1", "CMYK", "YCbCr", "PA", "P")}
    images["P-transparent"] = rgb.convert("P")
    images["P-transparent"].info["transparency"] = 5
    images["RGB-transparent"] = rgb.copy()
    images["RGB-transparent"].info["transparency"] = tuple(np.asarray(rgb)[3, 4].tolist())
    deep = (rng.random((97, 61)) * 65535).astype("<u2")
    images["I;16-transparent"] = Image.frombytes("I;16", (61, 97), deep.tobytes())
    images["I;16-transparent"].info["transparency"] = int(deep[2, 2])
    small = (rng.random((97, 61)) * 200).astype(np.int32)
    images["I-8-bit-values"] = Image.fromarray(small)
    small = small.copy()
    small[96, 60] = 300  # one value over 255, in the last band: the whole image is scaled, as before
    images["I-one-large-value"] = Image.fromarray(small)
    images["F"] = Image.fromarray((rng.random((97, 61)) * 400 - 50).astype(np.float32))
    return images


def test_converting_an_image_in_bands_gives_the_pixels_of_converting_it_whole(monkeypatch):
    import exporter.images as images

    for name, img in _odd_mode_images().items():
        for channels in (1, 3):
            monkeypatch.setattr(images, "BAND_PIXELS", 1 << 30)
            whole = np.asarray(images.to_canonical_mode(img, channels))
            monkeypatch.setattr(images, "BAND_PIXELS", 61 * 7 + 3)  # bands of 7 rows, the last one short
            banded = np.asarray(images.to_canonical_mode(img, channels))
            assert whole.shape == (97, 61) if channels == 1 else (97, 61, 3)
            np.testing.assert_array_equal(banded, whole, err_msg=f"{name}, {channels} channel(s)")


@pytest.mark.parametrize("swap", ["fifo", "device"])
def test_an_image_replaced_by_a_fifo_or_device_after_the_listing_is_refused_without_hanging(tmp_path, swap):
    # list_images keeps regular files only, but the image was opened again by name when decoded: a file of the
    # folder replaced by a FIFO in between hung validate and predict in Pillow's open, waiting for a writer forever
    import os

    from PIL import Image
    from test_hostile import _in_thread

    from exporter.errors import ImageError
    from exporter.images import iter_batches, list_images

    image = tmp_path / "data" / "cat" / "a.png"
    image.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image)
    items = list_images(tmp_path / "data")
    image.unlink()
    if swap == "fifo":
        os.mkfifo(image)
    else:
        image.symlink_to("/dev/zero")
    result = _in_thread(lambda: next(iter_batches(items, TINY)))
    assert isinstance(result.get("error"), ImageError), result
    assert "a.png" in str(result["error"]) and "not a regular file" in str(result["error"])


# Deeper than Python's recursion limit (1000), still within PATH_MAX (4096 bytes) as "a/" repeated.
DEEP_LEVELS = 1500


def _remove_deep(root) -> None:
    """Remove a folder tree of any depth without recursion (down by chdir, rmdir on the way up): pytest's own
    clean-up of old temporary folders (rmtree) recurses, and a tree left behind this deep would break it for every
    later run on the machine."""
    import os

    cwd, names = os.getcwd(), []
    try:
        os.chdir(root)
        while True:
            with os.scandir(".") as it:
                entries = list(it)
            sub = next((e.name for e in entries if e.is_dir(follow_symlinks=False)), None)
            if sub is not None:
                os.chdir(sub)
                names.append(sub)
                continue
            for entry in entries:
                os.unlink(entry.name)
            if not names:
                break
            os.chdir("..")
            os.rmdir(names.pop())
    finally:
        os.chdir(cwd)
    os.rmdir(root)


def test_an_image_folder_nested_thousands_deep_is_listed_not_an_internal_error(tmp_path):
    # Path.rglob recursed once per level: a folder nested 1500 deep (a 3 kB path) ended in RecursionError, which the
    # CLI reports as an internal error (exit 70); deeper than PATH_MAX, the listing now says so in one line (exit 4)
    import os

    from PIL import Image

    from exporter.errors import ImageError
    from exporter.images import list_images

    data = tmp_path / "data"
    cwd = os.getcwd()
    try:
        deep = data / "cat"
        deep.mkdir(parents=True)
        for _ in range(DEEP_LEVELS):  # Path.mkdir(parents=True) and os.makedirs recurse as deep
            deep = deep / "a"
            deep.mkdir()
        Image.new("RGB", (8, 8)).save(deep / "x.png")
        Image.new("RGB", (8, 8)).save(data / "cat" / "y.png")
        items = list_images(data)
        assert [(it.path.name, it.label) for it in items] == [("x.png", "cat"), ("y.png", "cat")]
        os.chdir(deep)  # deeper than PATH_MAX: made level by level from inside
        for _ in range(DEEP_LEVELS):
            os.mkdir("b")
            os.chdir("b")
        os.chdir(cwd)
        with pytest.raises(ImageError, match="cannot be listed: File name too long") as info:
            list_images(data)
        assert info.value.exit_code == 4 and len(str(info.value)) < 800
    finally:
        os.chdir(cwd)
        _remove_deep(data)


def test_a_bundle_nested_thousands_deep_is_checked_hashed_and_copied_not_an_internal_error(tmp_path):
    # check_bundle, the bundle hash (sha256_of, VerifiedReads) and copy_verified walked an .mlpackage with rglob and
    # made the copy's folders with mkdir(parents=True), all recursing once per level: predict on a package holding a
    # folder chain 1200 deep (its manifest, untrusted, may record any hash) ended in RecursionError, exit 70
    from exporter.errors import DestinationError
    from exporter.packaging import VerifiedReads, check_bundle, copy_verified, sha256_of

    root = tmp_path / "export"
    bundle = root / "m.mlpackage"
    try:
        deep = bundle / "Data"
        deep.mkdir(parents=True)
        (bundle / "Manifest.json").write_text("{}")
        for _ in range(DEEP_LEVELS - 300):  # the copy's path, under tmp_path too, stays within PATH_MAX
            deep = deep / "a"
            deep.mkdir()
        (deep / "weight.bin").write_bytes(b"w" * 10)
        check_bundle(root, bundle, error=DestinationError)
        digest = sha256_of(bundle)
        reads = VerifiedReads(bundle, digest)
        reads.read(deep / "weight.bin", error=DestinationError, what="weight file")
        reads.verify()
        copy = tmp_path / "copy" / "m.mlpackage"
        copy_verified(bundle, copy, digest, error=DestinationError, what="bundle")
        assert sha256_of(copy) == digest
    finally:
        for made in (root, tmp_path / "copy"):
            if made.exists():
                _remove_deep(made)


def test_a_link_to_nothing_inside_a_bundle_is_one_line_not_an_internal_error(tmp_path):
    # check_bundle resolved each entry (a link to nothing inside the package resolves inside it) and then stat()ed
    # it: FileNotFoundError, reported by predict as an internal error (exit 70)
    from exporter.errors import ConversionError
    from exporter.packaging import check_bundle

    bundle = tmp_path / "m.mlpackage"
    (bundle / "Data").mkdir(parents=True)
    (bundle / "Data" / "broken").symlink_to("nothing_here")
    with pytest.raises(ConversionError, match="bundle file cannot be read: No such file or directory") as info:
        check_bundle(bundle, bundle, error=ConversionError)
    assert "broken" in str(info.value)


# ------------------------------------------------------------------------------------------------ ONNX labels
def _onnx_with_label_tensor(path, edit) -> None:
    """A one-node ONNX file whose ``exporter_labels`` constant is three strings, changed by ``edit(tensor)``."""
    import onnx
    from onnx import TensorProto, helper

    labels = helper.make_tensor("exporter_labels", TensorProto.STRING, [3], [b"cat", b"dog", b"owl"])
    edit(labels)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [labels],
    )
    onnx.save(helper.make_model(graph), str(path))


def _external_bytes(tensor) -> None:
    from onnx import TensorProto

    tensor.ClearField("string_data")
    tensor.data_type = TensorProto.UINT8
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "labels.bin"


def _one_more_string(tensor) -> None:
    tensor.string_data.append(b"fox")


def _not_utf8(tensor) -> None:
    tensor.string_data[1] = b"\xff\xfe"


@pytest.mark.parametrize(
    "edit,message",
    [
        (_external_bytes, "1-D string tensor stored in the file"),
        (_one_more_string, "declare 3 strings but hold 4"),
        (_not_utf8, "not valid UTF-8"),
    ],
    ids=["external-data", "count", "utf8"],
)
def test_embedded_onnx_labels_are_read_from_the_file_or_refused(tmp_path, monkeypatch, edit, message):
    # onnx's to_array decoded the labels constant: external data was read from the WORKING DIRECTORY (load_onnx had
    # checked the location against the file's folder, so the checked file and the read one differed; a FIFO there
    # hung predict), and a count or UTF-8 that did not fit was a ValueError, an "internal error" (exit 70)
    from exporter.errors import ConversionError
    from exporter.runtime import load_onnx, onnx_labels

    folder, elsewhere = tmp_path / "model", tmp_path / "cwd"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "labels.bin").write_bytes(b"abc")
    (elsewhere / "labels.bin").write_bytes(b"secret")  # what the old code read
    monkeypatch.chdir(elsewhere)
    path = folder / "lone.onnx"
    _onnx_with_label_tensor(path, edit)
    with pytest.raises(ConversionError, match=message) as info:
        onnx_labels(load_onnx(path), path)
    assert "lone.onnx" in str(info.value) and info.value.exit_code == 5


def test_embedded_onnx_labels_as_the_exporter_writes_them_are_read(tmp_path):
    from exporter.runtime import load_onnx, onnx_labels

    path = tmp_path / "lone.onnx"
    _onnx_with_label_tensor(path, lambda tensor: None)
    assert onnx_labels(load_onnx(path), path) == ["cat", "dog", "owl"]


# ------------------------------------------------------------------------------------------------ ONNX interface
SIDE = 8  # the tiny classifier's input size


def _tiny_classifier(path, edit=None) -> None:
    """A runnable ONNX classifier shaped as the exporter writes one (uint8 [batch, 8, 8, 3] image in, float
    [batch, 3] probabilities and the label out, the labels constant), changed by ``edit(model)``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.arange(9, dtype=np.float32).reshape(3, 3) / 100, "w")
    labels = helper.make_tensor("exporter_labels", TensorProto.STRING, [3], [b"cat", b"dog", b"owl"])
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
        helper.make_node("ArgMax", ["probabilities"], ["top"], axis=1, keepdims=0),
        helper.make_node("Gather", ["exporter_labels", "top"], ["label"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", SIDE, SIDE, 3])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
        ],
        [weights, labels],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if edit is not None:
        edit(model)
    onnx.save(model, str(path))


def _no_input(model) -> None:
    from onnx import numpy_helper

    del model.graph.input[:]
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, SIDE, SIDE, 3), np.uint8), "image"))


def _two_inputs(model) -> None:
    from onnx import TensorProto, helper

    model.graph.input.insert(0, helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1, 2]))


def _string_input(model) -> None:
    from onnx import TensorProto

    model.graph.input[0].type.tensor_type.elem_type = TensorProto.STRING
    model.graph.node[0].attribute[0].i = TensorProto.FLOAT  # Cast from string: a valid graph


def _other_size(model) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = SIDE * 2


def _no_probabilities(model) -> None:
    del model.graph.output[0]


def _fewer_probabilities(model) -> None:
    from onnx import numpy_helper

    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.ones((3, 2), np.float32), "w"))
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2


@pytest.mark.parametrize(
    "edit,message",
    [
        (_no_input, "takes 0 inputs"),
        (_two_inputs, "takes 2 inputs"),
        (_string_input, r"tensor\(string\)"),
        (_other_size, r"not uint8 or float \[batch, 8, 8, 3\]"),
        (_no_probabilities, "no 'probabilities' output"),
        (_fewer_probabilities, r"not float \[batch, 3\] \(one per label\)"),
    ],
    ids=["no-input", "two-inputs", "string-input", "other-size", "no-probabilities", "fewer-probabilities"],
)
def test_an_onnx_file_that_does_not_take_or_give_what_the_runner_uses_is_refused_when_loaded(tmp_path, edit, message):
    # onnxruntime loaded each of these, and predict or validate then failed as an internal error (exit 70): an
    # IndexError on a file without inputs or with fewer probabilities than labels, onnxruntime's InvalidArgument on
    # a missing output, an input of another type or size, or a second input fed nothing
    from exporter.errors import ConversionError
    from exporter.runtime import OnnxRunner

    path = tmp_path / "tiny.onnx"
    _tiny_classifier(path, edit)
    with pytest.raises(ConversionError, match=message) as info:
        OnnxRunner(path, Preprocessing(input_size=(SIDE, SIDE)))
    assert "tiny.onnx" in str(info.value) and "not an image classifier as the exporter writes it" in str(info.value)


def test_the_tiny_onnx_classifier_runs(tmp_path):
    from exporter.runtime import OnnxRunner

    path = tmp_path / "tiny.onnx"
    _tiny_classifier(path)
    runner = OnnxRunner(path, Preprocessing(input_size=(SIDE, SIDE)))
    probs = runner(np.full((2, SIDE, SIDE, 3), 200, np.uint8))
    assert runner.labels == ["cat", "dog", "owl"] and probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


def test_a_sparse_initializer_is_refused_before_onnxruntime_expands_it(tmp_path):
    # onnxruntime turns every sparse initializer into a dense one when it loads the graph, up to 2 GB each: a
    # [22000, 22000] one of a single value (a few bytes of file) took predict to 2 GB resident, and several, more.
    # Refused as the other unbounded values are (onnx_bounds); a 4000 x 4000 one keeps the old behaviour cheap to see.
    import onnx
    from onnx import numpy_helper

    from exporter.errors import ConversionError
    from exporter.runtime import OnnxRunner

    def sparse(model) -> None:
        tensor = onnx.SparseTensorProto(dims=[4000, 4000])
        tensor.values.CopyFrom(numpy_helper.from_array(np.ones(1, np.float32), "dense_when_loaded"))
        tensor.indices.CopyFrom(numpy_helper.from_array(np.zeros(1, np.int64), "dense_when_loaded_indices"))
        model.graph.sparse_initializer.append(tensor)

    path = tmp_path / "tiny.onnx"
    _tiny_classifier(path, sparse)
    with pytest.raises(ConversionError, match=r"sparse initializer.*'dense_when_loaded', dimensions \[4000, 4000\]"):
        OnnxRunner(path, Preprocessing(input_size=(SIDE, SIDE)))


# ------------------------------------------------------------------------------------------------ Core ML image input
def _tiny_neuralnetwork(path, side: int) -> None:
    """A NeuralNetwork classifier of an RGB image input of ``side`` pixels (global average, a 3 x 3 dense layer,
    softmax) over three labels: it runs at any input size, as an edited file would."""
    from coremltools.models import datatypes
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.proto import FeatureTypes_pb2

    builder = NeuralNetworkBuilder(
        [("image", datatypes.Array(3, side, side))],
        [("probabilities", datatypes.Dictionary(datatypes.String))],
        mode="classifier",
        disable_rank5_shape_mapping=True,
    )
    pool = {"layer_type": "AVERAGE", "padding_type": "VALID", "is_global": True}
    builder.add_pooling("pool", 1, 1, 1, 1, input_name="image", output_name="pooled", **pool)
    builder.add_flatten("flat", mode=0, input_name="pooled", output_name="flat")
    weights = np.arange(9, dtype=np.float32).reshape(3, 3) / 1000
    builder.add_inner_product("fc", weights, None, 3, 3, has_bias=False, input_name="flat", output_name="logits")
    builder.add_softmax("softmax", input_name="logits", output_name="probs")
    builder.set_class_labels(["cat", "dog", "owl"], predicted_feature_name="label", prediction_blob="probs")
    spec = builder.spec
    image = spec.description.input[0].type.imageType
    image.width = image.height = side
    image.colorSpace = FeatureTypes_pb2.ImageFeatureType.RGB
    spec.specificationVersion = max(spec.specificationVersion, 4)
    path.write_bytes(spec.SerializeToString())


def test_a_core_ml_file_whose_image_input_is_not_its_contracts_is_refused_before_it_runs(tmp_path, monkeypatch):
    # predict on a lone .mlmodel whose image input was edited to 4000 x 4000 (its embedded contract still 32 x 32)
    # decoded the file and ran its trial pass at 4000 x 4000 (9.5 GB resident, 85 s) before finding that the
    # contract's pixels did not fit it (exit 2); the file is now refused against the contract first (exit 5)
    from exporter.errors import ConversionError
    from exporter.runtime import ExecutorRunner
    from exporter.runtime.executor import CoreMLExecutor

    path = tmp_path / "edited.mlmodel"
    _tiny_neuralnetwork(path, 64)
    ran = []
    monkeypatch.setattr(CoreMLExecutor, "_trial_pass", lambda self, where: ran.append(where))
    with pytest.raises(ConversionError, match="its image input is 64x64 pixels with 3 channel.*contract's is 8x8 with 3") as info:
        ExecutorRunner(path, Preprocessing(input_size=(SIDE, SIDE)))
    assert "edited.mlmodel" in str(info.value) and info.value.exit_code == 5
    assert not ran
    monkeypatch.undo()
    _tiny_neuralnetwork(path, SIDE)
    runner = ExecutorRunner(path, Preprocessing(input_size=(SIDE, SIDE)))
    assert runner.executor.labels == ["cat", "dog", "owl"]
    assert runner(np.full((2, SIDE, SIDE, 3), 100, np.uint8)).shape == (2, 3)


@pytest.mark.parametrize(
    "manifest",
    [
        {"rootModelIdentifier": 5, "itemInfoEntries": []},
        {"rootModelIdentifier": "x", "itemInfoEntries": ["x"]},
        {"rootModelIdentifier": "x", "itemInfoEntries": {"x": 3}},
        {"rootModelIdentifier": ["x"], "itemInfoEntries": {}},
        [1, 2],
    ],
    ids=["list-entries", "list-entries-string-id", "entry-not-an-object", "id-not-a-string", "not-an-object"],
)
def test_a_package_manifest_of_the_wrong_shape_is_one_line_not_an_internal_error(tmp_path, manifest):
    # itemInfoEntries as a list was indexed by the root identifier: IndexError, an internal error (exit 70) in
    # predict, which reads a lone package's embedded contract through load_spec outside the executor's fault boundary
    import json

    from exporter.errors import ConversionError
    from exporter.runtime.executor import load_spec

    package = tmp_path / "m.mlpackage"
    package.mkdir()
    (package / "Manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConversionError, match="Manifest.json does not name the root model") as info:
        load_spec(package)
    assert "m.mlpackage" in str(info.value)


# ------------------------------------------------------------------------------------------------ hashing
def test_hashing_a_file_replaced_by_a_fifo_is_refused_without_hanging(tmp_path):
    # sha256_of opened files with a plain open: an artifact swapped for a FIFO between artifact_file's stat and its
    # hash, or an image of the folder swapped after the listing when validate leaves out the calibration images by
    # their SHA-256 (and convert records them), waited for a writer forever
    import os

    from test_hostile import _in_thread

    from exporter.errors import DestinationError, ImageError
    from exporter.packaging import sha256_of

    fifo = tmp_path / "swapped.png"
    os.mkfifo(fifo)
    for kwargs, error in (({}, DestinationError), ({"error": ImageError, "what": "image file"}, ImageError)):
        result = _in_thread(lambda kwargs=kwargs: sha256_of(fifo, **kwargs))
        assert type(result.get("error")) is error, result
        assert "swapped.png" in str(result["error"]) and "not a regular file" in str(result["error"])
    bundle = tmp_path / "m.mlpackage"
    (bundle / "Data").mkdir(parents=True)
    (bundle / "Data" / "weight.bin").write_bytes(b"w")
    digest = sha256_of(bundle)
    assert sha256_of(bundle, error=ImageError) == digest and len(digest) == 64


# ------------------------------------------------------------------------------------------------ labels
def test_a_labels_file_of_millions_of_labels_is_refused_before_each_is_checked(tmp_path):
    # a labels file under the 64 MB text limit held 5 million short labels and took 90 s to check, label by label
    # and character by character, before anything else ran (21 million fit in 64 MB); now over MAX_LABELS is refused
    # at once, and printable ASCII labels skip the per-character rules (a million of them: 18 s before, 3 s after)
    import time

    from exporter.errors import LabelsError
    from exporter.labels import MAX_LABELS, read_labels

    path = tmp_path / "labels.txt"
    path.write_text("".join(f"l{i}\n" for i in range(MAX_LABELS + 1)))
    start = time.monotonic()
    with pytest.raises(LabelsError, match=f"holds {MAX_LABELS + 1:,} labels, over the limit of {MAX_LABELS:,}") as info:
        read_labels(path)
    assert time.monotonic() - start < 10 and info.value.exit_code == 2 and "labels.txt" in str(info.value)


def test_the_printable_ascii_shortcut_keeps_every_label_rule(tmp_path):
    from exporter.errors import LabelsError
    from exporter.labels import check_labels

    assert check_labels(["a cat", "dog!", "~owl"]) == ["a cat", "dog!", "~owl"]
    for labels, message in (
        (["cat", "cat"], "appears twice"),
        (["cat", " dog"], "leading or trailing spaces"),
        (["cat", ""], "is empty"),
        (["cat", "\uff43\uff41\uff54"], "as displayed"),  # full-width "cat" against a plain one
        (["caf\u00e9", "cafe\u0301"], "once Unicode-normalized"),
    ):
        with pytest.raises(LabelsError, match=message):
            check_labels(labels)


def test_a_file_whose_values_alive_at_once_exceed_the_budget_is_refused_when_loaded(small_export, monkeypatch):
    # every value a file declares was bounded on its own, but not the values alive together: a file whose input and
    # contract both declared 4000 x 4000 pixels ran its first pass with 9.5 GB resident. The executor now counts the
    # computed values a pass holds (live.Meter) and stops at the budget; here the budget is lowered under the
    # sample's 32-px files' own peak
    from exporter.errors import ConversionError
    from exporter.runtime.executor import CoreMLExecutor, live

    out, _ = small_export
    files = sorted(p for p in out.iterdir() if p.suffix in (".mlpackage", ".mlmodel"))
    assert len(files) == 2
    peaks = {p.suffix: CoreMLExecutor(p)._engine.peak_bytes for p in files}
    assert all(0 < peak < 1 << 20 for peak in peaks.values()), peaks
    budget = min(peaks.values()) // 2
    monkeypatch.setattr(live, "LIVE_ACTIVATION_BUDGET_BYTES", budget)
    for path in files:
        with pytest.raises(ConversionError, match=f"holds more than {budget:,} bytes of computed values at once") as info:
            CoreMLExecutor(path)
        assert path.name in str(info.value) and info.value.exit_code == 5


def test_the_neuralnetwork_probe_releases_values_no_later_layer_reads(small_export):
    # the first pass of a NeuralNetwork file (which records every layer's shape) kept every value it computed until
    # the end: its memory was the sum of all the network's activations, not what is alive at once
    import tracemalloc

    from exporter.runtime.executor import CoreMLExecutor

    out, _ = small_export
    engine = CoreMLExecutor(next(p for p in out.iterdir() if p.suffix == ".mlmodel"))._engine
    x = np.zeros((16, 3, SIDE_32, SIDE_32), np.float32)
    sizes: list[int] = []
    engine.run(x, observe=lambda name, value: sizes.append(value.nbytes))
    tracemalloc.start()
    try:
        engine._forward(x, shapes={})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < sum(sizes) / 2, (peak, sum(sizes))


SIDE_32 = 32  # the mobilenet_v1_digits sample's input side (small_export)


def _onnx_with_external_data(small_export, folder):
    """The sample's ONNX file with every initializer over 1 kB moved to ``weights.bin`` beside it (offsets and
    lengths recorded, as onnx.save_model writes them), and the contract it takes."""
    import json

    import onnx

    out, _ = small_export
    folder.mkdir()
    model = onnx.load(str(next(out.glob("*.onnx"))))
    path = folder / "external.onnx"
    moved = onnx.ModelProto.FromString(model.SerializeToString())  # save_model moves the data out of the proto it is given
    onnx.save_model(moved, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024)
    assert (folder / "weights.bin").stat().st_size > 10_000
    pre = Preprocessing.from_dict(json.loads((out / "manifest.json").read_text())["preprocessing"])
    return path, pre, model


def test_onnx_external_data_is_read_into_the_checked_graph_not_reopened_by_onnxruntime(tmp_path, small_export, monkeypatch):
    # onnxruntime was given the path of a file with external data and reopened that data itself after our checks: a
    # weights file swapped for a FIFO (or another file) in between was read unchecked or hung the run. The runner now
    # reads the external data once, from the regular files it checked, into the graph it hands over as bytes
    import onnxruntime as ort

    from exporter.runtime import OnnxRunner

    path, pre, model = _onnx_with_external_data(small_export, tmp_path / "m")
    given = []
    session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda what, *a, **k: given.append(what) or session(what, *a, **k))
    pixels = np.random.default_rng(0).integers(0, 256, (3, *pre.input_size, pre.channels), np.uint8)
    got = OnnxRunner(path, pre)(pixels)
    assert [type(g) for g in given] == [bytes]
    monkeypatch.undo()
    path.unlink()
    (tmp_path / "m" / "weights.bin").unlink()
    whole = tmp_path / "whole.onnx"
    whole.write_bytes(model.SerializeToString())
    np.testing.assert_allclose(got, OnnxRunner(whole, pre)(pixels), atol=1e-6)


def test_onnx_external_data_outside_its_file_is_refused(tmp_path, small_export):
    import onnx

    from exporter.errors import ConversionError
    from exporter.runtime import OnnxRunner

    path, pre, _ = _onnx_with_external_data(small_export, tmp_path / "m")
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    for entry in tensor.external_data:
        if entry.key == "offset":
            entry.value = str((tmp_path / "m" / "weights.bin").stat().st_size)
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConversionError, match=r"reads bytes .* of weights.bin, which has") as info:
        OnnxRunner(path, pre)
    assert info.value.exit_code == 5 and "external.onnx" in str(info.value)
