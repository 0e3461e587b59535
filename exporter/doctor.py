"""``exporter doctor``: versions, platform, and what can run on this machine.

Each finding says yes or no and why, so a user learns before an export whether Core ML predictions (macOS), the
Linux Core ML executor, onnxruntime and a Swift toolchain are available here.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys

from . import __version__
from .versions import library_versions

# `swift --version` answers in well under a second; a hung toolchain should not hang the doctor.
SWIFT_TIMEOUT_SECONDS = 20


def _coreml() -> dict:
    if platform.system() != "Darwin":
        return {
            "available": False,
            "why": "Core ML runs on macOS only; here Core ML files are run by the Linux "
            "Core ML executor (the toolkit's own numpy implementation)",
        }
    try:
        from coremltools.libcoremlpython import _MLModelProxy  # noqa: F401
    except ImportError as exc:
        return {"available": False, "why": f"coremltools cannot load its Core ML bridge: {exc}"}
    return {"available": True, "why": f"macOS {platform.mac_ver()[0]}, through coremltools"}


def _executor() -> dict:
    try:
        from .runtime.executor import CoreMLExecutor  # noqa: F401
    except ImportError as exc:
        return {"available": False, "why": str(exc)}
    return {"available": True, "why": "runs .mlpackage and .mlmodel files with numpy on any platform"}


def _onnxruntime() -> dict:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return {"available": False, "why": str(exc)}
    return {"available": True, "version": ort.__version__, "providers": ort.get_available_providers()}


def _swift() -> dict:
    swift = shutil.which("swift")
    if swift is None:
        return {
            "available": False,
            "why": "no `swift` on PATH: ios_harness and generated packages cannot be built "
            "here (install a Swift 5.9+ toolchain from swift.org)",
        }
    try:
        out = subprocess.run([swift, "--version"], capture_output=True, text=True, timeout=SWIFT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"available": False, "path": swift, "why": f"`swift --version` failed: {exc}"}
    first = (out.stdout or out.stderr).strip().splitlines()
    found = {"available": out.returncode == 0, "path": swift, "version": first[0] if first else ""}
    found["apple_sdk"] = platform.system() == "Darwin" and shutil.which("xcodebuild") is not None
    return found


def doctor() -> dict:
    return {
        "exporter": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "libraries": library_versions(),
        "can_run": {"coreml": _coreml(), "linux_coreml_executor": _executor(), "onnxruntime": _onnxruntime(), "swift": _swift()},
    }


def format_doctor(found: dict) -> str:
    yes = {True: "yes", False: "no "}
    lines = [
        f"exporter {found['exporter']}, Python {found['python']}, {found['platform']}",
        "",
        "libraries: " + ", ".join(f"{k} {v}" for k, v in found["libraries"].items()),
        "",
    ]
    can = found["can_run"]
    lines.append(f"{yes[can['coreml']['available']]}  Core ML predictions: {can['coreml']['why']}")
    lines.append(f"{yes[can['linux_coreml_executor']['available']]}  Linux Core ML executor: {can['linux_coreml_executor']['why']}")
    ort = can["onnxruntime"]
    lines.append(
        f"{yes[ort['available']]}  onnxruntime: "
        + (f"{ort['version']}, providers {', '.join(ort['providers'])}" if ort["available"] else ort["why"])
    )
    sw = can["swift"]
    if sw["available"]:
        sdk = (
            "with Apple's SDK (Core ML and Vision code builds)"
            if sw["apple_sdk"]
            else "without Apple's SDK (Core ML and Vision code is compiled out)"
        )
        lines.append(f"yes  Swift toolchain: {sw['version']} at {sw['path']}, {sdk}")
    else:
        lines.append(f"no   Swift toolchain: {sw['why']}")
    return "\n".join(lines)
