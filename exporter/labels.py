"""Class labels from a text file (one per line) or a JSON list of strings."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LabelsError


def parse_labels(text: str, *, source: str = "labels", json_list: bool | None = None) -> list[str]:
    """Parse labels text. A JSON list when ``json_list`` (or, if None, when the text starts with '[')."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if json_list or (json_list is None and text.lstrip().startswith("[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LabelsError(f"labels are not valid JSON: {exc.msg} at line {exc.lineno}", path=source) from exc
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise LabelsError("a JSON labels file must hold a list of strings", path=source)
        labels = data
    else:
        body = text[:-1] if text.endswith("\n") else text
        labels = [line.rstrip("\r") for line in body.split("\n")] if body else []
    return check_labels(labels, source=source)


def check_labels(labels: list[str], *, source: str = "labels") -> list[str]:
    if len(labels) < 2:
        raise LabelsError(f"need at least 2 labels for a classifier, got {len(labels)}", path=source)
    for i, label in enumerate(labels, start=1):
        if not label.strip():
            raise LabelsError(f"label {i} is empty (remove blank lines; one label per line)", path=source)
        if label != label.strip():
            raise LabelsError(f"label {i} {label!r} has leading or trailing spaces", path=source)
        if any(ch in label for ch in "\x00\t\n"):
            raise LabelsError(f"label {i} {label!r} contains a control character", path=source)
    seen: dict[str, int] = {}
    for i, label in enumerate(labels, start=1):
        if label in seen:
            raise LabelsError(f"label {label!r} appears twice (lines {seen[label]} and {i}); labels must be unique",
                              path=source)
        seen[label] = i
    return list(labels)


def read_labels(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise LabelsError("labels file not found", path=path) from exc
    except IsADirectoryError as exc:
        raise LabelsError("is a directory, not a labels file", path=path) from exc
    except OSError as exc:
        raise LabelsError(f"labels file cannot be read: {exc.strerror}", path=path) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LabelsError(f"labels file is not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})",
                          path=path) from exc
    return parse_labels(text, source=str(path), json_list=True if path.suffix.lower() == ".json" else None)


def check_against_model(labels: list[str], num_classes: int, *, source: str = "labels") -> None:
    if len(labels) != num_classes:
        raise LabelsError(f"has {len(labels)} labels but the model outputs {num_classes} classes", path=source)
