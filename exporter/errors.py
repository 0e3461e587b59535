"""Typed errors. Every error a user can cause is an ``ExporterError`` whose message is one line that names the
file (or option) and the problem, and says how to fix it where we know."""

from __future__ import annotations

from pathlib import Path


class ExporterError(Exception):
    """Base class of every error the toolkit raises on purpose. The CLI prints these as one line, no traceback."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.hint = hint
        text = f"{self.path}: {message}" if self.path else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class ConfigError(ExporterError, ValueError):
    """An option or configuration value is invalid ("must be X, got Y")."""

    exit_code = 2


class ModelLoadError(ExporterError):
    """A model file is missing, corrupt, or cannot be loaded safely."""

    exit_code = 3


class UnsafeModelError(ModelLoadError):
    """The model file would run code (Lambda layers, custom objects) and the user did not trust it."""


class NotAClassifierError(ModelLoadError):
    """The model is not an image classifier this toolkit can export."""


class LabelsError(ExporterError, ValueError):
    """A labels file is unreadable or does not fit the model."""

    exit_code = 2


class ImageError(ExporterError):
    """An image file cannot be decoded or is unsafe to decode."""

    exit_code = 4


class ConversionError(ExporterError):
    """A converter (coremltools, tf2onnx) failed on this model."""

    exit_code = 5


class DestinationError(ExporterError):
    """The output destination exists, is not writable, or the write failed."""

    exit_code = 6


class ParityError(ExporterError):
    """One or more converted artifacts disagree with the Keras model beyond their gates. ``report`` holds the full
    measurements, so a caller can still write them out."""

    exit_code = 7
    report: dict | None = None

    def with_report(self, report: dict) -> ParityError:
        self.report = report
        return self


class UnsupportedOperationError(ConversionError):
    """A Core ML file holds an operation, layer or data type that the reference executor does not implement; it
    refuses to run rather than give an answer it cannot vouch for."""
