"""The capability table (issue 13 item 6), written by this run, never by hand.

    python benchmarks/capability.py                       # every family, both shapes, core + low-bit variants
    python benchmarks/capability.py --quick               # application shape, fp32/fp16/int8 of each format only
    python benchmarks/capability.py --families resnet densenet --shapes nested
    python benchmarks/capability.py --render-only         # rewrite the tables from benchmarks/capability.json
    python benchmarks/capability.py --quick --jobs 2      # two families at a time

Each family (sample_models/families.py) is built small, trained a few steps on digits, exported to fp32, fp16 and int8
of every format (and, unless --quick, the low-bit Core ML variants and the opt-in ONNX int8 files), and validated on
the held-out digits with the default gates; the fp32 Core ML file (run by the Linux executor) and the fp32 ONNX file
(onnxruntime) are also compared with a float64 Keras model of the same weights. Each family runs in its own process
(memory stays bounded, one crash costs one row). Results merge into benchmarks/capability.json by (family, shape), so a filtered run updates
its rows and keeps the others; then docs/CAPABILITY.md and the README section between
``<!-- capability:start -->`` and ``<!-- capability:end -->`` are rewritten from that file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "capability.json"
DOC = ROOT / "docs" / "CAPABILITY.md"
README = ROOT / "README.md"
START, END = "<!-- capability:start -->", "<!-- capability:end -->"
# One row's build, training, export and validation costs 1-3 CPU-minutes; on a 2-core machine shared with other work
# it can take ten times that in wall time. A process past this is stuck, and its row says in which stage.
FAMILY_TIMEOUT_S = 2700
CORE_COLUMNS = [
    ("mlpackage", "fp32"),
    ("mlpackage", "fp16"),
    ("mlpackage", "int8"),
    ("mlmodel", "fp32"),
    ("mlmodel", "fp16"),
    ("mlmodel", "int8"),
    ("onnx", "fp32"),
    ("onnx", "fp16"),
    ("onnx", "int8-weights"),
]
LOW_BIT_COLUMNS = [
    ("mlpackage", "palette8"),
    ("mlpackage", "palette6"),
    ("mlpackage", "palette4"),
    ("mlpackage", "w8a8"),
    ("onnx", "int8-dynamic"),
    ("onnx", "int8-static"),
]


# ------------------------------------------------------------------------------------------------ running
def worker(name: str, shape: str, low_bit: bool, out: Path) -> None:
    """Child process: one family in one shape; writes its result as JSON."""
    import dataclasses
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("coremltools").setLevel(logging.ERROR)
    from sample_models import family_check as fc

    variants = fc.with_low_bit(fc.CORE_VARIANTS) if low_bit else dict(fc.CORE_VARIANTS)
    started = time.perf_counter()
    stage_file = _stage_file(out)

    def on_stage(what: str) -> None:  # where this row is, for the parent to name if it has to stop it
        stage_file.write_text(f"{what} (at {time.perf_counter() - started:.0f} s)")

    with tempfile.TemporaryDirectory(prefix=f"capability-{name}-") as tmp:
        result = fc.check(name, shape, Path(tmp), variants=variants, on_stage=on_stage)
    row = dataclasses.asdict(result)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # CPU seconds of this process: what the row would take on an idle machine (wall time here depends on whoever
    # else shares the cores)
    row["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    row["commit"] = head.stdout.strip() or "?"
    out.write_text(json.dumps(row, indent=1, default=float))


def _stage_file(out: Path) -> Path:
    return out.with_name(out.name + ".stage")


def run_one(name: str, shape: str, low_bit: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, "--worker", name, shape, str(out)] + (["--low-bit"] if low_bit else [])
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=FAMILY_TIMEOUT_S,
                env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        except subprocess.TimeoutExpired:
            stage = _stage_file(out)
            where = f", stopped during {stage.read_text()}" if stage.exists() else " before it started building"
            return {"family": name, "shape": shape, "error": f"timed out after {FAMILY_TIMEOUT_S} s{where}", "artifacts": []}
        if proc.returncode != 0 or not out.exists():
            tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:] or ["no output"]
            return {"family": name, "shape": shape, "error": f"worker crashed (exit {proc.returncode}): {tail[0][:300]}", "artifacts": []}
        result = json.loads(out.read_text())
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        return result


# ------------------------------------------------------------------------------------------------ rendering
def _cell(art: dict | None) -> str:
    return _text(art).replace("|", "\\|")  # "max |dp|" inside a Markdown table cell


def _text(art: dict | None) -> str:
    if art is None:
        return "-"
    if art["status"] == "passed":
        check = art.get("float64") or {}
        if check.get("passed"):  # past the plain gate, judged against float64 (exporter/validation/float64.py)
            return f"pass (float64: {check['artifact_max_abs_prob']:.1e} vs Keras fp32 {check['keras_fp32_max_abs_prob']:.1e})"
        return "pass"
    if art["status"] == "not run":
        return f"not run: {art.get('reason') or '?'}"
    return "FAIL: " + "; ".join(art.get("failures") or ["?"])


def _find(row: dict, fmt: str, variant: str) -> dict | None:
    return next((a for a in row.get("artifacts", []) if a["format"] == fmt and a["variant"] == variant), None)


def _err(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def _f64(f64: dict, key: str) -> str:
    """max |dp| / max relative error of one file against float64 ('-' where the row did not measure it)."""
    return f"{_err(f64.get(key))} / {_err((f64.get('relative') or {}).get(key))}"


def _sorted_rows(results: dict) -> list[dict]:
    from sample_models.families import FAMILIES, SHAPES

    order = {name: i for i, name in enumerate(FAMILIES)}
    return sorted(results.values(), key=lambda r: (order.get(r["family"], 99), SHAPES.index(r["shape"]) if r["shape"] in SHAPES else 9))


def main_table(results: dict) -> str:
    from sample_models.families import FAMILIES

    head = (
        ["family (stands for)", "shape"]
        + [f"{f} {v}" for f, v in CORE_COLUMNS]
        + ["fp32 Core ML vs float64", "fp32 ONNX vs float64", "Keras fp32 vs float64", "trained acc.", "code"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in _sorted_rows(results):
        fam = FAMILIES.get(row["family"])
        label = f"{row['family']} ({fam.stands_for})" if fam else row["family"]
        if row.get("error"):
            cells = [f"FAIL: {row['error']}".replace("|", "\\|")] + ["-"] * (len(CORE_COLUMNS) - 1)
        else:
            cells = [_cell(_find(row, f, v)) for f, v in CORE_COLUMNS]
        f64 = row.get("float64") or {}
        acc = row.get("train_accuracy")
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    row["shape"],
                    *cells,
                    _f64(f64, "mlpackage"),
                    _f64(f64, "onnx"),
                    _f64(f64, "keras_fp32"),
                    "-" if acc is None else f"{acc:.2f}",
                    row.get("commit", "?"),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def low_bit_table(results: dict) -> str:
    rows = [r for r in _sorted_rows(results) if any(_find(r, f, v) for f, v in LOW_BIT_COLUMNS)]
    if not rows:
        return "_Not run in this table's run (--quick)._"
    head = ["family", "shape"] + [f"{v} top-1 agreement" for _, v in LOW_BIT_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = []
        for f, v in LOW_BIT_COLUMNS:
            art = _find(row, f, v)
            if art is None or art["status"] == "not run" or art.get("top1_agreement") is None:
                cells.append(_cell(art))
            else:
                cells.append(f"{art['top1_agreement']:.3f}" + ("" if art["status"] == "passed" else " (below gate)"))
        lines.append("| " + " | ".join([row["family"], row["shape"], *cells]) + " |")
    return "\n".join(lines)


# A model whose Keras float32 output is already this share of the fp32 gate away from float64 (max |dp|) amplifies
# float32 rounding itself: on 300 digits some runtime's different (equally valid) summation order can cross the gate.
SENSITIVE_SHARE = 0.25
# Below this accuracy on its training digits (chance is 0.10) a row's passes prove little: near-uniform probabilities
# cannot move by more than a gate allows.
MIN_LEARNED_ACCURACY = 0.5


def _why(row: dict, art: dict) -> str:
    """The cause of one artifact's failure, from what the row measured."""
    from exporter.validation.tolerances import FP32_MAX_ABS_PROB
    from sample_models.data import DIGITS_HELDOUT_COUNT
    from sample_models.family_check import FLOAT64_IMAGES, float64_bar_misses

    if art["status"] == "not run":
        return "it could not be run here (reason above)"
    failures = " ".join(art.get("failures") or [])
    if "non-finite" in failures:
        return "the file computes NaN or infinity on some digits"
    top1 = art.get("top1_agreement")
    moved = "" if top1 is None else f"{round((1 - top1) * DIGITS_HELDOUT_COUNT)} of {DIGITS_HELDOUT_COUNT} top-1 decisions moved"
    variant = art["variant"]
    if variant == "fp32":
        f64 = row.get("float64") or {}
        keras, core, onnx = f64.get("keras_fp32"), f64.get("mlpackage"), f64.get("onnx")
        mine = core if art["format"] in ("mlpackage", "mlmodel") else onnx
        if keras is not None and keras >= SENSITIVE_SHARE * FP32_MAX_ABS_PROB:
            return (
                f"the trained model amplifies float32 rounding: Keras float32 itself is {keras:.1e} from float64 "
                f"(this file: {_err(mine)}), so any float32 runtime can land past the gate"
            )
        misses = float64_bar_misses(f64) if art["format"] != "onnx" else []
        if misses:
            return f"the Core ML path is less exact than float32 allows: {misses[0]}"
        return (
            f"float32 differences beyond the gate (max |dp| vs float64 on {FLOAT64_IMAGES} digits: this file {_err(mine)}, "
            f"Keras float32 {_err(keras)})"
        )
    if variant == "fp16":
        return f"float16 arithmetic (10-bit mantissa) on this model: {moved or 'probabilities moved'}"
    return f"{variant} quantization loses decisions on this briefly trained model: {moved} (quantization quality is issue 18's)"


def not_passing(results: dict) -> str:
    from sample_models.family_check import float64_bar_misses

    out = []
    for row in _sorted_rows(results):
        if row.get("error"):
            out.append(f"- {row['family']} {row['shape']}: {row['error']}")
            continue
        acc = row.get("train_accuracy")
        if acc is not None and acc < MIN_LEARNED_ACCURACY:
            out.append(
                f"- {row['family']} {row['shape']}: did not learn the digits (accuracy {acc:.2f}): its near-uniform "
                "outputs make every parity cell pass without proving anything"
            )
        for art in row.get("artifacts", []):
            if art["status"] != "passed" and (art["format"], art["variant"]) in CORE_COLUMNS:
                out.append(f"- {row['family']} {row['shape']} {art['format']} {art['variant']}: {_cell(art)}; why: {_why(row, art)}")
        f64 = row.get("float64") or {}
        out.extend(f"- {row['family']} {row['shape']}: {miss}" for miss in float64_bar_misses(f64))
        if "error" in f64:
            out.append(f"- {row['family']} {row['shape']}: float64 comparison failed: {f64['error']}")
    return "\n".join(out) if out else "Everything in the table passed."


def render(results: dict, meta: dict) -> tuple[str, str]:
    legend = (
        "A cell is `pass` when the file converted, ran on Linux (Core ML files through the project's executor, "
        "ONNX through onnxruntime) and met its default gate on the 300 held-out digits (fp32 max |dp| <= 1e-5; "
        "fp16 max |dp| <= 2e-2 and top-1 >= 99 %; int8 top-1 >= 98 %); `pass (float64: a vs Keras fp32 b)` is an fp32 "
        "file past the 1e-5 limit that the validator judged against a float64 Keras model instead: a (the file) is "
        "within 2x of b (Keras float32), so the model amplifies float32 rounding, not the file. The three float64 columns: "
        "`max |dp| / max relative error` of the fp32 Core ML file (.mlpackage), of the fp32 ONNX file and of the Keras "
        "float32 model itself against a float64 Keras model of the same weights, on the 300 held-out digits (when Keras "
        "float32 is itself near 1e-5 from float64, the model is too sensitive for the 1e-5 fp32 gate whatever runs it). "
        "The relative error (|dp| / p over probabilities >= 1e-4: the error of the log-probabilities) is what issue "
        "13's bar judges, both Core ML files within 2x of ONNX's (sample_models/family_check.py says why not max |dp|: "
        "it is decided by the one or two images nearest a tie); `-` where the row was measured before it was recorded. "
        "Then the trained model's accuracy on its training digits (inference mode, so what the exported files "
        "compute); the commit the row was measured at."
    )
    cpu = sorted(r["cpu_seconds"] for r in results.values() if r.get("cpu_seconds"))
    cost = f" One row costs {cpu[len(cpu) // 2]:.0f} CPU-seconds (median; {cpu[0]:.0f}-{cpu[-1]:.0f})." if cpu else ""
    # rows come from several runs (a filtered run merges its rows into the others), so what each row covers is counted
    # from the rows themselves, not taken from the last run's mode
    full = sum(any(_find(r, f, v) for f, v in LOW_BIT_COLUMNS) for r in results.values())
    summary = (
        f"Written by `python benchmarks/capability.py` on {meta['when']}: {meta['machine']}; {meta['rows']} rows "
        f"({'all' if full == len(results) else f'{full}, the others --quick,'} with the lower-bit variants), "
        f"{meta['seconds']} s in the last run.{cost}"
    )
    main, low, bad = main_table(results), low_bit_table(results), not_passing(results)
    from sample_models.families import FAMILIES, SHAPES

    missing = [f"{n} {sh}" for n in FAMILIES for sh in SHAPES if f"{n}:{sh}" not in results]
    if missing:
        bad += "\n\nNot measured in the runs behind this table: " + ", ".join(missing) + "."
    bad += (
        "\n\nA row whose code column is `?` was measured before rows recorded their commit (an earlier state "
        "of the exporter); rerun it with `--families NAME`."
    )
    off = _commits_outside_history(results)
    if off:
        bad += (
            "\n\nCommits in the code column that are not in this checkout's history were a work branch's state "
            "before it was rebased onto main (same changes, on an older main); the main commits with the same "
            "message: " + "; ".join(f"{old} -> {new or 'none'}" for old, new in off.items()) + "."
        )
    doc = (
        f"# Capability table\n\n{summary}\n\nFamilies are the small builds of `sample_models/families.py` (its "
        f"docstring says which real model each stands for), in two shapes: `application` (the keras.applications "
        f"model, include_top, 10 classes) and `nested` (the backbone as one nested layer plus "
        f"GlobalAveragePooling2D, Dropout, Dense softmax). Each was trained for a few epochs on digits (the recipe in "
        f"`families.train`).\n\n{legend}\n\n"
        f"{main}\n\n## Lower-bit and opt-in variants (agreement reported, not gated here)\n\n{low}\n\n"
        f"## Not passing, and why\n\n{bad}\n"
    )
    readme = (
        f"{summary} Details, the lower-bit variants and the reasons for anything not passing: "
        f"[docs/CAPABILITY.md](docs/CAPABILITY.md).\n\n{legend}\n\n{main}\n"
    )
    return doc, readme


def _commits_outside_history(results: dict) -> dict[str, str | None]:
    """{recorded commit: the commit of HEAD's history with the same message, or None} for the rows' commits that HEAD
    does not contain (measured on a branch before its rebase); empty when git is unavailable."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)

    out: dict[str, str | None] = {}
    for commit in sorted({r.get("commit") for r in results.values() if r.get("commit") not in (None, "?")}):
        if git("merge-base", "--is-ancestor", commit, "HEAD").returncode != 1:
            continue  # in the history (0), or git cannot tell (128: unknown object, no repository)
        subject = git("show", "-s", "--format=%s", commit).stdout.strip()
        match = git("log", "--format=%h", "-F", "--grep", subject, "-n", "1", "HEAD").stdout.strip() if subject else ""
        out[commit] = match or None
    return out


def write_outputs(results: dict, meta: dict) -> None:
    doc, readme_section = render(results, meta)
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(doc)
    text = README.read_text()
    block = f"{START}\n{readme_section}{END}"
    if START in text and END in text:
        before, rest = text.split(START, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Capability\n\n" + block + "\n"
    README.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", help="family names (default: all)")
    parser.add_argument("--shapes", nargs="*", choices=["application", "nested"])
    parser.add_argument("--quick", action="store_true", help="application shape, fp32/fp16/int8 of each format")
    parser.add_argument("--jobs", type=int, default=1, help="families run at once, each in its own process")
    parser.add_argument("--render-only", action="store_true", help="rewrite the tables from capability.json")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where rows are stored (default %(default)s)")
    parser.add_argument(
        "--merge", type=Path, nargs="*", default=[], help="other results files (from runs in parallel) whose rows join --results first"
    )
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "SHAPE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--low-bit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], args.low_bit, Path(args.worker[2]))
        return 0
    from sample_models.families import FAMILIES, SHAPES

    stored = json.loads(args.results.read_text()) if args.results.exists() else {"meta": {}, "rows": {}}
    results = stored["rows"]
    for other in args.merge:  # listed oldest first: the last file's run is "the last run" of the summary
        merged = json.loads(other.read_text())
        results.update(merged["rows"])
        stored["meta"] = {**stored.get("meta", {}), **merged.get("meta", {})}
    if args.merge:
        args.results.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    t0 = time.perf_counter()
    if not args.render_only:
        names = args.families or list(FAMILIES)
        unknown = [n for n in names if n not in FAMILIES]
        if unknown:
            parser.error(f"unknown families {unknown}; known: {list(FAMILIES)}")
        shapes = args.shapes or (["application"] if args.quick else list(SHAPES))
        jobs = [(name, shape) for name in names for shape in shapes]
        lock = threading.Lock()

        def one(job):
            row = run_one(*job, low_bit=not args.quick)
            passed = sum(a["status"] == "passed" for a in row.get("artifacts", []))
            with lock:  # each finished row is saved at once, so an interrupted run keeps what it measured
                results[f"{job[0]}:{job[1]}"] = row
                stored["meta"] = {
                    "when": time.strftime("%Y-%m-%d"),
                    "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
                    "rows": len(results),
                    "seconds": round(time.perf_counter() - t0),
                }
                stored["rows"] = results
                args.results.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
                print(
                    f"{job[0]:28s} {job[1]:12s} {passed}/{len(row.get('artifacts', []))} passed "
                    f"{row.get('error', '')[:120]} ({row.get('wall_seconds', '?')} s)",
                    flush=True,
                )

        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(one, jobs))
    meta = {**{"when": "?", "machine": "?", "seconds": "?"}, **stored.get("meta", {}), "rows": len(results)}
    write_outputs(results, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
