"""The benchmarks' README writers: each rewrites only its own block, from the numbers its run saved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    """The benchmarks folder importable as its scripts see it (run.py imports its siblings by their bare names)."""
    import importlib

    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    return importlib.import_module


def test_replace_block_rewrites_only_between_its_markers(tmp_path, bench):
    readme_block = bench("benchmarks.readme_block")
    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- a:start -->\nold\n<!-- a:end -->\nafter <!-- b:start -->keep<!-- b:end -->\n")
    readme_block.replace_block(readme, "<!-- a:start -->", "<!-- a:end -->", "\nnew\n")
    assert readme.read_text() == "before\n<!-- a:start -->\nnew\n<!-- a:end -->\nafter <!-- b:start -->keep<!-- b:end -->\n"


@pytest.mark.parametrize(
    "text",
    ["no markers\n", "<!-- a:end -->\n<!-- a:start -->\n", "<!-- a:start --><!-- a:end --><!-- a:start --><!-- a:end -->"],
    ids=["missing", "reversed", "twice"],
)
def test_replace_block_refuses_markers_it_cannot_place_and_leaves_the_file_alone(tmp_path, bench, text):
    readme_block = bench("benchmarks.readme_block")
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(SystemExit, match="markers"):
        readme_block.replace_block(readme, "<!-- a:start -->", "<!-- a:end -->", "new")
    assert readme.read_text() == text


def test_run_renders_readme_from_the_saved_results_with_the_run_s_own_numbers(tmp_path, bench):
    """README's "Measured" block comes from benchmarks/results.json through run.py --render-only: the ratios shown
    are the ones saved, so the block and the file cannot drift apart."""
    run = bench("benchmarks.run")

    results = json.loads((ROOT / "benchmarks" / "results.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run.README_START}\nstale 9.99\n{run.README_END}\noutro\n")
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run.py"),
            "--render-only",
            "--json",
            str(ROOT / "benchmarks" / "results.json"),
            "--readme",
            str(readme),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale 9.99" not in text
    total = results["export_total"]
    assert f"{total['toolkit_cpu_seconds']} vs {total['direct_cpu_seconds']} = {total['overhead_ratio']:.2f}" in text
    assert f"= {results['executor']['executor_vs_onnxruntime']:.2f} | >= {run.EXECUTOR_VS_ONNXRUNTIME_TARGET}" in text
    files = [a["path"] for r in results["export"] for a in r["artifacts"]]
    assert all(f"| {name} |" in text for name in files)


def test_fresh_crops_wilson_interval_matches_scipy(bench):
    from scipy.stats import binomtest

    fresh = bench("benchmarks.fresh_crops")
    for k, n in [(972, 1000), (1000, 1000), (0, 50), (133, 136)]:
        lo, hi = fresh.wilson(k, n)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert lo == pytest.approx(ci.low, abs=2e-4) and hi == pytest.approx(ci.high, abs=2e-4)


def test_fresh_crops_come_from_the_held_out_regions_only(tmp_path, bench, monkeypatch):
    """Every crop box lies in its photograph's held-out region (never trained on), and the folder reads as labelled
    images of every photo class."""
    fresh = bench("benchmarks.fresh_crops")
    from exporter.images import list_images
    from sample_models import data

    boxes: list[tuple[str, tuple]] = []
    real_crop = data.crop
    monkeypatch.setattr(data, "crop", lambda label, box: boxes.append((label, box)) or real_crop(label, box))
    assert fresh.write_crops(tmp_path, 3, seed=5) == 3 * len(data.PHOTO_LABELS)
    for label, (left, _top, right, _bottom) in boxes:
        _, (x0, x1) = data.photo_regions(label)
        assert x0 <= left < right <= x1
    items = list_images(tmp_path)
    assert sorted({it.label for it in items}) == sorted(data.PHOTO_LABELS) and len(items) == len(boxes)
