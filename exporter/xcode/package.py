"""A ready-to-add Swift package for one exported Core ML model: the model and labels as resources, a typed classify API
(Vision and direct Core ML), and an XCTest golden parity test. It builds on Linux with the Apple-only code compiled
out, and opens in Xcode with File > Add Package Dependencies > Add Local.

Layout (NAME is the Swift module name)::

    Package.swift                         swift-tools-version 5.9, iOS 16 / macOS 13, library NAME
    README.md
    Sources/NAME/NAME.swift               NAMEResources (every platform), NAMEClassifier (Apple platforms)
    Sources/NAME/ImageClassifier.swift    the generic Core ML / Vision classifier (Apple platforms)
    Sources/NAME/Resources/Model.mlpackage (or Model.mlmodel), labels.txt, model.json
    Tests/NAMETests/NAMETests.swift       golden parity test (skipped off Apple platforms)
    Tests/NAMETests/GoldenFile.swift, Parity.swift
    Tests/NAMETests/Golden/               golden.json and images/, see write_golden
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .. import __version__
from ..capabilities import FORMATS, variant
from ..errors import ConfigError, DestinationError
from ..packaging import MANIFEST_NAME, atomic_directory, read_manifest, sha256_of, write_json
from ..preprocessing import Preprocessing
from .golden import check_count, write_golden

HERE = Path(__file__).parent
SWIFT_SOURCES = HERE / "swift"
TEMPLATES = HERE / "templates"
# Swift files shared with ios_harness: GoldenParity code goes to the test target, the classifier to the library.
TEST_SWIFT_FILES = ("GoldenFile.swift", "Parity.swift")
LIBRARY_SWIFT_FILES = ("ImageClassifier.swift",)
CORE_ML_FORMATS = tuple(name for name, f in FORMATS.items() if f.family == "coreml")
MODEL_RESOURCE_STEM = "Model"
MODEL_JSON_SCHEMA_VERSION = 1
# With a top-1 gate of 0.99 (fp16) or 0.98 (int8), 100 images let one or two near-tie images flip, as the Python
# validation allows on the full held-out set; at the model input size the PNGs stay a few hundred kilobytes or less
# for small inputs.
DEFAULT_GOLDEN_COUNT = 100
SWIFT_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Module names the generated code imports or declares (a package named so would shadow them), and Swift keywords.
RESERVED_NAMES = frozenset("""
    Foundation CoreML Vision CoreGraphics CoreVideo CoreImage ImageIO XCTest Swift PackageDescription ImageClassifier
    GoldenParity CoreMLHarness Any Self Type Protocol associatedtype class deinit enum extension fileprivate func
    import init inout internal let open operator private precedencegroup protocol public rethrows static struct
    subscript typealias var break case catch continue default defer do else fallthrough for guard if in repeat return
    throw switch where while as false is nil self super throws true try""".split())
TOKEN = re.compile(r"__[A-Z_]+__")
CROP_OPTION = {"stretch": "scaleFill", "center_crop": "centerCrop"}


def swift_name(stem: str) -> str:
    """``squeezenet_digits`` -> ``SqueezenetDigits``: a Swift type-style name from a model file stem."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", stem) if p]
    name = "".join(p[0].upper() + p[1:] for p in parts)
    if not name:
        return "Classifier"
    return f"Model{name}" if name[0].isdigit() else name


def check_package_name(name: str) -> str:
    if not SWIFT_IDENTIFIER.match(name):
        raise ConfigError(f"package name must be a Swift identifier (letters, digits, _; not starting with a digit), "
                          f"got {name!r}")
    if name in RESERVED_NAMES:
        raise ConfigError(f"package name {name!r} would shadow a module or keyword the generated code uses; "
                          "choose another --name")
    return name


def pick_artifact(manifest: dict, variant: str, export_dir: Path) -> dict:
    """The Core ML artifact for ``variant``: a name ("fp16", ML Program preferred over NeuralNetwork) or a key
    ("mlmodel:fp16")."""
    coreml = [a for a in manifest["artifacts"] if a["format"] in CORE_ML_FORMATS]
    fmt, _, name = variant.rpartition(":")
    for wanted in ([fmt] if fmt else list(CORE_ML_FORMATS)):
        for a in coreml:
            if a["format"] == wanted and a["variant"] == name:
                return a
    available = ", ".join(f"{a['format']}:{a['variant']}" for a in coreml) or "none"
    raise ConfigError(f"{export_dir}: the export has no Core ML artifact for variant {variant!r}; "
                      f"available: {available}")


def model_stem(manifest: dict, artifact: dict) -> str:
    """The model's name in the export's file names: manifest.json's ``name``; an export written before that key
    existed gives it back through the capability table's file name (``NAME_`` + the variant's stem + suffix)."""
    if manifest.get("name"):
        return manifest["name"]
    v = variant(artifact["format"], artifact["variant"])
    return artifact["path"].removesuffix(v.filename(""))


def render(template: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for token, value in values.items():
        text = text.replace(f"__{token}__", value)
    left = sorted(set(TOKEN.findall(text)))
    if left:
        raise ConfigError(f"template {template} has unfilled placeholders {left}")  # a bug in the templates
    return text


def write_xcode_package(export_dir: str | Path, out_dir: str | Path, *, images_folder: str | Path,
                        variant: str = "fp16", package_name: str | None = None, overwrite: bool = False,
                        golden_count: int | None = DEFAULT_GOLDEN_COUNT, model_path: str | Path | None = None,
                        trust_code: bool = False) -> Path:
    """Write a Swift package for the Core ML ``variant`` of the export in ``export_dir`` into ``out_dir``
    (atomically), with golden files from ``golden_count`` images of ``images_folder`` (all when None). Returns the
    package folder."""
    check_count(golden_count)
    root = Path(export_dir)
    manifest = read_manifest(root)
    pre = Preprocessing.from_dict(manifest["preprocessing"], source=str(root / MANIFEST_NAME)).to_dict()
    artifact = pick_artifact(manifest, variant, root)
    model_src = root / artifact["path"]
    if not model_src.exists():
        raise DestinationError("listed in manifest.json but missing", path=model_src)
    if sha256_of(model_src) != artifact["sha256"]:
        raise DestinationError("changed since the export (SHA-256 differs from manifest.json); export again",
                               path=model_src)
    name = check_package_name(package_name or swift_name(model_stem(manifest, artifact)))
    model_file = f"{MODEL_RESOURCE_STEM}.{artifact['format']}"
    values = {"NAME": name, "MODEL_FILE": model_file, "VARIANT": artifact["variant"], "ARTIFACT": artifact["path"],
              "EXPORTER_VERSION": __version__, "TARGET": artifact["minimum_deployment_target"],
              "RESIZE": pre["resize"], "CROP": CROP_OPTION[pre["resize"]]}
    out = Path(out_dir)
    with atomic_directory(out, overwrite=overwrite) as stage:
        sources = stage / "Sources" / name
        resources = sources / "Resources"
        tests = stage / "Tests" / f"{name}Tests"
        resources.mkdir(parents=True)
        tests.mkdir(parents=True)
        (stage / "Package.swift").write_text(render("Package.swift.in", values), encoding="utf-8")
        (stage / "README.md").write_text(render("README.md.in", values), encoding="utf-8")
        (sources / f"{name}.swift").write_text(render("Library.swift.in", values), encoding="utf-8")
        (tests / f"{name}Tests.swift").write_text(render("Tests.swift.in", values), encoding="utf-8")
        for file in LIBRARY_SWIFT_FILES:
            shutil.copyfile(SWIFT_SOURCES / file, sources / file)
        for file in TEST_SWIFT_FILES:
            shutil.copyfile(SWIFT_SOURCES / file, tests / file)
        if model_src.is_dir():
            shutil.copytree(model_src, resources / model_file)
        else:
            shutil.copyfile(model_src, resources / model_file)
        (resources / "labels.txt").write_text("".join(f"{label}\n" for label in manifest["labels"]), encoding="utf-8")
        write_json(resources / "model.json", {
            "schema_version": MODEL_JSON_SCHEMA_VERSION, "name": name, "variant": artifact["variant"],
            "format": artifact["format"], "model_file": model_file, "artifact": artifact["path"],
            "sha256": artifact["sha256"], "source_sha256": manifest["source"]["sha256"],
            "minimum_deployment_target": artifact["minimum_deployment_target"], "exporter_version": __version__,
            "preprocessing": pre})
        write_golden(root, images_folder, tests / "Golden", count=golden_count, model_path=model_path,
                     trust_code=trust_code)
    return out.absolute()
