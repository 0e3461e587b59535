"""Class labels from a text file (one per line) or a JSON list of strings."""

from __future__ import annotations

import unicodedata
from pathlib import Path

from .errors import LabelsError
from .safety import MAX_TEXT_BYTES, load_json, quote, read_regular

# Bidirectional formatting characters (LRM/RLM, ALM, embeddings, overrides, isolates): invisible, and they reorder
# the text around them wherever the label is shown (a table, the HTML report, an app), so "cat" could display as
# another class's name.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# A model ending in Dense(1, activation="sigmoid") is exported as [1 - p, p] over two labels (heads.py).
BINARY_LABELS_HINT = "a binary classifier ending in one sigmoid unit takes two labels, the class of outputs below 0.5 first"


def parse_labels(text: str, *, source: str = "labels", json_list: bool | None = None) -> list[str]:
    """Parse labels text. A JSON list when ``json_list`` (or, if None, when the text starts with '[')."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if json_list or (json_list is None and text.lstrip().startswith("[")):
        data = load_json(text, path=source, error=LabelsError, what="labels")
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise LabelsError("a JSON labels file must hold a list of strings", path=source)
        labels = data
    else:
        lines = [line.rstrip("\r") for line in text.split("\n")]
        while lines and not lines[-1].strip():  # the final newline, and blank lines an editor left at the end
            lines.pop()
        labels = lines
    return check_labels(labels, source=source)


def check_labels(labels: list[str], *, source: str = "labels") -> list[str]:
    """Labels end up in file metadata, Swift resources and HTML reports: each must be a non-empty, trimmed string
    of printable characters (no control character such as ESC, CR or a newline, no lone surrogate, no bidirectional
    override), and unique, also once Unicode-normalized: Swift compares strings by canonical equivalence, so "é" as
    one code point and as "e" + U+0301 are one label in the generated package's and Core ML's label dictionaries."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise LabelsError("labels must be a list of strings", path=source)
    if len(labels) < 2:
        raise LabelsError(f"need at least 2 labels for a classifier, got {len(labels)}", path=source, hint=BINARY_LABELS_HINT)
    for i, label in enumerate(labels, start=1):
        if not label.strip():
            raise LabelsError(f"label {i} is empty (remove blank lines; one label per line)", path=source)
        if label != label.strip():
            raise LabelsError(f"label {i} {quote(label)} has leading or trailing spaces", path=source)
        bad = next((ch for ch in label if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") or ch in BIDI_CONTROLS), None)
        if bad is not None:
            kind = {"Cs": "a lone surrogate", "Cf": "a bidirectional formatting character"}.get(
                unicodedata.category(bad), "a control character"
            )
            raise LabelsError(f"label {i} {quote(label)} contains {kind} (U+{ord(bad):04X})", path=source)
    seen: dict[str, int] = {}
    for i, label in enumerate(labels, start=1):
        key = unicodedata.normalize("NFC", label)
        if key in seen:
            same = "" if label == labels[seen[key] - 1] else " once Unicode-normalized (NFC; Swift and Core ML compare them equal)"
            raise LabelsError(f"label {quote(label)} appears twice{same} (lines {seen[key]} and {i}); labels must be unique", path=source)
        seen[key] = i
    return list(labels)


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    raw = read_regular(path, error=LabelsError, what="labels file", max_bytes=MAX_TEXT_BYTES)
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise LabelsError("labels file is UTF-16 (it starts with a UTF-16 byte order mark); save it as UTF-8", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"labels file is not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})", path=path) from exc
    return parse_labels(text, source=str(path), json_list=True if path.suffix.lower() == ".json" else None)


def check_against_model(labels: list[str], num_classes: int, *, source: str = "labels", binary: bool = False) -> None:
    """``binary``: the model ends in one unit (a sigmoid, or a logit with add_softmax), exported as two classes."""
    if len(labels) == num_classes:
        return
    if binary:
        raise LabelsError(
            f"has {len(labels)} labels but the model ends in one output unit, a binary classifier exported with 2 classes",
            path=source,
            hint=BINARY_LABELS_HINT,
        )
    raise LabelsError(f"has {len(labels)} labels but the model outputs {num_classes} classes", path=source)
