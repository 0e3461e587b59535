"""What every benchmark shares when it writes README: the block between its markers, and the commit it measured.

Each benchmark owns one block of README.md, fenced by an HTML comment pair that names the command writing it. The
numbers inside a block come only from that command (the project's rule: tables are written by the code that measured
them); the prose around it carries no measured number that a rerun could leave stale.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def replace_block(readme: Path, start: str, end: str, body: str) -> None:
    """README with the text between ``start`` and ``end`` replaced by ``body``; both markers must be there once."""
    text = readme.read_text(encoding="utf-8")
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{readme}: markers {start!r} ... {end!r} not found once each, in that order")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(head + start + body + end + tail, encoding="utf-8")


def commit() -> str:
    """The short hash of the tree measured, with "+changes" when tracked files have uncommitted changes. Call it when
    a run starts: the code a run imports is the code of that moment."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
