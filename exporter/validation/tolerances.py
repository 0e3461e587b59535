"""Default parity gates per variant. Each number says why it is what it is; users may override any of them."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

# fp32 artifacts compute the same float32 arithmetic in another order (fused batch norm, other conv kernels). Softmax
# outputs in [0, 1] then differ by a few ulps of 1.0 (1.2e-7 each) accumulated over the network; 1e-5 leaves room
# for that and still catches any real error (a wrong bias moves probabilities by 1e-2 or more).
FP32_MAX_ABS_PROB = 1e-5
# ... unless the model itself amplifies float32 rounding past that: then two correct float32 computations differ by
# more than 1e-5 (the EfficientNet application stand-in: its fp32 files 1.2e-5 to 1.5e-5 from Keras float32, Keras
# float32 3.1e-6 and the files 2.0e-6 to 2.1e-6 from a float64 Keras model of the same weights). An fp32 file that
# fails only the max |dp| limit is then judged against the exact answer (validation/float64.py): it passes when it is
# no further from float64 Keras than FP32_FLOAT64_RATIO times Keras float32's own distance (plus the rounding of a
# probability). 2 is the bar issue 13 set between two float32 runtimes (Core ML against onnxruntime): the maximum over
# a few hundred images of an error at rounding level is a noisy statistic, which differed by up to 3.4x between
# runtimes with equal rms on 64 images and within 1.3x on 300 (benchmarks/fp32_fidelity.py). A real conversion error
# (a wrong bias, a lost epsilon) is orders of magnitude beyond float32 rounding, and still fails.
FP32_FLOAT64_RATIO = 2.0
# Half an ulp of 1.0 in float32 is 6e-8: differences below two of them are the rounding of a probability near 1.
PROBABILITY_ROUNDING = 1.2e-7
# fp16 has a 10-bit mantissa (relative step 1e-3); through tens of layers probabilities move by up to a few 1e-3.
FP16_MAX_ABS_PROB = 2e-2
# Quantized weights change the function on purpose; what must survive is the decision. 98 % top-1 agreement with Keras
# on held-out images is the bar the project set for int8.
QUANTIZED_MIN_TOP1 = 0.98
# 4- and 6-bit palettes were gated at 0.90, which let a MobileNetV2 palette4 file lose ten points of accuracy
# (0.993 -> 0.893) and still pass, and `--quantize auto` then shipped it. Every flipped decision can be a lost correct
# answer, so a gate of g bounds the accuracy loss at (1 - g) * 100 points and nothing tighter: 0.90 allows ten. A
# smaller file is only worth having if it classifies like the model, so low-bit palettes keep the same bar as 8-bit
# (at most 2 points). A 0.98 gate on a file the default export builds but cannot keep would make a plain export fail,
# so the gate is not lowered to fit the file; the file leaves the default set instead (capabilities.py, `default` and
# each opt-in reason): data-free palette4 agrees 0.900 on the MobileNet v2 sample and palette4-fisher 0.957, so both are
# opt-in (`--variants palette4`), still judged at 0.98, as are palette6-fisher (0.970 on the transfer sample) and
# palette-mixed (0.992-1.000 on the four samples at 4 bits per weight, but 0.972 on 1,000 fresh held-out crops of the
# transfer sample's photos, benchmarks/fresh_crops.py). palette6 (its small kernels in float16), palette8 and int8 hold
# 0.98 on all four samples and are built by default; W8A8 holds it on them too but is opt-in for the images outside the
# classes (capabilities.W8A8_OPT_IN).
LOW_BIT_MIN_TOP1 = QUANTIZED_MIN_TOP1
FP16_MIN_TOP1 = 0.99


@dataclass(frozen=True)
class Gate:
    max_abs_prob: float | None = None
    min_top1: float | None = None

    def __post_init__(self) -> None:
        if self.max_abs_prob is not None and not 0.0 <= self.max_abs_prob <= 1.0:
            raise ConfigError(f"gate max_abs_prob must be between 0 and 1, got {self.max_abs_prob}")
        if self.min_top1 is not None and not 0.0 <= self.min_top1 <= 1.0:
            raise ConfigError(f"gate min_top1 must be between 0 and 1, got {self.min_top1}")

    def to_dict(self) -> dict:
        return {"max_abs_prob": self.max_abs_prob, "min_top1": self.min_top1}

    def failures(self, max_abs: float, top1: float) -> list[str]:
        out = []
        if not math.isfinite(max_abs):
            return ["non-finite probabilities (NaN or infinity)"]
        if self.max_abs_prob is not None and not max_abs <= self.max_abs_prob:
            out.append(f"max |dp| {max_abs:.3g} > {self.max_abs_prob:g}")
        if self.min_top1 is not None and not top1 >= self.min_top1:
            out.append(f"top-1 agreement {top1:.4f} < {self.min_top1:g}")
        return out


def default_gate(fmt: str, variant: str) -> Gate:
    """The gate the capability table gives ``fmt:variant``; a ConfigError lists the valid variants when unknown."""
    from ..capabilities import variant as lookup

    return lookup(fmt, variant).gate


def check_gate_names(gates: dict[str, Gate]) -> None:
    """Each key of a gate override is ``VARIANT`` (every format's variant of that name) or ``FORMAT:VARIANT``."""
    from ..capabilities import format_of, variant, variant_names

    for key in gates:
        fmt, sep, name = key.rpartition(":")
        if sep:
            format_of(fmt)
            variant(fmt, name)
        elif name not in variant_names():
            from ..precheck import did_you_mean

            raise ConfigError(
                f"gate for unknown variant {name!r}{did_you_mean(name, variant_names())}; valid "
                f"variants are {sorted(variant_names())} (or FORMAT:VARIANT for one format)"
            )


def gate_for(fmt: str, variant: str, overrides: dict[str, Gate]) -> Gate:
    """An override for ``FORMAT:VARIANT`` wins over one for ``VARIANT``, which wins over the default gate."""
    return overrides.get(f"{fmt}:{variant}") or overrides.get(variant) or default_gate(fmt, variant)


GATE_SYNTAX = "[FORMAT:]VARIANT:max_abs_prob=X,min_top1=Y"


def parse_gate(text: str) -> tuple[str, Gate]:
    """``[FORMAT:]VARIANT:max_abs_prob=1e-4,min_top1=0.95`` (either limit may be left out) -> (key, Gate), where the
    key is ``VARIANT`` (every format) or ``FORMAT:VARIANT``."""
    key, sep, rest = text.rpartition(":")
    if not sep or not key or any(not part for part in key.split(":")) or key.count(":") > 1:
        raise ConfigError(f"gate must look like {GATE_SYNTAX}, got {text!r}")
    values: dict[str, float] = {}
    for part in filter(None, rest.split(",")):
        name, eq, value = part.partition("=")
        if name not in ("max_abs_prob", "min_top1") or not eq:
            raise ConfigError(f"gate {text!r}: keys are max_abs_prob and min_top1, got {part!r}")
        try:
            values[name] = float(value)
        except ValueError as exc:
            raise ConfigError(f"gate {text!r}: {name} must be a number, got {value!r}") from exc
    if not values:
        raise ConfigError(f"gate {text!r} sets no limit")
    gate = Gate(**values)
    check_gate_names({key: gate})
    return key, gate
