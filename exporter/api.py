"""The Python API: ``export`` in three named stages, ``prepare`` (load the model, read the labels, settle the
preprocessing contract, pick the calibration images), ``build_artifact`` (one file, from the capability table) and
``package`` (sizes, manifest), run inside one atomic destination; ``quantize="auto"`` reuses the same stages.

The CLI calls these functions and nothing else.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .capabilities import DEFAULT_CALIBRATION_COUNT, DEFAULT_OPSET, BuildContext, Variant, format_of, select
from .console import ProgressArg, Steps, human_bytes
from .convert.coreml import SKIPPED_PASSES
from .errors import ConfigError, ImageError, ParityError
from .labels import check_against_model, check_labels, read_labels
from .loading import LoadedModel
from .packaging import MANIFEST_NAME, Artifact, atomic_directory, manifest_dict, size_table, source_paths, write_json
from .preprocessing import PRESETS, Preprocessing, declared_contract, resolve
from .provenance import ModelInfo
from .quantize.auto import DEFAULT_MAX_ACCURACY_DROP, check_min_target
from .results import Manifest, Report
from .safety import check_name, safe_stem
from .upstream import compression_without_passes
from .versions import library_versions

log = logging.getLogger(__name__)
PARITY_NAME = "parity.json"


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``export`` needs besides the model; checked on construction."""

    formats: tuple[str, ...] | None = None  # default: every format
    variants: tuple[str, ...] | None = None  # default: every variant of those formats except the opt-in ones
    calibration_images: Path | str | None = None  # images for the variants that need calibration (a Path once checked)
    calibration_count: int = DEFAULT_CALIBRATION_COUNT
    opset: int = DEFAULT_OPSET
    onnx_raw_input: bool = True  # uint8 image input with preprocessing in the graph; False: float input, no prologue
    overwrite: bool = False
    trust_code: bool = False
    name: str | None = None
    author: str = ""
    license: str = ""
    version: str = ""
    description: str = ""
    quantize: str = "all"  # "all": every selected variant; "auto": per format, the smallest that passes the gates
    validation_images: Path | str | None = None  # held-out images for quantize="auto" (a Path once checked)
    add_softmax: bool = False  # the model ends in logits: append a softmax (one unit: sigmoid, then [1 - p, p])
    output: str | None = None  # a model with several outputs (an auxiliary head): the name of the classifier's one
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP  # quantize="auto": largest accuracy loss (points); auto.py
    min_target: str | None = None  # quantize="auto": only files that run on this OS (e.g. "iOS16"); None: any
    # quantize="auto": gates that replace the default ones (keys VARIANT or FORMAT:VARIANT, values a Gate or a dict
    # like {"min_top1": 0.95}, as ``validate`` takes them): which files count as passing before the budget is applied
    gates: dict | None = None
    selected: tuple[Variant, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("formats", "variants"):  # one name is a one-element selection, not a sequence of letters
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, (value,))
            elif value is not None:
                object.__setattr__(self, name, tuple(value))
        for name in ("calibration_images", "validation_images"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        object.__setattr__(
            self, "selected", tuple(select(list(self.formats) if self.formats else None, list(self.variants) if self.variants else None))
        )
        if not self.selected:
            raise ConfigError("no variant selected: the chosen formats have none of the chosen variants")
        if not 7 <= self.opset <= 21:
            raise ConfigError(f"opset must be between 7 and 21, got {self.opset}")
        if self.quantize not in ("all", "auto"):
            raise ConfigError(f"quantize must be 'all' or 'auto', got {self.quantize!r}")
        if self.quantize == "auto" and self.validation_images is None:
            raise ConfigError("quantize='auto' needs validation images (--images FOLDER) to judge each variant")
        if not self.max_accuracy_drop >= 0:
            raise ConfigError(f"max_accuracy_drop must be a number of points >= 0, got {self.max_accuracy_drop}")
        check_min_target(self.min_target)
        if self.gates:
            from .validation.parity import as_gate
            from .validation.tolerances import check_gate_names

            checked = {name: as_gate(name, g) for name, g in self.gates.items()}
            check_gate_names(checked)
            object.__setattr__(self, "gates", checked)
        if self.output is not None and (not isinstance(self.output, str) or not self.output.strip()):
            raise ConfigError(f"output must be the name of one of the model's outputs, got {self.output!r}")
        if self.calibration_count < 1:
            raise ConfigError(f"calibration_count must be at least 1, got {self.calibration_count}")
        if self.name is not None:
            check_name(self.name)


def _calibration(folder: Path | str | None, pre: Preprocessing, count: int) -> tuple[list[np.ndarray], list[str]]:
    """Up to ``count`` images from ``folder`` (a seeded sample), as uint8 NHWC batches in the contract's order, and the
    SHA-256 of each picked file (the manifest records them so that ``validate`` leaves them out)."""
    if folder is None:
        return [], []
    from .images import iter_batches, list_images
    from .packaging import sha256_of

    items = list_images(folder)
    rng = np.random.default_rng(0)
    picked = [items[i] for i in sorted(rng.permutation(len(items))[:count])]
    hashes = sorted({sha256_of(it.path, error=ImageError, what="image file") for it in picked})
    return [batch for _, batch in iter_batches(picked, pre, batch_size=16)], hashes


@dataclass
class Prepared:
    """What every artifact of one export is built from (the ``prepare`` stage)."""

    model_path: Path
    loaded: LoadedModel  # .model is the Keras reference validation compares with
    info: ModelInfo  # name, labels, preprocessing contract, provenance
    calibration: list[np.ndarray]
    runnable: list[Variant]  # the selected variants that can be built here
    skipped: list[dict]  # the others, each with its reason
    export_model: Any = None  # what the converters see: no inference no-ops, the head appended (LoadedModel.for_export)
    removed: list = field(default_factory=list)  # the no-op layers taken out (inference.RemovedLayer)
    calibration_sha256: list[str] = field(default_factory=list)  # of the calibration files, for the manifest

    def context(self, options: ExportOptions) -> BuildContext:
        return BuildContext(
            model=self.export_model,
            info=self.info,
            calibration=self.calibration,
            opset=options.opset,
            raw_input=options.onnx_raw_input,
            source=str(self.model_path),
        )


def prepare(
    model_path: str | os.PathLike,
    labels: str | os.PathLike | list[str],
    *,
    preprocessing: Preprocessing | str | os.PathLike | dict | None,
    options: ExportOptions,
    steps: Steps | None = None,
) -> Prepared:
    """Stage 1: load the model, read and check the labels against it, settle the preprocessing contract, and read
    the calibration images if a selected variant needs them. A variant that cannot be built here is skipped with its
    reason, or refused when the caller named it explicitly."""
    from .heads import check_outputs
    from .loading import load_model

    model_path = Path(model_path)
    steps = steps or Steps(lambda _step: None, 1)
    with steps.step("load model") as note:
        # a contract file or dict is read first: its input_size fixes a model built for any image size
        early = None if isinstance(preprocessing, str) and preprocessing in PRESETS else declared_contract(preprocessing, (0, 0, 0))
        loaded = load_model(
            model_path,
            trust_code=options.trust_code,
            add_softmax=options.add_softmax,
            input_size=early.input_size if early is not None else None,
            output=options.output,
        )
        note["detail"] = f"{model_path.name}, {loaded.num_classes} classes"
    if isinstance(labels, (str, os.PathLike)):
        label_list, label_source = read_labels(Path(labels)), str(labels)
    else:
        label_list, label_source = check_labels(list(labels)), "labels"
    check_against_model(label_list, loaded.num_classes, source=label_source, binary=loaded.head.units == 1)
    pre = resolve(
        early if early is not None else declared_contract(preprocessing, loaded.input_shape),
        loaded.input_shape,
        loaded.in_model_preprocessing,
        source=str(model_path),
    )
    check_outputs(loaded.keras_model, loaded.head, pre, model_path)
    export_model, removed = loaded.for_export()
    stem = options.name or safe_stem(model_path.parent.name if model_path.stem == "model" else model_path.stem)
    info = ModelInfo(
        name=stem,
        labels=label_list,
        preprocessing=pre,
        source_sha256=loaded.sha256,
        source_file=model_path.name,
        author=options.author,
        license=options.license,
        version=options.version,
        description=options.description,
    )
    wanted = list(options.selected)
    needs_cal = any(v.needs_calibration for v in wanted)
    calibration, calibration_sha256 = _calibration(options.calibration_images, pre, options.calibration_count) if needs_cal else ([], [])
    skipped, runnable = [], []
    for v in wanted:
        if v.needs_calibration and not calibration:
            reason = "needs calibration images (--calibration-images FOLDER)"
            if options.variants:
                raise ConfigError(f"variant {v.key} cannot be built here: {reason}")
            skipped.append({"format": v.format, "variant": v.name, "reason": reason})
        else:
            runnable.append(v)
    return Prepared(
        model_path=model_path,
        loaded=loaded,
        info=info,
        calibration=calibration,
        calibration_sha256=calibration_sha256,
        runnable=runnable,
        skipped=skipped,
        export_model=export_model,
        removed=removed,
    )


class BaseCache:
    """Each (format backend, base precision, base target) converted once per export, shared by its variants."""

    def __init__(self, ctx: BuildContext):
        self.ctx = ctx
        self._bases: dict = {}

    def get(self, v: Variant):
        fmt = format_of(v.format)
        key = (fmt.backend, v.base)
        if key not in self._bases:
            self._bases[key] = fmt.convert(self.ctx, fmt, v.base)
        return self._bases[key]


def build_artifact(v: Variant, ctx: BuildContext, bases: BaseCache, stage: Path) -> Artifact:
    """Stage 2, once per variant: base conversion -> the variant's transform -> the format's finishing step (metadata,
    wrappers) -> save -> smoke check, all as the capability table declares them."""
    fmt = format_of(v.format)
    t0 = time.perf_counter()
    path = stage / v.filename(ctx.info.name)
    details: dict = {"description": v.description}
    model = bases.get(v)
    if v.transform is not None:
        # a compressor converts its result back with coremltools' default passes: not the ones conversion skipped
        with compression_without_passes(SKIPPED_PASSES):
            model = v.transform(model, ctx, details)
    model = fmt.finish(model, ctx, v, details)
    fmt.save(model, path)
    fmt.smoke_check(path, ctx)
    art = Artifact(path=path.name, format=v.format, variant=v.name, minimum_deployment_target=fmt.target(model, ctx), details=details)
    art.measure(stage)
    art.details["seconds"] = round(time.perf_counter() - t0, 2)
    art.details["theoretical_ratio"] = v.weight_bits / 32
    return art


def package(stage: Path, prepared: Prepared, artifacts: list[Artifact], out: Path, **extra) -> dict:
    """Stage 3: sizes against fp32, then manifest.json (with any ``extra`` keys) written into ``stage``."""
    size_table(artifacts)
    loaded = prepared.loaded
    manifest = manifest_dict(
        source={
            **source_paths(prepared.model_path, out),
            "sha256": loaded.sha256,
            "format": loaded.format,
            "input_shape": list(loaded.input_shape),
            "num_classes": loaded.num_classes,
        },
        labels=prepared.info.labels,
        preprocessing=prepared.info.preprocessing.to_dict(),
        artifacts=artifacts,
        skipped=prepared.skipped,
        versions={"exporter": __version__, **library_versions()},
        inference_model={
            "head": loaded.head.to_dict(),
            **({"output": loaded.output} if loaded.output is not None else {}),
            "removed_layers": [r.to_dict() for r in prepared.removed],
            "in_model_preprocessing": loaded.in_model.to_dict() if loaded.in_model else None,
        },
    )
    manifest = {**manifest, "name": prepared.info.name, **extra}
    if prepared.calibration_sha256:  # validate leaves these images out: a file is not judged on what tuned it
        manifest["calibration"] = {"images": len(prepared.calibration_sha256), "sha256": prepared.calibration_sha256}
    write_json(stage / MANIFEST_NAME, manifest)
    return manifest


def export(
    model_path: str | os.PathLike,
    labels: str | os.PathLike | list[str],
    out: str | os.PathLike,
    *,
    preprocessing: Preprocessing | str | os.PathLike | dict | None = None,
    options: ExportOptions | None = None,
    progress: ProgressArg = None,
    verbose: bool = False,
) -> Manifest:
    """Export a Keras image classifier to every selected Core ML and ONNX variant in the folder ``out``.

    Writes atomically: ``out`` appears complete with its manifest.json, or not at all. Returns the manifest (a dict
    with ``artifact(format, variant).path``). ``preprocessing`` is a Preprocessing, a JSON file, a dict, a preset name
    ("tf", "torch", "caffe", "raw": the modes of keras.applications' preprocess_input), or None to detect it from the
    model's own Rescaling/Normalization layers. ``progress``: True prints a line per artifact to stderr (a bar with
    ETA in a terminal), a callable receives an ``exporter.console.Step`` per started and finished step, False/None is
    silent. Third-party progress bars and log lines are silenced during the call unless ``verbose``. Cheap mistakes
    (destination exists, missing files or folders, calibration images missing) are raised before TensorFlow is
    imported.
    """
    from . import precheck
    from .console import progress_sink, quiet_libraries

    options = options or ExportOptions()
    if options.gates and options.quantize != "auto":
        raise ConfigError("gates apply to quantize='auto' (convert --gate); to judge an export, pass them to validate")
    precheck.export_inputs(model_path, labels, out, preprocessing, options)  # before any heavy import
    out = Path(out)
    # what the export reads: replacing a destination that holds any of it would delete it
    inputs = [model_path, options.calibration_images, options.validation_images]
    inputs += [p for p in (labels, preprocessing) if isinstance(p, (str, os.PathLike)) and Path(p).exists()]
    with progress_sink(progress) as sink, quiet_libraries(verbose):
        run_options = _auto_candidates(options) if options.quantize == "auto" else options
        buildable = [v for v in run_options.selected if not (v.needs_calibration and run_options.calibration_images is None)]
        steps = Steps(sink, 1 + len(buildable))  # loading, then one step per artifact
        prepared = prepare(model_path, labels, preprocessing=preprocessing, options=run_options, steps=steps)
        with atomic_directory(out, overwrite=options.overwrite, inputs=inputs, ours=(MANIFEST_NAME,)) as stage:
            if options.quantize == "auto":
                manifest = _export_auto(prepared, run_options, stage, out, steps, sink)
            else:
                manifest = package(stage, prepared, _build_all(prepared, run_options, stage, steps), out)
    return Manifest(manifest, out)


def _build_all(prepared: Prepared, options: ExportOptions, stage: Path, steps: Steps) -> list[Artifact]:
    ctx = prepared.context(options)
    bases = BaseCache(ctx)
    artifacts = []
    for v in prepared.runnable:
        with steps.step(f"{v.format} {v.name}") as note:
            art = build_artifact(v, ctx, bases, stage)
            note["detail"] = f"{art.path}, {human_bytes(art.bytes)}, {art.minimum_deployment_target}"
        artifacts.append(art)
    return artifacts


def validate(
    export_dir: str | os.PathLike,
    images: str | os.PathLike,
    *,
    model_path: str | os.PathLike | None = None,
    gates: dict | None = None,
    batch_size: int = 32,
    trust_code: bool = False,
    progress: ProgressArg = None,
    verbose: bool = False,
) -> Report:
    """Parity of every artifact in ``export_dir`` against its Keras model on the images under ``images``.

    ``model_path``: the Keras model (default: the one manifest.json records, looked up relative to the export folder
    first). ``gates``: keys ``VARIANT`` or ``FORMAT:VARIANT``, values a Gate or a dict like ``{"min_top1": 0.999}``
    that replaces the default gate. ``progress`` and ``verbose`` as in ``export``. Returns the report (schema:
    exporter/report/SCHEMA.md); raises ParityError, carrying the report, naming every failing artifact and metric."""
    from .validation.parity import validate as _validate

    return _validate(
        Path(export_dir),
        Path(images),
        model_path=None if model_path is None else Path(model_path),
        gates=gates,
        batch_size=batch_size,
        trust_code=trust_code,
        progress=progress,
        verbose=verbose,
    )


def xcode(
    export_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    images: str | os.PathLike,
    variant: str = "fp16",
    name: str | None = None,
    golden_count: int | None = None,
    model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    trust_code: bool = False,
    verbose: bool = False,
) -> Path:
    """Write the Swift package for one Core ML artifact of an export (what ``exporter xcode`` does); returns its
    folder. ``variant`` is a name (``fp16``; .mlpackage preferred) or ``FORMAT:NAME``; ``golden_count`` None
    bundles the default number of golden images."""
    from .console import quiet_libraries
    from .xcode.package import DEFAULT_GOLDEN_COUNT, check_inputs, write_xcode_package

    check_inputs(
        export_dir,
        out,
        images_folder=images,
        variant=variant,
        package_name=name,
        overwrite=overwrite,
        golden_count=golden_count,
        model_path=model_path,
    )  # before any heavy import
    with quiet_libraries(verbose):
        return Path(
            write_xcode_package(
                Path(export_dir),
                Path(out),
                images_folder=Path(images),
                variant=variant,
                package_name=name,
                overwrite=overwrite,
                golden_count=DEFAULT_GOLDEN_COUNT if golden_count is None else golden_count,
                model_path=None if model_path is None else Path(model_path),
                trust_code=trust_code,
            )
        )


def _auto_candidates(options: ExportOptions) -> ExportOptions:
    """--quantize auto builds every selected variant as a candidate, calibrated on the validation images unless
    calibration images were given."""
    import dataclasses

    return dataclasses.replace(options, quantize="all", calibration_images=options.calibration_images or options.validation_images)


def _export_auto(prepared: Prepared, options: ExportOptions, stage: Path, out: Path, steps: Steps, sink) -> dict:
    """Build every candidate into ``stage``, measure them all on the validation images, keep per format the smallest
    that passes its gates, and delete the rest from ``stage`` before it becomes ``out``."""
    from .exports import OpenedExport
    from .quantize.auto import choose
    from .validation.parity import measure

    if options.validation_images is None:
        raise ConfigError("quantize='auto' needs validation images (--images FOLDER) to judge each variant")
    candidates = _build_all(prepared, options, stage, steps)
    full = package(stage, prepared, candidates, out)
    opened = OpenedExport(
        root=stage, manifest=full, preprocessing=prepared.info.preprocessing, labels=prepared.info.labels, loaded=prepared.loaded
    )
    measured = measure(opened, options.validation_images, gates=options.gates or {}, progress=sink)
    report = Report({**measured, "export_dir": str(out.absolute())})  # a ParityError's .report is a Report, as validate's
    selection, keep = choose(full["artifacts"], report, max_accuracy_drop=options.max_accuracy_drop, min_target=options.min_target)
    if not keep:
        raise ParityError(
            "--quantize auto: no variant of any format passed its gates within the accuracy budget "
            "and deployment target (or could be run here)",
            path=out,
        ).with_report(report)
    for a in full["artifacts"]:
        if a not in keep:
            target = stage / a["path"]
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    manifest = {**full, "artifacts": keep, "auto_selection": selection}
    write_json(stage / MANIFEST_NAME, manifest)
    write_json(stage / PARITY_NAME, report)
    return manifest
