"""Parity of every artifact of an export against the Keras model, on real held-out images through the real input
path: the same decoded, resized 8-bit pixels go to Keras (with the contract's numpy preprocessing) and to each
converted file (which does its own preprocessing). Report schema: docs in exporter/report/SCHEMA.md."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ConfigError, ModelLoadError, ParityError
from ..images import iter_batches, list_images
from ..packaging import read_manifest
from ..preprocessing import Preprocessing
from .accumulate import LabelStats, ParityStats
from .tolerances import Gate, default_gate

REPORT_SCHEMA_VERSION = 1


def _runner(art: dict, root: Path, pre: Preprocessing, labels: list[str]):
    from ..runtime import CoreMLRunner, ExecutorRunner, OnnxRunner

    if art["format"] == "onnx":
        return OnnxRunner(root / art["path"], pre, labels), ""
    if platform.system() == "Darwin":
        return CoreMLRunner(root / art["path"], pre, labels), ""
    return ExecutorRunner(root / art["path"], pre, labels), ""  # Core ML itself predicts on macOS only


def validate(export_dir: str | Path, images: str | Path, *, model_path: str | Path | None = None,
             gates: dict[str, Gate] | None = None, batch_size: int = 32, trust_code: bool = False,
             progress: bool = False) -> dict:
    """Run the Keras model and every artifact in ``export_dir`` on the images under ``images``; return the report.

    Raises ParityError naming every failing artifact and metric when any gate fails; the error carries the report.
    ``gates`` overrides the default gate of a variant name (see tolerances.default_gate)."""
    from ..loading import load_model
    from ..runtime import KerasRunner

    gates = dict(gates or {})
    check_gate_names(gates)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    root = Path(export_dir)
    manifest = read_manifest(root)
    pre = Preprocessing.from_dict(manifest["preprocessing"], source=str(root / "manifest.json"))
    labels = manifest["labels"]
    source = Path(model_path or manifest["source"]["path"])
    loaded = load_model(source, trust_code=trust_code)
    if loaded.sha256 != manifest["source"]["sha256"]:
        raise ModelLoadError("is not the model this export was made from (SHA-256 differs from manifest.json)",
                             path=source)
    items = list_images(images)
    index_of = {name: i for i, name in enumerate(labels)}
    unknown = sorted({it.label for it in items if it.label is not None and it.label not in index_of})
    keras_run = KerasRunner(loaded.model, pre)
    keras_stats = LabelStats(len(labels))
    entries = []
    for art in manifest["artifacts"]:
        runner, reason = _runner(art, root, pre, labels)
        gate = gates.get(art["variant"], default_gate(art["variant"]))
        entries.append((art, runner, reason, gate, ParityStats(len(labels))))
    batches = iter_batches(items, pre, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(items) // batch_size), unit="batch", desc="validate", leave=False)
    for chunk, pixels in batches:
        ref = keras_run(pixels)
        label_idx = np.array([index_of.get(it.label, -1) for it in chunk])
        paths = [str(it.path) for it in chunk]
        keras_stats.update(ref, label_idx)
        for _art, runner, _reason, _gate, stats in entries:
            if runner is not None:
                stats.update(ref, runner(pixels), paths, label_idx, labels)
    results = []
    for art, runner, reason, gate, stats in entries:
        row = {"path": art["path"], "format": art["format"], "variant": art["variant"], "bytes": art["bytes"],
               "ratio_to_fp32": art.get("ratio_to_fp32"), "gate": gate.to_dict()}
        if runner is None:
            row.update(status="not run", reason=reason, failures=[])
        else:
            metrics = stats.summary(labels, keras_stats)
            failures = gate.failures(metrics["max_abs_prob"], metrics["top1_agreement"])
            row.update(status="failed" if failures else "passed", reason="", failures=failures, **metrics)
        results.append(row)
    report = {"schema_version": REPORT_SCHEMA_VERSION, "exporter_version": __version__, "export_dir": str(root),
              "image_folder": str(images), "images": len(items), "batch_size": batch_size, "labels": labels,
              "labels_unknown_to_model": unknown, "preprocessing": manifest["preprocessing"],
              "source": manifest["source"], "keras": {"against_labels": keras_stats.summary(labels)},
              "artifacts": results, "passed": not any(r["status"] == "failed" for r in results),
              "not_run": [r["path"] for r in results if r["status"] == "not run"]}
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        raise ParityError("parity gates failed: " + "; ".join(f"{r['path']}: {', '.join(r['failures'])}"
                                                              for r in failed), path=root).with_report(report)
    return report


def check_gate_names(gates: dict[str, Gate]) -> None:
    from ..variants import VARIANTS

    valid = sorted({v.name for v in VARIANTS})
    for name in gates:
        if name not in valid:
            raise ConfigError(f"gate for unknown variant {name!r}; valid variants are {valid}")
