"""Safe loading of Keras classifiers and discovery of their input, output and in-model preprocessing.

Formats: Keras 3 ``.keras`` archives (or their members in a folder, ``model.save(folder, zipped=False)``), legacy
``.h5`` files and TensorFlow SavedModel directories. Before Keras sees a ``.keras`` or ``.h5`` file we read its
architecture JSON ourselves and refuse anything that would run code from the file (Lambda layers, custom classes from
outside Keras) unless the caller passes ``trust_code=True``; Keras' own ``safe_mode`` stays on as a second line. A
SavedModel is a TensorFlow program whose graph can do anything a program can (``tf.io.write_file``, reading files);
it is loaded only with ``trust_code=True`` (docs/THREAT_MODEL.md). Archive member sizes, HDF5 dataset sizes and the
architecture JSON are bounded before anything is inflated.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelLoadError, NotAClassifierError, UnsafeModelError, first_line, translating
from .heads import Head
from .inference import InModelPreprocessing
from .keras_graph import called_on
from .packaging import check_bundle, sha256_of
from .preprocessing import MAX_SIDE, MIN_SIDE
from .safety import (
    MAX_COMPRESSION_RATIO,
    MAX_TEXT_BYTES,
    MEMORY_BUDGET_BYTES,
    RATIO_CHECK_BYTES,
    check_elements,
    check_regular,
    check_zip,
    load_json,
    read_regular,
)
from .tfquiet import import_keras

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
ANY_SIZE_HINT = (
    "a model built for any image size (Input((None, None, 3))) is exported at the size of a --preprocessing JSON file's input_size"
)


@dataclass
class LoadedModel:
    model: Any  # keras.Model: the Keras reference, i.e. the file's model followed by the head (see heads.py)
    path: Path
    format: str  # "keras", "keras_dir" (saved with zipped=False), "h5", "saved_model"
    sha256: str
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int  # classes of the probability vector (2 for a single sigmoid unit)
    keras_model: Any  # the model as the file holds it, before the head
    head: Head
    in_model_preprocessing: list[str] = field(default_factory=list)  # paths of Rescaling/Normalization layers
    in_model: InModelPreprocessing = field(default_factory=InModelPreprocessing)  # the composed affine, for reports
    output: str | None = None  # the output chosen by name (a model with several outputs), as given

    def for_export(self):
        """(model the converters see, removed layers): the file's model without its inference no-ops, with the
        head appended. A pure transform; ``self.model`` stays the reference."""
        from .heads import with_head
        from .inference import strip_inference_noops

        stripped, removed = strip_inference_noops(self.keras_model)
        return with_head(stripped, self.head), removed


# ------------------------------------------------------------------------------------------------ code scanning
# Keras' own layers that carry code or reach outside the file: Lambda layers hold Python bytecode; TFSMLayer loads a
# TensorFlow SavedModel (a program) from a path; TorchModuleWrapper unpickles a torch module; JaxLayer / FlaxLayer
# hold serialized callables. Keras' safe mode refuses them too; this scan refuses them first, by name.
CODE_LAYERS = {
    "Lambda": "Python code",
    "TFOpLambda": "Python code",
    "SlicingOpLambda": "Python code",
    "TFSMLayer": "a TensorFlow SavedModel, a program, loaded from a path",
    "TorchModuleWrapper": "a pickled PyTorch module",
    "JaxLayer": "a serialized JAX function",
    "FlaxLayer": "a serialized Flax module",
}
# Lookup layers read their vocabulary from a file when it is given as a path: a file outside the model file.
FILE_READING_KEYS = ("vocabulary", "idf_weights")


def _code_carriers(config: Any, where: str = "model") -> list[str]:
    """Every place in a Keras architecture config that would execute code, or read a file, on load."""
    found: list[str] = []
    if isinstance(config, dict):
        cls = config.get("class_name")
        inner = config.get("config")
        # a functional model's layer entry also holds the name beside its config, the only place it is when a custom
        # layer overriding __init__ without get_config was made without a name (Keras then saves only the arguments)
        name = next((n for n in (inner.get("name") if isinstance(inner, dict) else None, config.get("name")) if isinstance(n, str)), "?")
        if isinstance(inner, dict):
            found += [
                f"layer {name!r} reads its {key} from the file {inner[key][:80]!r}"
                for key in FILE_READING_KEYS
                if isinstance(inner.get(key), str)
            ]
        if cls in CODE_LAYERS:
            found.append(f"layer {name!r} is a {cls} layer ({CODE_LAYERS[cls]})")
        elif cls == "__lambda__" or config.get("function_type") == "lambda":
            found.append(f"{where} holds a serialized Python function")
        elif isinstance(cls, str) and "module" in config:
            module = config.get("module") or ""
            registered = config.get("registered_name") or ""
            if module and not (module == "keras" or module.startswith(("keras.", "builtins"))):
                found.append(f"layer {name!r} is a custom class {cls!r} from module {module!r}")
            elif registered and ">" in registered:
                found.append(f"layer {name!r} is a registered custom object {registered!r}")
        for key, value in config.items():
            found.extend(_code_carriers(value, f"{where}.{key}"))
    elif isinstance(config, list):
        for item in config:
            found.extend(_code_carriers(item, where))
    return found


def _read_architecture(path: Path, fmt: str) -> Any:
    if fmt == "keras":
        check_zip(path, error=ModelLoadError)  # sizes and ratios of every member, before anything is inflated
        try:
            with zipfile.ZipFile(path) as z:
                info = z.getinfo("config.json")
                if info.file_size > MAX_TEXT_BYTES:
                    raise ModelLoadError(f"config.json is {info.file_size:,} bytes, over the limit of {MAX_TEXT_BYTES:,}", path=path)
                raw = z.read(info)
                _check_keras_weights(z, path)
        except ModelLoadError:
            raise
        except KeyError as exc:
            raise ModelLoadError("not a Keras 3 model archive (config.json missing)", path=path) from exc
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"model file is corrupt or truncated ({type(exc).__name__}: {exc})", path=path) from exc
        return load_json(raw, path=path, error=ModelLoadError, what="model architecture (config.json)")
    if fmt == "keras_dir":
        raw = read_regular(path / KERAS_CONFIG_MEMBER, error=ModelLoadError, what=KERAS_CONFIG_MEMBER, max_bytes=MAX_TEXT_BYTES)
        _check_h5_file(path / KERAS_WEIGHTS_MEMBER, path, KERAS_WEIGHTS_MEMBER)
        return load_json(raw, path=path, error=ModelLoadError, what=f"model architecture ({KERAS_CONFIG_MEMBER})")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            _check_h5_sizes(f, path)
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ModelLoadError(
                    "legacy .h5 file has no model architecture (weights-only files cannot be exported; save the whole model)", path=path
                )
            raw = raw.encode() if isinstance(raw, str) else bytes(raw)
    except (ModelLoadError, ConfigError):
        raise
    except (OSError, EOFError, ValueError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"model file is corrupt or truncated ({type(exc).__name__}: {exc})", path=path) from exc
    if len(raw) > MAX_TEXT_BYTES:
        raise ModelLoadError(f"model architecture is {len(raw):,} bytes, over the limit of {MAX_TEXT_BYTES:,}", path=path)
    return load_json(raw, path=path, error=ModelLoadError, what="model architecture JSON")


# The HDF5 file of a .keras archive, where Keras 3 keeps the weights, and its architecture.
KERAS_WEIGHTS_MEMBER = "model.weights.h5"
KERAS_CONFIG_MEMBER = "config.json"


def _check_h5_file(file: Path, path: Path, member: str) -> None:
    """``_check_h5_sizes`` on the weights file of an unzipped Keras model folder."""
    import h5py

    check_regular(file, error=ModelLoadError, what=member)
    try:
        with h5py.File(file, "r") as f:
            _check_h5_sizes(f, path, member)
    except (ModelLoadError, ConfigError):
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadError(f"{member} is not a readable HDF5 file ({type(exc).__name__}: {first_line(exc)})", path=path) from exc


def _check_h5_sizes(f, path: Path, member: str = "") -> None:
    """The datasets of an HDF5 file (a legacy .h5 model, or a .keras archive's ``member``), read from its metadata
    alone, before any data is read: inflated, they must fit the memory budget together; a dataset over a megabyte may
    not inflate more than ``MAX_COMPRESSION_RATIO`` times its stored size (gzip of zeros is a bomb: a few kB of
    chunks that read back as gigabytes); and no dataset may keep its data in other files (external storage, virtual
    datasets), which reading would open wherever they point."""
    import h5py

    total = 0
    prefix = f"{member}: " if member else ""

    def visit(_name, obj):
        nonlocal total
        if not isinstance(obj, h5py.Dataset):
            return
        what = f"{prefix}dataset {obj.name[:80]!r}"
        if obj.is_virtual or obj.external:
            raise ModelLoadError(f"{what} keeps its data in other files (external or virtual storage), refused", path=path)
        nbytes = check_elements(obj.shape or (), itemsize=obj.dtype.itemsize, error=ModelLoadError, where=path, what=what)
        nbytes *= obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        if nbytes > RATIO_CHECK_BYTES and nbytes > MAX_COMPRESSION_RATIO * max(stored, 1):
            raise ModelLoadError(
                f"{what} inflates from {stored:,} stored bytes to {nbytes:,} (over {MAX_COMPRESSION_RATIO}x: a decompression bomb)",
                path=path,
            )
        total += nbytes
        if total > MEMORY_BUDGET_BYTES:
            raise ModelLoadError(f"{prefix}datasets inflate to over {MEMORY_BUDGET_BYTES:,} bytes, the memory budget", path=path)

    f.visititems(visit)


def _check_keras_weights(z: zipfile.ZipFile, path: Path) -> None:
    """``_check_h5_sizes`` on the weights file inside a .keras archive, read from the archive (never extracted)."""
    if KERAS_WEIGHTS_MEMBER not in z.namelist():
        return  # Keras reports a missing weights file itself
    import h5py

    try:
        with z.open(KERAS_WEIGHTS_MEMBER) as member, h5py.File(member, "r") as f:
            _check_h5_sizes(f, path, KERAS_WEIGHTS_MEMBER)
    except (ModelLoadError, ConfigError):
        raise
    except (OSError, EOFError, ValueError, KeyError, TypeError, RuntimeError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(
            f"{KERAS_WEIGHTS_MEMBER} is not a readable HDF5 file ({type(exc).__name__}: {first_line(exc)})", path=path
        ) from exc


def _check_variable_sizes(config: Any, path: Path, fmt: str) -> None:
    """Refuse an architecture whose layers would create more variable memory than the budget, before Keras builds it
    for real: Keras allocates and initializes every variable from the layer sizes in the config (``Dense(units=...)``,
    ``Conv2D(filters=...)``) before it reads a single weight, so a 16 kB file declaring a 3e9-unit Dense took 36 GB,
    never checked against the weights the file holds. The model is built with Keras' lazy variables (shapes and
    dtypes only, no memory) and its variables are summed; a model that cannot even be built this way is left to the
    real load, which reports it, unless the variables it had created by then are already over the budget."""
    import math

    import numpy as np

    from .upstream import lazy_keras_variables

    keras = import_keras()
    if fmt in ("keras", "keras_dir"):
        config = {k: v for k, v in config.items() if k != "compile_config"} if isinstance(config, dict) else config
        build = lambda: keras.saving.deserialize_keras_object(config, safe_mode=True)  # noqa: E731
    else:
        from keras.src.legacy.saving import saving_utils

        build = lambda: saving_utils.model_from_config(config)  # noqa: E731
    with lazy_keras_variables() as created:
        try:
            with keras.StatelessScope(initialize_variables=False):
                build()
        except Exception:  # noqa: BLE001 - a broken architecture is the real load's to report
            pass
        total = 0
        for v in created():
            itemsize = np.dtype(v.dtype).itemsize
            total += itemsize * check_elements(v.shape, itemsize=itemsize, error=ModelLoadError, where=path, what=f"variable {v.path!r}")
            if total > MEMORY_BUDGET_BYTES:
                raise ModelLoadError(
                    f"the architecture's layers create over {MEMORY_BUDGET_BYTES:,} bytes of variables (the memory budget), "
                    f"{math.prod(v.shape):,} elements in {v.path!r} alone",
                    path=path,
                )


def _check_activation_sizes(model, path: Path) -> None:
    """Refuse a model one of whose layers outputs, for a single image, a tensor over the memory budget, or whose
    layer outputs together (Keras keeps them all until a call returns) are over the live budget, before anything runs
    it (the classifier probe, the converters, validation): an ``UpSampling2D(size=(2000, 2000))``, a
    ``Resizing(60000, 60000)`` or a ``keras.ops.tile`` has no weights, so the weight and variable bounds never see it,
    yet turns a 32 px image into gigabytes. Shapes are the symbolic outputs at the fixed input size
    (``keras_memory.activation_bytes``), nested models and Keras ops included."""
    from .keras_memory import activation_bytes

    activation_bytes(model, path, error=ModelLoadError)


def _detect_format(path: Path) -> str:
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return "saved_model"
        if (path / KERAS_CONFIG_MEMBER).exists() and (path / KERAS_WEIGHTS_MEMBER).exists():
            return "keras_dir"  # model.save(folder, zipped=False): a .keras archive's members, unzipped
        raise ModelLoadError(
            f"directory is neither a TensorFlow SavedModel (no saved_model.pb) nor an unzipped Keras model "
            f"({KERAS_CONFIG_MEMBER} and {KERAS_WEIGHTS_MEMBER}, what model.save(folder, zipped=False) writes)",
            path=path,
        )
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return "keras"
    if suffix in (".h5", ".hdf5"):
        return "h5"
    raise ModelLoadError(
        f"unsupported model file type {suffix!r}; expected one of {list(MODEL_SUFFIXES)} or a SavedModel directory", path=path
    )


# ------------------------------------------------------------------------------------------------ loading
def inspect_model_file(path: Path, *, trust_code: bool = False) -> str:
    """Everything about a model file that can be checked without Keras (exists, known type, not empty, architecture
    readable, no code unless trusted); returns its format. Cheap: no TensorFlow import."""
    if not path.exists():
        raise ModelLoadError("model file not found", path=path)
    fmt = _detect_format(path)
    if fmt == "saved_model":
        if not trust_code:
            raise UnsafeModelError(
                "refused: a TensorFlow SavedModel is a program (its graph can read and write files "
                "and its functions run when loaded or called)",
                path=path,
                hint="only if you trust its author, pass --trust-code (trust_code=True)",
            )
    elif fmt == "keras_dir":  # Keras reads its members by path: none may lead outside the folder or be a FIFO
        check_bundle(path, path, error=ModelLoadError, what="model folder")
    else:
        check_regular(path, error=ModelLoadError, what="model file")
    if path.is_file() and path.stat().st_size == 0:
        raise ModelLoadError("model file is empty (0 bytes)", path=path)
    if fmt in ("keras", "keras_dir", "h5"):
        try:
            carriers = _code_carriers(_read_architecture(path, fmt))
        except RecursionError as exc:
            raise ModelLoadError("model architecture is nested too deeply to check", path=path) from exc
        if carriers and not trust_code:
            raise UnsafeModelError(
                f"refused: loading would run code from the file: {carriers[0]}"
                + (f" (and {len(carriers) - 1} more)" if len(carriers) > 1 else ""),
                path=path,
                hint="only if you trust its author, pass --trust-code (trust_code=True)",
            )
    return fmt


def load_model(
    path: str | Path,
    *,
    trust_code: bool = False,
    add_softmax: bool = False,
    input_size: tuple[int, int] | None = None,
    expected_sha256: str | None = None,
    output: str | None = None,
) -> LoadedModel:
    """Load a Keras image classifier in inference mode without running code from the file.

    ``add_softmax``: the model ends in logits; the reference (``.model``) gets a softmax appended (for one output
    unit, a sigmoid and ``[1 - p, p]``). See heads.py.
    ``input_size``: (height, width) from the preprocessing contract, for a model built without a fixed height and
    width (``Input((None, None, 3))``); the model is then called on an input of that size (see ``with_input_size``).
    ``expected_sha256``: the file must have this hash (an export's manifest names the model it was made from); it is
    checked before Keras reads the file, since with ``trust_code`` building the model runs its Lambda layers.
    ``output``: for a model with several outputs (a classifier with an auxiliary head), the name of the one to export
    (see ``with_chosen_output``)."""
    path = Path(path)
    fmt = inspect_model_file(path, trust_code=trust_code)  # refuses what is not a regular file or folder, unread
    digest = sha256_of(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ModelLoadError("is not the model this export was made from (its SHA-256 differs from the manifest's)", path=path)
    keras = import_keras()
    if fmt in ("keras", "keras_dir", "h5") and not trust_code:
        _check_variable_sizes(_read_architecture(path, fmt), path, fmt)

    try:
        if fmt == "saved_model":
            model = _wrap_saved_model(path, input_size, output)
        else:
            model = keras.saving.load_model(path, compile=False, safe_mode=not trust_code)
            model = with_chosen_output(as_graph(model, path), output, path)
            model = with_input_size(without_unused_inputs(model), input_size, path)
        model = with_plain_output(model)
        from .heads import final_activation

        activation = final_activation(model)  # of the model's own last layer, before with_flat_output's Reshape
        model = with_flat_output(model)
    except (ModelLoadError, ConfigError):
        raise
    except Exception as exc:  # Keras raises many types for a bad file; each becomes one clear line
        if not trust_code and ("safe_mode" in str(exc) or "lambda" in str(exc).lower()):
            raise UnsafeModelError(
                f"refused by Keras safe mode: {first_line(exc)}", path=path, hint="only if you trust its author, pass --trust-code"
            ) from exc
        raise ModelLoadError(f"Keras could not load the model: {first_line(exc)}", path=path, hint=_h5_ops_hint(exc, fmt)) from exc
    from .heads import plan, with_head
    from .inference import detect_preprocessing

    h, w, c, units = describe_classifier(model, path)
    _check_activation_sizes(model, path)
    head = plan(units, activation, add_softmax, path)
    found = detect_preprocessing(model)
    return LoadedModel(
        model=with_head(model, head),
        path=path,
        format=fmt,
        sha256=digest,
        input_shape=(h, w, c),
        num_classes=head.classes,
        in_model_preprocessing=list(found.layers),
        keras_model=model,
        head=head,
        in_model=found,
        output=output,
    )


_CHANNELS_FIRST_HINT = (
    "the input looks channels-first (batch, channels, height, width); the exporter takes channels-last image models: "
    "rebuild it with data_format='channels_last' (Keras' default) and load the weights into it"
)


def _h5_ops_hint(exc: BaseException, fmt: str) -> str | None:
    """The remedy when Keras cannot load an .h5 file because it holds a Keras op (``inputs / 255.0``,
    keras.applications' ``preprocess_input`` called on a tensor): the legacy H5 format saves ops as layers it cannot
    rebuild ("Unknown layer: 'TrueDivide'"); the .keras format can."""
    import re

    found = re.search(r"Unknown layer: '(\w+)'", str(exc))
    if fmt != "h5" or found is None:
        return None
    import keras.src.ops as keras_ops  # the op classes (TrueDivide, Subtract, GetItem, ...) by module

    modules = ("numpy", "math", "core", "nn", "image", "linalg")
    if not any(isinstance(getattr(getattr(keras_ops, m, None), found.group(1), None), type) for m in modules):
        return None
    return (
        f"'{found.group(1)}' is a Keras op (arithmetic or preprocess_input on a tensor), which the legacy .h5 format "
        "cannot rebuild: save the model with model.save('model.keras') and export that file"
    )


def _channels_first(shape) -> bool:
    return len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3)


def _has_free_side(shape) -> bool:
    return len(shape) == 4 and (shape[1] is None or shape[2] is None)


def with_input_size(model, input_size: tuple[int, int] | None, path: Path):
    """``model`` itself when its input height and width are fixed (or ``input_size`` is None: describe_classifier then
    refuses it with the remedy); otherwise the same layers and weights called on an input of ``input_size``, so every
    layer has a static shape for the converters and for the inference no-op probes. A fixed side must match."""
    keras = import_keras()

    if input_size is None or len(model.inputs) != 1 or not _has_free_side(tuple(model.inputs[0].shape)):
        return model
    source = model.inputs[0]
    shape = tuple(source.shape)
    for axis, side in zip((1, 2), input_size, strict=True):
        if shape[axis] is not None and int(shape[axis]) != int(side):
            raise NotAClassifierError(
                f"model input shape is {shape}; the preprocessing input_size {list(input_size)} does not fit it", path=path
            )
    fixed = keras.Input((int(input_size[0]), int(input_size[1]), shape[3]), dtype=source.dtype, name=source.name)
    try:  # the layers are shared, not copied: the weights are the file's; Sequential and Functional graphs are re-run
        return called_on(model, fixed)
    except ValueError:  # a subclassed model: called as one layer on the fixed input
        return keras.Model(fixed, model(fixed), name=model.name)


def as_graph(model, path: Path):
    """``model`` itself when it is a Functional or Sequential graph; a subclassed ``keras.Model`` (its ``call()`` is
    code, so it has no ``inputs``) called once on an input of the shape it was built for (Keras saves that shape and
    builds the model with it on loading), as one layer of a Functional model: the rest of the exporter reads
    ``inputs`` and ``outputs``."""
    keras = import_keras()

    if isinstance(model, keras.Sequential) or getattr(model, "inputs", None) is not None or not isinstance(model, keras.Model):
        return model
    shape = (model.get_build_config() or {}).get("input_shape")
    if not isinstance(shape, (list, tuple)) or len(shape) < 2 or not all(isinstance(d, int) or d is None for d in shape):
        raise NotAClassifierError(
            "is a subclassed keras.Model saved without an input shape (it was never called on an image before saving)",
            path=path,
            hint="call the model once on a batch of images (model(images)) before model.save()",
        )
    inputs = keras.Input(tuple(shape[1:]), name="image")
    return keras.Model(inputs, model(inputs), name=model.name)


OUTPUT_HINT = "name the classifier's output with --output NAME (output=... in the Python API)"


def output_names(model) -> dict[str, Any]:
    """Each output tensor of ``model`` by the names a user knows it by: the key it has in a dict of outputs
    (``Model(x, {"probs": y, "aux": z})``) and the name of the layer that computes it."""
    names: dict[str, Any] = {}
    given = getattr(model, "output", None)
    if isinstance(given, dict):
        names.update((str(key), tensor) for key, tensor in given.items())
    for name, tensor in zip(getattr(model, "output_names", None) or (), getattr(model, "outputs", None) or (), strict=False):
        names.setdefault(str(name), tensor)
    return names


def with_chosen_output(model, output: str | None, path: Path):
    """``model`` itself, or, for a model with several outputs (an auxiliary classifier trained alongside the main one,
    Inception-style; an embedding next to the probabilities), the same layers computing only the output named
    ``output``: the layers only the other outputs need are left out. Several outputs and no name are refused, listing
    the names; a name that is not an output is refused too."""
    keras = import_keras()

    outputs = list(getattr(model, "outputs", None) or ())
    if output is None and len(outputs) <= 1:
        return model
    if isinstance(model, keras.Sequential):  # one output, its last layer's (a Sequential's .output may not exist)
        names = {model.layers[-1].name: None} if model.layers else {}
    else:
        names = output_names(model)
    listed = ", ".join(repr(n) for n in names)
    if output is None:
        raise NotAClassifierError(
            f"model has {len(outputs)} outputs ({listed}); expected one probability vector", path=path, hint=OUTPUT_HINT
        )
    if output not in names:
        raise ConfigError(f"{path}: output {output!r} is not one of the model's outputs ({listed or 'none it names'})")
    if len(outputs) <= 1:
        return model  # with_plain_output takes a single output out of its dict or list
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # a list for one input makes Keras warn
    return keras.Model(inputs, names[output], name=model.name)


def without_unused_inputs(model):
    """``model`` itself, or, when it has several inputs and its output is computed from one of them only (an input
    declared for metadata and never wired in, or left over from an experiment: Keras still demands a value for it),
    the same layers on that one input. A model whose output reads several inputs is left as it is (and refused)."""
    keras = import_keras()

    inputs = list(getattr(model, "inputs", None) or ())
    outputs = list(getattr(model, "outputs", None) or ())
    if isinstance(model, keras.Sequential) or len(inputs) < 2 or not outputs:
        return model
    reading = []
    for tensor in inputs:
        try:  # Keras refuses a graph whose outputs need an input it was not given
            reading.append(keras.Model(tensor, outputs[0] if len(outputs) == 1 else outputs, name=model.name))
        except ValueError:
            continue
    return reading[0] if len(reading) == 1 else model


def with_plain_output(model):
    """``model`` itself, or, when its one output sits in a dict or a list (``Model(x, {"probs": y})``,
    ``Model(x, [y])``, which Keras returns as they were given), the same layers with that output returned as a plain
    tensor: everything downstream reads one probability array."""
    keras = import_keras()

    if isinstance(model, keras.Sequential) or len(getattr(model, "outputs", None) or ()) != 1:
        return model  # a Sequential returns its last layer's tensor (and has no .output when built from a fixed batch)
    if not isinstance(model.output, (dict, list, tuple)):
        return model
    return keras.Model(model.input, model.outputs[0], name=model.name)


def with_flat_output(model):
    """``model`` itself, or, when its one output is a (batch, 1, ..., 1, N) map (a convolutional head:
    ``GlobalAveragePooling2D(keepdims=True)``, ``Conv2D(N, 1)``, ``Softmax()``, with no Flatten), the same layers with
    that output reshaped to the (batch, N) vector it holds: everything downstream reads one probability row per
    image."""
    keras = import_keras()

    outputs = list(getattr(model, "outputs", None) or ())
    if len(outputs) != 1 or len(getattr(model, "inputs", None) or ()) != 1:
        return model
    shape = tuple(outputs[0].shape)
    if len(shape) <= 2 or shape[-1] is None or any(d != 1 for d in shape[1:-1]):
        return model
    taken = {model.name} | {layer.name for layer in model.layers}
    name = next(n for n in (f"flat_output{'_' * bool(i)}{i or ''}" for i in range(len(taken) + 1)) if n not in taken)
    flatten = keras.layers.Reshape((int(shape[-1]),), name=name)
    if isinstance(model, keras.Sequential):  # called as one layer: a loaded Sequential's layers hold one node per build
        source = model.inputs[0]
        inputs = keras.Input(tuple(source.shape[1:]), batch_size=source.shape[0], dtype=source.dtype, name=f"{name}_input")
        return keras.Model(inputs, flatten(model(inputs)), name=model.name)
    return keras.Model(model.inputs[0], flatten(outputs[0]), name=model.name)


def _wrap_saved_model(path: Path, input_size: tuple[int, int] | None = None, output: str | None = None):
    keras = import_keras()

    with translating(ModelLoadError, "SavedModel could not be loaded", path=path):
        layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures["serving_default"]
    specs = list(fn.structured_input_signature[1].values())
    if len(specs) != 1:
        raise NotAClassifierError(f"SavedModel serving signature has {len(specs)} inputs; an image classifier has one", path=path)
    shape = specs[0].shape
    outputs = fn.structured_outputs
    listed = ", ".join(repr(str(k)) for k in outputs)
    if output is not None and output not in outputs:
        raise ConfigError(f"{path}: output {output!r} is not one of the SavedModel serving signature's outputs ({listed})")
    if len(outputs) != 1 and output is None:
        raise NotAClassifierError(
            f"SavedModel serving signature has {len(outputs)} outputs ({listed}); expected one probability vector",
            path=path,
            hint=OUTPUT_HINT,
        )
    dims = list(shape[1:])
    if input_size is not None and len(dims) == 3:
        dims[:2] = [side if side is not None else fixed for side, fixed in zip(dims[:2], input_size, strict=True)]
    inputs = keras.Input(tuple(dims), name="image")
    out = layer(inputs)
    if isinstance(out, dict):
        out = out[output] if output is not None else next(iter(out.values()))
    return keras.Model(inputs, out, name=path.name)


def describe_classifier(model, path: Path) -> tuple[int, int, int, int]:
    """Check the model is a single-image-in, one-vector-out model; returns (H, W, C, output units). Whether the
    output is a probability vector is checked by heads.check_outputs on pixels in the contract's range."""
    if len(model.inputs) != 1:
        raise NotAClassifierError(
            f"model has {len(model.inputs)} inputs and its output reads more than one of them; an image classifier has exactly one",
            path=path,
        )
    if len(model.outputs) != 1:
        raise NotAClassifierError(f"model has {len(model.outputs)} outputs; expected one probability vector", path=path)
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] not in (1, 3) or shape[1] is None or shape[2] is None:
        any_size = _has_free_side(shape) and shape[3] in (1, 3)
        raise NotAClassifierError(
            f"model input shape is {shape}; expected an image (batch, height, width, 1 or 3) with a fixed height and width",
            path=path,
            hint=ANY_SIZE_HINT if any_size else _CHANNELS_FIRST_HINT if _channels_first(shape) else None,
        )
    if not all(MIN_SIDE <= int(side) <= MAX_SIDE for side in shape[1:3]):
        raise NotAClassifierError(
            f"model input is {shape[1]}x{shape[2]} pixels; the exporter supports image sides from {MIN_SIDE} to {MAX_SIDE} pixels",
            path=path,
        )
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2 or out_shape[1] is None or out_shape[1] < 1:
        raise NotAClassifierError(
            f"model output shape is {out_shape}; expected (batch, classes), or (batch, 1) for a binary classifier ending in a sigmoid",
            path=path,
        )
    return int(shape[1]), int(shape[2]), int(shape[3]), int(out_shape[1])


def detect_in_model_preprocessing(model) -> list[str]:
    """Paths of the Rescaling/Normalization layers the input passes through before any other computation, nested
    models included (see inference.detect_preprocessing for the composed scale and bias)."""
    from .inference import detect_preprocessing

    return list(detect_preprocessing(model).layers)
