"""Parity of every artifact of an export against the Keras model, on real held-out images through the real input
path: the same decoded, resized 8-bit pixels go to Keras (with the contract's numpy preprocessing) and to each
converted file (which does its own preprocessing). Report schema: docs in exporter/report/SCHEMA.md."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .. import __version__
from ..console import ProgressArg
from ..errors import ConfigError, DestinationError, ImageError, ModelLoadError, NotCheckedError, ParityError, UnsupportedOperationError
from ..exports import OpenedExport, open_export
from ..images import batch_limit, iter_batches, list_images
from ..packaging import artifact_file, find_source_model, read_manifest
from ..preprocessing import Preprocessing
from ..results import Report
from .accumulate import LabelStats, ParityStats
from .tolerances import Gate, check_gate_names, gate_for

# 2: every artifact names its "engine" (what ran it, with version); "reference" (Keras) and "environment" (platform,
# Python, date) added.
REPORT_SCHEMA_VERSION = 2


def _runner(art: dict, root: Path, pre: Preprocessing, labels: list[str]):
    """(runner, "") for an artifact, or (None, why) when it cannot be run here: a Core ML file off macOS that holds an
    operation the executor does not implement is "not run", and the other artifacts are still judged."""
    from ..capabilities import format_of

    try:
        path = artifact_file(root, art)  # inside the export folder, present, regular files only
        return format_of(art["format"]).runner(path, pre, labels, sha256=art["sha256"]), ""
    except UnsupportedOperationError as exc:
        return None, str(exc)


class _Entry:
    """One artifact being measured: its runner (None once it cannot run), why not, its gate and statistics."""

    __slots__ = ("art", "runner", "reason", "gate", "stats")

    def __init__(self, art: dict, runner, reason: str, gate: Gate, stats: ParityStats):
        self.art, self.runner, self.reason, self.gate, self.stats = art, runner, reason, gate, stats


def validate(
    export_dir: str | Path,
    images: str | Path,
    *,
    model_path: str | Path | None = None,
    gates: dict[str, Gate | dict] | None = None,
    batch_size: int = 32,
    trust_code: bool = False,
    progress: ProgressArg = False,
    verbose: bool = False,
) -> Report:
    """Run the Keras model and every artifact in ``export_dir`` on the images under ``images``; return the report.

    Raises ParityError naming every failing artifact and metric when any gate fails, and NotCheckedError (a
    ParityError, exit 8) when none failed but an artifact could not be run here (its parity is unchecked; its op and
    file are named); either carries the report, in which every other artifact is judged as usual.
    ``gates`` overrides default gates: keys ``VARIANT`` (every format) or ``FORMAT:VARIANT`` (see
    tolerances.gate_for); a value is a Gate or a dict such as ``{"min_top1": 0.999}``. ``progress`` as in
    ``export``. Mistakes that need no model (missing folders, an unknown gate, a source model that is not where the
    manifest says) are raised before TensorFlow is imported."""
    from ..console import progress_sink, quiet_libraries

    checked = {name: as_gate(name, g) for name, g in (gates or {}).items()}
    check_gate_names(checked)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    root = Path(export_dir)
    manifest = read_manifest(root)
    if model_path is None:
        model_path = find_source_model(manifest, root)
    elif not Path(model_path).exists():
        raise ModelLoadError("model file not found (given as --model)", path=model_path)
    list_images(images)
    if not manifest["artifacts"]:  # a report of nothing would read PASSED, exit 0, in a CI log
        raise DestinationError("manifest.json lists no artifacts: there is nothing to validate", path=root)
    with progress_sink(progress) as sink, quiet_libraries(verbose):
        report = measure(
            open_export(root, model_path=model_path, trust_code=trust_code), images, gates=checked, batch_size=batch_size, progress=sink
        )
    failed = [r for r in report["artifacts"] if r["status"] == "failed"]
    not_run = [r for r in report["artifacts"] if r["status"] == "not run"]
    unchecked = "; not run here (parity unchecked): " + "; ".join(r["reason"] for r in not_run) if not_run else ""
    if failed:
        raise ParityError(
            "parity gates failed: " + "; ".join(f"{r['path']}: {', '.join(r['failures'])}" for r in failed) + unchecked, path=export_dir
        ).with_report(report)
    if not_run:
        raise NotCheckedError(
            f"every artifact that ran passed, but {len(not_run)} could not be run" + unchecked, path=export_dir
        ).with_report(report)
    return report


def measure(
    opened: OpenedExport, images: str | Path, *, gates: dict[str, Gate], batch_size: int = 32, progress: ProgressArg = False
) -> Report:
    """The parity report of an opened export (every artifact its manifest lists) on ``images``; never raises for a
    failed gate (``validate`` does)."""
    from ..console import progress_sink

    with progress_sink(progress) as sink:
        return _measure(opened, images, gates=gates, batch_size=batch_size, sink=sink)


def _measure(opened: OpenedExport, images: str | Path, *, gates: dict[str, Gate], batch_size: int, sink) -> Report:
    from ..console import Steps
    from ..runtime import KerasRunner

    root, manifest, pre, labels = opened.root, opened.manifest, opened.preprocessing, opened.labels
    batch_size = batch_limit(pre, batch_size)  # what iter_batches will use, for the report
    items, calibration_left_out = _without_calibration_images(list_images(images), manifest, images)
    index_of: dict[str | None, int] = {name: i for i, name in enumerate(labels)}
    unknown = sorted({it.label for it in items if it.label is not None and it.label not in index_of})
    keras_run = KerasRunner(opened.loaded.model, pre)
    keras_stats = LabelStats(len(labels))
    entries = []
    for art in manifest["artifacts"]:
        runner, reason = _runner(art, root, pre, labels)
        gate = gate_for(art["format"], art["variant"], gates)
        entries.append(_Entry(art, runner, reason, gate, ParityStats(len(labels))))
    n_batches = -(-len(items) // batch_size)
    steps = Steps(sink, n_batches, minor=True)
    for chunk, pixels in iter_batches(items, pre, batch_size):
        first = (steps.index * batch_size) + 1
        with steps.step(f"validate images {first}-{first + len(chunk) - 1} of {len(items)}"):
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
    summaries = {id(e): e.stats.summary(labels, keras_stats) for e in entries if e.runner is not None}
    float64 = _float64_check(opened, items, batch_size, keras_run, [e for e in entries if _float64_candidate(e, summaries)], sink)
    results = []
    for entry in entries:
        art, gate = entry.art, entry.gate
        row = {
            "path": art["path"],
            "format": art["format"],
            "variant": art["variant"],
            "bytes": art["bytes"],
            "ratio_to_fp32": art.get("ratio_to_fp32"),
            "gate": gate.to_dict(),
            "engine": getattr(entry.runner, "engine", None),
        }  # None when it did not run
        if entry.runner is None:
            row.update(status="not run", reason=entry.reason, failures=[])
        else:
            metrics = summaries[id(entry)]
            failures = gate.failures(metrics["max_abs_prob"], metrics["top1_agreement"])
            if id(entry) in float64:
                row["float64"] = float64[id(entry)]
                if row["float64"].get("passed"):  # the model amplifies float32 rounding; the file is as exact as Keras
                    failures = []
            row.update(status="failed" if failures else "passed", reason="", failures=failures, **metrics)
        results.append(row)
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "exporter_version": __version__,
        "export_dir": str(root),
        "image_folder": str(images),
        "images": len(items),
        "calibration_images_left_out": calibration_left_out,
        "batch_size": batch_size,
        "labels": labels,
        "labels_unknown_to_model": unknown,
        "preprocessing": manifest["preprocessing"],
        "source": manifest["source"],
        "keras": {"against_labels": keras_stats.summary(labels)},
        "reference": keras_run.engine,
        "environment": environment(),
        "artifacts": results,
        "passed": not any(r["status"] == "failed" for r in results),
        "not_run": [r["path"] for r in results if r["status"] == "not run"],
    }
    return Report(report)


def _without_calibration_images(items: list, manifest: dict, folder: str | Path) -> tuple[list, int]:
    """The images that did not calibrate the export (the manifest records the SHA-256 of each calibration file, so a
    copy elsewhere is recognised too) and how many were left out: a quantized file tuned on an image would be judged
    on it otherwise. Every image being a calibration image is a ConfigError naming the folder."""
    recorded = set((manifest.get("calibration") or {}).get("sha256", ()))
    if not recorded:
        return items, 0
    from ..packaging import sha256_of

    kept = [it for it in items if sha256_of(it.path, error=ImageError, what="image file") not in recorded]
    if not kept:
        raise ConfigError(
            f"every image under {folder} calibrated this export's quantized files, so none can judge them; validate on "
            "other images (or export with a --calibration-count smaller than the folder)"
        )
    return kept, len(items) - len(kept)


def _float64_candidate(entry: _Entry, summaries: dict) -> bool:
    """An fp32 artifact (32-bit weights) that failed only its max |dp| limit: float32 rounding may be the cause."""
    from ..capabilities import variant

    metrics = summaries.get(id(entry))
    gate = entry.gate
    if metrics is None or gate.max_abs_prob is None or not np.isfinite(metrics["max_abs_prob"]):
        return False
    try:
        if variant(entry.art["format"], entry.art["variant"]).weight_bits != 32:
            return False
    except ConfigError:  # a variant this version does not know: no float64 judgement
        return False
    only_max_abs = gate.failures(metrics["max_abs_prob"], 1.0) and not gate.failures(0.0, metrics["top1_agreement"])
    return bool(only_max_abs)


def _float64_check(opened: OpenedExport, items, batch_size: int, keras_run, candidates: list[_Entry], sink) -> dict[int, dict]:
    """For each candidate, its max |dp| and Keras float32's against the float64 twin of the model, on the same images
    (a second pass, run only when an fp32 gate failed); see validation/float64.py."""
    if not candidates:
        return {}
    from ..console import Steps
    from ..keras_memory import activation_bytes, call_in_chunks
    from .float64 import Float64Distance, float64_twin, normalize64

    pre = opened.preprocessing
    try:
        twin = float64_twin(opened.loaded.model)
    except Exception as exc:  # a layer Keras cannot rebuild in float64 (custom code): the plain gate verdict stands
        why = f"no float64 reference: Keras could not rebuild the model in float64 ({type(exc).__name__}: {str(exc)[:160]})"
        return {id(e): {"passed": False, "note": why} for e in candidates}
    try:  # twice the float32 model's bytes: its calls are cut to stay within the live budget
        per_image = activation_bytes(twin, "the float64 twin", error=ModelLoadError, itemsize=8)
    except ModelLoadError as exc:
        return {id(e): {"passed": False, "note": f"no float64 reference: {exc}"} for e in candidates}
    distances = {id(e): Float64Distance() for e in candidates}
    steps = Steps(sink, -(-len(items) // batch_size), minor=True)
    for chunk, pixels in iter_batches(items, pre, batch_size):
        first = (steps.index * batch_size) + 1
        with steps.step(f"float64 check, images {first}-{first + len(chunk) - 1} of {len(items)}"):
            exact = np.asarray(call_in_chunks(twin, normalize64(pre, pixels), per_image, training=False), np.float64)
            keras32 = keras_run(pixels)
            for entry in candidates:
                distances[id(entry)].update(exact, keras32, entry.runner(pixels))
    return {key: d.summary() for key, d in distances.items()}


def environment() -> dict:
    """Where and when a report was made: a Linux pass comes from the executor, a macOS pass from Core ML itself."""
    import datetime
    import sys

    return {
        "platform": platform.platform(),
        "system": platform.system(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "date": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }


def as_gate(variant: str, gate: Gate | dict) -> Gate:
    """A Gate, or a dict of its fields (``{"min_top1": 0.999}``). Like ``--gate``, it replaces the variant's default
    gate: a field left out is not checked."""
    if isinstance(gate, Gate):
        return gate
    if isinstance(gate, dict):
        import dataclasses

        fields = {f.name for f in dataclasses.fields(Gate)}
        bad = [k for k in gate if k not in fields]
        if bad:
            from ..precheck import unknown_choice

            raise unknown_choice("gate field", bad[0], sorted(fields), f" for variant {variant!r}")
        try:
            values = {k: None if v is None else float(v) for k, v in gate.items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"gate for {variant!r}: values must be numbers, got {gate!r}") from exc
        return Gate(**values)
    raise ConfigError(f"gate for {variant!r} must be a Gate or a dict such as {{'min_top1': 0.99}}, got {gate!r}")
