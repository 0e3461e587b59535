"""Xcode integration: golden parity files for on-device tests, and a ready-to-add Swift package per Core ML model.

``write_golden`` writes held-out images (as the model sees them), the contract, the labels, the Keras probabilities
and the gates into a folder Swift reads (format: ios_harness/GOLDEN_FORMAT.md). ``write_xcode_package`` writes a Swift
package with the model, a typed classify API and an XCTest parity test over those golden files. Both are imported on
first use, so ``exporter --help`` stays fast.

``exporter.xcode`` is two things: this package and the API function ``exporter.api.xcode``. Python's import system
sets ``exporter.xcode`` to this package as soon as anything imports a module in it (``api.xcode`` itself does), so
a notebook's second ``exporter.xcode(...)`` would find a module where the first found the function. The package is
therefore callable: calling it is calling ``exporter.api.xcode``.
"""

import sys
import types

__all__ = ["write_golden", "write_xcode_package"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from ..api import xcode

        return xcode(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage


def __getattr__(name):
    if name == "write_golden":
        from .golden import write_golden

        return write_golden
    if name == "write_xcode_package":
        from .package import write_xcode_package

        return write_xcode_package
    raise AttributeError(f"module 'exporter.xcode' has no attribute {name!r}")
