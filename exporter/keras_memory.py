"""The memory of a Keras model's forward pass, from its symbolic shapes, before anything runs it.

Keras 3 runs a functional model eagerly by keeping every node's output in one dict until the call returns
(``keras.src.ops.function.Function._run_through_graph`` frees nothing on the way), so a call on a batch holds the sum
of all its nodes' outputs at once, not the largest one. Measured (ResNet50 at 128 px, this machine, 2026-12-02): one
call on 32 images raised the peak resident memory by 1,515 MB, 1,480 MB summed here; on 4 images by 173 MB, 185 MB
summed. Per image at 224 px the sums are MobileNetV2 83 MiB, EfficientNetB0 96, ResNet50 142, DenseNet121 190: a
32-image validation batch of DenseNet121 held 6 GB. Every eager call (the reference runner, the classifier probe,
the float64 check) is cut into calls of as many images as keep the sum within
``safety.LIVE_ACTIVATION_BUDGET_BYTES`` (one image at the least), and a model whose sum for one image is over
``safety.KERAS_ONE_IMAGE_BUDGET_BYTES`` is refused when it loads.

Nodes are the graph's operations, not only its layers: a Keras op called on a model's tensors (``keras.ops.tile``)
is a node of the saved graph that ``model.layers`` leaves out.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from . import safety
from .errors import ExporterError
from .keras_graph import node_tensors
from .upstream import inbound_nodes

# Bytes per activation value: float32, what the converters, the executor and the Keras reference compute in.
ACTIVATION_ITEMSIZE = 4


def _nodes_of(container) -> list:
    """The operations of a functional model (layers and Keras ops), or the layers of anything else that has them (a
    Sequential, a layer holding layers)."""
    found = getattr(container, "operations", None)
    if found is None:
        found = getattr(container, "layers", None)
    return list(found or [])


def node_outputs(model) -> Iterator[tuple[Any, list[int]]]:
    """(operation, dimensions for one image) of every distinct tensor an operation of ``model`` outputs, nested
    models included (an open batch dimension counted as one image)."""
    seen_ops: set[int] = set()
    seen_tensors: set[int] = set()
    pending = [model]
    while pending:
        container = pending.pop()
        for op in _nodes_of(container):
            if id(op) in seen_ops:
                continue
            seen_ops.add(id(op))
            for node in inbound_nodes(op):
                for tensor in node_tensors(node)[1]:
                    if id(tensor) in seen_tensors:
                        continue
                    seen_tensors.add(id(tensor))
                    yield op, [1 if d is None else int(d) for d in tuple(getattr(tensor, "shape", ()) or ())]
            pending.append(op)


def _sequence(tensor) -> int:
    """The positions of an attention input: every axis but the batch and the features."""
    return math.prod(1 if d is None else int(d) for d in tuple(tensor.shape)[1:-1])


def workspaces(model) -> Iterator[tuple[Any, list[int]]]:
    """(layer, dimensions for one image) of the score matrices attention layers compute inside a call, which are
    not among their outputs: a MultiHeadAttention on the 65,536 pixels of a 256 px image as a sequence outputs
    65,536 values per feature and computes heads x 65,536 x 65,536 scores (34 GB for two heads). Default attention
    axes are assumed (every axis but the batch and the features), the largest the scores can be."""
    seen: set[int] = set()
    pending = [model]
    while pending:
        container = pending.pop()
        for op in _nodes_of(container):
            if id(op) in seen:
                continue
            seen.add(id(op))
            pending.append(op)
            kind = type(op).__name__
            if kind not in ATTENTION_LAYERS:
                continue
            for node in inbound_nodes(op):
                inputs = node_tensors(node)[0]
                if not inputs:
                    continue
                query, value = inputs[0], inputs[1] if len(inputs) > 1 else inputs[0]
                heads = int(getattr(op, "num_heads", None) or getattr(op, "num_query_heads", None) or 1)
                scores = [1, heads, _sequence(query), _sequence(value)]
                if kind == "AdditiveAttention":  # tanh(query + key) is summed over the features after broadcasting
                    scores.append(int(tuple(query.shape)[-1] or 1))
                yield op, scores


# Keras attention layers and what their scores hold per image: MultiHeadAttention and GroupedQueryAttention heads x
# queries x keys (then their softmax, a second array as large), Attention queries x keys, AdditiveAttention queries x
# keys x features.
ATTENTION_LAYERS = frozenset({"MultiHeadAttention", "GroupedQueryAttention", "GroupQueryAttention", "Attention", "AdditiveAttention"})
# Arrays of scores alive at once inside an attention layer: the scores and their softmax.
SCORE_COPIES = 2


def activation_bytes(model, path: str | Path, *, error: type[ExporterError], itemsize: int = ACTIVATION_ITEMSIZE) -> int:
    """The bytes one call of ``model`` on one image holds at once (every node's output, see the module's note, and
    the largest attention layer's scores while it runs), refused (``error``) when one output or score matrix is
    over the per-value memory budget, naming its layer, or their sum is over ``KERAS_ONE_IMAGE_BUDGET_BYTES`` (calls
    of several images are then cut to ``LIVE_ACTIVATION_BUDGET_BYTES``, one image at the least: ``images_per_call``)."""
    budget = safety.KERAS_ONE_IMAGE_BUDGET_BYTES

    def over(what: str) -> ExporterError:
        return error(
            f"running it on one image holds over {budget:,} bytes of layer outputs at once (Keras keeps every layer's "
            f"output until the call returns; {what}), over the memory budget",
            path=path,
        )

    total = 0
    for op, dims in node_outputs(model):
        name = getattr(op, "name", type(op).__name__)
        total += itemsize * safety.check_elements(dims, itemsize=itemsize, error=error, where=path, what=f"the output of layer {name!r}")
        if total > budget:
            raise over(f"{math.prod(dims):,} values in {name!r} alone")
    scores = 0
    for op, dims in workspaces(model):
        name = getattr(op, "name", type(op).__name__)
        what = f"the attention scores of layer {name!r}"
        scores = max(scores, SCORE_COPIES * itemsize * safety.check_elements(dims, itemsize=itemsize, error=error, where=path, what=what))
        if total + scores > budget:
            raise over(f"{math.prod(dims):,} attention scores in {name!r}")
    return total + scores


def images_per_call(per_image: int) -> int:
    """How many images one eager call may take so that its layer outputs stay within the budget."""
    return max(1, safety.LIVE_ACTIVATION_BUDGET_BYTES // max(per_image, 1))


def call_in_chunks(model, x, per_image: int, **kwargs) -> np.ndarray:
    """``model(x, **kwargs)`` as a numpy array, in calls of at most ``images_per_call(per_image)`` images each."""
    step = images_per_call(per_image)
    if len(x) <= step:
        return np.asarray(model(x, **kwargs))
    return np.concatenate([np.asarray(model(x[i : i + step], **kwargs)) for i in range(0, len(x), step)])
