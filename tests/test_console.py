"""What the user sees: only the tool's own lines (unless --verbose), its progress in a terminal and in a log, help
that explains itself, and cheap mistakes reported before TensorFlow is imported."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import ROOT, sample

from exporter.console import Progress, Step, Steps, human_bytes, quiet_libraries

S = sample("mobilenet_v1_digits")
CONVERT = ["convert", str(S["model"]), "--labels", str(S["labels"]), "--preprocessing", str(S["preprocessing"])]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# The tool's own lines: progress steps, the redrawn terminal status, the closing note, the size table.
OWN_LINE = re.compile(
    r"""^(\[\d+/\d+\]\s.*                      # a step
                          |\[[#-]+\]\s\[\d+/\d+\]\s.*            # the terminal bar
                          |wrote\s\d+\sfiles\sto\s.*             # the closing note
                          |artifact\s+bytes\s+vs\sfp32.*         # the size table's header
                          |\S+\.(mlpackage|mlmodel|onnx)\s+[\d,]+\s.*)$""",
    re.X,
)
# Needs the clean environment a user has: the test runner's own TF_CPP_MIN_LOG_LEVEL would hide what we silence.
ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TQDM_DISABLE")}
ENV["PYTHONPATH"] = str(ROOT)


def _foreign(text: str) -> list[str]:
    segments = [ANSI.sub("", s).strip() for s in re.split(r"[\r\n]+", text)]
    return [s for s in segments if s and not OWN_LINE.match(s)]


def _run_in_pty(argv: list[str], timeout: float = 900) -> tuple[int, str]:
    """Run with stdin/stdout/stderr on a pseudo-terminal (as in a user's terminal); return (exit code, output)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", *argv], stdin=terminal, stdout=terminal, stderr=terminal, env=ENV, close_fds=True
    )
    os.close(terminal)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(controller)
    return proc.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_convert_prints_only_its_own_lines_in_a_terminal_and_in_a_pipe(tmp_path, fresh_exports):
    # int8 and the two ONNX files: coremltools' compression bars, tf2onnx's and TensorFlow's logs all get a chance.
    args = [*CONVERT, "--formats", "mlpackage", "onnx", "--variants", "fp32", "int8", "int8-dynamic"]
    code, shown = _run_in_pty([*args, "--out", str(tmp_path / "tty")])
    assert code == 0, shown[-3000:]
    assert _foreign(shown) == [], shown[-3000:]
    assert "ETA" in ANSI.sub("", shown)  # the bar was drawn (a step ran while earlier ones gave a mean)
    assert re.search(r"\[5/5\] onnx int8-dynamic \.\.\. \d+\.\d s", shown)

    # in a pipe (a CI log): the session's CLI export in a fresh process, every format, calibrated variants included
    piped = fresh_exports["cli"]
    assert _foreign(piped["stderr"]) == [] and _foreign(piped["stdout"]) == [], piped["stderr"][-3000:]
    assert "\r" not in piped["stderr"] and "\x1b" not in piped["stderr"]  # a log gets plain lines
    steps = re.findall(r"^\[(\d+)/(\d+)\] ", piped["stderr"], re.M)
    total = 1 + len(piped["manifest"]["artifacts"])  # loading, then one step per artifact
    assert [int(i) for i, _ in steps] == list(range(1, total + 1)) and {t for _, t in steps} == {str(total)}

    # --verbose hands the libraries their voice back: the same check now finds their lines (so it can fail).
    loud = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--verbose",
            *CONVERT,
            "--formats",
            "mlpackage",
            "--variants",
            "fp32",
            "--out",
            str(tmp_path / "loud"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert any("Running MIL" in line or "absl" in line for line in _foreign(loud.stderr)), loud.stderr[-2000:]


@pytest.mark.slow
def test_python_api_int8_export_prints_nothing(fresh_exports):
    """The session's API export in a fresh process (int8 of every format among its variants, whose compression once
    printed "Failed to load _MLModelProxy" eight times): nothing on stdout or stderr."""
    api = fresh_exports["api"]
    assert api["stdout"] == "" and api["stderr"] == "", api["stderr"][-3000:]
    assert (api["out"] / "mobilenet_v1_digits_int8.mlpackage").is_dir()


# --- cheap failures: answered before any heavy library is imported ------------------------------------------------
# What makes a failure slow is importing these (TensorFlow alone takes 3-8 s on this machine); the tests check that
# none was imported rather than timing the command, since a timed test fails on a busy machine, not on slow code.
HEAVY_MODULES = ("tensorflow", "keras", "coremltools", "onnxruntime", "tf2onnx")


def _cheap_cases(tmp) -> list[tuple[str, list[str], int, str]]:
    existing = tmp / "existing"
    existing.mkdir(exist_ok=True)
    export = tmp / "moved_export"
    export.mkdir(exist_ok=True)
    (export / "manifest.json").write_text(
        json.dumps(
            {
                "schema_version": 1,
                "source": {"path": "gone/model.keras", "path_from_export": "../gone/model.keras", "sha256": "0" * 64},
                "labels": ["a", "b"],
                "preprocessing": {"input_size": [8, 8]},
                "artifacts": [],
                "skipped": [],
            }
        )
    )
    return [
        ("destination exists", [*CONVERT, "--out", str(existing)], 6, "already exists"),
        ("calibration folder missing", [*CONVERT, "--out", str(tmp / "o1"), "--calibration-images", str(tmp / "nope")], 4, "nope"),
        ("w8a8 without calibration", [*CONVERT, "--out", str(tmp / "o2"), "--variants", "w8a8"], 2, "--calibration-images"),
        (
            "int8-static without calibration",
            [*CONVERT, "--out", str(tmp / "o3"), "--formats", "onnx", "--variants", "int8-static"],
            2,
            "--calibration-images",
        ),
        ("labels missing", [*CONVERT[:2], "--labels", str(tmp / "labels.txt"), "--out", str(tmp / "o4")], 2, "labels.txt"),
        ("preprocessing not json", [*CONVERT[:4], "--preprocessing", str(S["labels"]), "--out", str(tmp / "o5")], 2, "JSON"),
        ("variant typo", [*CONVERT, "--out", str(tmp / "o6"), "--variants", "palete4"], 2, "did you mean 'palette4'"),
        ("auto images missing", [*CONVERT, "--out", str(tmp / "o7"), "--quantize", "auto", "--images", str(tmp / "none")], 4, "none"),
        ("validate images missing", ["validate", str(export), "--images", str(tmp / "none"), "--model", str(S["model"])], 4, "none"),
        ("validate model moved", ["validate", str(export), "--images", str(S["heldout"])], 3, "--model"),
        ("gate typo", ["validate", str(export), "--images", str(S["heldout"]), "--gate", "int9:min_top1=0.9"], 2, "did you mean 'int8'"),
        ("predict image missing", ["predict", str(export), str(tmp / "none.png")], 4, "none.png"),
        # xcode imported TensorFlow (13 s) before it looked at its export folder, image folder or variant
        ("xcode export missing", ["xcode", str(tmp / "none"), "--images", str(S["heldout"]), "--out", str(tmp / "p1")], 6, "not found"),
        ("xcode destination exists", ["xcode", str(export), "--images", str(S["heldout"]), "--out", str(existing)], 6, "already exists"),
        ("xcode images missing", ["xcode", str(export), "--images", str(tmp / "none"), "--out", str(tmp / "p2")], 4, "none"),
        ("xcode variant missing", ["xcode", str(export), "--images", str(S["heldout"]), "--out", str(tmp / "p3")], 2, "no Core ML"),
    ]


def test_cheap_failures_are_fast_and_do_not_import_tensorflow(tmp_path):
    """All cases run in one fresh interpreter (TensorFlow absent at start), each through the CLI's main()."""
    cases = _cheap_cases(tmp_path)
    probe = """
import contextlib, io, json, sys, time
from exporter.cli import main
HEAVY = json.loads(sys.argv[2])
out = []
for name, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code
    out.append([name, code, time.perf_counter() - t0, err.getvalue(), sorted(m for m in HEAVY if m in sys.modules)])
print(json.dumps(out))
"""
    proc = subprocess.run(
        [sys.executable, "-c", probe, json.dumps([[n, a] for n, a, _, _ in cases]), json.dumps(HEAVY_MODULES)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r[0]: r[1:] for r in json.loads(proc.stdout.splitlines()[-1])}
    problems = []
    for name, _argv, code, text in cases:
        got_code, seconds, err, heavy = results[name]
        if got_code != code or text not in err or heavy:
            problems.append(f"{name}: exit {got_code} (want {code}), {seconds:.2f} s, imported: {heavy}, stderr: {err.strip()[-300:]}")
    assert not problems, "\n".join(problems)


def test_a_cheap_failure_from_a_fresh_process_is_fast(tmp_path):
    """The whole command, interpreter start-up included: one line, and (run again under -X importtime) no heavy
    library imported on the way."""
    (tmp_path / "existing").mkdir()
    argv = ["-m", "exporter", *CONVERT, "--out", str(tmp_path / "existing")]
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 6 and "already exists" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line, none from a library
    timed = subprocess.run([sys.executable, "-X", "importtime", *argv], capture_output=True, text=True, env=ENV)
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in timed.stderr.splitlines() if line.startswith("import time:")}
    assert timed.returncode == 6 and "already exists" in timed.stderr
    assert imported and not imported & set(HEAVY_MODULES), sorted(imported & set(HEAVY_MODULES))


# --- progress rendering ------------------------------------------------------------------------------------------
def _feed(printer: Progress, total: int, minor: bool = False) -> None:
    steps = Steps(printer, total, minor=minor)
    for i in range(total):
        with steps.step(f"thing {i + 1}") as note:
            note["detail"] = "ok"


def test_progress_in_a_log_is_one_plain_line_per_step():
    buf = io.StringIO()
    _feed(Progress(buf, tty=False), 3)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and all(re.fullmatch(r"\[\d/3\] thing \d \.\.\. \d+\.\d s \(ok\)", ln) for ln in lines)
    assert "\r" not in buf.getvalue()


def test_progress_in_a_log_thins_out_many_small_steps():
    buf = io.StringIO()
    _feed(Progress(buf, tty=False), 95, minor=True)
    shown = [int(m) for m in re.findall(r"^\[(\d+)/95\]", buf.getvalue(), re.M)]
    assert shown == [9 * k for k in range(1, 11)] + [95]


def test_progress_in_a_terminal_redraws_a_bar_with_eta():
    buf = io.StringIO()
    printer = Progress(buf, tty=True)
    printer(Step(1, 4, "a"))
    printer(Step(1, 4, "a", 2.0))
    printer(Step(2, 4, "b"))  # one step finished in 2 s: three left, so the ETA is about 6 s
    printer.close()
    text = buf.getvalue()
    bar = re.search(r"\[(#+-+)\] \[2/4\] b \.\.\. \d+\.\d s  ETA (\d+\.\d) s", text)
    assert bar and len(bar.group(1)) == 20 and bar.group(1).count("#") == 5
    assert 5.0 <= float(bar.group(2)) <= 6.0
    assert "\r\x1b[2K" in text


def test_human_bytes():
    assert [human_bytes(n) for n in (999, 1_000, 929_266, 1_752_877, 3_200_000_000)] == ["999 B", "1.0 kB", "929.3 kB", "1.8 MB", "3.2 GB"]


def test_quiet_libraries_restores_what_it_changed():
    import logging

    lg = logging.getLogger("coremltools")
    lg.setLevel(logging.INFO)
    before_stderr, before_env = sys.stderr, os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    with quiet_libraries(preload=False):
        assert lg.level == logging.ERROR and sys.stderr is not before_stderr
        print("swallowed", file=sys.stderr)
    assert lg.level == logging.INFO and sys.stderr is before_stderr
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == before_env


# --- help --------------------------------------------------------------------------------------------------------
def test_help_explains_every_option_and_global_options_work_anywhere():
    from exporter import __version__
    from exporter.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    missing = [f"{name} {act.option_strings or act.dest}" for name, p in sub.choices.items() for act in p._actions if not act.help]
    assert not missing, missing
    convert_help = " ".join(sub.choices["convert"].format_help().split())  # without the line wrapping
    assert "examples:" in convert_help and "(default: 64)" in convert_help
    assert "mlmodel: fp32 fp16 int8" in convert_help and "onnx: fp32 fp16 (int8-dynamic) int8-weights (int8-static)" in convert_help
    for argv in (["--debug", "doctor"], ["doctor", "--debug"]):
        assert parser.parse_args(argv).debug is True
    assert parser.parse_args(["doctor"]).debug is False
    assert parser.parse_args(["convert", "m", "--labels", "l", "--out", "o", "--json"]).json == "-"
    assert parser.parse_args(["convert", "m", "--labels", "l", "--out", "o", "--json", "f.json"]).json == "f.json"
    version = subprocess.run([sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, env=ENV)
    assert version.stdout.strip() == f"exporter {__version__}"
