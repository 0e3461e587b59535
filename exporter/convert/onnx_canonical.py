"""Identical exports, identical ONNX bytes.

tf2onnx makes names unique with a process-wide counter (``pad_const__180`` in one run, ``pad_const__27`` in the
next, depending on the order it visits hash-ordered sets) and lists initializers in the order it created them, so two
exports of the same model differed in bytes and in the manifest's SHA-256. ``canonical`` renumbers every
counter-suffixed name by its first use in the node list, orders the initializers by first use, and renumbers the
symbolic dimensions tf2onnx names by the same counter (``unk__429`` in one process, ``unk__430`` in another: the
counter also counts what earlier conversions in the process made); the computation, the node order and every name
without a counter are untouched.
"""

from __future__ import annotations

import re

# tf2onnx's unique-name suffix ("__" and a counter), possibly followed by an output index (":0").
COUNTER = re.compile(r"__\d+")


def canonical(model):
    """Rename counter-suffixed value and node names in order of first use; order initializers by first use."""
    g = model.graph
    names: dict[str, str] = {}
    initializers = {t.name for t in g.initializer}

    def new(name: str, consumer=None, slot: int = 0) -> str:
        if not name or not COUNTER.search(name):
            return name
        if name not in names:
            if name in initializers and consumer is not None:
                # tf2onnx merges equal constants and keeps any one of their names ("conv_pw_3_relu/Relu6_min" in one
                # run, "conv_dw_2_relu/Relu6_min" in the next): name a shared constant after its first consumer.
                names[name] = f"{consumer.name}/input{slot}__c{len(names)}"
            else:
                names[name] = f"{COUNTER.sub('', name)}__c{len(names)}"
        return names[name]

    first_use: dict[str, int] = {}
    for i, node in enumerate(g.node):
        for name in (*node.input, *node.output):
            first_use.setdefault(name, i)
    node_names: dict[str, str] = {}
    for node in g.node:
        for j, name in enumerate(node.input):
            node.input[j] = new(name, node, j)
        for j, name in enumerate(node.output):
            node.output[j] = new(name)
        if COUNTER.search(node.name):
            renamed_node = f"{COUNTER.sub('', node.name)}__n{len(node_names)}"
            node_names[node.name] = renamed_node
            node.name = renamed_node
    dims: dict[str, str] = {}
    for coll in (g.input, g.output, g.value_info):
        for v in coll:
            v.name = new(v.name)
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                for dim in v.type.tensor_type.shape.dim:
                    if dim.HasField("dim_param") and COUNTER.search(dim.dim_param):
                        # the same symbol stays the same symbol (equal unknown sizes), numbered by first appearance
                        dim.dim_param = dims.setdefault(dim.dim_param, f"{COUNTER.sub('', dim.dim_param)}__d{len(dims)}")
    inits = sorted(g.initializer, key=lambda t: (first_use.get(t.name, len(g.node)), names.get(t.name, t.name)))
    renamed = []
    for t in inits:
        t = type(t).FromString(t.SerializeToString())
        t.name = new(t.name)
        renamed.append(t)
    del g.initializer[:]
    g.initializer.extend(renamed)
    return model
