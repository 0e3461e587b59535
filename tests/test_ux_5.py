"""The user's experience, end to end: what README and docs/ say against what the CLI and the Python API do.

Every ``exporter ...`` command the documentation or the help shows must parse with the real parser, README's CLI
synopsis must name every option of every command (and no other), the exit codes the errors use must all be
documented, and the Python API's names must behave the same however often a notebook calls them.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The user-facing documents whose ``exporter ...`` commands must run as written.
DOCS = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "ios_harness" / "README.md", ROOT / "exporter" / "report" / "SCHEMA.md"]


def _commands() -> dict:
    from exporter.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return {"": parser, **sub.choices}


def _options(parser) -> set[str]:
    return {o for a in parser._actions for o in a.option_strings} - {"-h", "--help"}


GLOBAL = {"--debug", "-q", "--quiet", "-v", "--verbose"}


def _readme_synopsis() -> dict[str, str]:
    """README's CLI block, as {command: its text (continuation lines included)}."""
    text = README.read_text(encoding="utf-8")
    block = text.split("## CLI", 1)[1].split("```", 2)[1]
    out: dict[str, str] = {}
    current = ""
    for line in block.splitlines():
        m = re.match(r"exporter (\w+)", line)
        if m:
            current = m.group(1)
        elif line.startswith("global options"):
            current = ""
        out[current] = out.get(current, "") + " " + line.split("#", 1)[0]
    return out


def test_readme_cli_synopsis_names_every_option_of_every_command_and_nothing_else():
    """The synopsis lacked convert's --calibration-count, validate's --trust-code and the data-aware palette
    variants; a user reading it could not know they exist."""
    from exporter.capabilities import FORMATS, variant_names

    commands = _commands()
    synopsis = _readme_synopsis()
    assert set(synopsis) - {""} == set(commands) - {""}, "every command has a line in README's CLI block"
    for name, text in synopsis.items():
        named = set(re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", text)) - {"-"}
        have = _options(commands[name]) - (GLOBAL if name else set())
        unknown = named - _options(commands[name])
        assert not unknown, f"README names options `exporter {name}` does not have: {unknown}"
        assert have <= named, f"README's synopsis of `exporter {name}` lacks {have - named}"
    convert = synopsis["convert"]
    listed = convert.split("--variants", 1)[1].split("]", 1)[0].split()
    assert sorted(listed) == sorted(variant_names()), "README lists every variant --variants takes"
    assert convert.split("--formats", 1)[1].split("]", 1)[0].split() == list(FORMATS)


def _doc_commands() -> list[tuple[str, list[str]]]:
    """Every complete ``exporter ...`` command in a code block of the docs, and the examples of every --help."""
    found: list[tuple[str, list[str]]] = []
    for doc in DOCS:
        blocks = doc.read_text(encoding="utf-8").split("```")[1::2]
        for block in blocks:
            if block.startswith("\nexporter convert MODEL"):  # README's synopsis: checked above
                continue
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    words = shlex.split(part, comments=True)
                    if words and Path(words[0]).name == "exporter":
                        found.append((f"{doc.name}: {part.strip()}", words[1:]))
    for name, parser in _commands().items():
        for line in (parser.epilog or "").splitlines():
            if line.strip().startswith("exporter "):
                found.append((f"exporter {name} --help: {line.strip()}", shlex.split(line)[1:]))
    return found


def test_every_exporter_command_in_the_docs_and_the_help_parses(capsys):
    from exporter.cli import _parser

    found = _doc_commands()
    assert len(found) >= 15, found  # README, ios_harness/README.md and every command's examples
    for where, argv in found:
        try:
            _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}: {capsys.readouterr().err.strip().splitlines()[-1]}")


def test_every_option_the_docs_mention_exists():
    """An option named in running text (`--calibration-count`, `--float-input`) is one the CLI has."""
    every = set().union(*(_options(p) for p in _commands().values())) | {"--help"}
    # options of other programs the docs show: pytest-xdist, pip, swift build, and the generator scripts under benchmarks/
    others = {"--dist", "--readme", "--write", "--families", "--files", "--models", "--rows", "--check", "--before", "--build-tests"}
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for opt in set(re.findall(r"`[^`]*?(?<![\w-])(--[a-z][a-z0-9-]*)", text)):
            assert opt in every | others, f"{doc.name} names {opt}, which no exporter command has"


def test_every_exit_code_is_documented_in_readme_and_the_help():
    from exporter import errors
    from exporter.cli import EXAMPLES, INTERNAL_ERROR

    codes = {c.exit_code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ExporterError)}
    codes |= {0, INTERNAL_ERROR, 130, 143}
    readme = " ".join(README.read_text(encoding="utf-8").split("Exit codes:", 1)[1].split("**Safety.**")[0].split())
    help_line = " ".join(EXAMPLES.split("exit codes:", 1)[1].split())
    for code in sorted(codes):
        assert re.search(rf"(^|[;/] ?){code}\b", readme), f"README's exit codes lack {code}"
        assert re.search(rf"(^|[;/] ?){code}\b", help_line), f"`exporter --help` exit codes lack {code}"


def test_exporter_xcode_and_predict_are_the_api_functions_also_after_their_modules_are_imported(tmp_path):
    """``exporter.xcode(...)`` and ``exporter.predict(...)`` (README's Python API) are API functions and submodules
    at once. Python sets the attribute to the submodule once anything imports it (the functions themselves do), so
    a notebook's second call found a module: TypeError "'module' object is not callable"."""
    code = (
        "import exporter\n"
        "for attempt in range(2):\n"
        "    for call in (lambda: exporter.xcode({0!r}, {1!r}, images={0!r}), lambda: exporter.predict({0!r}, [{0!r}])):\n"
        "        try:\n"
        "            call()\n"
        "        except exporter.ExporterError as exc:\n"
        "            print(type(exc).__name__)\n"
        "import exporter.xcode.package\n"
        "print(callable(exporter.xcode), callable(exporter.predict), exporter.predict.format_predictions.__name__)\n"
        "print('tensorflow' in sys.modules)\n"
    ).format(str(tmp_path / "no_export"), str(tmp_path / "pkg"))
    out = subprocess.run([sys.executable, "-c", "import sys\n" + code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    expected = ["DestinationError", "ModelLoadError"] * 2 + ["True", "True", "format_predictions", "False"]
    assert out.stdout.split() == expected


# --- the reports -----------------------------------------------------------------------------------------------------
def _many_class_report(n_classes: int, label: str = "class_{i}") -> dict:
    """A real-accumulator report on 40 held-out digits for a model of ``n_classes`` classes: the int8 file moves
    the top-1 of the first 20 images to the next class (fails), the fp32 file agrees (passes)."""
    import numpy as np
    from conftest import sample
    from test_html_report import _report

    from exporter.validation.accumulate import LabelStats, ParityStats
    from exporter.validation.tolerances import default_gate

    base = _report()
    labels = [label.format(i=i) for i in range(n_classes)]
    images = sorted(sample("mobilenet_v1_digits")["heldout"].rglob("*.png"))[:40]
    truth = np.arange(len(images)) % n_classes
    ref = np.full((len(images), n_classes), 0.1 / max(n_classes - 1, 1), np.float32)
    ref[np.arange(len(images)), truth] = 0.9 if n_classes > 1 else 1.0
    got = ref.copy()
    got[:20] = np.roll(ref[:20], 1, axis=1)
    keras = LabelStats(n_classes)
    keras.update(ref, truth)
    rows = []
    for row, probs in zip(base["artifacts"][:2], (ref, got), strict=True):
        stats = ParityStats(n_classes)
        stats.update(ref, probs, [str(p) for p in images], truth, labels)
        metrics = stats.summary(labels, keras)
        gate = default_gate(row["format"], row["variant"])
        failures = gate.failures(metrics["max_abs_prob"], metrics["top1_agreement"])
        rows.append({**row, "gate": gate.to_dict(), "status": "failed" if failures else "passed", "failures": failures, **metrics})
    passed = not any(r["status"] == "failed" for r in rows)
    return {**base, "labels": labels, "images": len(images), "keras": {"against_labels": keras.summary(labels)}, "artifacts": rows,
            "passed": passed, "not_run": []}  # fmt: skip


def test_html_card_names_and_links_every_failed_and_not_run_artifact():
    """The card said FAILED and counted, but which file failed, and on what, was somewhere in the table below."""
    from test_html_report import _report

    from exporter.report import html

    page = html.render(_report())
    card = page[page.index('class="card') : page.index("</section>")]
    assert '<a href="#a-m-int8-onnx">m_int8.onnx</a>' in card and "top-1 agreement 0.5000 &lt; 0.98" in card
    assert "m_w8a8.mlpackage" in card and "needs macOS" in card
    assert "m_fp32.mlpackage" not in card  # passed: not a problem to list


def test_a_report_with_artifacts_not_run_is_not_a_green_pass():
    """validate exits 8 (parity unchecked) when every artifact that ran passed but one could not run; the HTML card
    said PASSED in green and the terminal table ended without a verdict."""
    from test_html_report import _report

    from exporter.report import html, terminal

    report = _report()
    report["artifacts"] = [a for a in report["artifacts"] if a["status"] != "failed"]
    report["passed"] = True
    page = html.render(report)
    assert 'class="card warn-card"><h1>UNCHECKED</h1>' in page
    last = terminal.parity_table(report).splitlines()[-1]
    assert last.startswith("UNCHECKED: every artifact that ran passed, but 1 of 2 could not be run here: m_w8a8.mlpackage")
    assert terminal.parity_table(_report()).splitlines()[-1] == "FAILED: 1 of 3 artifacts failed their gates: m_int8.onnx"


def test_html_report_of_many_classes_folds_the_class_tables_and_matrices():
    """At 1000 classes (seen in Chromium) the per-class table (1000 rows) and three 2,160-pixel confusion matrices
    came before the flipped images of the failing file; the F1 changes were one paragraph naming every changed class.
    100 classes take the same path (over MAX_OPEN_CLASS_ROWS) at a tenth of the drawing time."""
    from exporter.report import html

    page = html.render(_many_class_report(100))
    assert page.count("<details><summary>") == 4  # the class table, Keras' matrix, each artifact's matrix: folded
    changes = re.search(r"F1 changes against Keras: ([^<]*)</p>", page).group(1)
    assert changes.count(": F1 ") == html.SHOWN_F1_CHANGES and re.search(r" and \d+ more \(largest first", changes)
    small = html.render(_many_class_report(10))
    assert small.count("<details open><summary>") == 4 and "<details><summary>" not in small


def test_html_long_labels_wrap_instead_of_pushing_the_columns_off_the_page():
    from exporter.report import html

    long = "a_very_long_label_without_any_space_" * 6 + "{i}"
    page = html.render(_many_class_report(10, long))
    assert page.count('<td class="label">a_<wbr>very_<wbr>long_<wbr>label') == 10  # wraps at its parts
    assert "td.label{white-space:normal;overflow-wrap:anywhere" in page


def test_confusion_matrix_of_one_class_shows_its_count():
    """With one class (or all counts equal) imshow scaled the colours to the one value: the cell was drawn in the
    palest blue and its count in white on it, invisible."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from exporter.report import html

    png = html._confusion([[60]], ["only"], "Keras").split(",", 1)[1]
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(png))).convert("RGB")).astype(int)
    dark = (img.sum(axis=2) < 300).mean()  # the cell drawn in a dark blue, not almost white
    assert dark > 0.2, dark


def test_size_table_names_the_weight_bits_ratio_as_readme_does():
    """The size table's last ratio column was headed "limit": every compressed file (0.320 against 0.250) read as
    over a limit. It is the weights' bits / 32, as README's tables call it."""
    from exporter.report import terminal

    manifest = {
        "artifacts": [
            {"path": "m_int8.mlpackage", "bytes": 528_734, "ratio_to_fp32": 0.32, "details": {"theoretical_ratio": 0.25},
             "minimum_deployment_target": "iOS16"}
        ]
    }  # fmt: skip
    header = terminal.size_table(manifest).splitlines()[0].split()
    assert header == ["artifact", "bytes", "vs", "fp32", "bits/32", "target"]


def _readme_python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    return [b[len("python\n") :] for b in text.split("```")[1::2] if b.startswith("python\n")]


SCHEMA = ROOT / "exporter" / "report" / "SCHEMA.md"


def _check_documented(section: str, data: dict, nested: tuple[str, ...] = ()) -> None:
    """Every key of ``data``, and of the objects at the dotted paths ``nested`` (a list: its first item), is named
    in backticks in SCHEMA.md's section whose heading starts with ``section``."""
    text = SCHEMA.read_text(encoding="utf-8")
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([^`]+)`", body))
    missing = [k for k in data if k not in named]
    for path in nested:
        value = data
        for part in path.split("."):
            value = value[part]
            value = value[0] if isinstance(value, list) else value
        missing += [f"{path}.{k}" for k in value if k not in named]
    assert not missing, f"SCHEMA.md's {section} section does not describe {missing}"


def test_doctor_json_is_documented():
    from exporter.doctor import doctor

    _check_documented("Findings", doctor(), ("can_run.coreml", "can_run.linux_coreml_executor", "can_run.onnxruntime", "can_run.swift"))


def test_every_function_the_threat_model_names_exists():
    """docs/THREAT_MODEL.md's "where" column named runtime.embedded_onnx_labels after it was removed (the check it
    stood for is in runtime.load_onnx): a reader looking for the code found nothing."""
    import importlib

    text = (ROOT / "docs" / "THREAT_MODEL.md").read_text(encoding="utf-8")
    missing = []
    for row in (line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| rule")):
        where = row.rstrip(" |").rsplit("|", 1)[-1]
        for name in re.findall(r"`([a-z_][\w.]*\.[A-Za-z_]\w*)`", where):
            module, _, attr = name.rpartition(".")
            try:
                importlib.import_module(f"exporter.{name}")  # a module (runtime.onnx_bounds)
                continue
            except ImportError:
                pass
            if not hasattr(importlib.import_module(f"exporter.{module}"), attr):
                missing.append(name)
    assert not missing, missing


def test_every_command_help_has_a_description_examples_and_its_defaults():
    """`exporter xcode --help` had no description, no examples and its own metavars (IMAGES, GOLDEN_COUNT,
    MODEL_PATH) where the other commands say FOLDER, N, MODEL."""
    import argparse

    for name, parser in _commands().items():
        text = " ".join(parser.format_help().split())
        assert parser.description and "examples:" in text, name
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, "", [], argparse.SUPPRESS):
                assert "default" in (action.help or "") or f"(default: {action.default})" in text, (name, action.option_strings)
    xcode = _commands()["xcode"].format_usage()
    assert "--images FOLDER" in xcode and "--golden-count N" in xcode and "--model MODEL" in xcode and "EXPORT_DIR" in xcode


def test_readme_python_example_type_checks(tmp_path):
    """A typed notebook or CI script is checked by mypy: `exporter.xcode(...)` was "Module not callable" (mypy saw
    the subpackage), `calibration_images="heldout/"` was not a `Path`, and `failed.report` was `Report | None`."""
    pytest.importorskip("mypy")
    (block,) = _readme_python_blocks()
    (tmp_path / "example.py").write_text(block, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", str(tmp_path / "example.py")],  # the project's cache: CI ran `mypy exporter` first
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_labels_count_mismatch_says_what_to_give():
    """The error said "has 9 labels but the model outputs 10 classes" and no more: not what the file should hold."""
    from exporter.errors import LabelsError
    from exporter.labels import check_against_model

    with pytest.raises(LabelsError) as caught:
        check_against_model([str(i) for i in range(9)], 10, source="labels.txt")
    assert str(caught.value) == (
        "labels.txt: has 9 labels but the model outputs 10 classes (give 10 labels, one per line, in the order of the "
        "model's outputs: is a class missing, or a header line extra?)"
    )


def test_a_bare_json_before_the_images_never_overwrites_an_image(tmp_path):
    """`--json` takes an optional FILE: `exporter predict EXPORT --json a.png b.png` took a.png as the JSON file,
    classified b.png only and wrote the JSON over the photo a.png (exit 0)."""
    import shutil

    from conftest import sample

    from exporter.api import ExportOptions, export
    from exporter.cli import main

    s = sample("mobilenet_v1_digits")
    out = tmp_path / "export"
    export(s["model"], s["labels"], out, preprocessing=s["preprocessing"], options=ExportOptions(formats="onnx", variants="fp32"))
    first = sorted(s["heldout"].rglob("*.png"))[0]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    shutil.copy(first, a)
    shutil.copy(first, b)
    before = a.read_bytes()
    with pytest.raises(SystemExit) as exited:
        main(["predict", str(out), "--json", str(a), str(b)])
    assert exited.value.code == 2 and a.read_bytes() == before


def test_validate_of_an_export_listing_no_artifacts_is_not_a_pass(tmp_path):
    """A manifest.json whose artifact list is empty (emptied by hand, or by a script) was validated as "PASSED: all
    0 artifacts met their gates", exit 0: a green CI job that checked nothing."""
    import json

    from conftest import sample

    from exporter.errors import DestinationError
    from exporter.packaging import sha256_of

    s = sample("mobilenet_v1_digits")
    export = tmp_path / "export"
    export.mkdir()
    manifest = {
        "schema_version": 1,
        "source": {"path": str(s["model"]), "sha256": sha256_of(s["model"])},
        "labels": [str(i) for i in range(10)],
        "preprocessing": json.loads(s["preprocessing"].read_text()),
        "artifacts": [],
        "skipped": [],
    }
    (export / "manifest.json").write_text(json.dumps(manifest))
    import exporter

    with pytest.raises(DestinationError, match="lists no artifacts: there is nothing to validate"):
        exporter.validate(export, s["heldout"])
    with pytest.raises(DestinationError, match="lists no artifacts: there is nothing to predict with"):
        exporter.predict(export, s["heldout"])  # printed nothing, exit 0


def test_a_variant_of_another_format_is_named_as_such():
    """`--formats onnx --variants w8a8` said "unknown variant 'w8a8'", though w8a8 exists (an .mlpackage variant)."""
    from exporter.capabilities import select
    from exporter.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        select(["onnx"], ["w8a8"])
    assert str(caught.value).startswith("variant 'w8a8' is a variant of mlpackage, not of onnx (add mlpackage to --formats")
    with pytest.raises(ConfigError, match="unknown variant 'w9a9'"):
        select(["onnx"], ["w9a9"])


def test_parity_table_fits_a_narrow_terminal_by_leaving_out_its_least_needed_columns():
    """The table was about 170 columns wide on a terminal of 80-120: every row wrapped. Given the terminal's width it
    leaves out KL, mean |dp|, the engine and top-5 (in that order, until it fits) and says so; piped (no width) it
    keeps every column."""
    from test_html_report import _report

    from exporter.report import terminal

    report = _report()
    full = terminal.parity_table(report).splitlines()
    header = full[0]
    assert "KL" in header and "mean |dp|" in header and "top-5" in header
    wide = max(len(line) for line in full[: 1 + len(report["artifacts"])])
    for width in (wide - 1, 100, 80):
        lines = terminal.parity_table(report, width=width).splitlines()
        rows = lines[: 1 + len(report["artifacts"])]
        dropped = [c for c in terminal.NARROW_DROPS if c not in rows[0]]
        assert dropped and dropped == list(terminal.NARROW_DROPS[: len(dropped)])  # least needed first
        assert f"left out to fit {width} columns: {', '.join(dropped)}" in "\n".join(lines)
        if len(dropped) < len(terminal.NARROW_DROPS):  # stopped dropping: it fits
            assert max(len(r) for r in rows) <= width
        if width == wide - 1:  # one column too wide: only the first, KL, goes, and then it fits
            assert dropped == ["KL"] and max(len(r) for r in rows) <= width
        for kept in ("artifact", "status", "top-1", "max |dp|", "accuracy", "failures"):
            assert kept in rows[0]
        assert lines[-1] == full[-1]  # the verdict is unchanged
    assert terminal.parity_table(report, width=wide).splitlines() == full
