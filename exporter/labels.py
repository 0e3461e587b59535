"""Class labels from a text file (one per line) or a JSON list of strings."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from .errors import LabelsError
from .safety import MAX_TEXT_BYTES, load_json, quote, read_regular

# Bidirectional formatting characters (LRM/RLM, ALM, embeddings, overrides, isolates): invisible, and they reorder
# the text around them wherever the label is shown (a table, the HTML report, an app), so "cat" could display as
# another class's name.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# Default_Ignorable_Code_Point (Unicode DerivedCoreProperties.txt): characters a renderer shows as nothing (zero-width
# spaces and joiners, the BOM, soft hyphen, variation selectors, the combining grapheme joiner, Hangul fillers, tags).
# "cat" and "c\u200bat" look the same in every table, report and app; such characters are dropped from the key two
# labels are compared by, so labels that display alike are refused as one label written twice.
_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
    (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)  # fmt: skip
IGNORABLE = frozenset(chr(c) for a, b in _IGNORABLE_RANGES for c in range(a, b + 1))
ZWNJ, ZWJ = "\u200c", "\u200d"
# Scripts whose letters join (Arabic, Syriac, N'Ko, Mongolian and their presentation forms): there ZWNJ / ZWJ change
# how the letters around them are drawn (Persian writes words with ZWNJ). An approximation by block of RFC 5892's
# joining-type rule (A.1), which the standard library's unicodedata cannot answer.
_JOINING_BLOCKS = ((0x0600, 0x08FF), (0x1800, 0x18AF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFE))
VIRAMA = 9  # canonical combining class of the Indic viramas: a joiner after one picks a conjunct or half form
EMOJI_MODIFIERS = frozenset(chr(c) for c in range(0x1F3FB, 0x1F400)) | {"\ufe0f"}  # skin tones, emoji presentation


def _joining(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L") and any(a <= ord(ch) <= b for a, b in _JOINING_BLOCKS)


def _joiner_has_effect(label: str, at: int) -> bool:
    """Whether the ZWNJ or ZWJ at ``label[at]`` changes how the text is drawn (RFC 5892 CONTEXTJ, plus emoji): after a
    virama; between two letters of a joining script; or, a ZWJ only, between two symbols of an emoji sequence
    ("🐈\u200d⬛" is a black cat, "👩\u200d💻" a technologist). Anywhere else it is invisible."""
    before = label[at - 1] if at > 0 else ""
    after = label[at + 1] if at + 1 < len(label) else ""
    if not before or not after:
        return False
    if unicodedata.combining(before) == VIRAMA:
        return True
    if _joining(before) and _joining(after):
        return True
    if label[at] == ZWJ:
        base = at - 1
        while base > 0 and label[base] in EMOJI_MODIFIERS:
            base -= 1
        return unicodedata.category(label[base]) == "So" and unicodedata.category(after) == "So"
    return False


def display_key(label: str) -> str:
    """What two labels are compared by: NFKC (compatibility forms display as their base: full-width "ｃａｔ",
    "ﬁ", a no-break space) with the default-ignorable characters removed."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", label) if ch not in IGNORABLE)


# Most labels a file may hold. Real classifiers have up to tens of thousands of classes (ImageNet-21k: 21,841); the
# text-file limit (MAX_TEXT_BYTES) was sized for a million. Past that a labels file is refused before each label is
# checked: 5 million short labels (44 MB) took 90 s to check, and a 64 MB file can hold 21 million.
MAX_LABELS = 1_000_000
# Longest label, in characters. ImageNet-21k's longest class names (WordNet synonym lists) have ~200; a label becomes
# file metadata, a Swift resource line, a table cell and a confusion-plot tick. Past it a label is refused before its
# characters are checked: a 60 MB labels file of one 30-million-character label took 26 s to check and was then
# written into every artifact.
MAX_LABEL_CHARS = 1000
# Printable ASCII: none of the per-character rules below can apply, and a label of it displays as itself (NFKC leaves
# it as it is and it holds no ignorable character), so such labels skip the per-character loop.
_PLAIN = re.compile(r"[\x20-\x7e]*\Z")

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
    override, no invisible format character such as a zero-width space: only a ZWJ / ZWNJ where it changes the
    drawing, see ``_joiner_has_effect``), and unique, also as displayed: Swift compares strings by canonical
    equivalence, so "é" as one code point and as "e" + U+0301 are one label in the generated package's and Core ML's
    label dictionaries, and labels that differ only in invisible or compatibility characters ("cat" and
    "cat\ufe0f", "ｃａｔ") read as one class on every screen."""
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise LabelsError("labels must be a list of strings", path=source)
    if len(labels) < 2:
        raise LabelsError(f"need at least 2 labels for a classifier, got {len(labels)}", path=source, hint=BINARY_LABELS_HINT)
    if len(labels) > MAX_LABELS:
        raise LabelsError(f"holds {len(labels):,} labels, over the limit of {MAX_LABELS:,}", path=source)
    longest = max(range(len(labels)), key=lambda k: len(labels[k]))
    if len(labels[longest]) > MAX_LABEL_CHARS:
        raise LabelsError(
            f"label {longest + 1} is {len(labels[longest]):,} characters long, over the limit of {MAX_LABEL_CHARS:,} "
            f"(starting {quote(labels[longest][:60])})",
            path=source,
        )
    keys = []
    for i, label in enumerate(labels, start=1):
        if not label.strip():
            raise LabelsError(f"label {i} is empty (remove blank lines; one label per line)", path=source)
        if label != label.strip():
            raise LabelsError(f"label {i} {quote(label)} has leading or trailing spaces", path=source)
        if _PLAIN.match(label):
            keys.append(label)
            continue
        for at, ch in enumerate(label):
            category = unicodedata.category(ch)
            if ch in BIDI_CONTROLS:
                kind = "a bidirectional formatting character"
            elif category in ("Cc", "Zl", "Zp"):
                kind = "a control character"
            elif category == "Cs":
                kind = "a lone surrogate"
            elif category == "Cf" and not (ch in (ZWNJ, ZWJ) and _joiner_has_effect(label, at)):
                kind = "an invisible format character"
            else:
                continue
            raise LabelsError(f"label {i} {quote(label)} contains {kind} (U+{ord(ch):04X})", path=source)
        key = display_key(label)
        if not key.strip():
            raise LabelsError(f"label {i} {quote(label)} shows nothing (only invisible characters)", path=source)
        keys.append(key)
    seen: dict[str, int] = {}
    for i, (label, key) in enumerate(zip(labels, keys, strict=True), start=1):
        if key in seen:
            first = labels[seen[key] - 1]
            if label == first:
                same = ""
            elif unicodedata.normalize("NFC", label) == unicodedata.normalize("NFC", first):
                same = " once Unicode-normalized (NFC; Swift and Core ML compare them equal)"
            else:
                same = " as displayed (they differ only in invisible or compatibility characters)"
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
    raise LabelsError(
        f"has {len(labels)} labels but the model outputs {num_classes} classes",
        path=source,
        hint=f"give {num_classes} labels, one per line, in the order of the model's outputs: is a class missing, or a header line extra?",
    )
