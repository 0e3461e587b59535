"""Property-based fuzzing of the parsers of untrusted files (docs/THREAT_MODEL.md): labels, preprocessing,
manifest.json, and the Core ML executor's protobuf and weight readers on mutated copies of a real export. The only
outcomes allowed are success or a typed ExporterError: never another exception, a hang, or unbounded memory."""

from __future__ import annotations

import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import sample
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peakmem import peak_growth

from exporter.errors import ExporterError

S = sample("mobilenet_v1_digits")
# One example must finish well within this: every parser here runs in milliseconds to a second on the small export.
EXAMPLE_SECONDS = 30
# How far resident memory may rise while the executor reads mutated files: the real files are ~1 MB and running one
# takes a few tens of MB; a reader that allocated what a mutated size field declares would go far past this.
PEAK_GROWTH_BYTES = 1 << 30
FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@contextmanager
def time_limit(seconds: int = EXAMPLE_SECONDS):
    def on_alarm(_signum, _frame):
        raise TimeoutError(f"a parser ran for more than {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def only_typed_errors(fn) -> None:
    with time_limit():
        try:
            fn()
        except ExporterError as exc:
            assert "\n" not in str(exc) and len(str(exc)) <= 2100


@st.composite
def mutations(draw, size: int):
    """A list of edits to a file of ``size`` bytes: flipped bytes, an overwritten span, an optional truncation."""
    flips = draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 255)), max_size=8))
    span = draw(st.none() | st.tuples(st.integers(0, max(size - 1, 0)), st.binary(min_size=1, max_size=16)))
    cut = draw(st.none() | st.integers(0, size))
    return flips, span, cut


def mutate(data: bytes, edits) -> bytes:
    flips, span, cut = edits
    out = bytearray(data)
    for offset, xor in flips:
        if offset < len(out):
            out[offset] ^= xor
    if span is not None:
        offset, chunk = span
        out[offset : offset + len(chunk)] = chunk
    return bytes(out[:cut] if cut is not None else out)


# ------------------------------------------------------------------------------------------------ labels, preprocessing
# Nesting deeper than Python's recursion limit: json.loads raises RecursionError, not JSONDecodeError.
deep_json = st.integers(1_000, 50_000).map(lambda n: "[" * n + "]" * n) | st.integers(1_000, 50_000).map(lambda n: '{"a": ' * n)


@FUZZ
@given(st.text(max_size=200) | deep_json)
def test_labels_text(text):
    from exporter.labels import parse_labels

    only_typed_errors(lambda: parse_labels(text))


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["labels.txt", "labels.json"]))
def test_labels_file_bytes(tmp_path_factory, data, name):
    from exporter.labels import read_labels

    path = tmp_path_factory.mktemp("labels") / name
    path.write_bytes(data)
    only_typed_errors(lambda: read_labels(path))


@FUZZ
@given(json_values)
def test_preprocessing_from_any_json(value):
    from exporter.preprocessing import Preprocessing

    only_typed_errors(lambda: Preprocessing.from_dict(value))


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            ["input_size", "channel_order", "scale", "bias", "mean", "std", "resize", "interpolation", "in_model", "notes", "version"]
        ),
        json_values,
        max_size=8,
    )
)
def test_preprocessing_known_keys_any_values(value):
    from exporter.preprocessing import Preprocessing

    only_typed_errors(lambda: Preprocessing.from_dict(value))


@FUZZ
@given(mutations(len(S["preprocessing"].read_bytes())), st.none() | deep_json)
def test_preprocessing_file_mutated(tmp_path_factory, edits, nested):
    from exporter.preprocessing import Preprocessing

    data = S["preprocessing"].read_bytes()
    if nested is not None:  # a value replaced by deeply nested JSON
        data = data.replace(b"-1.0", nested.encode(), 1)
    path = tmp_path_factory.mktemp("pre") / "preprocessing.json"
    path.write_bytes(mutate(data, edits))
    only_typed_errors(lambda: Preprocessing.from_file(path))


# ------------------------------------------------------------------------------------------------ manifest
@pytest.fixture(scope="module")
def manifest_bytes(small_export) -> bytes:
    return (small_export[0] / "manifest.json").read_bytes()


def _read_manifest_and_use_it(folder: Path) -> None:
    """What validate and xcode do with a manifest before any model runs: parse it, read its contract and
    resolve every artifact."""
    from exporter.packaging import artifact_file, read_manifest
    from exporter.preprocessing import Preprocessing

    manifest = read_manifest(folder)
    Preprocessing.from_dict(manifest["preprocessing"])
    for art in manifest["artifacts"]:
        artifact_file(folder, art)


def _linked_copy(export: Path, folder: Path) -> Path:
    """The export with hard links for its artifacts (cheap per example; symlinks would point outside the folder,
    which artifact_file rightly refuses)."""
    shutil.copytree(export, folder, copy_function=os.link, ignore=shutil.ignore_patterns("manifest.json"))
    return folder


@FUZZ
@given(edits=st.data())
def test_manifest_bytes_mutated(tmp_path_factory, small_export, manifest_bytes, edits):
    folder = _linked_copy(small_export[0], tmp_path_factory.mktemp("m") / "export")
    (folder / "manifest.json").write_bytes(mutate(manifest_bytes, edits.draw(mutations(len(manifest_bytes)))))
    only_typed_errors(lambda: _read_manifest_and_use_it(folder))


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))
    yield prefix


@FUZZ
@given(data=st.data())
def test_manifest_values_replaced(tmp_path_factory, small_export, manifest_bytes, data):
    manifest = json.loads(manifest_bytes)
    where = data.draw(st.sampled_from([p for p in _paths(manifest) if p]))
    target = manifest
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = data.draw(json_values | st.sampled_from(["../x", "/etc/passwd", "a\nb", "\ud800", "x" * 300]))
    folder = _linked_copy(small_export[0], tmp_path_factory.mktemp("m") / "export")
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8", errors="surrogatepass")
    only_typed_errors(lambda: _read_manifest_and_use_it(folder))


# ------------------------------------------------------------------------------------------------ executor readers
@pytest.fixture(scope="module")
def core_ml_files(small_export):
    pkg = next(small_export[0].glob("*.mlpackage"))
    return {
        "program": pkg / "Data" / "com.apple.CoreML" / "model.mlmodel",
        "weights": next(pkg.rglob("weight.bin")),
        "neuralnetwork": next(small_export[0].glob("*.mlmodel")),
    }, pkg


PIXELS = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def _run_executor(path: Path) -> None:
    from exporter.errors import ExecutorBugError
    from exporter.runtime.executor import CoreMLExecutor

    try:
        probs = CoreMLExecutor(path).predict(PIXELS)
    except ExecutorBugError as exc:  # a mutated file's fault must be found while loading, and blamed on the file
        pytest.fail(f"a mutated file passed the executor's checks and then failed as an executor bug: {exc}")
    assert probs.shape[0] == 2


@pytest.mark.parametrize("which", ["program", "weights", "neuralnetwork"])
def test_executor_on_mutated_files(tmp_path_factory, core_ml_files, which):
    files, pkg = core_ml_files
    original = files[which].read_bytes()

    @FUZZ
    @given(edits=mutations(len(original)))
    # found by this test in a full run: a flipped weight byte overflows a matmul inside an executor worker thread,
    # where numpy's error state (per thread) was not the caller's, so the overflow was a RuntimeWarning-as-error
    @example(edits=([(1783, 64)], None, None))
    def check(edits):
        root = tmp_path_factory.mktemp("x")
        if which == "neuralnetwork":
            target = root / "model.mlmodel"
            target.write_bytes(mutate(original, edits))
        else:
            target = root / pkg.name
            shutil.copytree(pkg, target)
            (target / files[which].relative_to(pkg)).write_bytes(mutate(original, edits))
        only_typed_errors(lambda: _run_executor(target))
        shutil.rmtree(root)

    with peak_growth() as peak:
        check()
    assert peak.growth_bytes < PEAK_GROWTH_BYTES


@pytest.mark.parametrize("when, code, text", [("trial", 5, "it is malformed"), ("run", 70, "bug in the executor")])
def test_executor_faults_are_the_files_while_loading_and_the_executors_after(core_ml_files, capsys, monkeypatch, when, code, text):
    """The same ValueError from a kernel: during the trial pass at load (a file whose program cannot run) it is a
    conversion error naming the file (exit 5); once the file has loaded and run its trial pass, it is an executor
    bug (exit 70, "please report"), not hidden as a malformed file."""
    from test_faults import one_line_error, run_in_process

    from exporter.runtime.executor.mlprogram import Program

    real_run, real_staged, calls = Program.run, Program.run_staged, []

    def fault(x) -> None:
        calls.append(x.shape[0])
        if when == "trial" or len(calls) > 1:
            raise ValueError("operands could not be broadcast together (injected)")

    def run(self, x, observe=None):
        fault(x)
        return real_run(self, x, observe)

    def run_staged(self, x):  # the later passes of a batchable program (executor/stages.py)
        fault(x)
        return real_staged(self, x)

    monkeypatch.setattr(Program, "run", run)
    monkeypatch.setattr(Program, "run_staged", run_staged)
    _, pkg = core_ml_files
    image = next(p for p in S["heldout"].rglob("*.png"))
    proc = run_in_process(["predict", str(pkg), str(image)], capsys)
    line = one_line_error(proc)
    assert proc.returncode == code and text in line and pkg.name in line and "injected" in line, line
    if when == "run":
        assert "please report" in line
