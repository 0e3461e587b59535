"""Rows of benchmarks/quant_results.json from quant_bench's progress lines (same numbers, rounded as printed), for a run cut short:
python benchmarks/quant_from_log.py STDERR_FILE; then python -m benchmarks.quant_bench --from-results --readme README.md"""

import json
import re
import sys
from pathlib import Path

rows = []


def fam(f):
    return (
        "reference"
        if f in ("fp32", "fp16")
        else "8-bit"
        if f in ("int8", "palette8")
        else "coremltools k-means"
        if f.startswith("ct-")
        else "Fisher k-means"
        if f.startswith("fisher-")
        else "mixed bits"
    )


def bits(f):
    return {"fp32": 32, "fp16": 16, "int8": 8, "palette8": 8}.get(f) or float(re.findall(r"[\d.]+$", f)[0])


pat = re.compile(r"^(\S+)\s+(\S+)\s+([\d,]+) ([\d.]+) agree ([\d.]+) acc ([+-][\d.]+) out ([\d.]+)$")
for line in open(sys.argv[1]):
    m = pat.match(line.strip())
    if m:
        model, f, b, r, a, acc, out = m.groups()
        rows.append(
            {
                "model": model,
                "family": fam(f),
                "file": f,
                "nominal_bits": bits(f),
                "bytes": int(b.replace(",", "")),
                "ratio_to_fp32": float(r),
                "top1_agreement": float(a),
                "accuracy_change_points": float(acc),
                "out_of_class_agreement": float(out),
            }
        )
Path("benchmarks/quant_results.json").write_text(json.dumps({"rows": rows, "note": "from the run's progress lines"}, indent=1) + "\n")
print(len(rows))
