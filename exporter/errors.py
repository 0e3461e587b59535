"""Typed errors. Every error a user can cause is an ``ExporterError`` whose message is one line that names the
file (or option) and the problem, and says how to fix it where we know."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .results import Report

# A library's message becomes the tail of our one-line error: its first line, cut here. coremltools and tf2onnx put
# whole graph dumps into some messages; the full text stays on the chained cause, which --debug prints.
MAX_CAUSE_CHARS = 400
# Longest error line. Messages quote file names and values from untrusted files; a 10 MB label must not become a
# 10 MB line, and a newline or ESC in a file name must not split the line or drive the terminal.
MAX_MESSAGE_CHARS = 2000
# Control characters, line and paragraph separators, and the bidirectional formatting characters (LRM/RLM, ALM, the
# embeddings, overrides and isolates): a U+202E in a file name printed as it is shows the rest of the line reversed
# ("Trojan Source"), so a terminal line could say something other than what it holds.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to print on a terminal line: control and bidirectional formatting characters escaped
    (``\x1b``, ``\n``, ``\u202e``), lone surrogates replaced. Every untrusted string printed goes through it."""
    text = str(text).encode("utf-8", "backslashreplace").decode("utf-8")
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` made ``printable`` (newlines, ESC, CR, bidi overrides escaped), cut to ``limit``."""
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 20] + f"... ({len(text):,} chars)"


class ExporterError(Exception):
    """Base class of every error the toolkit raises on purpose. The CLI prints these as one line, no traceback."""

    exit_code = 1

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.path = None if path is None else str(path)
        self.hint = hint
        self.problem = message if not hint else f"{message} ({hint})"  # the line without the path, to quote elsewhere
        text = f"{one_line(self.path, 500)}: {message}" if self.path else message
        if hint:
            text = f"{text} ({hint})"
        super().__init__(one_line(text))


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
    # set by with_report: validate and --quantize auto always attach their measurements, so it is typed as present
    report: Report

    def with_report(self, report: Report) -> ParityError:
        self.report = report
        return self


class NotCheckedError(ParityError):
    """Every artifact that ran passed its gates, but one or more could not be run here (the Linux executor lacks
    one of their operations), so their parity is unchecked. Carries the report like ParityError."""

    exit_code = 8


class UnsupportedOperationError(ConversionError):
    """A Core ML file holds an operation, layer or data type that the reference executor does not implement; it
    refuses to run rather than give an answer it cannot vouch for."""


class UpstreamAPIError(ExporterError):
    """A library no longer has an internal this toolkit reads (exporter/upstream.py): a bug to report, exit 70 like
    any internal error."""

    exit_code = 70


class ExecutorBugError(ExporterError):
    """The reference executor failed on a Core ML file that passed its checks (the file loaded and ran once on a
    blank image of its input size), so the executor, not the file, is at fault: a bug to report, exit 70 like any
    internal error."""

    exit_code = 70


def first_line(exc: BaseException, limit: int = MAX_CAUSE_CHARS) -> str:
    """The first non-empty line of ``exc``'s message cut to ``limit`` characters (its type name if it has none)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


@contextlib.contextmanager
def translating(error: type[ExporterError], message: str, *, path: str | Path | None = None, hint: str | None = None) -> Iterator[None]:
    """Turn any exception a library raises inside the block into ``error("MESSAGE: first line of the cause")``,
    chained to that cause (``raise ... from exc``), so the CLI prints one line and ``--debug`` the library's traceback.

    Errors of this toolkit pass through unchanged, and so do KeyboardInterrupt and SystemExit (not Exceptions)."""
    try:
        yield
    except ExporterError:
        raise
    except Exception as exc:
        raise error(f"{message}: {first_line(exc)}", path=path, hint=hint) from exc
