"""HDF5 inside model files (issue 15): a dataset whose few stored kilobytes inflate to gigabytes, or to far more
than any weight compresses, in a .keras archive's model.weights.h5 or in a legacy .h5 model, is refused from the
file's metadata before a byte of it is read: exit 3, one line naming the file. So is a dataset whose data lives in
another file (HDF5 external storage), which reading would open wherever it points."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import sample
from test_faults import no_partial_output
from test_hostile import PRE, SMALL, _cli

from exporter.loading import KERAS_WEIGHTS_MEMBER, inspect_model_file
from exporter.safety import MAX_COMPRESSION_RATIO, MEMORY_BUDGET_BYTES

S = sample("mobilenet_v1_digits")
GIGABYTES = (60_000, 60_000)  # float32: 14.4 GB when read
ZEROS_MB = 16  # written for real, gzip-compressed: a few kB on disk


def _add_bomb(f: h5py.File, kind: str, folder: Path) -> None:
    group = f.require_group("bomb")
    if kind == "gigabytes":  # one chunk of zeros written, the rest is implied by the shape
        ds = group.create_dataset("vars", shape=GIGABYTES, dtype="float32", chunks=(1000, 1000), compression="gzip")
        ds[:1000, :1000] = 0.0
    elif kind == "ratio":  # under the memory budget, but 16 MB from a few kB
        group.create_dataset(
            "vars", data=np.zeros((ZEROS_MB << 18,), np.float32), chunks=(1 << 18,), compression="gzip", compression_opts=9
        )
    else:  # external storage: the dataset's bytes are another file's
        (folder / "outside.bin").write_bytes(b"\0" * 64)
        group.create_dataset("vars", shape=(16,), dtype="float32", external=[(str(folder / "outside.bin"), 0, 64)])


def _keras_with_bomb(folder: Path, kind: str) -> Path:
    """The sample .keras archive with a bomb dataset added to its model.weights.h5 (config and weights unchanged)."""
    target = folder / "model.keras"
    with zipfile.ZipFile(S["model"]) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == KERAS_WEIGHTS_MEMBER:
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "a") as f:
                    _add_bomb(f, kind, folder)
                data = buffer.getvalue()
            dst.writestr(info, data)
    return target


def _h5_with_bomb(folder: Path, kind: str) -> Path:
    """A legacy .h5 file with a (tiny) model architecture and the bomb beside it."""
    target = folder / "model.h5"
    with h5py.File(target, "w") as f:
        f.attrs["model_config"] = '{"class_name": "Sequential", "config": {"layers": []}}'
        _add_bomb(f, kind, folder)
    return target


@pytest.mark.parametrize("make", [_keras_with_bomb, _h5_with_bomb], ids=["keras", "h5"])
@pytest.mark.parametrize(
    "kind, message",
    [
        ("gigabytes", f"over the memory budget of {MEMORY_BUDGET_BYTES:,}"),
        ("ratio", f"over {MAX_COMPRESSION_RATIO}x: a decompression bomb"),
        ("external", "keeps its data in other files"),
    ],
)
def test_hdf5_bombs_are_refused_before_reading(tmp_path, capsys, make, kind, message):
    model = make(tmp_path, kind)
    assert model.stat().st_size < 2 << 20  # the bomb is small on disk
    with pytest.raises(Exception, match=message) as info:  # checked without Keras or TensorFlow
        inspect_model_file(model)
    assert info.value.exit_code == 3 and str(model) in str(info.value) and "/bomb/vars" in str(info.value)
    if make is _keras_with_bomb:
        assert KERAS_WEIGHTS_MEMBER in str(info.value)
    dest = tmp_path / "out"
    proc, line = _cli(["convert", str(model), "--labels", str(S["labels"]), *PRE, "--out", str(dest), *SMALL], capsys)
    assert proc.returncode == 3 and message in line and str(model) in line
    no_partial_output(dest)


def test_the_sample_archive_passes_the_hdf5_checks():
    """The check reads the real weights file inside the archive, and a real model is not refused by it."""
    assert inspect_model_file(S["model"]) == "keras"
