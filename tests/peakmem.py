"""Peak resident memory of one block of a test, not of the whole pytest process.

getrusage's ru_maxrss is the high-water mark of the process's whole life: after an earlier test (TensorFlow, a
family export) it is already past any bound a later test wants to check, and a growth measured against it is zero
whatever the block allocates. Linux lets a process reset its own high-water mark (writing 5 to
/proc/self/clear_refs resets VmHWM to the current RSS, since Linux 4.0), so the peak of the block is VmHWM read
after it minus VmRSS read before it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pytest

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _kib(field: str) -> int:
    line = next(line for line in _STATUS.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


class Peak:
    growth_bytes: int = 0


@contextmanager
def peak_growth():
    """Measure how far resident memory rose above where it stood when the block began (``Peak.growth_bytes``).
    Skips the test, with the reason, where the high-water mark cannot be reset (not Linux, or /proc read-only)."""
    try:
        _CLEAR_REFS.write_text("5")
        start = _kib("VmRSS")
    except OSError as exc:
        pytest.skip(f"cannot reset this process's peak RSS ({exc}); the memory bound is checked on Linux only")
    peak = Peak()
    yield peak
    peak.growth_bytes = (_kib("VmHWM") - start) * 1024
