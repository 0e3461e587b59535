"""Xcode integration: golden parity files for on-device tests, and a ready-to-add Swift package per Core ML model.

``write_golden`` writes held-out images (as the model sees them), the contract, the labels, the Keras probabilities
and the gates into a folder Swift reads (format: ios_harness/GOLDEN_FORMAT.md). ``write_xcode_package`` writes a Swift
package with the model, a typed classify API and an XCTest parity test over those golden files. Both are imported on
first use, so ``exporter --help`` stays fast.

Calling this package calls ``exporter.api.xcode`` (``exporter.xcode(...)`` is the API function, see
exporter/__init__.py's ``_callable_as``).
"""

from .. import _callable_as

__all__ = ["write_golden", "write_xcode_package"]

_callable_as(__name__, "exporter.api:xcode")


def __getattr__(name):
    if name == "write_golden":
        from .golden import write_golden

        return write_golden
    if name == "write_xcode_package":
        from .package import write_xcode_package

        return write_xcode_package
    raise AttributeError(f"module 'exporter.xcode' has no attribute {name!r}")
