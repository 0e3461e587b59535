"""ONNX weight and activation quantization as pure transforms on the core graph (float in, probabilities out).

fp16 uses onnxruntime's float16 converter with the graph's inputs and outputs kept in float32, so callers feed and
read the same types as fp32. int8 dynamic quantizes weights ahead of time and activations per batch at run time;
int8 static inserts QuantizeLinear/DequantizeLinear pairs (QDQ) with activation ranges calibrated on held-out images.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import ConversionError


def _copy(model):
    import onnx

    clone = onnx.ModelProto()
    clone.CopyFrom(model)
    return clone


def to_fp16(core):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        return convert_float_to_float16(_copy(core), keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:
        raise ConversionError(f"fp16 conversion of the ONNX graph failed: {str(exc).splitlines()[0][:300]}") from None


def _roundtrip(core, fn) -> object:
    """Run an onnxruntime quantization function that works on files; return the resulting ModelProto."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="exporter-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(core, src)
        try:
            fn(src, dst, Path(tmp))
        except ConversionError:
            raise
        except Exception as exc:
            raise ConversionError(f"onnxruntime quantization failed: {str(exc).splitlines()[0][:300]}") from None
        return onnx.load(dst)


def to_int8_dynamic(core):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    return _roundtrip(core, lambda src, dst, _tmp: quantize_dynamic(src, dst, weight_type=QuantType.QInt8,
                                                                    per_channel=True))


class _Reader:
    def __init__(self, name: str, batches: Iterable[np.ndarray]):
        self._it = iter([{name: b[i:i + 1]} for b in batches for i in range(len(b))])

    def get_next(self):
        return next(self._it, None)


# Mixed precision: when full int8 moves top-1 decisions on the calibration images, the layers whose quantization
# hurts most stay in float, one at a time. The target sits one point above the 98 % parity gate because the gate is
# judged on all held-out images, of which calibration sees only a sample; at most a few layers are given back.
SENSITIVITY_TARGET_TOP1 = 0.99
MAX_FLOAT_LAYERS = 3


def _run(model_bytes: bytes, name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    return session.run(None, {name: x})[0]


def to_int8_static(core, calibration: list[np.ndarray], details: dict | None = None):
    """QDQ with per-channel int8 weights and uint8 activations, MinMax ranges from ``calibration`` (normalised float
    NHWC batches, exactly what the core graph receives). Layers that move decisions most are kept in float (see
    SENSITIVITY_TARGET_TOP1); their names are written to ``details["float_layers"]``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ConversionError("int8 static quantization needs calibration images")
    name = core.graph.input[0].name
    x = np.concatenate(calibration)
    reference = _run(core.SerializeToString(), name, x)

    def quantize(exclude: list[str]):
        def run(src: Path, dst: Path, tmp: Path) -> None:
            prepared = tmp / "prepared.onnx"
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(dst), _Reader(name, calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=exclude)

        model = _roundtrip(core, run)
        got = _run(model.SerializeToString(), name, x)
        agreement = float((got.argmax(1) == reference.argmax(1)).mean())
        return model, agreement, float(np.abs(got - reference).max(axis=1).mean())

    exclude: list[str] = []
    model, agreement, _ = quantize(exclude)
    candidates = [n.name for n in _prepared_nodes(core) if n.op_type in ("Conv", "MatMul", "Gemm")]
    while agreement < SENSITIVITY_TARGET_TOP1 and len(exclude) < MAX_FLOAT_LAYERS:
        trials = [(quantize(exclude + [c]), c) for c in candidates if c not in exclude]
        (model, agreement, _err), best = max(trials, key=lambda t: (t[0][1], -t[0][2]))
        exclude.append(best)
    if details is not None:
        details["float_layers"] = exclude
        details["calibration_top1_agreement"] = agreement
    return model


def _prepared_nodes(core) -> list:
    """The nodes as quantize_static sees them (after onnxruntime's pre-processing, which may rename fused nodes)."""
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="exporter-q-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "prepared.onnx"
        onnx.save(core, src)
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return list(onnx.load(dst).graph.node)
