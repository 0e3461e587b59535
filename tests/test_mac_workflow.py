"""The macOS CI workflow and the Mac verification script are checked here, although neither can run here: the
workflow against GitHub's published workflow schema (check-jsonschema, from the dev extra), the script by bash."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "macos.yml"
SCRIPT = ROOT / "ios_harness" / "verify_on_mac.sh"
CHECKER = shutil.which("check-jsonschema") or str(Path(sys.executable).parent / "check-jsonschema")


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHECKER, "--builtin-schema", "vendor.github-workflows", str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not Path(CHECKER).exists(), reason="check-jsonschema not installed (pip install -e '.[dev]')")
def test_macos_workflow_is_a_valid_github_workflow(tmp_path):
    ok = _lint(WORKFLOW)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "broken.yml"  # the check can fail: a job without runs-on is not a workflow
    broken.write_text(WORKFLOW.read_text().replace("    runs-on: macos-15\n", ""))
    assert _lint(broken).returncode != 0


def test_workflow_runs_the_mac_script_which_bash_accepts():
    text = WORKFLOW.read_text()
    assert "runs-on: macos-" in text and "bash ios_harness/verify_on_mac.sh" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    refused = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    if sys.platform != "darwin":
        assert refused.returncode == 2 and "run it on a Mac" in refused.stderr
