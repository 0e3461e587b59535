"""The HTML report as a reader sees it: a summary card first, working links, readable sizes, the engine of every
artifact, and "N of M shown" when thumbnails are cut; checked in a real headless browser when one is installed."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
from conftest import sample

from exporter.report import html, terminal
from exporter.validation.accumulate import LabelStats, ParityStats
from exporter.validation.tolerances import default_gate

S = sample("mobilenet_v1_digits")
LABELS = [str(i) for i in range(10)]
ENGINES = {
    "onnx": {"name": "onnxruntime", "version": "1.22.0", "provider": "CPUExecutionProvider"},
    "mlpackage": {"name": "Linux Core ML executor", "version": "exporter 0.1.0"},
}


def _report() -> dict:
    """A report made by the same accumulators as `validate`, from real held-out images: the int8 file flips 30 of
    60 decisions (fails), the fp32 file agrees (passes), a w8a8 file could not run."""
    images = sorted(S["heldout"].rglob("*.png"))[:60]
    truth = np.array([int(p.parent.name) for p in images])
    ref = np.full((60, 10), 0.01, np.float32)
    ref[np.arange(60), truth] = 0.91
    got = ref.copy()
    got[:30] = np.roll(ref[:30], 1, axis=1)  # top-1 moves to the next class on the first 30 images
    keras = LabelStats(10)
    keras.update(ref, truth)
    rows = []
    for path, fmt, variant, size, probs in (
        ("m_fp32.mlpackage", "mlpackage", "fp32", 1_752_877, ref),
        ("m_int8.onnx", "onnx", "int8-dynamic", 574_186, got),
    ):
        stats = ParityStats(10)
        stats.update(ref, probs, [str(p) for p in images], truth, LABELS)
        metrics = stats.summary(LABELS, keras)
        gate = default_gate(fmt, variant)
        failures = gate.failures(metrics["max_abs_prob"], metrics["top1_agreement"])
        rows.append(
            {
                "path": path,
                "format": fmt,
                "variant": variant,
                "bytes": size,
                "ratio_to_fp32": 1.0 if variant == "fp32" else 0.344,
                "gate": gate.to_dict(),
                "engine": ENGINES[fmt],
                "status": "failed" if failures else "passed",
                "reason": "",
                "failures": failures,
                **metrics,
            }
        )
    rows.append(
        {
            "path": "m_w8a8.mlpackage",
            "format": "mlpackage",
            "variant": "w8a8",
            "bytes": 600_000,
            "ratio_to_fp32": 0.342,
            "gate": default_gate("mlpackage", "w8a8").to_dict(),
            "engine": None,
            "status": "not run",
            "reason": "needs macOS",
            "failures": [],
        }
    )
    return {
        "schema_version": 2,
        "exporter_version": "0.1.0",
        "export_dir": "out/m",
        "image_folder": str(S["heldout"]),
        "images": 60,
        "batch_size": 32,
        "labels": LABELS,
        "labels_unknown_to_model": [],
        "preprocessing": {"input_size": [32, 32], "channel_order": "RGB", "scale": [1 / 127.5], "bias": [-1.0]},
        "source": {"path": str(S["model"]), "sha256": "ab" * 32},
        "keras": {"against_labels": keras.summary(LABELS)},
        "reference": {"name": "Keras", "version": "3.15.1", "backend": "tensorflow"},
        "environment": {
            "platform": "Linux-test",
            "system": "Linux",
            "machine": "x86_64",
            "python": "3.11.7",
            "date": "2026-11-30T19:00:00Z",
        },
        "artifacts": rows,
        "passed": False,
        "not_run": ["m_w8a8.mlpackage"],
    }


def test_html_report_structure(tmp_path):
    report = _report()
    assert [a["status"] for a in report["artifacts"]] == ["passed", "failed", "not run"]
    page = html.render(report)
    # the summary card comes before everything else and says what ran
    body = page[page.index("<body>") :]
    assert body.index('class="card fail-card"') < body.index("<table")
    assert "1</b> passed, <b>1</b> failed, <b>1</b> not run of 3" in page
    assert "Linux Core ML executor (exporter 0.1.0)" in page and "onnxruntime 1.22.0" in page
    assert "not by Apple's Core ML" in page and "2026-11-30T19:00:00Z" in page
    # every in-page link has its target
    targets = set(re.findall(r'id="([^"]+)"', page))
    links = set(re.findall(r'href="#([^"]+)"', page))
    assert links and links <= targets, links - targets
    # thumbnails cut to 12 say so; sizes readable; ratios printed the same way
    assert "Top-1 flipped (12 of 30 shown)" in page and "Top-1 flipped (0)" in page
    assert ">1.8 MB<" in page and ">574.2 kB<" in page and ">1.000<" in page and ">0.344<" in page
    assert page.count("data:image/png;base64,") >= 12 + 8 + 2  # thumbnails, worst cases, the plots
    table = terminal.parity_table(report)
    assert "Linux Core ML executor (exporter 0.1.0)" in table and "not on Apple's Core ML" in table


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on PATH (Debian: apt-get install chromium)")
def test_html_report_in_a_headless_browser(tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    html.write(_report(), page)
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1400,1800",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (1800, 1400)
    # the failed summary card (#fdedec with a #c0392b border) is drawn at the top of the page
    top = img[:250]
    card = (np.abs(top - [0xFD, 0xED, 0xEC]).sum(axis=2) < 12).mean()
    border = (np.abs(top - [0xC0, 0x39, 0x2B]).sum(axis=2) < 30).sum()
    assert card > 0.05 and border > 200, (card, border)
    # and the page below it is not blank: tables and plots put many distinct colours on screen
    assert len(np.unique(img[250:].reshape(-1, 3), axis=0)) > 200
