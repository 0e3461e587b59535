"""A self-contained HTML parity report: every plot and thumbnail is embedded as a base64 PNG, so the single file opens
offline in any browser."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

THUMB_PX = 96
# Plots stay a bounded image whatever the labels: a confusion matrix sized 0.45 inch per class made a 1000-class
# (ImageNet) model's a 40,000-pixel square (6 GB) and one 20,000-character label a picture as wide; both ended the
# report in MemoryError after the whole validation had run. The tables keep every label whole.
MAX_FIGURE_INCHES = 24  # 2160 px at the 90 dpi of _png
PLOT_TEXT_CHARS = 32  # a label or name drawn in a plot is cut to this, with an ellipsis
MAX_TICK_LABELS = 60  # above this many classes the matrix is drawn without class names on its axes
MAX_CELL_COUNTS = 30  # above this many classes, without the count written in each cell
# Thumbnails of flipped images per artifact; the heading says how many of how many are shown.
SHOWN_FLIPPED = 12
# Above this many classes the per-class table starts folded (<details>): 1000 rows of it pushed every artifact's
# flipped images and worst disagreements below a thousand lines of mostly-empty classes.
MAX_OPEN_CLASS_ROWS = 30
# Per-class F1 changes named under an artifact's confusion matrix, largest first; the rest are counted.
SHOWN_F1_CHANGES = 10


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _short(text: str) -> str:
    text = str(text)
    return text if len(text) <= PLOT_TEXT_CHARS else text[: PLOT_TEXT_CHARS - 1] + "…"


def _figure(*args, **kw):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kw)


def _agreement_and_size(report: dict) -> str:
    """Top-1 agreement per artifact with its gate drawn on its bar, and size relative to fp32."""
    run = [a for a in report["artifacts"] if a["status"] != "not run"]
    allart = report["artifacts"]
    fig, (ax1, ax2) = _figure(2, 1, figsize=(9, max(4, 0.6 * len(allart) + 2)))
    names = [_short(a["path"]) for a in run]
    colours = ["#c0392b" if a["status"] == "failed" else "#27ae60" for a in run]
    values = [a["top1_agreement"] for a in run]
    gates = [a["gate"].get("min_top1") for a in run]
    low = min([v for v in values + gates if v is not None] + [0.9])
    left = max(0.0, low - 0.02)  # every bar and gate visible, with a little room to its left
    ax1.barh(names, [v - left for v in values], left=left, color=colours)
    for i, (v, g) in enumerate(zip(values, gates, strict=True)):
        ax1.text(v, i, f" {v:.4f}", va="center", fontsize=8)
        if g is not None:
            ax1.plot([g, g], [i - 0.45, i + 0.45], color="black", linewidth=2)
    ax1.plot([], [], color="black", linewidth=2, label="gate (min top-1)")
    ax1.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    ax1.set_xlim(left, 1.0 + (1.0 - left) * 0.12)
    ax1.set_title("top-1 agreement with Keras (black tick: the artifact's gate)")
    ax1.invert_yaxis()
    ax2.barh([_short(a["path"]) for a in allart], [a.get("ratio_to_fp32") or 0 for a in allart], color="#2980b9")
    for i, a in enumerate(allart):
        if a.get("ratio_to_fp32"):
            ax2.text(a["ratio_to_fp32"], i, f" {a['ratio_to_fp32']:.3f}", va="center", fontsize=8)
    ax2.set_xlim(0, 1.15)
    ax2.set_title("size relative to fp32 of the same format")
    ax2.invert_yaxis()
    fig.tight_layout()
    return _png(fig)


def _size_vs_agreement(report: dict) -> str:
    run = [a for a in report["artifacts"] if a["status"] != "not run"]
    fig, ax = _figure(figsize=(8, 4.5))
    markers = {"mlpackage": "o", "mlmodel": "s", "onnx": "^"}
    for fmt in dict.fromkeys(a["format"] for a in run):
        rows = [a for a in run if a["format"] == fmt]
        ax.scatter(
            [a["bytes"] / 1e6 for a in rows],
            [a["top1_agreement"] for a in rows],
            marker=markers.get(fmt, "o"),
            s=50,
            label=fmt,
            c=["#c0392b" if a["status"] == "failed" else "#27ae60" for a in rows],
            edgecolors="black",
        )
        for a in rows:
            ax.annotate(a["variant"], (a["bytes"] / 1e6, a["top1_agreement"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("size (MB)")
    ax.set_ylabel("top-1 agreement with Keras")
    ax.set_title("size vs agreement (up and left is better; red: failed its gate)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _confusion(cm: list[list[int]], labels: list[str], title: str) -> str:
    counts = np.asarray(cm)
    n = len(labels)
    side = min(0.45 * n + 2, MAX_FIGURE_INCHES)
    fig, ax = _figure(figsize=(side, min(side - 0.5, MAX_FIGURE_INCHES)))
    # colours from zero: a matrix of one class (or all counts equal) would be drawn in the palest blue, under a white count
    ax.imshow(counts, cmap="Blues", interpolation="nearest", vmin=0, vmax=max(int(counts.max()), 1))
    if n <= MAX_TICK_LABELS:
        names = [_short(label) for label in labels]
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
    if n <= MAX_CELL_COUNTS:
        for (i, j), v in np.ndenumerate(counts):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > counts.max() / 2 else "black")
    ax.set_xlabel("predicted" if n <= MAX_TICK_LABELS else f"predicted (class index; {n} classes)")
    ax.set_ylabel("true")
    ax.set_title(_short(title))
    return _png(fig)


def _thumb(path: str, pre) -> str:
    from PIL import Image

    from ..images import ImageError, load_image

    try:
        x = load_image(path, pre)
    except ImageError:
        return ""
    if pre.channel_order == "BGR":
        x = x[..., ::-1]
    img = Image.fromarray(np.ascontiguousarray(x).squeeze()).resize((THUMB_PX, THUMB_PX), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _image_rows(rows: list[dict], pre) -> str:
    cells = []
    for r in rows:
        src = _thumb(r["image"], pre)
        cells.append(
            f'<figure><img src="{src}" width="{THUMB_PX}" height="{THUMB_PX}" alt="">'
            f"<figcaption>{html.escape(Path(r['image']).name)}<br>Keras {html.escape(r['keras'])} "
            f"{r['keras_p']:.3f}<br>converted {html.escape(r['converted'])} {r['converted_p']:.3f}<br>"
            f"max |dp| {r['max_abs_prob']:.2e}</figcaption></figure>"
        )
    return '<div class="thumbs">' + "".join(cells) + "</div>" if cells else "<p>none</p>"


def _breakable(text: str) -> str:
    """``text`` escaped, with a line-break opportunity (<wbr>) after each _ . - /: a long file name or label in a
    narrow table cell wraps at its parts (mobilenet_v2_digits_ / fp32.mlpackage), and only a part longer than the
    cell is cut anywhere (td.label's overflow-wrap)."""
    import re

    return re.sub(r"([_.\-/])", r"\1<wbr>", html.escape(str(text)))


def _anchor(path: str) -> str:
    return "a-" + "".join(c if c.isalnum() else "-" for c in path)


def _engine(a: dict) -> str:
    from ..runtime import engine_text

    return engine_text(a.get("engine"))


def _summary(report: dict) -> str:
    esc = html.escape
    counts = {s: sum(a["status"] == s for a in report["artifacts"]) for s in ("passed", "failed", "not run")}
    engines = sorted({_engine(a) for a in report["artifacts"] if a.get("engine")})
    env = report.get("environment", {})
    from .terminal import verdict

    word = verdict(report)[0]  # UNCHECKED (exit 8) is not drawn as a green pass
    card = {"PASSED": "pass", "FAILED": "fail"}.get(word, "warn")
    linux_note = ""
    if any((a.get("engine") or {}).get("name") == "Linux Core ML executor" for a in report["artifacts"]):
        linux_note = (
            '<p class="note">Core ML files were run by the Linux Core ML executor (this toolkit\'s own '
            "implementation), not by Apple's Core ML: a pass here is a pass of the executor.</p>"
        )
    ref = report.get("reference") or {}
    return (
        f'<section class="card {card}-card"><h1>{word}</h1>'
        f"<p><b>{counts['passed']}</b> passed, <b>{counts['failed']}</b> failed, <b>{counts['not run']}</b> not run "
        f"of {len(report['artifacts'])} artifacts, on {report['images']} images from "
        f"{esc(report['image_folder'])}{_left_out(report)}</p>{_problems(report)}"
        f"<p>engines: {esc(', '.join(engines)) or 'none'}; reference: {esc(ref.get('name', 'Keras'))} "
        f"{esc(ref.get('version', ''))}</p>"
        f"<p>{esc(env.get('platform', ''))}, Python {esc(env.get('python', ''))}, {esc(env.get('date', ''))}; "
        f"exporter {esc(report.get('exporter_version', ''))}</p>{linux_note}</section>"
    )


def _problems(report: dict) -> str:
    """The failed and not-run artifacts, each linked to its section, with what failed or why it did not run: the
    first thing a reader of a failed report looks for, at the top instead of somewhere in the table."""
    esc = html.escape
    items = []
    for a in report["artifacts"]:
        if a["status"] == "failed":
            items.append(
                f'<li><a href="#{_anchor(a["path"])}">{esc(a["path"])}</a> <span class="fail">failed</span>: '
                f"{esc('; '.join(a['failures']))}</li>"
            )
        elif a["status"] == "not run":
            items.append(f'<li>{esc(a["path"])} <span class="skip">not run</span>: {esc(a["reason"])}</li>')
    return f'<ul class="problems">{"".join(items)}</ul>' if items else ""


def _fold(summary: str, body: str, *, opened: bool) -> str:
    """``body`` under a <details> heading ``summary`` (HTML), folded unless ``opened``."""
    return f"<details{' open' if opened else ''}><summary>{summary}</summary>{body}</details>"


def _f1_changes(per_class: list[dict]) -> str:
    changed = sorted((r for r in per_class if abs(r["f1_change"]) > 0), key=lambda r: -abs(r["f1_change"]))
    text = ", ".join(f"{r['label']}: F1 {r['f1_change']:+.3f}" for r in changed[:SHOWN_F1_CHANGES])
    if len(changed) > SHOWN_F1_CHANGES:
        text += f" and {len(changed) - SHOWN_F1_CHANGES} more (largest first; every class is in the JSON report)"
    return text


def render(report: dict) -> str:
    """The report page. Labels and file names are untrusted text: matplotlib must not parse '$...$' in them as math
    (a label such as '$x_{$' would make it raise)."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        return _render(report)


def _render(report: dict) -> str:
    from ..console import human_bytes
    from ..preprocessing import Preprocessing

    pre = Preprocessing.from_dict(report["preprocessing"])
    labels = report["labels"]
    esc = html.escape
    ratio = lambda a: "" if a.get("ratio_to_fp32") is None else f"{a['ratio_to_fp32']:.3f}"  # noqa: E731
    nav = " · ".join(f'<a href="#{_anchor(a["path"])}">{esc(a["path"])}</a>' for a in report["artifacts"] if a["status"] != "not run")
    parts = [
        _summary(report),
        f'<nav><a href="#artifacts">artifacts</a> · <a href="#plots">plots</a> · <a href="#labels">against the labels</a> · {nav}</nav>',
        f"<p>Export {esc(report['export_dir'])}; source model {esc(report['source']['path'])} "
        f"(SHA-256 {report['source']['sha256'][:16]}…)</p>",
        '<h2 id="artifacts">Artifacts</h2><table><tr><th>artifact</th><th>status</th><th>engine</th><th>size</th>'
        "<th>vs fp32</th><th>top-1</th><th>top-5</th><th>max |dp|</th><th>mean |dp|</th><th>mean KL</th>"
        "<th>accuracy</th><th>gate</th><th>failures / reason</th></tr>",
    ]
    for a in report["artifacts"]:
        gate = ", ".join(f"{k} {v:g}" for k, v in a["gate"].items() if v is not None)
        size = f'<td title="{a["bytes"]:,} bytes">{human_bytes(a["bytes"])}</td>'
        if a["status"] == "not run":
            parts.append(
                f'<tr><td class="label">{_breakable(a["path"])}</td><td class="skip">not run</td><td>{esc(_engine(a))}</td>'
                f"{size}<td>{ratio(a)}</td><td colspan=6></td><td>{esc(gate)}</td>"
                f"<td>{esc(a['reason'])}</td></tr>"
            )
            continue
        lab = a.get("against_labels")
        acc = "" if not lab else f"{lab['accuracy']:.4f}"
        parts.append(
            f'<tr><td class="label"><a href="#{_anchor(a["path"])}">{_breakable(a["path"])}</a></td>'
            f'<td class="{"fail" if a["status"] == "failed" else "pass"}">{a["status"]}</td>'
            f"<td>{esc(_engine(a))}</td>{size}<td>{ratio(a)}</td>"
            f"<td>{a['top1_agreement']:.4f}</td><td>{a['top5_overlap']:.4f}</td>"
            f"<td>{a['max_abs_prob']:.2e}</td><td>{a['mean_abs_prob']:.2e}</td><td>{a['mean_kl']:.2e}</td>"
            f"<td>{acc}</td><td>{esc(gate)}</td>"
            f"<td>{esc('; '.join(a['failures']))}</td></tr>"
        )
    parts.append("</table>")
    if any(a["status"] != "not run" for a in report["artifacts"]):
        parts.append(
            f'<h2 id="plots">Agreement and size per variant</h2><img src="{_agreement_and_size(report)}" '
            f'alt="top-1 agreement and size per artifact"><img src="{_size_vs_agreement(report)}" '
            'alt="size against top-1 agreement">'
        )
    keras = report["keras"]["against_labels"]
    if keras:
        parts.append('<h2 id="labels">Against the folder labels</h2>')
        n_classes = len(keras["per_class"])
        fold = lambda summary, body: _fold(summary, body, opened=n_classes <= MAX_OPEN_CLASS_ROWS)  # noqa: E731
        parts.append(
            fold(
                f"Keras precision, recall and F1 per class ({n_classes} classes)",
                "<table><tr><th>class</th><th>Keras precision</th><th>recall</th><th>F1</th><th>support</th>"
                "</tr>"
                + "".join(
                    f'<tr><td class="label">{_breakable(r["label"])}</td><td>{r["precision"]:.3f}</td>'
                    f"<td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
                    for r in keras["per_class"]
                )
                + "</table>",
            )
        )
        parts.append(
            fold(
                f"Keras confusion matrix ({n_classes} classes)",
                f'<img src="{_confusion(keras["confusion_matrix"], labels, "Keras")}" alt="">',
            )
        )
        ran = [a for a in report["artifacts"] if a["status"] != "not run" and a.get("against_labels")]
        worst = sorted(ran, key=lambda a: a["top1_agreement"])[:3]
        for a in worst:
            changes = _f1_changes(a["against_labels"]["per_class"])
            matrix = f'<img src="{_confusion(a["against_labels"]["confusion_matrix"], labels, a["path"])}" alt="">'
            parts.append(
                f"<h3>{esc(a['path'])}</h3><p>F1 changes against Keras: {esc(changes) or 'none'}</p>"
                + fold(f"{esc(a['path'])} confusion matrix", matrix)
            )
    for a in report["artifacts"]:
        if a["status"] == "not run":
            continue
        flipped = a["flipped"][:SHOWN_FLIPPED]
        shown = f"{len(flipped)} of {a['flipped_count']} shown" if a["flipped_count"] > len(flipped) else f"{a['flipped_count']}"
        parts.append(
            f'<h2 id="{_anchor(a["path"])}">{esc(a["path"])} <a class="top" href="#artifacts">↑</a></h2>'
            f'<p>{esc(_engine(a))}; <span class="{"fail" if a["status"] == "failed" else "pass"}">{a["status"]}</span>'
            + (f": {esc('; '.join(a['failures']))}" if a["failures"] else "")
            + "</p>"
            + (f"<p>float64 check: {esc(a['float64']['note'])}</p>" if a.get("float64") else "")
            + f"<h3>Top-1 flipped ({shown})</h3>"
            + (
                f"<p>Keras' answer led the file's by at most {a['flipped_max_keras_margin']:.2g} in probability on these "
                "images (a small lead: near-ties Keras itself hesitated on).</p>"
                if a["flipped_count"] and "flipped_max_keras_margin" in a
                else ""
            )
            + _image_rows(flipped, pre)
            + f"<h3>Worst disagreements ({len(a['worst'])})</h3>"
            + _image_rows(a["worst"], pre)
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}td{text-align:right;white-space:nowrap}td:first-child,"
        "td:nth-child(3){text-align:left;white-space:normal;min-width:9em}td:nth-last-child(-n+2){text-align:left;white-space:normal}.pass{color:#1e8449}.fail{color:#c0392b;font-weight:bold}"
        ".skip{color:#7f8c8d}.thumbs{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;font-size:11px;overflow-wrap:anywhere;"
        "width:140px}img{image-rendering:pixelated;max-width:100%}.card{border-radius:8px;padding:0.5em 1.2em;"
        "margin-bottom:1em}.pass-card{background:#eafaf1;border:2px solid #27ae60}.fail-card{background:#fdedec;"
        "border:2px solid #c0392b}.card h1{margin:0.2em 0}.note{color:#7d6608}nav{margin:0.5em 0 1em;"
        "line-height:1.8}.warn-card{background:#fef9e7;border:2px solid #d68910}"
        "a.top{font-size:0.6em;text-decoration:none}td.label{white-space:normal;overflow-wrap:anywhere;min-width:12em;"
        "max-width:32em;text-align:left}.problems{margin:0.3em 0;overflow-wrap:anywhere}summary{cursor:pointer;margin:0.5em 0}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>Parity report</title><style>{style}</style>'
        f"</head><body>{''.join(parts)}</body></html>\n"
    )


def write(report: dict, path: str | Path) -> None:
    # a file name that is not UTF-8 (b"\xff.png" reaches Python as "\udcff.png") is shown as its escape, not a crash
    from ..packaging import write_text_atomic

    write_text_atomic(path, render(report), errors="backslashreplace")


def _left_out(report: dict) -> str:
    n = report.get("calibration_images_left_out") or 0
    return f" ({n} left out: they calibrated the quantized files)" if n else ""
