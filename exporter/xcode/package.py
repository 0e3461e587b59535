"""A ready-to-add Swift package for one exported Core ML model: the model and labels as resources, a typed classify API
(Vision and direct Core ML), and an XCTest golden parity test. It builds on Linux with the Apple-only code compiled
out, and opens in Xcode with File > Add Package Dependencies > Add Local.

Layout (NAME is the Swift module name)::

    Package.swift                         platforms from the model's minimum deployment target, library NAME
    README.md
    Sources/NAME/NAME.swift               NAMEResources (every platform), NAMEClassifier (Apple platforms)
    Sources/NAME/ImageClassifier.swift    the generic Core ML / Vision classifier (Apple platforms)
    Sources/NAME/Resources/NAMEModel.mlpackage (copied) or NAMEModel.mlmodel (processed: Xcode compiles it and
                                          generates the NAMEModel class; see RESOURCE_RULE),
                                          labels.txt, model.json
    Tests/NAMETests/NAMETests.swift       golden parity test (skipped off Apple platforms)
    Tests/NAMETests/GoldenFile.swift, Parity.swift
    Tests/NAMETests/Golden/               golden.json and images/, see write_golden
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .. import __version__
from ..capabilities import FORMATS, variant
from ..errors import ConfigError, DestinationError
from ..packaging import MANIFEST_NAME, artifact_file, atomic_directory, copy_verified, read_manifest, write_json
from ..preprocessing import Preprocessing
from ..safety import MAX_NAME_CHARS
from .golden import check_count, write_golden

HERE = Path(__file__).parent
SWIFT_SOURCES = HERE / "swift"
TEMPLATES = HERE / "templates"
# Swift files shared with ios_harness: GoldenParity code goes to the test target, the classifier to the library.
TEST_SWIFT_FILES = ("GoldenFile.swift", "Parity.swift")
LIBRARY_SWIFT_FILES = ("ImageClassifier.swift",)
CORE_ML_FORMATS = tuple(name for name, f in FORMATS.items() if f.family == "coreml")
MODEL_RESOURCE_SUFFIX = "Model"  # NAMEModel.mlpackage: Xcode names the class it generates after the file
# The first OS releases of each Core ML specification an artifact can need (coremltools' deployment targets), as
# SwiftPM platform versions; every platform where Core ML exists gets a floor, so the package never builds for an OS
# that cannot load its model. iOS 18's generation (macOS 15 ...) needs swift-tools-version 6.0 to be named.
PLATFORMS = {
    "iOS13": {"iOS": "v13", "macOS": "v10_15", "tvOS": "v13", "watchOS": "v6"},
    "iOS14": {"iOS": "v14", "macOS": "v11", "tvOS": "v14", "watchOS": "v7"},
    "iOS15": {"iOS": "v15", "macOS": "v12", "tvOS": "v15", "watchOS": "v8"},
    "iOS16": {"iOS": "v16", "macOS": "v13", "tvOS": "v16", "watchOS": "v9"},
    "iOS17": {"iOS": "v17", "macOS": "v14", "tvOS": "v17", "watchOS": "v10", "visionOS": "v1"},
    "iOS18": {"iOS": "v18", "macOS": "v15", "tvOS": "v18", "watchOS": "v11", "visionOS": "v2"},
}
# How the model file is declared as a resource. An .mlmodel is processed: Xcode compiles it into an .mlmodelc and
# generates its class and preview, and command-line SwiftPM copies the single file as it is. An .mlpackage is copied:
# command-line SwiftPM (`swift build`, `swift test`, the Linux build) applies `.process` to each file inside the
# package directory and flattens them into the bundle (Swift 6.3.1 put model.mlmodel, weight.bin and Manifest.json at
# the bundle root), which leaves no loadable model; only Xcode's build system knows .mlpackage as one item.
RESOURCE_RULE = {"mlmodel": "process", "mlpackage": "copy"}
RESOURCE_NOTE = {
    "process": "Processed: Xcode compiles the model into an .mlmodelc at build time and generates its class and the "
    "model preview; command-line SwiftPM copies it, and the classifier compiles it on first use.",
    "copy": "Copied: command-line SwiftPM would flatten an .mlpackage's files with .process (see the exporter's "
    "xcode/package.py); the classifier compiles it on first use and caches the result.",
}
# The package README's paragraph on the bundled model file, by format (NAME: the package name, MODEL: the file).
MODEL_PARAGRAPH = {
    "mlmodel": "The model, `{model}`, is declared `.process` in `Package.swift`: Xcode compiles it into an `.mlmodelc` "
    "when it builds the package and generates its class (select the file in the navigator for the model preview with "
    "its labels and metadata); command-line SwiftPM copies it and `{name}Classifier` compiles it on first use. "
    "`{name}Resources.labels()` and `.info()` work on every platform, Linux included.",
    "mlpackage": "The model, `{model}`, is declared `.copy` in `Package.swift`, because command-line SwiftPM would "
    "flatten the files inside an `.mlpackage`; so Xcode generates no class for it: use `{name}Classifier` (its `model` "
    "is the `MLModel`), which compiles it on first use and caches the compiled model, keyed by its SHA-256. "
    "`{name}Resources.labels()` and `.info()` work on every platform, Linux included.",
}
# The async classify API uses Swift concurrency, which back-deploys to iOS 13 / macOS 10.15.
TOOLS_VERSION = {"iOS18": "6.0"}
DEFAULT_TOOLS_VERSION = "5.9"


def platforms_for(target: str) -> tuple[str, str]:
    """(swift-tools-version, the ``platforms:`` list) for an artifact's minimum deployment target."""
    if target not in PLATFORMS:
        raise ConfigError(f"no Apple platform versions known for the minimum deployment target {target!r}; known: {sorted(PLATFORMS)}")
    listed = ", ".join(f".{os_name}(.{version})" for os_name, version in PLATFORMS[target].items())
    return TOOLS_VERSION.get(target, DEFAULT_TOOLS_VERSION), f"[{listed}]"


MODEL_JSON_SCHEMA_VERSION = 1
# With a top-1 gate of 0.99 (fp16) or 0.98 (int8), 100 images let one or two near-tie images flip, as the Python
# validation allows on the full held-out set; at the model input size the PNGs stay a few hundred kilobytes or less
# for small inputs.
DEFAULT_GOLDEN_COUNT = 100
SWIFT_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# Module names the generated code imports or declares (a package named so would shadow them), and Swift keywords.
RESERVED_NAMES = frozenset(
    """
    Foundation CoreML Vision CoreGraphics CoreVideo CoreImage ImageIO XCTest Swift PackageDescription ImageClassifier
    GoldenParity CoreMLHarness Any Self Type Protocol associatedtype class deinit enum extension fileprivate func
    import init inout internal let open operator private precedencegroup protocol public rethrows static struct
    subscript typealias var break case catch continue default defer do else fallthrough for guard if in repeat return
    throw switch where while as false is nil self super throws true try""".split()
)
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
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"package name must be at most {MAX_NAME_CHARS} characters, got {len(name)}")
    if not SWIFT_IDENTIFIER.match(name):
        raise ConfigError(f"package name must be a Swift identifier (letters, digits, _; not starting with a digit), got {name!r}")
    if name in RESERVED_NAMES:
        raise ConfigError(f"package name {name!r} would shadow a module or keyword the generated code uses; choose another --name")
    return name


def pick_artifact(manifest: dict, variant: str, export_dir: Path) -> dict:
    """The Core ML artifact for ``variant``: a name ("fp16", ML Program preferred over NeuralNetwork) or a key
    ("mlmodel:fp16")."""
    coreml = [a for a in manifest["artifacts"] if a["format"] in CORE_ML_FORMATS]
    fmt, _, name = variant.rpartition(":")
    for wanted in [fmt] if fmt else list(CORE_ML_FORMATS):
        for a in coreml:
            if a["format"] == wanted and a["variant"] == name:
                return a
    available = ", ".join(f"{a['format']}:{a['variant']}" for a in coreml) or "none"
    raise ConfigError(f"{export_dir}: the export has no Core ML artifact for variant {variant!r}; available: {available}")


def model_stem(manifest: dict, artifact: dict) -> str:
    """The model's name in the export's file names: manifest.json's ``name``; an export written before that key
    existed gives it back through the capability table's file name (``NAME_`` + the variant's stem + suffix)."""
    if manifest.get("name"):
        return manifest["name"]
    v = variant(artifact["format"], artifact["variant"])
    return artifact["path"].removesuffix(v.filename(""))


# Values substituted into Swift and Markdown that come from a manifest (untrusted): read_manifest limits them to
# plain names, and render refuses anything that could end a Swift comment line or string literal all the same. The
# other values (rules, notes, versions) are the toolkit's own text.
FROM_MANIFEST = frozenset({"NAME", "MODEL_FILE", "COLOR", "VARIANT", "ARTIFACT", "TARGET", "RESIZE", "CROP"})
TEMPLATE_VALUE = re.compile(r"[A-Za-z0-9 ._:-]*\Z")


def render(template: str, values: dict[str, str]) -> str:
    text = (TEMPLATES / template).read_text(encoding="utf-8")
    for token, value in values.items():
        if token in FROM_MANIFEST and not TEMPLATE_VALUE.match(value):
            raise ConfigError(
                f"refusing to write {value[:80]!r} into generated Swift ({token}): only letters, digits, spaces and . _ : - are allowed"
            )
        text = text.replace(f"__{token}__", value)
    left = sorted(set(TOKEN.findall(text)))
    if left:
        raise ConfigError(f"template {template} has unfilled placeholders {left}")  # a bug in the templates
    return text


def check_inputs(
    export_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    images_folder: str | os.PathLike,
    variant: str,
    package_name: str | None,
    overwrite: bool,
    golden_count: int | None,
    model_path: str | os.PathLike | None,
) -> None:
    """What ``write_xcode_package`` can check in milliseconds, before TensorFlow is imported: a mistyped export
    folder, variant or image folder, an existing --out, a source model that is not where the manifest says (each
    used to cost the 10-15 s of importing TensorFlow first)."""
    from .. import precheck
    from ..errors import ModelLoadError
    from ..packaging import find_source_model

    check_count(golden_count)
    export_dir = Path(export_dir)
    manifest = read_manifest(export_dir)
    precheck.destination(out_dir, overwrite=overwrite)
    precheck.image_folder(images_folder, option="--images")
    pick_artifact(manifest, variant, export_dir)
    if package_name is not None:
        check_package_name(package_name)
    if model_path is None:
        find_source_model(manifest, export_dir)
    elif not Path(model_path).exists():
        raise ModelLoadError("model file not found (given as --model)", path=Path(model_path))


def write_xcode_package(
    export_dir: str | Path,
    out_dir: str | Path,
    *,
    images_folder: str | Path,
    variant: str = "fp16",
    package_name: str | None = None,
    overwrite: bool = False,
    golden_count: int | None = DEFAULT_GOLDEN_COUNT,
    model_path: str | Path | None = None,
    trust_code: bool = False,
) -> Path:
    """Write a Swift package for the Core ML ``variant`` of the export in ``export_dir`` into ``out_dir``
    (atomically), with golden files from ``golden_count`` images of ``images_folder`` (all when None). Returns the
    package folder."""
    check_count(golden_count)
    root = Path(export_dir)
    manifest = read_manifest(root)
    pre = Preprocessing.from_dict(manifest["preprocessing"], source=str(root / MANIFEST_NAME)).to_dict()
    artifact = pick_artifact(manifest, variant, root)
    model_src = artifact_file(root, artifact)  # inside the export folder, present, regular files only, unchanged
    name = check_package_name(package_name or swift_name(model_stem(manifest, artifact)))
    model_file = f"{name}{MODEL_RESOURCE_SUFFIX}.{artifact['format']}"
    tools, platforms = platforms_for(artifact["minimum_deployment_target"])
    rule = RESOURCE_RULE[artifact["format"]]
    values = {
        "NAME": name,
        "MODEL_FILE": model_file,
        "MODEL_RULE": rule,
        "MODEL_RULE_NOTE": RESOURCE_NOTE[rule],
        "TOOLS_VERSION": tools,
        "PLATFORMS": platforms,
        "VARIANT": artifact["variant"],
        "ARTIFACT": artifact["path"],
        "EXPORTER_VERSION": __version__,
        "TARGET": artifact["minimum_deployment_target"],
        "RESIZE": pre["resize"],
        "CROP": CROP_OPTION[pre["resize"]],
        "INPUT_HEIGHT": str(int(pre["input_size"][0])),
        "INPUT_WIDTH": str(int(pre["input_size"][1])),
        "LABEL_COUNT": str(len(manifest["labels"])),
        "COLOR": {"L": "grayscale"}.get(pre["channel_order"], pre["channel_order"]),
        "MODEL_PARAGRAPH": MODEL_PARAGRAPH[artifact["format"]].format(name=name, model=model_file),
    }
    out = Path(out_dir)
    with atomic_directory(out, overwrite=overwrite, inputs=(root, images_folder, model_path), ours=("Package.swift",)) as stage:
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
        # the bytes checked against the manifest are the bytes shipped: read once, copied, their SHA-256 compared
        copy_verified(model_src, resources / model_file, artifact["sha256"], error=DestinationError, what="model file")
        (resources / "labels.txt").write_text("".join(f"{label}\n" for label in manifest["labels"]), encoding="utf-8")
        write_json(
            resources / "model.json",
            {
                "schema_version": MODEL_JSON_SCHEMA_VERSION,
                "name": name,
                "variant": artifact["variant"],
                "format": artifact["format"],
                "model_file": model_file,
                "artifact": artifact["path"],
                "sha256": artifact["sha256"],
                "source_sha256": manifest["source"]["sha256"],
                "minimum_deployment_target": artifact["minimum_deployment_target"],
                "exporter_version": __version__,
                "preprocessing": pre,
            },
        )
        write_golden(root, images_folder, tests / "Golden", count=golden_count, model_path=model_path, trust_code=trust_code)
    return out.absolute()
