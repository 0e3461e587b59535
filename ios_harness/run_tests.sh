#!/usr/bin/env bash
# The Swift half of the test suite, with the cross-language contract in the middle:
#  1. Python (PYTHON, default ../.venv/bin/python) exports the SqueezeNet sample to an fp16 .mlpackage in a temporary
#     folder, writes golden files for 20 held-out images, a parity case, and the Xcode package for that export
#     (prepare.py);
#  2. `swift build` and `swift test` here, with GOLDEN_DIR and PARITY_CASE pointing at what Python just wrote (the
#     contract tests must run, not skip: this script fails if they skip);
#  3. `swift build` and `swift test` in the generated package: it builds on Linux with the Apple-only code compiled
#     out, and its golden files match its model record and labels;
#  4. where Core ML does not exist (Linux), the Apple-only code of both packages is compiled against AppleSDKStubs,
#     declarations of the Apple APIs it calls transcribed from Apple's documentation (apple_typecheck.py): a type
#     check, nothing runs.
# On a Mac, step 2 also runs golden parity of the exported model through Core ML and Vision (MODEL_PATH).
# Exits non-zero on any failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-$here/../.venv/bin/python}"
SWIFT="${SWIFT:-swift}"
fail() { echo "run_tests.sh: $*" >&2; exit 1; }
[ -x "$PYTHON" ] || fail "$PYTHON is not an executable Python; create the venv (see README.md) or set PYTHON"
command -v "$SWIFT" >/dev/null || fail "$SWIFT not found on PATH; install a Swift 5.9 or newer toolchain or set SWIFT"

start=$SECONDS
work="$(mktemp -d "${TMPDIR:-/tmp}/ios_harness.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "== prepare.py: export, golden files, parity case, Xcode package in $work"
"$PYTHON" "$here/prepare.py" "$work"
model=$(find "$work/export" -maxdepth 1 -name '*_fp16.mlpackage' -print -quit)
[ -n "$model" ] || fail "prepare.py wrote no fp16 .mlpackage into $work/export"

echo "== ios_harness: swift build"
(cd "$here" && "$SWIFT" build)

echo "== ios_harness: swift test (GOLDEN_DIR=$work/golden)"
log="$work/harness-tests.log"
(cd "$here" && GOLDEN_DIR="$work/golden" PARITY_CASE="$work/parity_case.json" MODEL_PATH="$model" \
    "$SWIFT" test 2>&1) | tee "$log"
# The contract tests skip without GOLDEN_DIR; here they must have run, every one of them.
started=$(grep -cE "Test Case '.*CrossLanguageContractTests[ .]test[A-Za-z]+\]?' started" "$log" || true)
passed=$(grep -cE "Test Case '.*CrossLanguageContractTests[ .]test[A-Za-z]+\]?' passed" "$log" || true)
[ "$started" -gt 0 ] && [ "$started" -eq "$passed" ] \
    || fail "cross-language contract tests: $passed of $started passed (a skip counts as a failure here)"

echo "== generated package: swift build and swift test"
# A scratch folder under .build keeps compiled dependencies between runs, while the package itself is regenerated.
(cd "$work/package" && "$SWIFT" build --scratch-path "$here/.build/xcode-package" \
    && "$SWIFT" test --scratch-path "$here/.build/xcode-package")

if [ "$(uname -s)" != "Darwin" ]; then
    echo "== Apple-only code: swift build --build-tests against AppleSDKStubs (type check; nothing runs)"
    "$PYTHON" "$here/apple_typecheck.py" "$work"
    (cd "$work/apple_check/harness" && "$SWIFT" build --build-tests --scratch-path "$here/.build/apple-check-harness")
    (cd "$work/apple_check/package" && "$SWIFT" build --build-tests --scratch-path "$here/.build/apple-check-package")
fi

echo "ios_harness: every Swift check passed in $((SECONDS - start)) s"
