"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def _table(rows: Sequence[tuple[str, ...]], right: Collection[int] = frozenset()) -> list[str]:
    from ..errors import printable

    rows = [tuple(printable(c) for c in r) for r in rows]  # cells quote untrusted names: shown, never obeyed
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in rows
    ]


def size_table(manifest: dict) -> str:
    # bits/32: the ratio the weights' bit width alone would give (README's tables name it so); "limit" read as a
    # bound every compressed file broke
    rows = [("artifact", "bytes", "vs fp32", "bits/32", "target")]
    for a in manifest["artifacts"]:
        ratio = "" if a["ratio_to_fp32"] is None else f"{a['ratio_to_fp32']:.3f}"
        rows.append((a["path"], f"{a['bytes']:,}", ratio, f"{a['details']['theoretical_ratio']:.3f}", a["minimum_deployment_target"]))
    lines = _table(rows, right={1, 2, 3, 4})
    lines += [f"skipped {s['format']}:{s['variant']}: {s['reason']}" for s in manifest.get("skipped", [])]
    if manifest.get("auto_selection"):
        for fmt, sel in manifest["auto_selection"].items():
            lines.append(f"--quantize auto picked {fmt}:{sel['picked']} (tried {', '.join(t['variant'] for t in sel['tried'])})")
    return "\n".join(lines)


UNKNOWN_FOLDERS_SHOWN = 5  # sub-folder names that match no label, named in the table (all of them are in the JSON)


# Columns a narrow terminal loses, in this order, until the table fits (the JSON and the HTML report keep them): the
# two spreads of the probabilities, the engine (the notes under the table name the Linux executor), the top-5 overlap;
# the artifact, its verdict, top-1, max |dp|, accuracy and failures stay.
NARROW_DROPS = ("KL", "mean |dp|", "engine", "top-5")


def parity_table(report: dict, width: int | None = None) -> str:
    """The report as a table, then its notes and the verdict line. ``width``: the terminal's columns; columns of
    NARROW_DROPS are left out, in that order, until the table fits (a note names them)."""
    from ..runtime import engine_text

    rows: list[tuple[str, ...]] = [
        ("artifact", "status", "engine", "top-1", "top-5", "max |dp|", "mean |dp|", "KL", "accuracy", "failures")
    ]
    for a in report["artifacts"]:
        if a["status"] == "not run":
            rows.append((a["path"], "NOT RUN", "", "", "", "", "", "", "", a["reason"]))
            continue
        lab = a.get("against_labels")
        acc = "" if not lab else f"{lab['accuracy']:.4f} ({lab['accuracy_change']:+.4f})"
        rows.append(
            (
                a["path"],
                a["status"].upper() if a["status"] == "failed" else a["status"],
                engine_text(a.get("engine")),
                f"{a['top1_agreement']:.4f}",
                f"{a['top5_overlap']:.4f}",
                f"{a['max_abs_prob']:.2e}",
                f"{a['mean_abs_prob']:.2e}",
                f"{a['mean_kl']:.2e}",
                acc,
                "; ".join(a["failures"]),
            )
        )
    lines = _table(rows)
    dropped: list[str] = []
    for column in NARROW_DROPS:
        if width is None or max(len(line) for line in lines) <= width:
            break
        keep = [i for i, name in enumerate(rows[0]) if name != column]
        rows = [tuple(r[i] for i in keep) for r in rows]
        dropped.append(column)
        lines = _table(rows)
    if dropped:
        lines.append(f"left out to fit {width} columns: {', '.join(dropped)} (in --json and --html)")
    lines += [f"{a['path']}: float64 check: {a['float64']['note']}" for a in report["artifacts"] if a.get("float64")]
    lines += [
        f"{a['path']}: on its {a['flipped_count']} flipped image(s) Keras' answer led the file's by at most "
        f"{a['flipped_max_keras_margin']:.2g} in probability"
        for a in report["artifacts"]
        if a["status"] == "failed" and a.get("flipped_count") and "flipped_max_keras_margin" in a
    ]
    keras = (report.get("keras") or {}).get("against_labels")
    if keras:
        lines.append(f"Keras accuracy {keras['accuracy']:.4f} on {keras['images']} labelled of {report['images']} images")
    unknown = report.get("labels_unknown_to_model") or []
    if unknown:  # a folder named "Cat" for the label "cat": its images silently left out of the accuracy otherwise
        from ..safety import quote

        shown = ", ".join(quote(name) for name in unknown[:UNKNOWN_FOLDERS_SHOWN])
        more = f" and {len(unknown) - UNKNOWN_FOLDERS_SHOWN} more" if len(unknown) > UNKNOWN_FOLDERS_SHOWN else ""
        lines.append(f"{len(unknown)} sub-folder name(s) are not labels of the model, their images count as unlabelled: {shown}{more}")
    if report.get("calibration_images_left_out"):
        lines.append(f"{report['calibration_images_left_out']} images of the folder left out: they calibrated the quantized files")
    if report.get("not_run"):
        lines.append(f"{len(report['not_run'])} artifact(s) NOT RUN: their parity is unchecked here")
    env = report.get("environment")
    if env:
        lines.append(f"{env['platform']}, Python {env['python']}, {env['date']}")
    if any((a.get("engine") or {}).get("name") == "Linux Core ML executor" for a in report["artifacts"]):
        lines.append("Core ML files ran on the Linux Core ML executor (this toolkit's numpy implementation), not on Apple's Core ML")
    lines.append(verdict_line(report))
    return "\n".join(lines)


def verdict(report: dict) -> tuple[str, str]:
    """(word, sentence) for the report: PASSED, FAILED, or UNCHECKED when every artifact that ran passed but one could
    not run here (validate exits 8 then, not 0). The terminal table ends with it and the HTML card opens with it."""
    arts = report["artifacts"]
    failed = [a["path"] for a in arts if a["status"] == "failed"]
    not_run = [a["path"] for a in arts if a["status"] == "not run"]
    if not arts:
        return "UNCHECKED", "no artifact was judged"
    if failed:
        return "FAILED", f"{len(failed)} of {len(arts)} artifacts failed their gates: {', '.join(failed)}"
    if not_run:
        return "UNCHECKED", (
            f"every artifact that ran passed, but {len(not_run)} of {len(arts)} could not be run here: {', '.join(not_run)}"
        )
    return "PASSED", f"all {len(arts)} artifacts met their gates"


def verdict_line(report: dict) -> str:
    from ..errors import printable

    word, sentence = verdict(report)
    return printable(f"{word}: {sentence}")
