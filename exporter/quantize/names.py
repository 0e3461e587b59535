"""Short value and op names, and one copy of each small constant, in an ML Program: pure rewrites of the saved
protobuf.

The TensorFlow frontend names every value after its full Keras path, e.g.
``densenet121_1_densenet121_1_densenet121_1_conv2_block1_0_bn_1_batchnorm_add_1_epsilon_0``, and the program text
stores each name at least twice (the op's output and every use, plus the op's ``name`` attribute). On the small sample
models those names are most of model.mlmodel. This pass renames every internal value to ``v<base-36 counter>`` in
program order and names each op after its first output; the function inputs (the image) and the function outputs
(class label and probabilities) keep their names, because apps and the model's description refer to them, and so do
the image input's preprocessing ops (``image__scaled__``, ``image__biased__``: coremltools' names, by which readers of
the file, ours included, find the scale and bias the file applies to pixels). Weights
live in weight.bin by offset, not by name, so they are untouched. Parity of the saved file against Keras proves that
nothing else changed.

The frontend also writes a const op of its own for every strides, pad, dilations, groups and activation parameter of
every op, although most are the same few values ([1, 1], [0, 0, 0, 0], 1, ...): on a MobileNetV2 224 that is 270 of
the program's 400 ops and 40 % of its text. ``share_constants`` keeps the first const op of each immediate value (type
and value, compared as bytes) in each block and points every use of a later copy at it, as coremltools'
``const_deduplication`` pass does for weights; weights in weight.bin are left alone.
"""

from __future__ import annotations

from collections.abc import Iterator

_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _DIGITS[r] + out
        if not n:
            return out


def _blocks(block) -> Iterator:
    yield block
    for op in block.operations:
        for inner in op.blocks:
            yield from _blocks(inner)


def _rename_uses(block, mapping: dict[str, str]) -> None:
    """Every use of a value named in ``mapping`` inside ``block`` and its nested blocks, renamed."""
    for inner in _blocks(block):
        for op in inner.operations:
            for argument in op.inputs.values():
                for binding in argument.arguments:
                    if binding.WhichOneof("binding") == "name" and binding.name in mapping:
                        binding.name = mapping[binding.name]
        if inner is not block:
            outputs = [mapping.get(n, n) for n in inner.outputs]
            del inner.outputs[:]
            inner.outputs.extend(outputs)


def share_constants(spec) -> int:
    """Remove every const op of ``spec.mlProgram`` whose immediate value repeats an earlier const op's in the same block,
    its uses pointed at the earlier one; return how many were removed. The function's inputs and outputs and the image
    input's preprocessing constants (``image__scaled__``...) are never merged: readers find them by name. A spec that is
    not an ML Program is left as it is."""
    if spec.WhichOneof("Type") != "mlProgram":
        return 0
    removed = 0
    for function in spec.mlProgram.functions.values():
        prefixes = tuple(f"{v.name}__" for v in function.inputs)
        for top in function.block_specializations.values():
            kept = set(top.outputs)
            for block in reversed(list(_blocks(top))):  # inner blocks first: deleting ops never strands one
                first: dict[bytes, str] = {}
                mapping: dict[str, str] = {}
                doomed = []
                for index, op in enumerate(block.operations):
                    value = op.attributes["val"] if op.type == "const" and "val" in op.attributes else None
                    if value is None or len(op.outputs) != 1 or not value.HasField("immediateValue"):
                        continue
                    name = op.outputs[0].name
                    if name in kept or name in block.outputs or name.startswith(prefixes):
                        continue
                    key = value.SerializeToString(deterministic=True)
                    if key in first:
                        mapping[name] = first[key]
                        doomed.append(index)
                    else:
                        first[key] = name
                for index in reversed(doomed):
                    del block.operations[index]
                _rename_uses(block, mapping)
                removed += len(doomed)
    return removed


def shorten_names(spec) -> dict[str, str]:
    """Rename the values and ops of every function of ``spec.mlProgram`` in place; return {old: new}. A spec that is
    not an ML Program is left as it is (empty mapping)."""
    if spec.WhichOneof("Type") != "mlProgram":
        return {}
    mapping: dict[str, str] = {}
    for function in spec.mlProgram.functions.values():
        kept = {v.name for v in function.inputs}
        prefixes = tuple(f"{name}__" for name in kept)  # the image input's preprocessing ops: image__scaled__ ...
        for block in function.block_specializations.values():
            kept |= set(block.outputs)  # the function's outputs
        counter = 0

        def fresh(kept: set[str] = kept) -> str:
            nonlocal counter
            while True:
                name, counter = f"v{_base36(counter)}", counter + 1
                if name not in kept:
                    return name

        for top in function.block_specializations.values():
            for block in _blocks(top):
                for value in block.inputs:  # loop-carried values of nested blocks
                    if value.name not in kept and value.name not in mapping:
                        mapping[value.name] = fresh()
                for op in block.operations:
                    for value in op.outputs:
                        if value.name.startswith(prefixes):
                            kept.add(value.name)
                        elif value.name not in kept and value.name not in mapping:
                            mapping[value.name] = fresh()
        for top in function.block_specializations.values():
            for block in _blocks(top):
                for value in block.inputs:
                    value.name = mapping.get(value.name, value.name)
                outputs = [mapping.get(n, n) for n in block.outputs]
                del block.outputs[:]
                block.outputs.extend(outputs)
                for op in block.operations:
                    for argument in op.inputs.values():
                        for binding in argument.arguments:
                            if binding.WhichOneof("binding") == "name":
                                binding.name = mapping.get(binding.name, binding.name)
                    for value in op.outputs:
                        value.name = mapping.get(value.name, value.name)
                    if "name" in op.attributes and op.outputs:
                        op.attributes["name"].immediateValue.tensor.strings.values[:] = [op.outputs[0].name]
    return mapping
