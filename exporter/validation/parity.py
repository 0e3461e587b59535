"""Parity of every artifact of an export against the Keras model, on real held-out images through the real input
path: the same decoded, resized 8-bit pixels go to Keras (with the contract's numpy preprocessing) and to each
converted file (which does its own preprocessing). Report schema: docs in exporter/report/SCHEMA.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, NotCheckedError, ParityError, UnsupportedOperationError
from ..exports import OpenedExport, open_export
from ..images import iter_batches, list_images
from ..preprocessing import Preprocessing
from .accumulate import LabelStats, ParityStats
from .tolerances import Gate, check_gate_names, gate_for

REPORT_SCHEMA_VERSION = 1


def _runner(art: dict, root: Path, pre: Preprocessing, labels: list[str]):
    """(runner, "") for an artifact, or (None, why) when it cannot be run here: a Core ML file off macOS that holds an
    operation the executor does not implement is "not run", and the other artifacts are still judged."""
    from ..capabilities import format_of

    try:
        return format_of(art["format"]).runner(root / art["path"], pre, labels), ""
    except UnsupportedOperationError as exc:
        return None, str(exc)


class _Entry:
    """One artifact being measured: its runner (None once it cannot run), why not, its gate and statistics."""

    __slots__ = ("art", "runner", "reason", "gate", "stats")

    def __init__(self, art: dict, runner, reason: str, gate: Gate, stats: ParityStats):
        self.art, self.runner, self.reason, self.gate, self.stats = art, runner, reason, gate, stats


def validate(export_dir: str | Path, images: str | Path, *, model_path: str | Path | None = None,
             gates: dict[str, Gate] | None = None, batch_size: int = 32, trust_code: bool = False,
             progress: bool = False) -> dict:
    """Run the Keras model and every artifact in ``export_dir`` on the images under ``images``; return the report.

    Raises ParityError naming every failing artifact and metric when any gate fails, and NotCheckedError (a
    ParityError, exit 8) when none failed but an artifact could not be run here (its parity is unchecked; its op and
    file are named); either carries the report, in which every other artifact is judged as usual.
    ``gates`` overrides default gates: keys ``VARIANT`` (every format) or ``FORMAT:VARIANT`` (see
    tolerances.gate_for)."""
    gates = dict(gates or {})
    check_gate_names(gates)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    report = measure(open_export(export_dir, model_path=model_path, trust_code=trust_code), images, gates=gates,
                     batch_size=batch_size, progress=progress)
    failed = [r for r in report["artifacts"] if r["status"] == "failed"]
    not_run = [r for r in report["artifacts"] if r["status"] == "not run"]
    unchecked = "; not run here (parity unchecked): " + "; ".join(r["reason"] for r in not_run) if not_run else ""
    if failed:
        raise ParityError("parity gates failed: " + "; ".join(f"{r['path']}: {', '.join(r['failures'])}"
                                                              for r in failed) + unchecked,
                          path=export_dir).with_report(report)
    if not_run:
        raise NotCheckedError(f"every artifact that ran passed, but {len(not_run)} could not be run" + unchecked,
                              path=export_dir).with_report(report)
    return report


def measure(opened: OpenedExport, images: str | Path, *, gates: dict[str, Gate], batch_size: int = 32,
            progress: bool = False) -> dict:
    """The parity report of an opened export (every artifact its manifest lists) on ``images``; never raises for a
    failed gate (``validate`` does)."""
    from ..runtime import KerasRunner

    root, manifest, pre, labels = opened.root, opened.manifest, opened.preprocessing, opened.labels
    items = list_images(images)
    index_of: dict[str | None, int] = {name: i for i, name in enumerate(labels)}
    unknown = sorted({it.label for it in items if it.label is not None and it.label not in index_of})
    keras_run = KerasRunner(opened.loaded.model, pre)
    keras_stats = LabelStats(len(labels))
    entries = []
    for art in manifest["artifacts"]:
        runner, reason = _runner(art, root, pre, labels)
        gate = gate_for(art["format"], art["variant"], gates)
        entries.append(_Entry(art, runner, reason, gate, ParityStats(len(labels))))
    batches = iter_batches(items, pre, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(items) // batch_size), unit="batch", desc="validate", leave=False)
    for chunk, pixels in batches:
        ref = keras_run(pixels)
        label_idx = np.array([index_of.get(it.label, -1) for it in chunk])
        paths = [str(it.path) for it in chunk]
        keras_stats.update(ref, label_idx)
        for entry in entries:
            if entry.runner is None:
                continue
            try:
                probs = entry.runner(pixels)
            except UnsupportedOperationError as exc:  # found only when run (a data type, say): not run, no verdict
                entry.runner, entry.reason = None, str(exc)
                continue
            entry.stats.update(ref, probs, paths, label_idx, labels)
    results = []
    for entry in entries:
        art, gate = entry.art, entry.gate
        row = {"path": art["path"], "format": art["format"], "variant": art["variant"], "bytes": art["bytes"],
               "ratio_to_fp32": art.get("ratio_to_fp32"), "gate": gate.to_dict()}
        if entry.runner is None:
            row.update(status="not run", reason=entry.reason, failures=[])
        else:
            metrics = entry.stats.summary(labels, keras_stats)
            failures = gate.failures(metrics["max_abs_prob"], metrics["top1_agreement"])
            row.update(status="failed" if failures else "passed", reason="", failures=failures, **metrics)
        results.append(row)
    report = {"schema_version": REPORT_SCHEMA_VERSION, "exporter_version": __version__, "export_dir": str(root),
              "image_folder": str(images), "images": len(items), "batch_size": batch_size, "labels": labels,
              "labels_unknown_to_model": unknown, "preprocessing": manifest["preprocessing"],
              "source": manifest["source"], "keras": {"against_labels": keras_stats.summary(labels)},
              "artifacts": results, "passed": not any(r["status"] == "failed" for r in results),
              "not_run": [r["path"] for r in results if r["status"] == "not run"]}
    return report
