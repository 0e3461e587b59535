"""Runners: one per format, each takes uint8 NHWC pixels in the contract's channel order and returns probabilities."""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path

import numpy as np

from ..convert.onnx import LABELS_CONSTANT, PROBS_OUTPUT
from ..errors import ConfigError, ConversionError, translating
from ..preprocessing import Preprocessing
from ..safety import quote


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


def engine_text(engine: dict | None) -> str:
    """ "onnxruntime 1.22.0" / "Linux Core ML executor (exporter 0.1.0)" / "not run"."""
    if not engine:
        return "not run"
    version = engine.get("version", "")
    return f"{engine['name']} ({version})" if version.startswith(("exporter", "macOS")) else f"{engine['name']} {version}"


class KerasRunner:
    """The reference: the Keras model fed the contract's numpy preprocessing."""

    def __init__(self, model, pre: Preprocessing):
        from ..errors import ModelLoadError
        from ..keras_memory import activation_bytes

        self.model, self.pre = model, pre
        self.engine = {"name": "Keras", "version": _version("keras"), "backend": _keras_backend()}
        # a call holds every layer's output until it returns: batches are cut to stay within the live budget
        self.per_image = activation_bytes(model, f"Keras model {model.name!r}", error=ModelLoadError)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from ..keras_memory import call_in_chunks

        probs = call_in_chunks(self.model, self.pre.normalize(pixels), self.per_image, training=False)
        return np.asarray(probs, dtype=np.float32)


class OnnxRunner:
    """onnxruntime on the exported file, fed raw pixels (the graph does its own preprocessing) or, for a float-input
    export, the contract's preprocessing."""

    def __init__(self, path: Path, pre: Preprocessing, labels: list[str] | None = None, sha256: str | None = None):
        import onnxruntime as ort

        from .onnx_bounds import images_per_run, value_bounds

        # read first, always: it refuses external data outside the file's folder or in anything but a regular file
        # before onnxruntime opens any of it, gives the labels the file maps its outputs to, and bounds every value
        # the graph makes (onnx_bounds) before onnxruntime allocates any of them
        model = load_onnx(path, sha256)
        self.labels = onnx_labels(model, path)
        one = value_bounds(model, path)
        self.chunk = images_per_run(model, path, one.largest, one.alive)  # images per session.run
        # onnxruntime gets the graph that was checked, as bytes, never the path (the file could be replaced in
        # between): external data is read here, once, from the regular files load_onnx checked, into the graph
        _inline_external_data(model, path)
        checked = model.SerializeToString()
        del model
        self.order = None if labels is None else _label_order(self.labels, labels)
        options = ort.SessionOptions()
        # fatal only: onnxruntime's own error log line (ANSI-coloured, multi-line) came before our one-line error on a
        # file it could not load; its exception is translated below
        options.log_severity_level = 4
        with translating(ConversionError, "onnxruntime cannot load the file", path=path):
            self.session = ort.InferenceSession(checked, options, providers=["CPUExecutionProvider"])
        del checked
        inp = _check_interface(self.session, pre, len(self.labels), path)
        self.name, self.raw = inp.name, inp.type == "tensor(uint8)"
        self.pre = pre
        self.engine = {"name": "onnxruntime", "version": ort.__version__, "provider": self.session.get_providers()[0]}

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        feed = pixels
        if self.raw and self.pre.channel_order == "BGR":
            feed = pixels[..., ::-1]  # the graph takes RGB and reorders itself
        elif not self.raw:
            feed = self.pre.normalize(pixels)
        feed = np.ascontiguousarray(feed)
        parts = [self.session.run([PROBS_OUTPUT], {self.name: feed[i : i + self.chunk]})[0] for i in range(0, len(feed), self.chunk)]
        probs = np.concatenate([np.asarray(p, np.float32) for p in parts]) if parts else np.zeros((0, len(self.labels)), np.float32)
        return probs if self.order is None else _reorder(probs, self.order)


# The interface of the graph the exporter writes (convert/onnx.py): one image input, NHWC at the contract's size,
# raw 8-bit pixels or (a float-input export) normalised float32; a probabilities output of one column per label.
ONNX_INPUT_TYPES = ("tensor(uint8)", "tensor(float)")


def _check_interface(session, pre: Preprocessing, classes: int, path: Path):
    """The session's image input, after checking that the file takes and gives what the runner feeds and reads:
    onnxruntime refuses anything else only when it runs, as an InvalidArgument or an IndexError of ours."""

    def refuse(problem: str) -> ConversionError:
        return ConversionError(f"is not an image classifier as the exporter writes it: {problem}", path=path)

    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise refuse(f"it takes {len(inputs)} inputs, not one image")
    inp = inputs[0]
    expected = [*pre.input_size, pre.channels]
    shape = list(inp.shape)
    if inp.type not in ONNX_INPUT_TYPES or len(shape) != 4 or shape[1:] != expected:
        raise refuse(f"its input {quote(inp.name)} is {inp.type} {shape}, not uint8 or float [batch, {', '.join(map(str, expected))}]")
    if isinstance(shape[0], int) and shape[0] != 1:
        raise refuse(f"its input {quote(inp.name)} takes batches of exactly {shape[0]} images")
    outputs = {out.name: out for out in session.get_outputs()}
    probs = outputs.get(PROBS_OUTPUT)
    if probs is None:
        raise refuse(f"it has no {PROBS_OUTPUT!r} output")
    if probs.type != "tensor(float)" or len(probs.shape) != 2 or probs.shape[1] != classes:
        raise refuse(f"its {PROBS_OUTPUT!r} output is {probs.type} {list(probs.shape)}, not float [batch, {classes}] (one per label)")
    return inp


# Most nodes an ONNX graph may have. The largest exports measured hold 442-957 (EfficientNetV2B0, DenseNet121 and
# ConvNeXt from torch, 2026-12-01/02 sweeps); the memory bounds (onnx_bounds) and onnxruntime's session take ~0.3 ms
# per node, so the 450,000 Identity nodes that fit under the protobuf field limit in a 16 MB file took 3 minutes and
# 2.2 GB before predict printed anything. 50,000 is fifty times any real classifier and ~15 s of checks.
MAX_ONNX_NODES = 50_000


def load_onnx(path: Path, sha256: str | None = None):
    """The ONNX file's ModelProto (its external data left unread), refused when it is not a bounded regular file,
    not an ONNX model, or its external data would be read from outside its folder or from anything but a regular
    file. ``sha256`` (the manifest's): the bytes parsed must hash to it (``packaging.VerifiedReads``)."""
    import onnx
    from google.protobuf.message import DecodeError

    from ..packaging import VerifiedReads
    from ..safety import MAX_FILE_BYTES, check_protobuf_fields, check_regular, inside

    reads = VerifiedReads(path, sha256)
    raw = reads.read(path, error=ConversionError, what="ONNX file", max_bytes=MAX_FILE_BYTES)
    reads.verify()
    check_protobuf_fields(raw, onnx.ModelProto.DESCRIPTOR, error=ConversionError, where=path, what="ONNX file")
    try:
        model = onnx.load_from_string(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ConversionError(f"is not an ONNX model ({type(exc).__name__})", path=path) from exc
    if len(model.graph.node) > MAX_ONNX_NODES:
        raise ConversionError(
            f"its graph has {len(model.graph.node):,} nodes, over the limit of {MAX_ONNX_NODES:,} (an exported classifier "
            "has a few hundred to a few thousand; checking and loading take time in proportion)",
            path=path,
        )
    for tensor in _all_tensors(model.graph):
        for entry in tensor.external_data:
            if entry.key == "location":  # external weights must stay inside the export folder, in regular files
                target = inside(path.parent, entry.value, error=ConversionError, where=path, what="external data")
                check_regular(target, error=ConversionError, what="file of external data")
    return model


def _inline_external_data(model, path: Path) -> None:
    """Every tensor of ``model`` stored as external data read into the tensor (``raw_data``), from the regular files
    inside ``path``'s folder that ``load_onnx`` checked, each read once and bounded; the ``offset`` and ``length``
    entries must lie within the file, and all of it within the memory budget. onnxruntime then never opens another
    file: before, it reopened the external data by path after our check, so a file swapped for a FIFO in between
    hung the run."""
    from ..safety import MEMORY_BUDGET_BYTES, inside, read_regular

    files: dict[Path, bytes] = {}
    total = 0
    for tensor in _all_tensors(model.graph):
        if not tensor.external_data:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if "location" not in entries:
            raise ConversionError(f"tensor {tensor.name!r} has external data without a location", path=path)
        target = inside(path.parent, entries["location"], error=ConversionError, where=path, what="external data")
        if target not in files:
            files[target] = read_regular(target, error=ConversionError, what="file of external data")
        data = files[target]
        try:
            offset = int(entries.get("offset", 0))
            length = int(entries["length"]) if "length" in entries else len(data) - offset
        except ValueError as exc:
            raise ConversionError(f"tensor {tensor.name!r} has an external data offset or length that is not a number", path=path) from exc
        if offset < 0 or length < 0 or offset + length > len(data):
            raise ConversionError(
                f"tensor {tensor.name!r} reads bytes {offset:,}..{offset + length:,} of {target.name}, which has {len(data):,}", path=path
            )
        total += length
        if total > MEMORY_BUDGET_BYTES:
            raise ConversionError(f"its external data is over the memory budget of {MEMORY_BUDGET_BYTES:,} bytes", path=path)
        tensor.raw_data = data[offset : offset + length]
        del tensor.external_data[:]
        tensor.data_location = tensor.DEFAULT


def onnx_labels(model, path: Path) -> list[str]:
    """The label strings the ONNX graph itself maps class indices to (its ``exporter_labels`` constant): a 1-D string
    tensor held in the file, one UTF-8 string per element. Anything else is refused (ConversionError) rather than
    decoded: onnx's ``to_array`` reads a non-string tensor's external data relative to the working directory, not to
    the file, and raises ValueError on a count that disagrees with the dimensions or on bytes that are not UTF-8."""
    from onnx import TensorProto

    for init in model.graph.initializer:
        if init.name != LABELS_CONSTANT:
            continue
        if init.data_type != TensorProto.STRING or init.external_data or len(init.dims) != 1:
            raise ConversionError(f"its embedded labels ({LABELS_CONSTANT}) must be a 1-D string tensor stored in the file", path=path)
        if init.dims[0] != len(init.string_data):
            raise ConversionError(
                f"its embedded labels ({LABELS_CONSTANT}) declare {init.dims[0]} strings but hold {len(init.string_data)}",
                path=path,
            )
        try:
            return [value.decode("utf-8") for value in init.string_data]
        except UnicodeDecodeError as exc:
            raise ConversionError(f"its embedded labels ({LABELS_CONSTANT}) are not valid UTF-8", path=path) from exc
    raise ConfigError(f"{path}: ONNX file has no embedded labels (exporter_labels); was it written by exporter?")


def _all_tensors(graph):
    """Every initializer and constant-attribute tensor of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _label_order(embedded: list[str], expected: list[str]) -> list[int | None]:
    """For each expected label, the column of the artifact's output that the artifact itself calls by that name
    (None when the artifact has no such label). Probabilities are compared by name, so a file whose labels were
    shuffled disagrees with Keras instead of passing by position."""
    where = {name: i for i, name in enumerate(embedded)}
    return [where.get(name) for name in expected]


def _reorder(probs: np.ndarray, order: list[int | None]) -> np.ndarray:
    out = np.zeros((probs.shape[0], len(order)), np.float32)
    for j, i in enumerate(order):
        if i is not None:
            out[:, j] = probs[:, i]
    return out


class ExecutorRunner:
    """The numpy Core ML executor (``runtime.executor``) on the saved file, on any platform. Pixels come in the
    contract's channel order; the file's image input takes RGB and reorders itself, so BGR pixels are reversed
    first. Probabilities are matched to ``labels`` by the names the file itself embeds."""

    def __init__(self, path: Path, pre: Preprocessing, labels: list[str] | None = None, compute: str = "fp32", sha256: str | None = None):
        from .. import __version__
        from .executor import CoreMLExecutor

        self.executor = CoreMLExecutor(path, compute=compute, sha256=sha256, expected_input=(*pre.input_size, pre.channels))
        self.pre = pre
        self.engine = {
            "name": "Linux Core ML executor",
            "version": f"exporter {__version__}",
            "note": "the toolkit's own numpy executor (exporter/runtime/executor), not Apple's Core ML",
            "compute": compute,
        }
        self.order = None if labels is None else _label_order(self.executor.labels, labels)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        rgb = pixels[..., ::-1] if self.pre.channel_order == "BGR" else pixels
        probs = self.executor.predict(np.ascontiguousarray(rgb))
        return probs if self.order is None else _reorder(probs, self.order)


class CoreMLRunner:
    """Real Core ML through coremltools: macOS only. Core ML loads from a path, so an export's artifact (``sha256``
    given) is loaded from a private copy of the bytes checked against it (``private_copy``), not from the export
    folder, where the file could be replaced after the check."""

    def __init__(self, path: Path, pre: Preprocessing, labels: list[str], sha256: str | None = None):
        if platform.system() != "Darwin":
            raise ConfigError("Core ML predictions need macOS (coremltools: 'only supported on macOS')")
        import coremltools as ct

        self._copy = None if sha256 is None else private_copy(path, sha256)  # removed with the runner
        with translating(ConversionError, "Core ML cannot load the file", path=path):
            self.model = ct.models.MLModel(str(path if self._copy is None else Path(self._copy.name) / path.name))
        self.pre, self.labels = pre, labels
        self.engine = {"name": "Core ML", "version": f"macOS {platform.mac_ver()[0]}", "via": f"coremltools {ct.__version__}"}
        spec = self.model.get_spec().description
        self.input = spec.input[0].name
        self.probs = spec.predictedProbabilitiesName

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        from PIL import Image

        rows = []
        for x in pixels:
            rgb = x[..., ::-1] if self.pre.channel_order == "BGR" else x
            out = self.model.predict({self.input: Image.fromarray(np.ascontiguousarray(rgb).squeeze())})
            rows.append([out[self.probs][label] for label in self.labels])
        return np.asarray(rows, dtype=np.float32)


def coreml_runner(path: Path, pre: Preprocessing, labels: list[str], sha256: str | None = None):
    """The runner for a Core ML file: Core ML itself on macOS, the numpy executor elsewhere (Core ML predicts on
    macOS only)."""
    if platform.system() == "Darwin":
        return CoreMLRunner(path, pre, labels, sha256)
    return ExecutorRunner(path, pre, labels, sha256=sha256)


def private_copy(path: Path, sha256: str) -> tempfile.TemporaryDirectory:
    """A private temporary folder (mode 0700, removed with the returned object) holding a copy of the Core ML file or
    bundle ``path`` under its own name, made from bytes read once each (bounded, regular files only) and checked
    against ``sha256`` (the manifest's) before anything loads the copy: DestinationError when they differ."""
    from ..packaging import copy_verified

    tmp = tempfile.TemporaryDirectory(prefix="exporter-coreml-")  # mkdtemp: mode 0700
    try:
        copy_verified(path, Path(tmp.name) / path.name, sha256, error=ConversionError, what="Core ML file")
    except BaseException:
        tmp.cleanup()
        raise
    return tmp
