"""Bad input and faults: one-line errors naming the file, a non-zero exit code, and nothing left half-written."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import sample

S = sample("mobilenet_v1_digits")
BASE = ["convert", str(S["model"]), "--preprocessing", str(S["preprocessing"])]


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, **kw)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("exporter: ")]
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert len(lines) == 1, proc.stderr[-1500:]
    return lines[0]


def no_partial_output(dest: Path) -> None:
    assert not dest.exists()
    assert not list(dest.parent.glob(f".{dest.name}.partial-*"))


def _write(path: Path, content: bytes | str) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def cases(tmp: Path) -> list[tuple[str, list[str], int, str]]:
    """(case, argv, exit code, text the one-line error must contain)."""
    labels = S["labels"]
    ten = "\n".join(str(i) for i in range(10)) + "\n"
    model_args = BASE[1:2]
    pre = ["--preprocessing", str(S["preprocessing"])]
    return [
        ("missing model", ["convert", str(tmp / "none.keras"), "--labels", str(labels), *pre], 3, "not found"),
        ("empty model", ["convert", str(_write(tmp / "e.keras", b"")), "--labels", str(labels), *pre], 3, "empty"),
        ("corrupt model", ["convert", str(_write(tmp / "c.keras", b"PK\x03\x04junk" * 50)), "--labels", str(labels), *pre], 3, "corrupt"),
        (
            "truncated model",
            ["convert", str(_write(tmp / "t.keras", S["model"].read_bytes()[:5000])), "--labels", str(labels), *pre],
            3,
            "t.keras",
        ),
        (
            "wrong label count",
            ["convert", *model_args, "--labels", str(_write(tmp / "l9.txt", "a\nb\n")), *pre],
            2,
            "has 2 labels but the model outputs 10",
        ),
        (
            "duplicate labels",
            ["convert", *model_args, "--labels", str(_write(tmp / "ld.txt", ten.replace("3\n", "2\n"))), *pre],
            2,
            "appears twice",
        ),
        ("empty label line", ["convert", *model_args, "--labels", str(_write(tmp / "le.txt", ten.replace("3\n", "\n"))), *pre], 2, "empty"),
        ("labels not utf-8", ["convert", *model_args, "--labels", str(_write(tmp / "lu.txt", b"cat\n\xffdog\n")), *pre], 2, "not UTF-8"),
        ("labels utf-16", ["convert", *model_args, "--labels", str(_write(tmp / "l16.txt", b"\xff\xfe\x00a\n")), *pre], 2, "UTF-16"),
        (
            "zero scale",
            [
                "convert",
                *model_args,
                "--labels",
                str(labels),
                "--preprocessing",
                str(_write(tmp / "p0.json", json.dumps({"input_size": [32, 32], "scale": 0}))),
            ],
            2,
            "must not be zero",
        ),
        (
            "wrong channel count",
            [
                "convert",
                *model_args,
                "--labels",
                str(labels),
                "--preprocessing",
                str(_write(tmp / "pc.json", json.dumps({"input_size": [32, 32], "channel_order": "L", "scale": 0.5}))),
            ],
            2,
            "channel",
        ),
        (
            "wrong input size",
            [
                "convert",
                *model_args,
                "--labels",
                str(labels),
                "--preprocessing",
                str(_write(tmp / "ps.json", json.dumps({"input_size": [64, 64]}))),
            ],
            2,
            "does not match",
        ),
        (
            "preprocessing not json",
            ["convert", *model_args, "--labels", str(labels), "--preprocessing", str(_write(tmp / "pj.json", "{"))],
            2,
            "not valid JSON",
        ),
        ("no preprocessing", ["convert", *model_args, "--labels", str(labels)], 2, "no preprocessing declared"),
    ]


def run_in_process(argv: list[str], capsys) -> subprocess.CompletedProcess:
    """The CLI's main() in this process (no TensorFlow start-up per case); same exit code and stderr."""
    from exporter.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, exit_info.value.code, captured.out, captured.err)


def test_bad_input_matrix(tmp_path, capsys):
    """All cases run and each failure is reported, so one broken case does not hide another."""
    failures = []
    for name, argv, code, text in cases(tmp_path):
        dest = tmp_path / f"out-{name.replace(' ', '-')}"
        proc = run_in_process([*argv, "--out", str(dest), "--formats", "onnx", "--variants", "fp32"], capsys)
        try:
            line = one_line_error(proc)
            assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}: {line}"
            assert text in line, line
            no_partial_output(dest)
        except AssertionError as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)


def test_existing_destination_is_not_overwritten(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    proc = run_cli([*BASE, "--labels", str(S["labels"]), "--out", str(dest)])
    assert proc.returncode == 6 and "already exists" in one_line_error(proc)
    assert (dest / "keep.txt").read_text() == "mine"


def test_unwritable_destination(tmp_path):
    dest = Path("/proc/exporter-test-out")  # /proc refuses new entries even to root
    proc = run_cli([*BASE, "--labels", str(S["labels"]), "--out", str(dest), "--formats", "onnx", "--variants", "fp32"])
    assert proc.returncode == 6 and str(dest.parent) in one_line_error(proc)


def _ignore_sigxfsz_and_cap_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))  # the fp32 ONNX file is ~890 kB


def test_disk_full_during_write_leaves_nothing(tmp_path):
    dest = tmp_path / "out"
    proc = run_cli(
        [*BASE, "--labels", str(S["labels"]), "--out", str(dest), "--formats", "onnx", "--variants", "fp32"],
        preexec_fn=_ignore_sigxfsz_and_cap_file_size,
    )
    line = one_line_error(proc)
    assert proc.returncode in (5, 6), line  # the write fails with EFBIG inside the converter or the packager
    no_partial_output(dest)


@pytest.mark.slow
def test_sigkill_during_export_leaves_destination_absent_or_complete(tmp_path):
    dest = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "exporter",
        *BASE,
        "--labels",
        str(S["labels"]),
        "--out",
        str(dest),
        "--formats",
        "mlpackage",
        "onnx",
        "--variants",
        "fp32",
        "fp16",
        "int8",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    staged = []
    while time.time() < deadline and not staged:  # kill once the first artifact is being written
        staged = [p for p in tmp_path.glob(".out.partial-*") if any(p.iterdir())]
        time.sleep(0.05)
    assert staged, "the export never started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not dest.exists()  # absent, not half-written
    # The next export to the same place cleans the leftover staging directory and completes.
    done = run_cli([*BASE, "--labels", str(S["labels"]), "--out", str(dest), "--formats", "onnx", "--variants", "fp32"])
    assert done.returncode == 0, done.stderr[-1500:]
    manifest = json.loads((dest / "manifest.json").read_text())
    assert [a["path"] for a in manifest["artifacts"]] == ["mobilenet_v1_digits_fp32.onnx"]
    assert not list(tmp_path.glob(".out.partial-*"))


def test_debug_flag_shows_the_traceback(tmp_path):
    proc = run_cli(["--debug", "convert", str(tmp_path / "none.keras"), "--labels", str(S["labels"]), "--out", str(tmp_path / "o")])
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize("fmt", ["mlpackage", "onnx"])
def test_layer_the_converter_cannot_handle_is_named(tmp_path, capsys, fmt):
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Resizing(8, 8, interpolation="lanczos3")(inputs)  # becomes TF's ScaleAndTranslate op
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "odd.keras")
    dest = tmp_path / "out"
    proc = run_in_process(
        [
            "convert",
            str(tmp_path / "odd.keras"),
            "--labels",
            str(_write(tmp_path / "l.txt", "a\nb\n")),
            "--preprocessing",
            str(_write(tmp_path / "p.json", '{"input_size": [16, 16]}')),
            "--out",
            str(dest),
            "--formats",
            fmt,
            "--variants",
            "fp32",
        ],
        capsys,
    )
    line = one_line_error(proc)
    assert proc.returncode == 5 and "ScaleAndTranslate" in line
    no_partial_output(dest)
