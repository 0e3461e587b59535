"""Lay out, in WORK/apple_check/, two Swift packages that compile this project's Apple-only Swift code on Linux
against AppleSDKStubs (declarations of the Core ML, Vision, Core Image, Core Video, Image I/O, Core Graphics and
UIKit APIs it calls, transcribed from Apple's documentation): run_tests.sh then runs `swift build --build-tests` in
each.

WORK/apple_check/harness/  ios_harness's CoreMLHarness and CoreMLHarnessTests targets (and GoldenParity)
WORK/apple_check/package/  a copy of the generated Xcode package WORK/package/ (prepare.py), its targets depending on
                           the stubs

On Linux `canImport(CoreML)` is false, so without the stubs that code compiles to nothing; with them it is
type-checked: a misspelt API, a wrong argument label or type, a missing `try`, an optional not unwrapped, a module
not imported fail the build. It is not the SDK: what the stubs accept may still fail on a Mac (an overload or an
availability they do not model, Sendable checking), which only `verify_on_mac.sh` can tell. Each package also gets
a source file naming the Apple-only types (AppleCodeCompiled.swift), so the build fails if the `#if` blocks were
compiled out after all.

Usage: python ios_harness/apple_typecheck.py WORK
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STUBS = HERE / "AppleSDKStubs"
STUB_MODULES = ("CoreGraphics", "CoreVideo", "ImageIO", "CoreImage", "CoreML", "Vision", "UIKit")
# Core Foundation types that Foundation re-exports on Apple platforms but not on Linux, declared as the NS classes
# they are toll-free bridged to (what `url as CFURL` and `dictionary as? [CFString: Any]` do on a Mac).
FOUNDATION_EXTRAS = """\
// Added by ios_harness/apple_typecheck.py for the Linux type-check only: Core Foundation names that Apple's Foundation
// re-exports and Linux's lacks, as the NS classes they are toll-free bridged to.
import Foundation

typealias CFURL = NSURL
typealias CFString = NSString
typealias CFDictionary = NSDictionary
"""


def _products() -> str:
    return ", ".join(f'.product(name: "{m}", package: "AppleSDKStubs")' for m in STUB_MODULES)


def _copy_sources(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for swift in src.glob("*.swift"):
        shutil.copy2(swift, dst / swift.name)


def harness(out: Path) -> None:
    """ios_harness's own Apple-only targets, unchanged, plus the Foundation extras and the sentinel."""
    for target in ("GoldenParity", "CoreMLHarness"):
        _copy_sources(HERE / "Sources" / target, out / "Sources" / target)
    _copy_sources(HERE / "Tests" / "CoreMLHarnessTests", out / "Tests" / "CoreMLHarnessTests")
    (out / "Sources" / "CoreMLHarness" / "AppleFoundationExtras.swift").write_text(FOUNDATION_EXTRAS, encoding="utf-8")
    (out / "Tests" / "CoreMLHarnessTests" / "AppleCodeCompiled.swift").write_text(
        "// Fails to compile if CoreMLHarness's Apple-only code was compiled out (apple_typecheck.py).\n"
        "import CoreMLHarness\n\n"
        "let appleOnlyTypes: [Any.Type] = [ImageClassifier.self, GoldenRun.self, CoreMLParityTests.self]\n",
        encoding="utf-8",
    )
    (out / "Package.swift").write_text(
        f"""// swift-tools-version:5.9
// Written by ios_harness/apple_typecheck.py: ios_harness's Apple-only code against AppleSDKStubs.
import PackageDescription

let package = Package(
    name: "AppleCheckHarness",
    dependencies: [.package(path: "{STUBS}")],
    targets: [
        .target(name: "GoldenParity"),
        .target(name: "CoreMLHarness", dependencies: ["GoldenParity", {_products()}]),
        .testTarget(name: "CoreMLHarnessTests", dependencies: ["CoreMLHarness", "GoldenParity", {_products()}]),
    ]
)
""",
        encoding="utf-8",
    )


def package(generated: Path, out: Path) -> None:
    """A copy of the generated package whose library and test targets depend on the stubs."""
    shutil.copytree(generated, out, symlinks=True)
    manifest = out / "Package.swift"
    text = manifest.read_text(encoding="utf-8")
    names = re.findall(r'\.target\(\s*name: "([^"]+)"', text)
    if len(names) != 1:
        sys.exit(f"apple_typecheck.py: {manifest} should declare one library target, found {names}")
    name = names[0]
    edits = [
        (r"(\n    targets: \[)", f'\n    dependencies: [.package(path: "{STUBS}")],\\1'),
        (r'(\.target\(\s*name: "[^"]+",)', f"\\1\n            dependencies: [{_products()}],"),
        (r'(\.testTarget\(\s*name: "[^"]+",\s*dependencies: \[)([^\]]*)\]', f"\\1\\2, {_products()}]"),
    ]
    for pattern, replacement in edits:
        text, count = re.subn(pattern, replacement, text, count=1)
        if count != 1:
            sys.exit(f"apple_typecheck.py: {manifest} has no match for {pattern!r}; update apple_typecheck.py")
    manifest.write_text(text, encoding="utf-8")
    (out / "Sources" / name / "AppleFoundationExtras.swift").write_text(FOUNDATION_EXTRAS, encoding="utf-8")
    (out / "Tests" / f"{name}Tests" / "AppleCodeCompiled.swift").write_text(
        f"// Fails to compile if {name}'s Apple-only code was compiled out (apple_typecheck.py).\n"
        f"import {name}\nimport UIKit\nimport ImageIO\n\n"
        f"let appleOnlyTypes: [Any.Type] = [{name}Classifier.self, ImageClassifier.self]\n"
        "let uiKitExtension = CGImagePropertyOrientation(UIImage.Orientation.up)\n",
        encoding="utf-8",
    )


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__.splitlines()[-1])
    work = Path(sys.argv[1])
    out = work / "apple_check"
    if out.exists():
        shutil.rmtree(out)
    harness(out / "harness")
    package(work / "package", out / "package")
    print(f"wrote the Apple-only type-check packages to {out}")


if __name__ == "__main__":
    main()
