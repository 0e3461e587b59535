"""The fp32 gate's float64 arbiter (exporter/validation/float64.py): an fp32 file that fails only its max |dp| limit
passes when it is no further from a float64 Keras model than Keras float32 is (within FP32_FLOAT64_RATIO), and a
file that really computes something else still fails. Uses the session's small fp32 export (10 held-out images)."""

from __future__ import annotations

import numpy as np
import pytest

from exporter.validation.tolerances import FP32_FLOAT64_RATIO, PROBABILITY_ROUNDING

# A limit no float32 computation meets (probabilities near 1 are already 6e-8 apart), so every fp32 file fails the
# plain gate and is judged against float64.
UNREACHABLE = 1e-12
# Added to the head's biases of the reference model: moves probabilities by about 1e-4 (ten times the fp32 gate),
# far beyond float32 rounding, but not enough to flip the top-1 class of the sample's confident predictions.
BIAS_SHIFT = 2e-3


def _validate(out, images, **kw):
    import exporter
    from exporter.errors import ParityError

    try:
        return exporter.validate(out, images, **kw)
    except ParityError as exc:
        return exc.report


def test_a_file_as_exact_as_keras_float32_passes_a_gate_only_float64_can_judge(small_export):
    out, images = small_export
    report = _validate(out, images, gates={"fp32": {"max_abs_prob": UNREACHABLE}})
    rows = [a for a in report["artifacts"] if a["variant"] == "fp32"]
    assert len(rows) == 3
    for row in rows:
        check = row["float64"]
        assert row["max_abs_prob"] > UNREACHABLE  # the plain gate failed ...
        assert 0 < check["keras_fp32_max_abs_prob"] < 1e-5  # ... at float32 rounding level
        assert check["limit"] == pytest.approx(FP32_FLOAT64_RATIO * check["keras_fp32_max_abs_prob"] + PROBABILITY_ROUNDING)
        assert check["passed"] == (check["artifact_max_abs_prob"] <= check["limit"])
        assert row["status"] == ("passed" if check["passed"] else "failed")
        assert "float64" in check["note"]
    assert all(r["float64"]["passed"] for r in rows), [r["float64"]["note"] for r in rows]


def test_a_file_that_computes_something_else_still_fails(small_export):
    from exporter.exports import open_export
    from exporter.validation.parity import measure

    out, images = small_export
    opened = open_export(out)  # then the reference model is changed in memory: the files no longer compute it
    head = [layer for layer in opened.loaded.model.layers if len(layer.get_weights()) == 2][-1]  # the classifier
    kernel, bias = head.get_weights()
    head.set_weights([kernel, bias + BIAS_SHIFT * np.arange(len(bias))])  # not a softmax-invariant shift
    report = measure(opened, images, gates={})
    rows = [a for a in report["artifacts"] if a["variant"] == "fp32"]
    assert len(rows) == 3
    for row in rows:
        assert row["top1_agreement"] == 1.0 and row["max_abs_prob"] > 1e-5, row["path"]
        check = row["float64"]
        assert not check["passed"] and row["status"] == "failed", check["note"]
        assert check["artifact_max_abs_prob"] > 10 * check["keras_fp32_max_abs_prob"]


def test_relative_error_weighs_a_confident_image_like_a_near_tie():
    """max_relative_error is |d log p| (to first order) whatever p is, where max |dp| scales with p(1 - p); classes
    below the floor (exp() underflow territory) are left out. Expected values from the logits, not from the code."""
    from exporter.validation.float64 import RELATIVE_ERROR_FLOOR, max_relative_error

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    logits = np.array([[0.0, 0.5, -40.0], [0.0, 9.0, -40.0]])  # a near tie, a confident image, a class near 1e-18
    exact = softmax(logits)
    shift = np.array([0.0, 1e-5, 0.0])  # the same logit error on both images
    got = softmax(logits + shift)
    # p_j' / p_j = exp(shift_j) / sum_k p_k exp(shift_k)
    ratio = np.exp(shift) / (exact * np.exp(shift)).sum(1, keepdims=True)
    kept = exact >= RELATIVE_ERROR_FLOOR
    assert not kept[:, 2].any()
    want = np.abs(ratio - 1)[kept].max()
    assert max_relative_error(got, exact) == pytest.approx(want, rel=1e-6)
    per_image = [max_relative_error(got[i : i + 1], exact[i : i + 1]) for i in range(2)]
    dp = np.abs(got - exact).max(1)
    assert dp[0] > 100 * dp[1]  # max |dp| is decided by the near tie ...
    assert per_image[1] > 0.3 * per_image[0]  # ... the relative error sees both images' equal logit error
    got[1, 2] = 0.0  # an underflowed class below the floor does not count
    assert max_relative_error(got, exact) == pytest.approx(want, rel=1e-6)


def test_a_non_finite_value_is_an_infinite_error_not_a_nan_that_passes_every_limit():
    """family_check's float64 errors and the validator's float64 check compare these numbers with limits; a NaN would
    compare False with any of them."""
    from exporter.validation.float64 import max_abs_error, max_relative_error
    from sample_models.family_check import float64_bar_misses

    exact = np.array([[0.7, 0.3]])
    got = np.array([[np.nan, 0.3]])
    assert max_abs_error(got, exact) == np.inf and max_relative_error(got, exact) == np.inf
    f64 = {"mlpackage": max_abs_error(got, exact), "onnx": 1e-6, "relative": {"mlpackage": max_relative_error(got, exact), "onnx": 1e-5}}
    assert [m for m in float64_bar_misses(f64) if "mlpackage" in m]
