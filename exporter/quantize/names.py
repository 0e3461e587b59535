"""Short value and op names in an ML Program: a pure rewrite of the saved protobuf.

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
