"""The Python half of ios_harness/run_tests.sh: writes, into WORK, everything the Swift tests read.

WORK/export/          a Core ML export of the sample model (mlpackage fp16 only, to stay quick)
WORK/golden/          golden files for GOLDEN_COUNT held-out images (exporter.xcode.write_golden)
WORK/parity_case.json perturbed predictions and what Python's parity code (ParityStats, Gate) made of them,
                      so Swift can show it computes the same metrics and gate failures
WORK/package/         the Xcode package for that export (exporter.xcode.write_xcode_package), its contents checked

Usage: python ios_harness/prepare.py WORK [--model M --labels L --images DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_models" / "squeezenet_digits"
HELDOUT = ROOT / "sample_models" / "heldout" / "digits"
# Enough images for every digit twice; the Swift side runs in a second.
GOLDEN_COUNT = 20
# Variants whose gates the parity case exercises: probability-only, both bounds, and top-1-only at two levels.
CASE_VARIANTS = ("fp32", "fp16", "int8", "palette4")
# The perturbation: noise well under fp16's 2e-2 gate on every image, one image shifted over it, one label flipped.
NOISE = 2e-3
SHIFT = 5e-2
SEED = 7


def parity_case(golden: dict) -> dict:
    """Perturbed predictions for the golden images, and Python's verdict on them per variant: the same ParityStats
    and Gate.failures that ``exporter validate`` uses, with the gates golden.json carries."""
    from exporter.validation.accumulate import ParityStats
    from exporter.validation.tolerances import Gate

    labels = golden["labels"]
    ref = np.array([img["probabilities"] for img in golden["images"]], dtype=np.float64)
    got = np.clip(ref + np.random.default_rng(SEED).normal(0, NOISE, ref.shape), 0, None)
    got /= got.sum(axis=1, keepdims=True)
    top = ref.argmax(1)
    got[0, top[0]] -= SHIFT
    got[0, ref[0].argmin()] += SHIFT
    runner_up = np.argsort(ref[1])[-2]
    got[1, [top[1], runner_up]] = got[1, [runner_up, top[1]]]
    paths = [img["file"] for img in golden["images"]]
    stats = ParityStats(len(labels))
    stats.update(ref, got, paths, np.full(len(paths), -1), labels)
    metrics = stats.summary(labels, stats.labels)
    results = {}
    for variant in CASE_VARIANTS:
        # the gate golden.json gives Swift for this variant name (golden["tolerances"], from the capability table)
        failures = Gate(**golden["tolerances"][variant]).failures(metrics["max_abs_prob"], metrics["top1_agreement"])
        results[variant] = {
            "status": "failed" if failures else "passed",
            "failures": failures,
            **{k: metrics[k] for k in ("images", "top1_agreement", "max_abs_prob", "mean_abs_prob")},
            "flipped": [row["image"] for row in metrics["flipped"]],
        }
    return {"predictions": {file: [float(v) for v in row] for file, row in zip(paths, got, strict=True)}, "python": results}


def check_package(package: Path, export: Path, manifest: dict) -> str:
    """The generated package holds the model, the labels and the golden files; returns its module name."""
    from exporter.packaging import sha256_of
    from exporter.xcode.golden import read_golden

    sources = [p for p in (package / "Sources").iterdir() if p.is_dir()]
    if len(sources) != 1:
        sys.exit(f"prepare.py: {package}/Sources should hold one target, found {[p.name for p in sources]}")
    name = sources[0].name
    resources = sources[0] / "Resources"
    artifact = next(a for a in manifest["artifacts"] if a["format"] == "mlpackage" and a["variant"] == "fp16")
    problems = []
    model_file = json.loads((resources / "model.json").read_text(encoding="utf-8"))["model_file"]
    if sha256_of(resources / model_file) != sha256_of(export / artifact["path"]):
        problems.append(f"Resources/{model_file} is not the exported fp16 model")
    if (resources / "labels.txt").read_text(encoding="utf-8").splitlines() != manifest["labels"]:
        problems.append("Resources/labels.txt differs from the export's labels")
    golden_dir = package / "Tests" / f"{name}Tests" / "Golden"
    golden = read_golden(golden_dir)
    if golden["labels"] != manifest["labels"] or not golden["images"]:
        problems.append("Golden/golden.json has other labels or no images")
    missing = [img["file"] for img in golden["images"] if not (golden_dir / img["file"]).is_file()]
    if missing:
        problems.append(f"Golden/ lacks {len(missing)} images listed in golden.json, e.g. {missing[0]}")
    for required in (
        "Package.swift",
        f"Sources/{name}/{name}.swift",
        f"Sources/{name}/ImageClassifier.swift",
        f"Tests/{name}Tests/{name}Tests.swift",
        f"Tests/{name}Tests/Parity.swift",
    ):
        if not (package / required).is_file():
            problems.append(f"{required} is missing")
    if problems:
        sys.exit("prepare.py: the generated package is incomplete: " + "; ".join(problems))
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--model", type=Path, default=SAMPLE / "model.keras")
    parser.add_argument("--labels", type=Path, default=SAMPLE / "labels.txt")
    parser.add_argument("--images", type=Path, default=HELDOUT)
    args = parser.parse_args()

    from exporter.api import ExportOptions, export
    from exporter.errors import ExporterError
    from exporter.xcode import write_golden, write_xcode_package

    work = args.work
    try:
        manifest = export(
            args.model, args.labels, work / "export", options=ExportOptions(formats=("mlpackage",), variants=("fp16",)), progress=print
        )
        golden = write_golden(work / "export", args.images, work / "golden", count=GOLDEN_COUNT)
        print(f"wrote {len(golden['images'])} golden images to {work / 'golden'}")
        (work / "parity_case.json").write_text(json.dumps(parity_case(golden), indent=1) + "\n", encoding="utf-8")
        package = write_xcode_package(work / "export", work / "package", images_folder=args.images, variant="fp16")
    except ExporterError as exc:
        sys.exit(f"prepare.py: {exc}")
    name = check_package(package, work / "export", manifest)
    print(f"wrote Swift package {name} to {package}")


if __name__ == "__main__":
    main()
