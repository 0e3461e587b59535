"""A self-contained HTML parity report: every plot and thumbnail is embedded as a base64 PNG, so the single file opens
offline in any browser."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

THUMB_PX = 96


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(*args, **kw):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kw)


def _agreement_and_size(report: dict) -> str:
    run = [a for a in report["artifacts"] if a["status"] != "not run"]
    allart = report["artifacts"]
    fig, (ax1, ax2) = _figure(2, 1, figsize=(9, max(4, 0.6 * len(allart) + 2)))
    names = [a["path"] for a in run]
    colours = ["#c0392b" if a["status"] == "failed" else "#27ae60" for a in run]
    ax1.barh(names, [a["top1_agreement"] for a in run], color=colours)
    ax1.set_xlim(min([0.9] + [a["top1_agreement"] - 0.01 for a in run]), 1.0)
    ax1.set_title("top-1 agreement with Keras")
    ax1.invert_yaxis()
    ax2.barh([a["path"] for a in allart], [a.get("ratio_to_fp32") or 0 for a in allart], color="#2980b9")
    ax2.set_title("size relative to fp32")
    ax2.invert_yaxis()
    return _png(fig)


def _confusion(cm: list[list[int]], labels: list[str], title: str) -> str:
    counts = np.asarray(cm)
    fig, ax = _figure(figsize=(0.45 * len(labels) + 2, 0.45 * len(labels) + 1.5))
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(len(labels)), labels)
    for (i, j), v in np.ndenumerate(counts):
        if v:
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > counts.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
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
        cells.append(f'<figure><img src="{src}" width="{THUMB_PX}" height="{THUMB_PX}" alt="">'
                     f"<figcaption>{html.escape(Path(r['image']).name)}<br>Keras {html.escape(r['keras'])} "
                     f"{r['keras_p']:.3f}<br>converted {html.escape(r['converted'])} {r['converted_p']:.3f}<br>"
                     f"max |dp| {r['max_abs_prob']:.2e}</figcaption></figure>")
    return '<div class="thumbs">' + "".join(cells) + "</div>" if cells else "<p>none</p>"


def render(report: dict) -> str:
    from ..preprocessing import Preprocessing

    pre = Preprocessing.from_dict(report["preprocessing"])
    labels = report["labels"]
    esc = html.escape
    parts = [f"<h1>Parity report: {esc(report['export_dir'])}</h1>",
             f"<p>{report['images']} images from {esc(report['image_folder'])}; source model "
             f"{esc(report['source']['path'])} (SHA-256 {report['source']['sha256'][:16]}…); "
             f"overall: <b class=\"{'pass' if report['passed'] else 'fail'}\">"
             f"{'PASSED' if report['passed'] else 'FAILED'}</b>"
             + (f"; {len(report['not_run'])} artifact(s) not run" if report["not_run"] else "") + "</p>",
             "<h2>Artifacts</h2><table><tr><th>artifact</th><th>status</th><th>bytes</th><th>vs fp32</th>"
             "<th>top-1</th><th>top-5</th><th>max |dp|</th><th>mean |dp|</th><th>mean KL</th><th>accuracy</th>"
             "<th>gate</th><th>failures / reason</th></tr>"]
    for a in report["artifacts"]:
        gate = ", ".join(f"{k} {v:g}" for k, v in a["gate"].items() if v is not None)
        if a["status"] == "not run":
            parts.append(f"<tr><td>{esc(a['path'])}</td><td class=\"skip\">not run</td><td>{a['bytes']:,}</td>"
                         f"<td>{a['ratio_to_fp32'] or ''}</td><td colspan=6></td><td>{esc(gate)}</td>"
                         f"<td>{esc(a['reason'])}</td></tr>")
            continue
        lab = a.get("against_labels")
        acc = "" if not lab else f"{lab['accuracy']:.4f}"
        parts.append(f"<tr><td>{esc(a['path'])}</td><td class=\"{'fail' if a['status'] == 'failed' else 'pass'}\">"
                     f"{a['status']}</td><td>{a['bytes']:,}</td><td>{a['ratio_to_fp32'] or ''}</td>"
                     f"<td>{a['top1_agreement']:.4f}</td><td>{a['top5_overlap']:.4f}</td>"
                     f"<td>{a['max_abs_prob']:.2e}</td><td>{a['mean_abs_prob']:.2e}</td><td>{a['mean_kl']:.2e}</td>"
                     f"<td>{acc}</td><td>{esc(gate)}</td>"
                     f"<td>{esc('; '.join(a['failures']))}</td></tr>")
    parts.append("</table>")
    parts.append(f'<h2>Agreement and size per variant</h2><img src="{_agreement_and_size(report)}" alt="">')
    keras = report["keras"]["against_labels"]
    if keras:
        parts.append("<h2>Against the folder labels</h2>")
        parts.append("<table><tr><th>class</th><th>Keras precision</th><th>recall</th><th>F1</th><th>support</th>"
                     "</tr>" + "".join(f"<tr><td>{esc(r['label'])}</td><td>{r['precision']:.3f}</td>"
                                       f"<td>{r['recall']:.3f}</td><td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
                                       for r in keras["per_class"]) + "</table>")
        parts.append(f'<img src="{_confusion(keras["confusion_matrix"], labels, "Keras")}" alt="">')
        ran = [a for a in report["artifacts"] if a["status"] != "not run" and a.get("against_labels")]
        worst = sorted(ran, key=lambda a: a["top1_agreement"])[:3]
        for a in worst:
            changes = ", ".join(f"{r['label']}: F1 {r['f1_change']:+.3f}" for r in a["against_labels"]["per_class"]
                                if abs(r["f1_change"]) > 0)
            parts.append(f"<h3>{esc(a['path'])}</h3><p>F1 changes against Keras: {esc(changes) or 'none'}</p>"
                         f'<img src="{_confusion(a["against_labels"]["confusion_matrix"], labels, a["path"])}" alt="">')
    for a in report["artifacts"]:
        if a["status"] == "not run":
            continue
        parts.append(f"<h2>{esc(a['path'])}</h2><h3>Top-1 flipped ({a['flipped_count']})</h3>"
                     + _image_rows(a["flipped"][:12], pre) + "<h3>Worst disagreements</h3>"
                     + _image_rows(a["worst"], pre))
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}.pass{color:#1e8449}.fail{color:#c0392b;"
             "font-weight:bold}.skip{color:#7f8c8d}.thumbs{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;"
             "font-size:11px;width:140px}img{image-rendering:pixelated;max-width:100%}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Parity report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>\n")


def write(report: dict, path: str | Path) -> None:
    Path(path).write_text(render(report), encoding="utf-8")
