"""SIGTERM and SIGINT during a command: remove what this process was writing, then exit 128 + the signal number.

A signal handler runs in the main thread between two bytecodes, wherever that thread happens to be: inside a
converter that catches exceptions broadly, or between two renames of a destination swap. Raising an exception from it
is therefore not enough (a library may swallow it, and the export then completes after all). Instead every staging
folder and lock file this process creates is registered here, the handler removes them and ends the process with
``os._exit``, and the few steps that must not be cut in two (the swap of a finished export into place) run as a
``critical`` section, during which a signal is remembered and acted on right after.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_owned_folders: set[Path] = set()
_owned_files: set[Path] = set()
_state: dict[str, int] = {"critical": 0, "pending": 0}  # nesting depth; signal number seen inside (0: none)


def own_folder(path: Path) -> Path:
    """Register a folder this process created and removes if it is interrupted."""
    _owned_folders.add(Path(path))
    return path


def own_file(path: Path) -> Path:
    _owned_files.add(Path(path))
    return path


def disown(path: Path) -> None:
    """The folder or file was renamed into place or removed: an interruption must leave it alone."""
    _owned_folders.discard(Path(path))
    _owned_files.discard(Path(path))


def remove_owned() -> None:
    for folder in list(_owned_folders):
        shutil.rmtree(folder, ignore_errors=True)
    for file in list(_owned_files):
        with contextlib.suppress(OSError):
            os.unlink(file)
    _owned_folders.clear()
    _owned_files.clear()


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A signal that arrives inside is handled when the section ends."""
    _state["critical"] += 1
    try:
        yield
    finally:
        _state["critical"] -= 1
        if not _state["critical"] and _state["pending"]:
            _terminate(_state["pending"])


def _terminate(signum: int) -> None:
    remove_owned()
    with contextlib.suppress(OSError):
        os.write(2, b"exporter: interrupted; nothing was written to the destination\n")
    os._exit(128 + signum)


def _on_signal(signum, _frame) -> None:
    if _state["critical"]:
        _state["pending"] = signum
        return
    _terminate(signum)


@contextlib.contextmanager
def clean_exit_on_signals() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT remove this process's staging folders and lock files and end the
    process (exit 128 + signal); the previous handlers come back after. Main thread only (a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, _on_signal) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
