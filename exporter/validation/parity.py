"""Parity of every artifact of an export against the Keras model, on real held-out images through the real input
path: the same decoded, resized 8-bit pixels go to Keras (with the contract's numpy preprocessing) and to each
converted file (which does its own preprocessing)."""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelLoadError, ParityError
from ..images import iter_batches, list_images
from ..packaging import read_manifest
from ..preprocessing import Preprocessing
from .tolerances import Gate, default_gate

REPORT_SCHEMA_VERSION = 1


@dataclass
class ArtifactParity:
    path: str
    format: str
    variant: str
    status: str = "pending"  # "passed", "failed", "not run"
    reason: str = ""
    images: int = 0
    top1_agreement: float = float("nan")
    max_abs_prob: float = float("nan")
    mean_abs_prob: float = float("nan")
    accuracy: float | None = None
    failures: list[str] = field(default_factory=list)
    flipped: list[dict] = field(default_factory=list)
    _agree: int = 0
    _abs_sum: float = 0.0
    _max: float = 0.0
    _correct: int = 0
    _labelled: int = 0

    def update(self, ref: np.ndarray, got: np.ndarray, items, label_idx: np.ndarray, labels: list[str]) -> None:
        diff = np.abs(ref - got)
        top_ref, top_got = ref.argmax(1), got.argmax(1)
        self.images += len(ref)
        self._agree += int((top_ref == top_got).sum())
        self._abs_sum += float(diff.mean(axis=1).sum())
        self._max = max(self._max, float(diff.max()))
        known = label_idx >= 0
        self._labelled += int(known.sum())
        self._correct += int((top_got[known] == label_idx[known]).sum())
        for i in np.flatnonzero(top_ref != top_got):
            self.flipped.append({"image": str(items[i].path), "keras": labels[top_ref[i]], "converted": labels[top_got[i]]})

    def finish(self, gate: Gate) -> None:
        self.top1_agreement = self._agree / self.images
        self.max_abs_prob = self._max
        self.mean_abs_prob = self._abs_sum / self.images
        self.accuracy = self._correct / self._labelled if self._labelled else None
        self.failures = gate.failures(self.max_abs_prob, self.top1_agreement)
        self.status = "failed" if self.failures else "passed"

    def public(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


def _runner(art: dict, root: Path, pre: Preprocessing, labels: list[str]):
    from ..runtime import CoreMLRunner, OnnxRunner

    if art["format"] == "onnx":
        return OnnxRunner(root / art["path"], pre), ""
    if platform.system() == "Darwin":
        return CoreMLRunner(root / art["path"], pre, labels), ""
    return None, "Core ML predictions need macOS; the Linux Core ML executor is not built yet"


def validate(export_dir: str | Path, images: str | Path, *, model_path: str | Path | None = None,
             gates: dict[str, Gate] | None = None, batch_size: int = 32, trust_code: bool = False,
             progress: bool = False) -> dict:
    """Run the Keras model and every artifact in ``export_dir`` on the images under ``images``; return the report.
    Raises ParityError naming every failing artifact and metric when any gate fails."""
    from ..loading import load_model
    from ..runtime import KerasRunner

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
    unknown = sorted({it.label for it in items if it.label is not None and it.label not in labels})
    label_idx_of = {name: i for i, name in enumerate(labels)}
    keras_run = KerasRunner(loaded.model, pre)
    results, runners = [], []
    for art in manifest["artifacts"]:
        res = ArtifactParity(art["path"], art["format"], art["variant"])
        runner, reason = _runner(art, root, pre, labels)
        if runner is None:
            res.status, res.reason = "not run", reason
        results.append(res)
        runners.append(runner)
    keras_correct = keras_labelled = 0
    batches = iter_batches(items, pre, batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(items) // batch_size), unit="batch", desc="validate")
    for chunk, pixels in batches:
        ref = keras_run(pixels)
        label_idx = np.array([label_idx_of.get(it.label, -1) for it in chunk])
        known = label_idx >= 0
        keras_labelled += int(known.sum())
        keras_correct += int((ref.argmax(1)[known] == label_idx[known]).sum())
        for res, runner in zip(results, runners, strict=True):
            if runner is not None:
                res.update(ref, runner(pixels), chunk, label_idx, labels)
    gates = gates or {}
    for res, runner in zip(results, runners, strict=True):
        if runner is not None:
            res.finish(gates.get(res.variant, default_gate(res.variant)))
    report = {"schema_version": REPORT_SCHEMA_VERSION, "export_dir": str(root), "images": len(items),
              "labels_unknown_to_model": unknown,
              "keras_accuracy": keras_correct / keras_labelled if keras_labelled else None,
              "artifacts": [r.public() for r in results]}
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise ParityError("parity gates failed: " + "; ".join(f"{r.path}: {', '.join(r.failures)}" for r in failed),
                          path=root).with_report(report)
    return report


def check_gate_names(gates: dict[str, Gate]) -> None:
    from ..variants import VARIANTS

    valid = sorted({v.name for v in VARIANTS})
    for name in gates:
        if name not in valid:
            raise ConfigError(f"gate for unknown variant {name!r}; valid variants are {valid}")
