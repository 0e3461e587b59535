"""A reference executor for saved Core ML classifiers, in numpy, so their predictions can be checked off macOS.

``CoreMLExecutor(path)`` reads only the saved file: an ``.mlpackage`` (``Manifest.json``, the ML Program protobuf
``Data/com.apple.CoreML/model.mlmodel`` and its weight file ``weights/weight.bin``) or an ``.mlmodel``
(NeuralNetwork protobuf). It decodes every constant itself, including compressed weights (int8/uint8 affine,
n-bit lookup tables, sparse masks, NeuralNetwork linear and lookup-table quantization, float16), applies the file's
own image preprocessing, runs every operation, and returns the classifier's probabilities in label order.

Precision. Core ML picks the arithmetic by device: float32 on the CPU for a float32 model, float16 on the GPU and the
Neural Engine. ``compute`` brackets the two:

* ``"fp32"``: every value is float32. float16 weights are widened exactly; ``cast`` to fp16 inside an fp16 program
  is a no-op. This is the exact arithmetic of the file's weights, up to float32 rounding.
* ``"fp16"``: float16 storage between ops, the coarser end. An ML Program's values are rounded as the file
  declares them: every op output it types fp16 is rounded to float16 before the next op reads it, and what it types
  fp32 (the float32 stem of a mixed-precision file, see exporter/convert/fp16.py) stays float32. A NeuralNetwork
  declares no precision per layer (Core ML runs it in float16 throughout on the GPU and the Neural Engine), so every
  weight and every layer output is rounded. The arithmetic inside one op stays float32.

Constant decompression is exact either way: a dequantized weight is rounded to the element type the file declares
for it (float16 for compressed ML Program weights), as Core ML materialises it.

Batching. Files are declared for one image. When every operation treats the leading axis as a batch (no reshape,
transpose, concat, reduction or slice touches it), images run together, a few at a time so that activations stay
in cache (an ML Program stage by stage: the later layers' small maps on bigger passes, see ``stages``); otherwise
one at a time. An operation, layer or data type the executor does not implement raises
``UnsupportedOperationError`` naming it, the file, and where the supported list is (README.md, generated from
``registry.MIL`` and ``registry.NN`` by ``oplist``).

Threads. ``predict`` holds numpy's BLAS to one thread while it runs (see ``blas``) and runs up to ``WORKERS``
forward passes at once in threads instead. One executor serves one ``predict`` call at a time.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError, ConversionError, ExecutorBugError, ExporterError, UnsupportedOperationError
from ...safety import (
    LIVE_ACTIVATION_BUDGET_BYTES,
    MAX_FILE_BYTES,
    MAX_TEXT_BYTES,
    check_elements,
    check_protobuf_fields,
    inside,
    load_json,
    read_regular,
)
from . import blas
from .image import image_input, to_tensor

if TYPE_CHECKING:
    from ...packaging import VerifiedReads
    from .mlprogram import Program
    from .neuralnetwork import Network

COMPUTE = ("fp32", "fp16")
# Forward passes run at once, in threads. numpy releases the GIL in matrix products and elementwise loops, so two
# passes overlap those while BLAS itself stays single-threaded (see blas); more threads would mostly wait for the
# GIL, which the interpreter holds between the array operations (the compiled depthwise and pooling kernels release it).
WORKERS = min(2, os.cpu_count() or 1)
# Images per forward pass at most: the matrix products gain nothing from more.
MAX_BATCH = 16
# Largest single activation of one forward pass. A layer whose input and output stay in the last-level cache (commonly
# 16-64 MB, shared by the passes in flight) runs several times faster than one streaming through memory: a 224-px
# MobileNetV2 takes 0.57 s for 16 images at once and 0.2 s for the same 16 four at a time on one thread; with two
# passes in flight, two images per pass was fastest (0.15 s). Larger activations also come as fresh pages from the
# allocator, which fault on first touch.
CHUNK_ACTIVATION_BYTES = 12 * 1024 * 1024


def _passes(images: int, chunk: int, parallel: bool) -> int:
    """Forward passes for ``images`` at most ``chunk`` per pass; the images are spread evenly over them. When the
    passes run in the worker threads their number is a multiple of ``WORKERS`` (as long as there are images for it),
    so that every worker gets the same share: 16 images in passes of at most 7 run as four passes of four, two per
    worker, not as 6 + 5 + 5, where one worker runs two passes (11 images) while the other waits after one."""
    count = -(-images // chunk)
    if parallel and WORKERS > 1 and count % WORKERS:
        count = min(images, -(-count // WORKERS) * WORKERS)
    return count


# Most layers (NeuralNetwork) or operations (ML Program) a file may hold. The largest exports measured hold 562 layers
# and 766 operations (DenseNet121 from torch, 2026-12-01 sweeps); loading and the trial pass take ~0.1-0.25 ms per
# layer, so the 330,000 identity layers that fit under the protobuf field limit took ~40 s and 2.5 GB to load. 50,000
# is fifty times any real classifier, as for ONNX graphs (runtime.MAX_ONNX_NODES).
MAX_OPERATIONS = 50_000


def _operation_count(spec, kind: str | None) -> int:
    if kind == "mlProgram":
        return sum(len(block.operations) for fn in spec.mlProgram.functions.values() for block in fn.block_specializations.values())
    return len(getattr(spec, kind).layers) if kind in ("neuralNetworkClassifier", "neuralNetwork", "neuralNetworkRegressor") else 0


def _spec_path(path: Path) -> Path:
    """The protobuf of an .mlpackage (as its Manifest.json names it) or of an .mlmodel file."""
    if not path.is_dir():
        return path
    manifest = path / "Manifest.json"
    if not manifest.exists():
        raise ConversionError("is a folder without Manifest.json, not an .mlpackage", path=path)
    data = load_json(
        read_regular(manifest, error=ConversionError, what="Manifest.json", max_bytes=MAX_TEXT_BYTES),
        path=manifest,
        error=ConversionError,
        what="Manifest.json",
    )
    # an object whose rootModelIdentifier names an entry of the itemInfoEntries object (a list there was indexed by
    # the identifier: an IndexError, an internal error in predict, which reads a lone package's metadata this way)
    entries = data.get("itemInfoEntries") if isinstance(data, dict) else None
    root = data.get("rootModelIdentifier") if isinstance(data, dict) else None
    entry = entries.get(root) if isinstance(entries, dict) and isinstance(root, str) else None
    if not isinstance(entry, dict) or "path" not in entry:
        raise ConversionError(
            "Manifest.json does not name the root model (an object whose rootModelIdentifier is a key of its "
            "itemInfoEntries object, that entry holding a path)",
            path=path,
        )
    rel = entry["path"]
    return inside(path / "Data", rel, error=ConversionError, where=manifest, what="root model").resolve()


def load_spec(path: Path, reads: VerifiedReads | None = None):
    """Parse a Core ML protobuf with the generated message classes (no Core ML framework involved). The protobuf is
    read through ``reads`` when given (the bytes parsed are the bytes it hashes)."""
    from coremltools.proto import Model_pb2
    from google.protobuf.message import DecodeError

    spec_file = _spec_path(path)
    read = reads.read if reads is not None else read_regular
    data = read(spec_file, error=ConversionError, what="Core ML model", max_bytes=MAX_FILE_BYTES)
    check_protobuf_fields(data, Model_pb2.Model.DESCRIPTOR, error=ConversionError, where=spec_file, what="Core ML model")
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(data)
    except (DecodeError, RecursionError) as exc:
        raise ConversionError("is not a Core ML model protobuf", path=spec_file) from exc
    return spec, spec_file.parent


# What a malformed file can make numpy or the protobuf classes raise while its program is loaded and tried (see
# CoreMLExecutor): the file, not the executor, is at fault then; the error names the file and keeps the cause.
FILE_FAULTS = (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError, ZeroDivisionError, RecursionError, MemoryError)
# What the same code raising later, on a file that loaded and ran its trial pass, means: a bug in the executor (the
# shapes, constants and bindings it runs on are those the trial pass already ran on). Running out of memory stays
# a resource error of the file's size (ConversionError).
RUN_BUGS = (ValueError, IndexError, KeyError, TypeError, AttributeError, OverflowError, ZeroDivisionError, RecursionError)


@contextlib.contextmanager
def _numpy_as_on_device():
    # Float overflow or an invalid operation inside the model (corrupted or extreme weights) gives inf/NaN, as it would
    # on a device: that is the model's output, which the parity gates report as non-finite, not an executor error.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        yield


def _run_in_worker(run, chunk: np.ndarray) -> np.ndarray:
    # numpy's error state belongs to the thread that set it: a worker thread sets its own, as the caller's does
    with _numpy_as_on_device():
        return run(chunk)


@contextlib.contextmanager
def _file_faults(where: str):
    """The boundary of loading a file (parse, decode, plan, trial pass): any fault is the file's."""
    try:
        with _numpy_as_on_device():
            yield
    except ExporterError:
        raise
    except FILE_FAULTS as exc:
        raise ConversionError(
            f"the executor cannot run this file, it is malformed ({type(exc).__name__}: {str(exc)[:200]})", path=where
        ) from exc


@contextlib.contextmanager
def _run_faults(where: str):
    """The boundary of running a file that passed loading and its trial pass: a fault is the executor's."""
    try:
        with _numpy_as_on_device():
            yield
    except ExporterError:
        raise
    except MemoryError as exc:
        raise ConversionError("the executor ran out of memory running this file", path=where) from exc
    except RUN_BUGS as exc:
        raise ExecutorBugError(
            f"internal error in the Core ML executor on a file that passed its checks ({type(exc).__name__}: {str(exc)[:200]}); "
            "this is a bug in the executor, not in the file: please report it with the --debug output",
            path=where,
        ) from exc


class CoreMLExecutor:
    """Run a saved Core ML image classifier in numpy.

    ``predict(pixels)`` takes uint8 (N, H, W, 3) RGB pixels (or (N, H, W, 1) grayscale) at the model's input size,
    as Core ML takes an image (a BGR file reorders them itself), and returns (N, len(labels)) float32
    probabilities in the order of ``labels``.

    ``sha256``: the artifact's hash in its export's manifest.json. Every file the executor parses is read once, into
    memory, and those bytes are held to it before anything runs (``packaging.VerifiedReads``), so a file replaced
    after the export folder was checked is refused (DestinationError), never run.

    ``expected_input``: (height, width, channels) of the preprocessing contract the caller will feed; a file whose
    image input differs is refused (ConversionError) before its weights are decoded or anything runs."""

    def __init__(
        self, path: str | Path, compute: str = "fp32", sha256: str | None = None, expected_input: tuple[int, int, int] | None = None
    ):
        if compute not in COMPUTE:
            raise ConfigError(f"compute must be one of {list(COMPUTE)}, got {compute!r}")
        from ...packaging import VerifiedReads

        self.path, self.compute = Path(path), compute
        where = str(self.path)
        reads = VerifiedReads(self.path, sha256)
        try:
            with _file_faults(where):
                self._load(where, compute, reads, expected_input)
        except ExporterError:
            if reads.digests:  # bytes that fail to load because they are not the export's are named as such
                reads.verify()
            raise

    def _load(self, where: str, compute: str, reads: VerifiedReads, expected_input: tuple[int, int, int] | None) -> None:
        spec, model_dir = load_spec(self.path, reads)
        self.image = image_input(spec.description, where)
        declared = (self.image.height, self.image.width, self.image.channels)
        if expected_input is not None and declared != tuple(expected_input):
            # before any weight is decoded or the trial pass runs: a file whose image input was edited to 4000 x 4000
            # pixels, run once at that size before predict found it did not fit, took 9.5 GB
            raise ConversionError(
                f"its image input is {declared[0]}x{declared[1]} pixels with {declared[2]} channel(s), its preprocessing "
                f"contract's is {expected_input[0]}x{expected_input[1]} with {expected_input[2]}",
                path=where,
            )
        kind = spec.WhichOneof("Type")
        if _operation_count(spec, kind) > MAX_OPERATIONS:
            raise ConversionError(
                f"it holds {_operation_count(spec, kind):,} layers or operations, over the limit of {MAX_OPERATIONS:,} (an exported "
                "classifier has a few hundred to a few thousand; loading takes time in proportion)",
                path=where,
            )
        fp16 = compute == "fp16"
        self._engine: Program | Network
        if kind == "mlProgram":
            from .mlprogram import Program

            self._engine = Program(spec, model_dir, where, fp16, reads)
        elif kind in ("neuralNetworkClassifier", "neuralNetwork", "neuralNetworkRegressor"):
            from .neuralnetwork import Network

            self._engine = Network(spec, self.image, where, fp16)
        else:
            raise UnsupportedOperationError(f"model type {kind!r} is not supported by the Core ML executor", path=where)
        reads.verify()  # every byte parsed (protobuf, weights) is the export's, before anything runs
        self.labels: list[str] = list(self._engine.labels)
        self.batchable: bool = self._engine.batchable
        fitting = CHUNK_ACTIVATION_BYTES // max(self._engine.largest_activation, 1)
        self.chunk = max(1, min(MAX_BATCH, fitting)) if self.batchable else 1  # images per forward pass
        self._trial_pass(where)
        # a pass of ``chunk`` images holds about chunk times the trial pass's peak: kept within the budget (live.Meter)
        self.chunk = max(1, min(self.chunk, LIVE_ACTIVATION_BUDGET_BYTES // max(self._engine.peak_bytes, 1)))

    def _trial_pass(self, where: str) -> None:
        """Run the program once on a blank image of its input size, inside the loading boundary. Every shape in
        these files is static, so this meets each fault a file's shapes, constants and bindings can cause; what
        fails in ``predict`` afterwards is the executor's fault (ExecutorBugError), not hidden as a malformed file."""
        shape = (1, self.image.channels, self.image.height, self.image.width)
        check_elements(shape, error=ConversionError, where=where, what="image input")
        probs = np.asarray(self._engine.run(np.zeros(shape, np.float32)))
        if probs.size != len(self.labels):
            raise ConversionError(f"the model produces {probs.size} probabilities for {len(self.labels)} labels", path=where)

    @property
    def constants(self) -> dict[str, np.ndarray]:
        """An ML Program's constants by name as the executor decoded them (compressed weights decompressed, in the
        compute precision); empty for NeuralNetwork files, whose weights live inside their layers."""
        env = getattr(self._engine, "env", {})
        return {name: value for name, value in env.items() if isinstance(value, np.ndarray)}

    def predict(self, pixels: np.ndarray, observe=None) -> np.ndarray:
        """Probabilities for uint8 pixels (see the class). ``observe(name, value)``, if given, is called with every
        op (layer) output of every forward pass, named as in the file; ``value`` is only valid during the call (a
        later op may reuse its memory), so take what you need from it there (activation ranges, say)."""
        with _run_faults(str(self.path)):
            return self._predict(pixels, observe)

    def _predict(self, pixels: np.ndarray, observe=None) -> np.ndarray:
        from .stages import even_bounds

        x = to_tensor(pixels, self.image, str(self.path))
        # A batchable ML Program runs stage by stage (``stages``: passes sized by each stage's own largest activation),
        # its images split evenly over the worker threads; otherwise passes of ``self.chunk`` images.
        staged = observe is None and bool(getattr(self._engine, "stages", None)) and x.shape[0] > 0
        count = min(WORKERS, x.shape[0]) if staged else _passes(x.shape[0], self.chunk, parallel=observe is None)
        bounds = even_bounds(x.shape[0], count)
        chunks = [x[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        run = self._engine.run_staged if staged else partial(self._engine.run, observe=observe)  # type: ignore[union-attr]
        with blas.single_threaded():
            if observe is not None or len(chunks) < 2 or WORKERS < 2:  # an observer sees one pass at a time
                parts = [run(chunk) for chunk in chunks]
            else:
                with ThreadPoolExecutor(min(WORKERS, len(chunks))) as pool:
                    parts = list(pool.map(partial(_run_in_worker, run), chunks))
        probs = np.concatenate(parts, axis=0) if parts else np.zeros((0, len(self.labels)), np.float32)
        if probs.shape[1] != len(self.labels):
            raise ConversionError(f"the model produced {probs.shape[1]} probabilities for {len(self.labels)} labels", path=self.path)
        return probs

    __call__ = predict
