"""Which Keras layer a converter failure belongs to, so the error names the layer, not only a TensorFlow op.

TensorFlow names graph nodes after the Keras name scopes they were traced in (``functional_1/my_resize_1/resize/
ScaleAndTranslate``; Keras adds ``_N`` to scopes it re-enters), and both coremltools and tf2onnx keep those names.
"""

from __future__ import annotations

import re

_NODE_NAME = re.compile(r'name: "([^"]+)"')
_SCOPE_SUFFIX = re.compile(r"_\d+$")


def _layers(model):
    """Every layer of ``model`` and of the models nested in it, and the Keras ops a functional model calls on its
    tensors (``keras.ops.image.resize`` is a node of the graph that ``model.layers`` leaves out)."""
    for layer in getattr(model, "operations", None) or getattr(model, "layers", None) or []:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def _described(layer) -> str:
    """ "layer 'NAME' (Class)", or "Keras op 'NAME' (Class)" for an op that is not a layer."""
    kind = "layer" if hasattr(layer, "trainable_weights") else "Keras op"
    return f"{kind} {layer.name!r} ({type(layer).__name__})"


def layer_for_node(model, node_name: str):
    """The innermost Keras layer (not a model) whose name appears as a scope of ``node_name``, or None."""
    by_name: dict[str, object] = {}
    by_stem: dict[str, object] = {}  # names without Keras' "_N": an op reloaded in a long-lived process is "resize_12"
    for layer in _layers(model):  # while its graph scope is "resize_13"; exact names are tried first
        if not hasattr(layer, "layers"):
            by_name.setdefault(layer.name, layer)
            by_stem.setdefault(_SCOPE_SUFFIX.sub("", layer.name), layer)
    for part in reversed(node_name.split("/")[:-1]):
        stem = _SCOPE_SUFFIX.sub("", part)
        for found in (by_name.get(part), by_name.get(stem), by_stem.get(stem)):
            if found is not None:
                return found
    return None


def describe_failure(model, text: str) -> str:
    """' in layer 'NAME' (Class)' (or Keras op) for a coremltools error text that carries the failing node, else ''."""
    match = _NODE_NAME.search(text)
    if not match:
        return ""
    layer = layer_for_node(model, match.group(1))
    return f" in {_described(layer)}" if layer is not None else ""


def unconvertible_onnx_nodes(model, proto) -> str:
    """A description of the first ONNX node tf2onnx left as a TensorFlow op (no ONNX schema), or ''."""
    import onnx

    for node in proto.graph.node:
        domain = node.domain or ""
        if domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type, domain):
            layer = layer_for_node(model, node.name)
            where = _described(layer) if layer is not None else f"node {node.name!r}"
            return f"{where} became TensorFlow op {node.op_type!r}, which has no ONNX equivalent in tf2onnx"
    return ""
