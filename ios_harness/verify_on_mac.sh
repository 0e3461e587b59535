#!/usr/bin/env bash
# Everything in this project that only a Mac can check, in one command, with one verdict at the end.
# Nobody has run it yet: the project is developed on Linux. The first contributor with a Mac (macOS 14+, Xcode 15+
# with its command-line tools, Python 3.11) runs, from the repository root:
#
#     bash ios_harness/verify_on_mac.sh
#
# Steps (each runs even when an earlier one failed, so one report shows everything):
#   1. pytest -m macos: the Linux Core ML executor against real Core ML on the exported sample (tests marked macos).
#   2. exporter validate on macOS: every Core ML file of a sample export through Core ML itself (the report's engine
#      says "Core ML"), not through the executor.
#   3. ios_harness/run_tests.sh: `swift test` of ios_harness (golden parity through Core ML and Vision with Apple's
#      SDK) and of a generated package.
#   4. a generated package of the NeuralNetwork file built by Xcode's build system for the iOS Simulator: its
#      processed .mlmodel resource must become an .mlmodelc and Xcode must generate its model class.
# Environment: PYTHON (default .venv/bin/python, created with `pip install -e ".[test]"` if missing), WORK (scratch
# folder, default a new temporary one). Exit code 0 only when every step passed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ "$(uname -s)" = "Darwin" ] || { echo "verify_on_mac.sh: this script checks what only macOS can; run it on a Mac" >&2; exit 2; }
command -v xcodebuild >/dev/null || { echo "verify_on_mac.sh: xcodebuild not found: install Xcode" >&2; exit 2; }

PYTHON="${PYTHON:-$root/.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then
  python3.11 -m venv "$root/.venv" && "$root/.venv/bin/pip" install -q -e ".[test]" || { echo "verify_on_mac.sh: venv setup failed" >&2; exit 2; }
  PYTHON="$root/.venv/bin/python"
fi
WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/verify_on_mac.XXXXXX")}"
mkdir -p "$WORK"
results=()
step() {  # step NAME COMMAND...: run, log to $WORK/NAME.log, record PASS/FAIL
  local name=$1; shift
  echo "== $name"
  if "$@" > "$WORK/$name.log" 2>&1; then results+=("PASS $name"); else results+=("FAIL $name (log: $WORK/$name.log)"); fi
  tail -n 5 "$WORK/$name.log"
}

step coreml-vs-executor "$PYTHON" -m pytest -q -m macos tests/

sample=sample_models/squeezenet_digits
validate_with_core_ml() {
  "$PYTHON" -m exporter convert "$sample/model.keras" --labels "$sample/labels.txt" \
      --preprocessing "$sample/preprocessing.json" --calibration-images sample_models/heldout/digits \
      --formats mlpackage mlmodel --out "$WORK/export" --overwrite \
    && "$PYTHON" -m exporter validate "$WORK/export" --images sample_models/heldout/digits \
      --json "$WORK/parity.json" --html "$WORK/parity.html" \
    && "$PYTHON" - "$WORK/parity.json" <<'EOF'
import json, sys
report = json.load(open(sys.argv[1]))
engines = {a["path"]: (a.get("engine") or {}).get("name") for a in report["artifacts"]}
wrong = {p: e for p, e in engines.items() if e != "Core ML"}
sys.exit(f"not run by Core ML itself: {wrong}" if wrong else 0)
EOF
}
step validate-with-core-ml validate_with_core_ml

step swift-test env PYTHON="$PYTHON" bash ios_harness/run_tests.sh

xcode_build() {
  "$PYTHON" -m exporter xcode "$WORK/export" --images sample_models/heldout/digits --out "$WORK/package" \
      --variant mlmodel:fp16 --name SqueezeNetDigits --golden-count 10 --overwrite || return 1
  (cd "$WORK/package" && xcodebuild -quiet -scheme SqueezeNetDigits -destination "generic/platform=iOS Simulator" \
      -derivedDataPath "$WORK/derived" build) || return 1
  # Xcode compiled the processed model and generated its class
  find "$WORK/derived" -name "SqueezeNetDigitsModel.mlmodelc" -type d | grep -q . \
    || { echo "no SqueezeNetDigitsModel.mlmodelc in the build products"; return 1; }
  find "$WORK/derived" -name "SqueezeNetDigitsModel.swift" | grep -q . \
    || { echo "Xcode generated no SqueezeNetDigitsModel class"; return 1; }
}
step xcode-build xcode_build

echo
printf '%s\n' "${results[@]}"
failed=$(printf '%s\n' "${results[@]}" | grep -c '^FAIL' || true)
if [ "$failed" -eq 0 ]; then
  echo "verify_on_mac: PASSED (${#results[@]} of ${#results[@]} steps) on macOS $(sw_vers -productVersion), $(xcodebuild -version | head -1)"
  exit 0
fi
echo "verify_on_mac: FAILED ($failed of ${#results[@]} steps); logs in $WORK"
exit 1
