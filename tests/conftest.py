from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
logging.getLogger("coremltools").setLevel(logging.ERROR)

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"
SAMPLE_NAMES = ["mobilenet_v1_digits", "mobilenet_v2_digits", "squeezenet_digits", "transfer_photos"]


def sample(name: str) -> dict:
    folder = SAMPLES / name
    card = json.loads((folder / "card.json").read_text())
    return {
        "name": name,
        "folder": folder,
        "model": folder / "model.keras",
        "labels": folder / "labels.txt",
        "preprocessing": folder / "preprocessing.json",
        "card": card,
        "heldout": SAMPLES / card["heldout_folder"],
    }


def rehash_artifacts(export_dir: Path) -> None:
    """Record every artifact's current SHA-256 in the export's manifest.json: a test that damages an artifact on
    purpose, to test what validate or predict does with such a file, makes the manifest agree with it (as whoever
    wrote a hostile export would), or the damage is caught first as a file changed since the export."""
    from exporter.packaging import sha256_of

    path = Path(export_dir) / "manifest.json"
    manifest = json.loads(path.read_text())
    for art in manifest["artifacts"]:
        if (Path(export_dir) / art["path"]).exists():
            art["sha256"] = sha256_of(Path(export_dir) / art["path"])
    path.write_text(json.dumps(manifest, indent=2))


def shared_once(tmp_path_factory, key: str, build) -> tuple[Path, object]:
    """(folder, result) of ``build(folder) -> JSON-able result``, run once per test run even when pytest-xdist runs the files in several
    processes: the first process to ask builds it in a folder every process can see, under a file lock, and the
    others read the stored result. Without xdist the folder is this session's own."""
    import fcntl

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by the workers of this run
    folder = base / "shared" / key
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder.parent / f"{key}.json"
        if not done.exists():
            folder.mkdir(exist_ok=True)
            done.write_text(json.dumps(build(folder)))
        return folder, json.loads(done.read_text())


@pytest.fixture(scope="session")
def exports(tmp_path_factory):
    """Each sample model exported once per test run with every variant this machine can build."""
    from exporter.api import ExportOptions, export

    def build(name: str, folder: Path) -> dict:
        s = sample(name)
        options = ExportOptions(calibration_images=s["heldout"])
        return dict(export(s["model"], s["labels"], folder / name, preprocessing=s["preprocessing"], options=options))

    cache: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            folder, manifest = shared_once(tmp_path_factory, f"exports-{name}", lambda folder: build(name, folder))
            cache[name] = (folder / name, manifest)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def small_export(tmp_path_factory):
    """mobilenet_v1_digits exported once as fp32 .mlpackage, .mlmodel and .onnx, and 10 of its held-out images
    (2 from each of 5 classes): the material of the hostile-file tests, which damage copies of it."""
    import shutil

    from exporter.api import ExportOptions, export

    s = sample("mobilenet_v1_digits")
    root = tmp_path_factory.mktemp("hostile")
    out = root / "export"
    export(s["model"], s["labels"], out, preprocessing=s["preprocessing"], options=ExportOptions(variants=("fp32",)))
    images = root / "images"
    for label_dir in sorted(p for p in s["heldout"].iterdir() if p.is_dir())[:5]:
        (images / label_dir.name).mkdir(parents=True)
        for p in sorted(label_dir.iterdir())[:2]:
            shutil.copy(p, images / label_dir.name / p.name)
    return out, images


# The environment a user has: the test runner's TF_CPP_MIN_LOG_LEVEL (set above) or a TQDM_DISABLE would hide the
# library output the toolkit must silence itself.
USER_ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TQDM_DISABLE")}
USER_ENV["PYTHONPATH"] = str(ROOT)
# What the two fresh-process exports build: every format, with the calibrated variants (int8-static) and the one whose
# compression once printed "Failed to load _MLModelProxy" (int8).
FRESH_VARIANTS = ("fp32", "int8", "int8-static", "int8-dynamic")
FRESH_CALIBRATION_COUNT = 16


@pytest.fixture(scope="session")
def fresh_exports(tmp_path_factory):
    """mobilenet_v1_digits exported the same way twice, at the same time, each in a fresh process in the user's
    environment: once through the Python API (manifest written to a file, so stdout and stderr must stay empty) and
    once through the CLI with its output piped (as in a CI log). Shared by the reproducibility test (identical
    manifests, so also CLI = API), the quiet-console tests (a pipe; the API prints nothing) and test_export; one pair
    of exports instead of six separate ones, built once per run (shared_once). Returns {"api"|"cli": {"out",
    "manifest", "stdout", "stderr"}}."""
    folder, out = shared_once(tmp_path_factory, "fresh_exports", _fresh_exports)
    return {k: {**v, "out": folder / k} for k, v in out.items()}


def _fresh_exports(root: Path) -> dict:
    import subprocess
    import sys

    s = sample("mobilenet_v1_digits")
    api_code = (
        "import json, sys, exporter; m = exporter.export({m!r}, {l!r}, sys.argv[1], preprocessing={p!r}, "
        "options=exporter.ExportOptions(variants={v!r}, calibration_images={c!r}, calibration_count={n})); "
        "open(sys.argv[2], 'w').write(json.dumps(m))"
    ).format(
        m=str(s["model"]), l=str(s["labels"]), p=str(s["preprocessing"]), v=FRESH_VARIANTS, c=str(s["heldout"]), n=FRESH_CALIBRATION_COUNT
    )
    argv = {
        "api": [sys.executable, "-c", api_code, str(root / "api"), str(root / "api.json")],
        "cli": [
            *(sys.executable, "-m", "exporter", "convert", str(s["model"]), "--labels", str(s["labels"])),
            *("--preprocessing", str(s["preprocessing"]), "--out", str(root / "cli"), "--variants", *FRESH_VARIANTS),
            *(
                "--calibration-images",
                str(s["heldout"]),
                "--calibration-count",
                str(FRESH_CALIBRATION_COUNT),
                "--json",
                str(root / "cli.json"),
            ),
        ],
    }
    procs = {k: subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=USER_ENV) for k, a in argv.items()}
    done = {k: p.communicate(timeout=1800) for k, p in procs.items()}
    out = {}
    for k, p in procs.items():
        assert p.returncode == 0, (k, done[k][1][-3000:])
        manifest = json.loads((root / f"{k}.json").read_text())
        out[k] = {"manifest": manifest, "stdout": done[k][0], "stderr": done[k][1]}
    return out
