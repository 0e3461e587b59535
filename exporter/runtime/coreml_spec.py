"""Read what a saved Core ML file declares, from its protobuf alone (no Core ML runtime): the image preprocessing it
applies, its class labels, and which operations it holds. The executor and the tests both read files through this."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


def load_spec(path: str | Path):
    import coremltools as ct

    return ct.utils.load_spec(str(path))


def _main_ops(spec) -> list:
    fn = spec.mlProgram.functions["main"]
    return list(fn.block_specializations[fn.opset].operations)


def _const_values(op) -> list:
    value = op.attributes["val"].immediateValue
    tensor = value.tensor if value.HasField("tensor") else None
    if tensor is not None:
        for field in ("floats", "ints", "doubles", "strings", "longInts"):
            vals = getattr(tensor, field).values
            if len(vals):
                return list(vals)
    if value.HasField("list"):
        return [v.immediateValue.tensor.strings.values[0] for v in value.list.values]
    return []


def _consts(ops) -> dict:
    return {op.outputs[0].name: op for op in ops if op.type == "const"}


def image_preprocessing(spec) -> tuple[list[float], list[float]]:
    """(scale per channel, bias per channel) that the file applies to 0..255 pixels before the network."""
    kind = spec.WhichOneof("Type")
    channels = 1 if spec.description.input[0].type.imageType.colorSpace == 10 else 3  # 10 = GRAYSCALE
    if kind == "mlProgram":
        ops = _main_ops(spec)
        consts = _consts(ops)
        scale, bias = [1.0] * channels, [0.0] * channels
        for op in ops:
            if op.type in ("mul", "add") and op.outputs[0].name.startswith("image__"):
                name = op.inputs["y"].arguments[0].name
                vals = [float(v) for v in _const_values(consts[name])]
                vals = vals * channels if len(vals) == 1 else vals
                if op.type == "mul":
                    scale = vals
                else:
                    bias = vals
        return scale, bias
    nn = getattr(spec, kind)
    if not nn.preprocessing:
        return [1.0] * channels, [0.0] * channels
    s = nn.preprocessing[0].scaler
    if channels == 1:
        return [s.channelScale or 1.0], [s.grayBias]
    colour = spec.description.input[0].type.imageType.colorSpace
    bias = [s.redBias, s.greenBias, s.blueBias] if colour == 20 else [s.blueBias, s.greenBias, s.redBias]
    return [s.channelScale or 1.0] * 3, bias


def class_labels(spec) -> list[str]:
    kind = spec.WhichOneof("Type")
    if kind == "mlProgram":
        ops = _main_ops(spec)
        consts = _consts(ops)
        classify = next(op for op in ops if op.type == "classify")
        arg = classify.inputs["classes"].arguments[0]
        if arg.HasField("value"):
            return [v.immediateValue.tensor.strings.values[0] for v in arg.value.immediateValue.list.values]
        return [str(v) for v in _const_values(consts[arg.name])]
    return list(getattr(spec, kind).stringClassLabels.vector)


def op_counts(spec) -> Counter:
    kind = spec.WhichOneof("Type")
    if kind == "mlProgram":
        return Counter(op.type for op in _main_ops(spec))
    return Counter(layer.WhichOneof("layer") for layer in getattr(spec, kind).layers)
