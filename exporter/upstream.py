"""The private parts of coremltools and Keras this toolkit relies on, read in one place.

Each reader names what it reads and raises ``UpstreamAPIError`` when the library no longer has it, instead of a
``getattr(obj, "_private", default)`` that would quietly switch a check off (the double-normalisation guard reads
Keras' graph through ``inbound_nodes``; the uncompressed-weight report reads coremltools' MIL program). The versions
pinned in pyproject.toml are the ones these readers are tested against.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import UpstreamAPIError


def _read(obj: Any, name: str, library: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError as exc:
        from .versions import library_versions

        version = library_versions().get(library, "unknown")
        raise UpstreamAPIError(
            f"{library} {version} has no {type(obj).__name__}.{name} any more; this toolkit needs it (see exporter/upstream.py)"
        ) from exc


def mil_program(mlmodel: Any) -> Any:
    """The MIL program an in-memory coremltools ``MLModel`` was built from; None for a NeuralNetwork model (which
    has none). coremltools' public ``_get_mil_internal`` deep-copies it, which costs the whole weight set."""
    return _read(mlmodel, "_mil_program", "coremltools")


def inbound_nodes(layer: Any) -> list:
    """The Keras graph nodes that call ``layer`` (Keras 3 ``Operation._inbound_nodes``); each has ``input_tensors``."""
    return list(_read(layer, "_inbound_nodes", "keras"))


def apply_graph_pass(mlmodel: Any, passes: list, *, spec_version: int) -> Any:
    """coremltools' ``models.utils._apply_graph_pass``: run MIL graph passes on a saved-program MLModel."""
    from coremltools.converters.mil.frontend.milproto import load as milproto
    from coremltools.models import utils as model_utils

    run = _read(model_utils, "_apply_graph_pass", "coremltools")
    return run(mlmodel, passes, spec_version=spec_version, pymil_load_func=milproto.load, skip_model_load=True)


@contextmanager
def compression_without_passes(passes: tuple[str, ...]) -> Iterator[None]:
    """Inside this block, coremltools' compressors (``linear_quantize_weights``, ``palettize_weights``,
    ``linear_quantize_activations``, ``_apply_graph_pass``) convert the compressed program back to a model without
    ``passes``. They call ``models.utils._mil_convert`` with no pass pipeline, i.e. the whole default one, which would
    redo what the conversion deliberately skipped (convert/coreml.SKIPPED_PASSES): every int8 or palettized file of a
    model with unfused BatchNormalization got the 1e-5 batch_norm epsilon back, and a trained NASNetMobile's failed
    outright ("the named input `mean` must have the same data type as the named input `x`")."""
    import coremltools as ct
    from coremltools.models import utils as model_utils

    original = _read(model_utils, "_mil_convert", "coremltools")

    def convert(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("pass_pipeline") is None:
            pipeline = ct.PassPipeline.DEFAULT
            pipeline.remove_passes(set(passes))
            kwargs["pass_pipeline"] = pipeline
        return original(*args, **kwargs)

    model_utils._mil_convert = convert
    try:
        yield
    finally:
        model_utils._mil_convert = original


@contextmanager
def lazy_keras_variables() -> Iterator[Any]:
    """A block in which Keras variables take no memory: inside ``keras.StatelessScope(initialize_variables=False)``
    Keras only registers each new variable (its shape and dtype) in its ``uninitialized_variables`` list, to be filled
    when the outermost stateless scope closes. Yields a function returning the variables registered since the block
    began (those created so far, also when creating the model failed half way); on leaving, Keras' list is put back
    as it was, so no later stateless scope (Keras opens one for every symbolic call) ever allocates them."""
    from keras.src.backend.common import global_state

    get = _read(global_state, "get_global_attribute", "keras")
    put = _read(global_state, "set_global_attribute", "keras")
    before = list(get("uninitialized_variables", [], set_to_default=True))
    try:
        yield lambda: list(get("uninitialized_variables", []))[len(before) :]
    finally:
        put("uninitialized_variables", before)
