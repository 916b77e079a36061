"""Drift figures of backend variants, as name=value lines, from a report.json.

Run the variants first, then read their report:

    pytest --repro --repro-variants=threads=1,isa=default,mkldnn=off,float64 suites/ \
        --repro-report=/tmp/variants
    python benchmarks/bench_variants.py /tmp/variants/report.json

For each test and variant: the verdict, the first drift step, the float64 rule's ratio there
(the variant's error against float64 over the allowed error; below 1 agrees), the largest ratio
at any later step (amplified drift is reported, not failed), the final drift (RMS difference
from the reference relative to its RMS) and the reference's own error against float64 there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def ratio(step: dict[str, Any] | None) -> float | None:
    judgement = (step or {}).get("judgement") or {}
    error, allowed = judgement.get("candidate_error"), judgement.get("allowed")
    if isinstance(error, (int, float)) and isinstance(allowed, (int, float)) and allowed > 0:
        return error / allowed
    return None


def figures(report: dict[str, Any]) -> list[str]:
    lines = []
    for test in report["tests"]:
        variants = test.get("variants") or {}
        name = test["nodeid"].split("::")[-1]
        for outcome in variants.get("outcomes") or []:
            prefix = f"{name}.{outcome['name']}"
            lines.append(f"{prefix}.status={outcome['status']}")
            drift = outcome.get("drift") or {}
            steps = drift.get("steps") or []
            first = next((s for s in steps if s["keys_differing"]), None)
            if first is None:
                continue
            later = [r for s in steps if s["step"] > first["step"] and (r := ratio(s)) is not None]
            lines.append(f"{prefix}.first_drift_step={first['step']}")
            if ratio(first) is not None:
                lines.append(f"{prefix}.rule_ratio_at_first_drift={ratio(first):.3g}")
            if later:
                lines.append(f"{prefix}.rule_ratio_max_later={max(later):.3g}")
            lines.append(f"{prefix}.final_relative_rms={steps[-1]['relative_rms']:.3g}")
            if steps[-1].get("reference_error") is not None:
                lines.append(f"{prefix}.final_reference_error={steps[-1]['reference_error']:.3g}")
            op = outcome.get("drift_op") or {}
            if op.get("op"):
                lines.append(f"{prefix}.first_drift_op={op['op']}")
                lines.append(f"{prefix}.first_drift_op_expected={op.get('expected')}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    report = json.loads(Path(argv[0]).read_text())
    print("\n".join(figures(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
