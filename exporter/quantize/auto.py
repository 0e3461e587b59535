"""``--quantize auto``: per format, the smallest file that keeps the decisions, and why each candidate was or was not.

A candidate is eligible when
1. its parity gate passed (top-1 agreement with Keras, and max |dp| where the variant has one);
2. its accuracy on the labelled images dropped by at most ``max_accuracy_drop`` points against Keras (images whose
   folder is not one of the model's classes count for agreement, not for accuracy); and
3. its minimum deployment target is no newer than ``min_target`` (Core ML files; ONNX files have no OS target).
Of the eligible files, the smallest (bytes on disk) is picked. Pure function of the export manifest and the parity
report, so that it is tested without exporting anything.
"""

from __future__ import annotations

import re

from ..errors import ConfigError

# A user who asks for the smallest file still expects it to classify like the model they trained. One point of
# accuracy on held-out images is the loss people usually accept for a 4-8x smaller file (Apple's and PyTorch's
# post-training quantization guides report int8 within about one point on ImageNet classifiers); larger losses should
# be a decision the user makes with --max-accuracy-drop, not a default.
DEFAULT_MAX_ACCURACY_DROP = 1.0  # percentage points

_TARGET = re.compile(r"^(iOS|macOS)(\d+)$")


def target_rank(target: str | None) -> int | None:
    """iOS13 -> 13 ...; None for a target that is not an OS version (ONNX opsets, "unknown")."""
    m = _TARGET.match(target or "")
    return int(m.group(2)) if m else None


def check_min_target(target: str | None) -> None:
    if target is not None and (target_rank(target) is None or not target.startswith("iOS")):
        raise ConfigError(f"min_target must look like iOS15 (iOS13 to iOS26), got {target!r}")


def choose(
    artifacts: list[dict], report: dict, *, max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP, min_target: str | None = None
) -> tuple[dict, list[dict]]:
    """(selection per format, the artifacts picked). ``artifacts`` are manifest entries, ``report`` the parity
    report of the same folder. Every candidate row says ``picked``, or ``rejected`` with its reasons, or
    ``eligible`` (passed everything but a smaller file was picked)."""
    if not max_accuracy_drop >= 0:
        raise ConfigError(f"max_accuracy_drop must be a number of points >= 0, got {max_accuracy_drop}")
    check_min_target(min_target)
    by_path = {r["path"]: r for r in report["artifacts"]}
    selection, keep = {}, []
    for fmt in dict.fromkeys(a["format"] for a in artifacts):
        tried = sorted((a for a in artifacts if a["format"] == fmt), key=lambda a: a["bytes"])
        rows, picked = [], None
        for a in tried:
            parity = by_path[a["path"]]
            reasons = _reasons(a, parity, max_accuracy_drop, min_target)
            labels = parity.get("against_labels") or {}
            drop = -100.0 * labels["accuracy_change"] if "accuracy_change" in labels else None
            row = {
                "variant": a["variant"],
                "bytes": a["bytes"],
                "target": a.get("minimum_deployment_target"),
                "status": parity["status"],
                "top1_agreement": parity.get("top1_agreement"),
                "accuracy_drop_points": None if drop is None else round(drop, 3),
                "failures": parity.get("failures", []),
                "reason": parity.get("reason", ""),
            }
            if reasons:
                row.update(decision="rejected", why=reasons)
            elif picked is None:
                picked = a
                why = [
                    f"smallest file that passes its gate, within {max_accuracy_drop:g} accuracy points"
                    + (f" and runs on {min_target}" if min_target else "")
                ]
                if drop is None:
                    why.append("no labelled images among the validation images: accuracy drop not checked")
                row.update(decision="picked", why=why)
            else:
                row.update(decision="eligible", why=[f"larger than the picked {picked['variant']}"])
            rows.append(row)
        selection[fmt] = {
            "picked": picked["variant"] if picked else None,
            "max_accuracy_drop": max_accuracy_drop,
            "min_target": min_target,
            "tried": rows,
        }
        if picked:
            keep.append(picked)
    return selection, keep


def _reasons(art: dict, parity: dict, max_drop: float, min_target: str | None) -> list[str]:
    out = []
    if parity["status"] == "not run":
        out.append(f"not run here: {parity.get('reason') or 'no runtime'}")
    elif parity["status"] != "passed":
        out.append("parity gate failed: " + ", ".join(parity.get("failures") or ["unknown"]))
    labels = parity.get("against_labels") or {}
    if "accuracy_change" in labels:
        drop = -100.0 * labels["accuracy_change"]
        if drop > max_drop + 1e-9:  # accuracy is a ratio of counts; 1e-9 keeps "exactly at the budget" inside it
            out.append(f"accuracy drop {drop:.2f} points > budget {max_drop:g}")
    target = art.get("minimum_deployment_target")
    need, limit = target_rank(target), target_rank(min_target) if min_target else None
    if limit is not None and need is not None and need > limit:
        out.append(f"needs {target}, newer than min_target {min_target}")
    return out
