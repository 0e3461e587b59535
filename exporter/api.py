"""The Python API: ``export`` runs load -> preprocess contract -> convert -> quantize -> package, in one place.

The CLI calls these functions and nothing else.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .errors import ConfigError, ConversionError
from .labels import check_against_model, check_labels, read_labels
from .packaging import Artifact, atomic_directory, manifest_dict, size_table, write_json
from .preprocessing import Preprocessing, resolve
from .variants import Variant, select
from .versions import library_versions

log = logging.getLogger(__name__)

# Activation ranges settle after a few dozen images; more only slows the export down.
CALIBRATION_IMAGES = 64
SPEC_VERSION_TO_TARGET = {4: "iOS13", 5: "iOS14", 6: "iOS15", 7: "iOS16", 8: "iOS17", 9: "iOS18", 10: "iOS26"}


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``export`` needs besides the model; checked on construction."""

    formats: tuple[str, ...] | None = None  # default: every format
    variants: tuple[str, ...] | None = None  # default: every variant of those formats
    calibration_images: Path | None = None  # folder of images for w8a8 and int8-static
    calibration_count: int = CALIBRATION_IMAGES
    opset: int = 17
    onnx_raw_input: bool = True  # uint8 image input with preprocessing in the graph; False: float input, no prologue
    overwrite: bool = False
    trust_code: bool = False
    name: str | None = None
    author: str = ""
    license: str = ""
    version: str = ""
    description: str = ""
    quantize: str = "all"  # "all": every selected variant; "auto": per format, the smallest that passes the gates
    validation_images: Path | None = None  # held-out images for quantize="auto"
    selected: tuple[Variant, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "selected", tuple(select(list(self.formats) if self.formats else None,
                                                          list(self.variants) if self.variants else None)))
        if not self.selected:
            raise ConfigError("no variant selected: the chosen formats have none of the chosen variants")
        if not 7 <= self.opset <= 21:
            raise ConfigError(f"opset must be between 7 and 21, got {self.opset}")
        if self.quantize not in ("all", "auto"):
            raise ConfigError(f"quantize must be 'all' or 'auto', got {self.quantize!r}")
        if self.quantize == "auto" and self.validation_images is None:
            raise ConfigError("quantize='auto' needs validation images (--images FOLDER) to judge each variant")
        if self.calibration_count < 1:
            raise ConfigError(f"calibration_count must be at least 1, got {self.calibration_count}")


def _calibration(folder: Path | None, pre: Preprocessing, count: int) -> list[np.ndarray]:
    """Up to ``count`` images from ``folder`` (a seeded sample), as uint8 NHWC batches in the contract's order."""
    if folder is None:
        return []
    from .images import iter_batches, list_images

    items = list_images(folder)
    rng = np.random.default_rng(0)
    picked = [items[i] for i in sorted(rng.permutation(len(items))[:count])]
    return [batch for _, batch in iter_batches(picked, pre, batch_size=16)]


def _target_of(mlmodel) -> str:
    return SPEC_VERSION_TO_TARGET.get(mlmodel.get_spec().specificationVersion, "unknown")


class _CoreMLBuilder:
    """Converts once per (backend, precision, target) and derives the variants from those bases."""

    def __init__(self, model, info):
        self.model, self.info, self._bases = model, info, {}

    def base(self, backend: str, precision: str, target: str | None = None):
        key = (backend, precision, target)
        if key not in self._bases:
            from .convert.coreml import convert

            self._bases[key] = convert(self.model, self.info, backend=backend, precision=precision, target=target)
        return self._bases[key]

    def build(self, v: Variant, calibration: list[np.ndarray]):
        from .quantize import coreml as q

        if v.format == "mlmodel":
            fp32 = self.base("neuralnetwork", "fp32")
            return {"fp32": lambda: fp32, "fp16": lambda: q.neuralnetwork_weights(fp32, 16),
                    "int8": lambda: q.neuralnetwork_weights(fp32, 8)}[v.name]()
        if v.name in ("fp32", "fp16"):
            return self.base("mlprogram", v.name)
        if v.name == "int8":
            return q.compress(self.base("mlprogram", "fp16"), q.WEIGHT_ONLY_INT8)
        if v.name in ("palette8", "palette6"):
            return q.compress(self.base("mlprogram", "fp16"), q.CompressionSpec("palettize", int(v.name[-1])))
        if v.name == "palette4":
            base = self.base("mlprogram", "fp16", target="iOS18")
            return q.compress(base, q.CompressionSpec("palettize", 4, grouped=True))
        if v.name == "w8a8":
            return q.w8a8(self.base("mlprogram", "fp16", target="iOS17"), calibration, self.info.preprocessing.channel_order)
        raise ConfigError(f"no Core ML builder for variant {v.key}")


def _onnx_variant(core, v: Variant, calibration: list[np.ndarray], pre: Preprocessing, details: dict):
    from .quantize import onnx as q

    if v.name == "fp32":
        return core
    if v.name == "fp16":
        return q.to_fp16(core)
    if v.name == "int8-dynamic":
        return q.to_int8_dynamic(core)
    if v.name == "int8-static":
        return q.to_int8_static(core, [pre.normalize(b) for b in calibration], details)
    raise ConfigError(f"no ONNX builder for variant {v.key}")


def _smoke_run_onnx(path: Path, pre: Preprocessing, raw: bool) -> None:
    """Every ONNX artifact must load and run in onnxruntime before it is declared written."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        h, w = pre.input_size
        x = np.full((1, h, w, pre.channels), 128, np.uint8)
        feed = x if raw else pre.normalize(x)
        session.run(None, {session.get_inputs()[0].name: feed})
    except Exception as exc:
        raise ConversionError(f"onnxruntime cannot run the exported file: {str(exc).splitlines()[0][:300]}",
                              path=path.name) from None


def export(model_path: str | os.PathLike, labels: str | os.PathLike | list[str], out: str | os.PathLike, *,
           preprocessing: Preprocessing | str | os.PathLike | dict | None = None,
           options: ExportOptions | None = None, progress=None) -> dict:
    """Export a Keras image classifier to every selected Core ML and ONNX variant in the folder ``out``.

    Writes atomically: ``out`` appears complete with its manifest.json, or not at all. Returns the manifest.
    ``preprocessing`` is a Preprocessing, a JSON file, a dict, or None to detect it from the model's own
    Rescaling/Normalization layers. ``progress`` is called with a line of text per step, if given.
    """
    from .convert import coreml as cm
    from .loading import load_model

    options = options or ExportOptions()
    if options.quantize == "auto":
        return _export_auto(model_path, labels, out, preprocessing=preprocessing, options=options, progress=progress)
    say = progress or (lambda _msg: None)
    model_path = Path(model_path)
    loaded = load_model(model_path, trust_code=options.trust_code)
    if isinstance(labels, (str, os.PathLike)):
        label_list, label_source = read_labels(labels), str(labels)
    else:
        label_list, label_source = check_labels(list(labels)), "labels"
    check_against_model(label_list, loaded.num_classes, source=label_source)
    if isinstance(preprocessing, (str, os.PathLike)):
        declared = Preprocessing.from_file(preprocessing)
    elif isinstance(preprocessing, dict):
        declared = Preprocessing.from_dict(preprocessing)
    else:
        declared = preprocessing
    pre = resolve(declared, loaded.input_shape, loaded.in_model_preprocessing, source=str(model_path))
    stem = options.name or (model_path.parent.name if model_path.stem == "model" else model_path.stem)
    info = cm.ModelInfo(name=stem, labels=label_list, preprocessing=pre, source_sha256=loaded.sha256,
                        source_file=model_path.name, author=options.author, license=options.license,
                        version=options.version, description=options.description)
    wanted = list(options.selected)
    needs_cal = any(v.needs_calibration for v in wanted)
    calibration = _calibration(options.calibration_images, pre, options.calibration_count) if needs_cal else []
    skipped, runnable = [], []
    explicit = bool(options.variants)
    for v in wanted:
        reason = None
        if v.needs_calibration and not calibration:
            reason = "needs calibration images (--calibration-images FOLDER)"
        if reason and explicit:
            raise ConfigError(f"variant {v.key} cannot be built here: {reason}")
        (skipped.append({"format": v.format, "variant": v.name, "reason": reason}) if reason else runnable.append(v))
    artifacts: list[Artifact] = []
    with atomic_directory(out, overwrite=options.overwrite) as stage:
        builder = _CoreMLBuilder(loaded.model, info)
        core = None
        meta = info.user_metadata()
        for v in runnable:
            t0 = time.perf_counter()
            path = stage / v.filename(stem)
            details: dict = {"description": v.description}
            if v.format in ("mlpackage", "mlmodel"):
                from .quantize.coreml import uncompressed_weights

                mlmodel = builder.build(v, calibration)
                cm.describe(mlmodel, info)
                mlmodel.user_defined_metadata["exporter.variant"] = v.key
                cm.save(mlmodel, path)
                target = _target_of(mlmodel)
                if v.weight_bits < 16:
                    palette = v.weight_bits if v.name.startswith("palette") else None
                    details["uncompressed_weights"] = uncompressed_weights(mlmodel, palette)
            else:
                import onnx

                from .convert import onnx as ox

                if core is None:
                    core = ox.convert_core(loaded.model, pre, opset=options.opset, source=str(model_path))
                body = _onnx_variant(core, v, calibration, pre, details)
                final = ox.wrap(body, pre, label_list, {**ox.metadata_for(label_list, pre, meta),
                                                        "exporter.variant": v.key}, raw_input=options.onnx_raw_input)
                ox.check(final, source=path.name)
                onnx.save(final, path)
                _smoke_run_onnx(path, pre, options.onnx_raw_input)
                target = f"opset {options.opset}"
            art = Artifact(path=path.name, format=v.format, variant=v.name, minimum_deployment_target=target,
                           details=details)
            art.measure(stage)
            art.details["seconds"] = round(time.perf_counter() - t0, 2)
            artifacts.append(art)
            say(f"wrote {art.path} ({art.bytes:,} bytes, {target})")
        size_table(artifacts)
        for a in artifacts:
            a.details["theoretical_ratio"] = next(v.weight_bits for v in runnable if v.key == f"{a.format}:{a.variant}") / 32
        manifest = manifest_dict(
            source={"path": str(model_path), "sha256": loaded.sha256, "format": loaded.format,
                    "input_shape": list(loaded.input_shape), "num_classes": loaded.num_classes},
            labels=label_list, preprocessing=pre.to_dict(), artifacts=artifacts, skipped=skipped,
            versions={"exporter": __version__, **library_versions()})
        write_json(stage / "manifest.json", manifest)
    return manifest


def validate(export_dir, images, **kwargs) -> dict:
    """Parity of every artifact in ``export_dir`` against its Keras model on ``images``; see validation.parity."""
    from .validation.parity import validate as _validate

    return _validate(export_dir, images, **kwargs)


def _export_auto(model_path, labels, out, *, preprocessing, options: ExportOptions, progress) -> dict:
    """Export every candidate to a scratch folder, validate them all, keep per format the smallest that passes."""
    import dataclasses
    import shutil
    import tempfile

    from .errors import ParityError
    from .packaging import atomic_directory, write_json

    out = Path(out)
    if out.exists() and not options.overwrite:
        from .errors import DestinationError

        raise DestinationError("destination already exists", path=out,
                               hint="choose another --out, or pass --overwrite to replace it")
    scratch_parent = Path(tempfile.mkdtemp(prefix=f".{out.name}.auto-", dir=out.absolute().parent))
    try:
        everything = dataclasses.replace(options, quantize="all", overwrite=False,
                                         calibration_images=options.calibration_images or options.validation_images)
        full = export(model_path, labels, scratch_parent / "all", preprocessing=preprocessing, options=everything,
                      progress=progress)
        try:
            report = validate(scratch_parent / "all", options.validation_images, trust_code=options.trust_code)
        except ParityError as exc:
            report = exc.report
        by_path = {r["path"]: r for r in report["artifacts"]}
        selection, keep = {}, []
        for fmt in dict.fromkeys(a["format"] for a in full["artifacts"]):
            tried = sorted((a for a in full["artifacts"] if a["format"] == fmt), key=lambda a: a["bytes"])
            rows = [{"variant": a["variant"], "bytes": a["bytes"], "status": by_path[a["path"]]["status"],
                     "failures": by_path[a["path"]]["failures"], "reason": by_path[a["path"]]["reason"]}
                    for a in tried]
            picked = next((a for a in tried if by_path[a["path"]]["status"] == "passed"), None)
            selection[fmt] = {"picked": picked["variant"] if picked else None, "tried": rows}
            if picked:
                keep.append(picked)
        if not keep:
            raise ParityError("--quantize auto: no variant of any format passed its gates (or could be run here)",
                              path=out).with_report(report)
        with atomic_directory(out, overwrite=options.overwrite) as stage:
            for a in keep:
                src = scratch_parent / "all" / a["path"]
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, stage / a["path"])
            manifest = {**full, "artifacts": keep, "auto_selection": selection}
            write_json(stage / "manifest.json", manifest)
            write_json(stage / "parity.json", report)
        return manifest
    finally:
        shutil.rmtree(scratch_parent, ignore_errors=True)
