"""What the user sees while the toolkit works: its own progress, and nothing from the libraries underneath.

Two pieces, both scoped (everything they change is restored when the ``with`` block ends):

- ``quiet_libraries()`` silences third-party chatter for the duration of a call: TensorFlow's and absl's native log
  lines (printed by C++ straight to file descriptor 2 while TensorFlow is imported), coremltools' tqdm progress bars,
  and library loggers such as coremltools' "Failed to load _MLModelProxy" (a normal state on Linux that reads like an
  error). ``verbose=True`` leaves everything as it is.
- ``Progress`` prints the toolkit's own steps: one line per step with a step count and the elapsed time
  (``[3/14] mlpackage int8 ... 2.1 s``) when the stream is a log or a pipe; in a terminal, the line of the running
  step is redrawn with a bar, the elapsed time and an ETA (from the mean time of the finished steps).

The Python API accepts ``progress=True`` (print to stderr like the CLI), ``False``/``None`` (silent) or a callable
that receives a ``Step`` for every started and finished step (``str(step)`` is the log line).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

# Loggers of the libraries underneath. Their warnings at import (untested TensorFlow version, scikit-learn version,
# missing native Core ML proxies on Linux) are not actionable for a user of this tool.
LIBRARY_LOGGERS = (
    "coremltools",
    "tensorflow",
    "absl",
    "tf2onnx",
    "onnx",
    "onnxruntime",
    "keras",
    "h5py",
    "PIL",
    "matplotlib",
    "py.warnings",
)
# Environment read by TensorFlow's C++ logging (3: errors only) while it loads.
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
# Modules whose import prints native log lines to file descriptor 2 (absl's "WARNING: All log messages before
# absl::InitializeLog()" and oneDNN's notice come from TensorFlow's shared libraries).
NOISY_NATIVE_IMPORTS = ("tensorflow",)
# How often a terminal redraws the running step's line.
REDRAW_SECONDS = 0.5
BAR_WIDTH = 20
# A log shows about this many lines for an operation made of many small steps (validation batches).
MINOR_LINES = 10


class _Discard(io.TextIOBase):
    """A text stream that drops everything (tqdm bars and warnings written to sys.stderr during a quiet call)."""

    def write(self, s: str) -> int:
        return len(s)

    def isatty(self) -> bool:
        return False


class NativeLines:
    """What native code wrote to file descriptor 2 inside ``native_stderr_captured``'s block."""

    def __init__(self, sink=None):
        self._sink = sink

    def data(self) -> bytes:
        if self._sink is None:
            return b""
        self._sink.flush()
        self._sink.seek(0)
        return self._sink.read()

    def text(self) -> str:
        return self.data().decode("utf-8", "replace")


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[NativeLines]:
    """Point file descriptor 2 at a temporary file for the block (what C libraries print: TensorFlow's notices,
    libtiff's warnings and errors), restored on exit; the caller reads what was written (``NativeLines.text``) and
    decides what to show. ``sys.stderr`` is flushed first; what Python writes to it inside the block is captured too."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedded interpreter): nothing to redirect
        yield NativeLines()
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield NativeLines(sink)
        finally:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _native_stderr_to_file() -> Iterator[None]:
    """``native_stderr_captured``; if the block raises, replay what was written, so a native error message is not
    lost with the noise."""
    written = b""
    try:
        with native_stderr_captured() as native:
            try:
                yield
            except BaseException:
                written = native.data()
                raise
    except BaseException:
        if written:
            os.write(2, written)
        raise


def import_quietly(modules: tuple[str, ...] = NOISY_NATIVE_IMPORTS) -> None:
    """Import ``modules`` with their native start-up lines silenced (a no-op for modules already imported)."""
    import importlib

    missing = [m for m in modules if m not in sys.modules]
    if not missing:
        return
    with _native_stderr_to_file():
        for name in missing:
            with contextlib.suppress(ImportError):  # a missing library is reported where it is needed
                importlib.import_module(name)


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False, *, preload: bool = True) -> Iterator[None]:
    """Silence third-party progress bars and logs inside the block; restore loggers, environment and sys.stderr on
    exit. ``preload`` imports TensorFlow first with its native lines silenced (callers that never need TensorFlow
    pass False)."""
    if verbose:
        yield
        return
    saved_env = {k: os.environ.get(k) for k in QUIET_ENV}
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)  # a user's own setting wins
    saved_levels = {}
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        saved_levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(_Discard()):
            if preload:
                import_quietly()
            yield
    finally:
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for k, saved in saved_env.items():
            if saved is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = saved


@dataclass(frozen=True)
class Step:
    """One step of a long operation. ``seconds`` is None while it runs."""

    index: int  # 1-based
    total: int
    what: str
    seconds: float | None = None
    detail: str = ""
    minor: bool = False  # one of many small steps (a batch): a log shows only about every tenth

    @property
    def done(self) -> bool:
        return self.seconds is not None

    def __str__(self) -> str:
        head = f"[{self.index}/{self.total}] {self.what}"
        if not self.done:
            return f"{head} ..."
        tail = f" ({self.detail})" if self.detail else ""
        return f"{head} ... {format_seconds(self.seconds or 0.0)}{tail}"


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}:{s:02d} min" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d} h"


def human_bytes(n: int) -> str:
    """1,234,567 -> "1.2 MB" (decimal units, as Finder and most download pages show sizes)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


ProgressArg = bool | Callable[[Step], None] | None


class Progress:
    """Prints ``Step`` events to a stream: plain lines in a log or pipe, a redrawn bar with ETA in a terminal."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, label: str = ""):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.label = label
        self._t_start = time.perf_counter()
        self._finished: list[float] = []
        self._running: Step | None = None
        self._step_t0 = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # --- events ---------------------------------------------------------------------------------------------------
    def __call__(self, step: Step) -> None:
        with self._lock:
            if step.done:
                self._running = None
                self._finished.append(step.seconds or 0.0)
                every = max(step.total // MINOR_LINES, 1)
                if self.tty or not step.minor or step.index % every == 0 or step.index == step.total:
                    self._write_line(str(step), final=True)
            else:
                self._running, self._step_t0 = step, time.perf_counter()
                if self.tty:
                    self._redraw()
                    self._ensure_ticker()

    def elapsed(self) -> float:
        return time.perf_counter() - self._t_start

    def message(self, text: str) -> None:
        """A line of its own (a summary, a note), not a step."""
        with self._lock:
            self._write_line(text, final=True)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2 * REDRAW_SECONDS)
        with self._lock:
            if self.tty and self._running is not None:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- drawing --------------------------------------------------------------------------------------------------
    def eta(self) -> float | None:
        step = self._running
        if step is None or not self._finished:
            return None
        mean = sum(self._finished) / len(self._finished)
        running = time.perf_counter() - self._step_t0
        return max(mean - running, 0.0) + mean * (step.total - step.index)

    def _status(self) -> str:
        step = self._running
        if step is None:
            return ""
        done = step.index - 1
        filled = round(BAR_WIDTH * done / max(step.total, 1))
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        running = time.perf_counter() - self._step_t0
        eta = self.eta()
        eta_text = f"  ETA {format_seconds(eta)}" if eta is not None else ""
        from .errors import printable

        return f"[{bar}] {printable(str(step))} {format_seconds(running)}{eta_text}"

    def _write_line(self, text: str, *, final: bool) -> None:
        from .errors import printable

        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(printable(text) + "\n")  # a step names files: an ESC or newline in a name is shown, not obeyed
        if self.tty and self._running is not None:
            self.stream.write(self._status())
        self.stream.flush()

    def _redraw(self) -> None:
        self.stream.write("\r\x1b[2K" + self._status())
        self.stream.flush()

    def _ensure_ticker(self) -> None:
        if self._ticker is not None:
            return

        def tick() -> None:
            while not self._stop.wait(REDRAW_SECONDS):
                with self._lock:
                    if self._running is not None:
                        self._redraw()

        self._ticker = threading.Thread(target=tick, name="exporter-progress", daemon=True)
        self._ticker.start()


@contextlib.contextmanager
def progress_sink(progress: ProgressArg) -> Iterator[Callable[[Step], None]]:
    """Turn the API's ``progress`` argument into a callable for the block: True prints to stderr (a bar in a
    terminal, lines in a log), a callable is used as it is, False/None discards."""
    if progress is True:
        with Progress(sys.stderr) as printer:
            yield printer
    elif callable(progress):
        stream = sys.stderr  # a callback that prints to stderr still reaches it inside quiet_libraries()

        def call(step: Step) -> None:
            with contextlib.redirect_stderr(stream):
                progress(step)

        yield call
    elif progress in (False, None):
        yield lambda _step: None
    else:
        from .errors import ConfigError

        raise ConfigError(f"progress must be True, False, None or a callable taking a Step, got {progress!r}")


class Steps:
    """Counts the steps of one operation and reports each start and finish to a sink."""

    def __init__(self, sink: Callable[[Step], None], total: int, *, minor: bool = False):
        self.sink, self.total, self.index, self.minor = sink, total, 0, minor

    @contextlib.contextmanager
    def step(self, what: str) -> Iterator[dict]:
        """``with steps.step("mlpackage int8") as note: ...; note["detail"] = "315 kB"``."""
        self.index += 1
        note: dict = {"detail": ""}
        t0 = time.perf_counter()
        self.sink(Step(self.index, self.total, what, minor=self.minor))
        yield note
        self.sink(Step(self.index, self.total, what, round(time.perf_counter() - t0, 2), note["detail"], self.minor))
