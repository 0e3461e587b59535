"""Walking the Keras functional graph: which layers consume a tensor, and what a node takes and gives.

Keras 3 has no public API for "which layers consume this tensor"; the graph lives in each layer's private
``_inbound_nodes``, read only through ``upstream.inbound_nodes`` (which raises a clear ``UpstreamAPIError`` when a
Keras release renames it). The node attributes read here fail the same way, so a changed Keras stops the export with
one line instead of silently detecting nothing.
"""

from __future__ import annotations

from typing import Any

from .errors import UpstreamAPIError
from .upstream import inbound_nodes


def node_tensors(node) -> tuple[list[Any], list[Any]]:
    """(input tensors, output tensors) of one node."""
    try:
        return list(node.input_tensors), list(node.output_tensors)
    except AttributeError as exc:
        from .versions import library_versions

        raise UpstreamAPIError(
            f"keras {library_versions().get('keras', 'unknown')} graph nodes have no "
            "input_tensors/output_tensors any more; this toolkit needs them (see "
            "exporter/keras_graph.py)"
        ) from exc


def node_arguments(node) -> tuple[list[Any], dict[str, Any]]:
    """(positional, keyword) arguments one node was called with: a Keras op's constants and indexing keys (an op such
    as ``x[..., 2]`` or ``x / 255.0`` is a node whose arguments hold the key or the constant)."""
    arguments = getattr(node, "arguments", None)
    return list(getattr(arguments, "args", None) or ()), dict(getattr(arguments, "kwargs", None) or {})


def consumers(model) -> dict[int, list[tuple[Any, Any]]]:
    """For each tensor (by id) of ``model``'s graph: the (layer, node) pairs that take it as an input. Keras ops
    called on a model's tensors (``inputs / 127.5``, keras.applications' ``preprocess_input`` on the Input) are nodes
    of the graph too but not among its ``layers``: they are taken from its ``operations``."""
    found: dict[int, list[tuple[Any, Any]]] = {}
    for layer in getattr(model, "operations", None) or model.layers:
        for node in inbound_nodes(layer):
            inputs, _ = node_tensors(node)
            for t in inputs:
                found.setdefault(id(t), []).append((layer, node))
    return found


def first_input_shape(layer) -> tuple | None:
    """The input shape of ``layer``'s first call with a fully known shape (batch aside), else of its first call
    (None when it was never called in a graph). A model built for any image size and then called on a fixed one
    (loading.with_input_size) has both calls."""
    shapes = []
    for node in inbound_nodes(layer):
        inputs, _ = node_tensors(node)
        if inputs:
            shapes.append(tuple(inputs[0].shape))
    fixed = [s for s in shapes if all(d is not None for d in s[1:])]
    found = fixed or shapes
    return found[0] if found else None


def called_on(model, inputs):
    """The same layers and weights as ``model`` (a Functional or Sequential graph), its graph re-run on the Keras
    input tensor ``inputs`` (another shape or dtype): nothing is copied, every layer is shared."""
    import keras

    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)
