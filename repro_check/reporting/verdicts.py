"""Rendering a verdict: the failure message and the row of the terminal ``repro summary``.

The failure message is the product: what differed, where (step, key, element), by how much, how
it grew, and the exact command that reruns the case.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from repro_check.core.compare import Divergence
from repro_check.orchestration.investigation import PARAMETER_ORDER
from repro_check.orchestration.verdict import (
    ALLOWED,
    BASELINE_MISMATCH,
    BASELINE_MISSING,
    DIVERGED,
    ERROR,
    NOT_RECORDED,
    RESUME_MISMATCH,
    SINGLE,
    STRUCTURAL,
    TestVerdict,
)


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """``1 test``, ``2 tests``."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _replica_label(verdict: TestVerdict, index: int | None) -> str:
    if index is None or index >= len(verdict.specs):
        return f"replica {index}"
    return f"replica {index} ({verdict.specs[index].describe()})"


def failure_message(verdict: TestVerdict) -> str:
    """The text shown when a marked test fails under ``--repro``."""
    lines: list[str] = []
    head = f"repro-check: {verdict.nodeid}"
    if verdict.status == ERROR and verdict.crashed:
        lines.append(
            f"{head}: {_replica_label(verdict, verdict.other_replica)} did not finish this "
            f"test (its process ended or was stopped; not nondeterminism):"
        )
        lines.append(_indent(verdict.error.rstrip() or "(no error text)", "  | "))
    elif verdict.status == ERROR:
        lines.append(
            f"{head}: {_replica_label(verdict, verdict.other_replica)} raised an error: "
            f"{error_headline(verdict.error, limit=200)}"
        )
        lines.append("  (a failure of the test itself, not nondeterminism):")
        from repro_check.core.determinism import explain_deterministic_error

        explained = explain_deterministic_error(verdict.error)
        if explained:
            lines.append("  " + explained)
        lines.append(_indent(verdict.error.rstrip() or "(no error text)", "  | "))
    elif verdict.status == NOT_RECORDED:
        lines.append(
            f"{head}: {_replica_label(verdict, verdict.other_replica)} recorded nothing, so "
            f"there is nothing to compare. Call repro.record(step, model=model, "
            f"optimizer=opt, loss=loss) in the training loop."
        )
    elif verdict.status == BASELINE_MISSING:
        return "\n".join(_missing_baseline_lines(head, verdict))
    elif verdict.status == BASELINE_MISMATCH:
        lines.extend(_baseline_lines(head, verdict))
    elif verdict.status == RESUME_MISMATCH and verdict.resume is not None:
        lines.extend(verdict.resume.lines(head))
    elif verdict.comparison is not None and verdict.status in (DIVERGED, STRUCTURAL):
        reference = _replica_label(verdict, 0)
        other = _replica_label(verdict, verdict.other_replica)
        lines.append(f"{head} is not reproducible")
        lines.append(f"  {other} differs from {reference}; seed {verdict.seed}")
        if verdict.comparison.structural is not None:
            s = verdict.comparison.structural
            lines.append(f"  structural mismatch: {s.message}")
            if not verdict.diagnosis.startswith(PARAMETER_ORDER):  # same work, other order
                lines.append(
                    "  (the replicas did different work -- control flow, number of steps or "
                    "recorded state depends on something nondeterministic)"
                )
        else:
            assert verdict.comparison.divergence is not None
            lines.extend(_divergence_lines(verdict.comparison.divergence))
    if verdict.variants is not None and verdict.variants.failed:
        from repro_check.reporting.drift import report_lines

        if not lines:
            lines.append(f"{head}: the replicas agree, but a backend variant does not")
        lines.extend(report_lines(verdict.variants.to_json()))
    loc = verdict.localization
    if loc is not None:
        where = f", traced step {loc.step}" if loc.step is not None else ""
        lines.append(f"  localisation ({loc.kind}{where}):")
        if loc.note:  # it qualifies the finding ("the op named below ..."): read it first
            lines.append("    note: " + loc.note)
        lines.append(_indent(loc.message.rstrip(), "    "))
    if verdict.diagnosis:
        lines.append("  diagnosis: " + verdict.diagnosis)
    for note in verdict.notes:
        lines.append("  note: " + note)
    lines.append("  rerun this case:")
    lines.append("    " + verdict.rerun_command)
    if verdict.status == BASELINE_MISMATCH:
        lines.append("  accept the change (rewrite the baseline, then commit it):")
        lines.append("    " + verdict.accept_command)
    return "\n".join(lines)


def _baseline_lines(head: str, verdict: TestVerdict) -> list[str]:
    b = verdict.baseline
    assert b is not None
    if b.action == "unwritable":
        return [f"{head}: the baseline {b.path} cannot be written:", f"  {b.error}"]
    if b.action == "unreadable" or b.check is None:
        return [f"{head}: the baseline {b.path} cannot be used:", f"  {b.error}"]
    check = b.check
    title = {
        "steps": f"{head} recorded other steps than its baseline",
        "unsupported": f"{head}: its baseline cannot support this comparison",
    }.get(check.status, f"{head} no longer matches its baseline")
    lines = [
        title,
        f"  baseline: {b.path} (created {b.created}); {agreement_phrase(verdict)}",
        f"  comparison: {check.mode} -- {check.reason}",
    ]
    differences = check.env_differences or []
    if differences:  # why this mode: one line per relevant difference
        lines.append("  environment changes since the baseline (determinism-relevant):")
        lines += [f"    {d}" for d in differences[:12]]
        if len(differences) > 12:
            lines.append(f"    ... and {len(differences) - 12} more (repro-check env diff)")
    lines += ["  " + line.strip() if not line.startswith("    ") else line for line in check.lines]
    if check.seed_note:
        lines.append("  " + check.seed_note)
    elif not differences and check.status in ("mismatch", "structural") and not check.steps_note:
        lines.append(
            "  environment: unchanged in every determinism-relevant way, so the code or "
            "the data changed the numbers"
        )
    return lines


def agreement_phrase(verdict: TestVerdict) -> str:
    """What the replicas' comparison said, whatever the baseline stage decided after it."""
    agreement = verdict.agreement or verdict.status
    if agreement == ALLOWED:
        ops = ", ".join(a.op for a in verdict.allowed)
        return (
            f"the replicas differ, but only through allowed nondeterminism ({ops}) and within "
            f"its tolerance"
        )
    if agreement == SINGLE:
        return "one replica only (--repro-runs=1): no replicas were compared"
    return "the replicas agree with each other"


def _missing_baseline_lines(head: str, verdict: TestVerdict) -> list[str]:
    """The first ``--repro`` run of a new test: the replicas' verdict, then the missing baseline
    as a separate fact, and the one command that creates it (the message's last line)."""
    path = verdict.baseline.path if verdict.baseline else "?"
    agreement = verdict.agreement or verdict.status
    kind = {ALLOWED: "allowed nondeterminism", SINGLE: "not compared"}.get(
        agreement, "reproducible"
    )
    return [
        f"{head}: no baseline at {path}",
        f"  replicas: {kind} -- {agreement_phrase(verdict)} "
        f"({plural(len(verdict.specs), 'replica')}, {plural(verdict.steps, 'step')}, "
        f"{plural(verdict.keys, 'key')})",
        "  baseline: missing -- is this the test's first --repro run? A missing baseline fails",
        "    the test, so that a deleted one cannot pass in CI (ini repro_missing_baseline =",
        "    create writes missing baselines and passes; warn only warns)",
        f"  create the baseline, then commit it (git add {path}):",
        "    " + verdict.accept_command,
    ]


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _divergence_lines(d: Divergence) -> list[str]:
    lines = [
        f"  first divergence: step {d.step}, {d.key} ({d.dtype}, shape {tuple(d.shape)})",
    ]
    if d.detail is not None:
        lines.append(d.detail.describe("    "))
    else:
        lines.append(f"    {d.detail_unavailable}")
    ref_nan, ref_inf, other_nan, other_inf = d.nonfinite
    if ref_nan or ref_inf or other_nan or other_inf:
        lines.append(
            f"    non-finite values: reference {ref_nan} NaN / {ref_inf} inf, "
            f"other {other_nan} NaN / {other_inf} inf"
        )
    others = [k for k in d.keys_differing if k != d.key]
    if others:
        shown = ", ".join(others[:4]) + (f" and {len(others) - 4} more" if len(others) > 4 else "")
        lines.append(
            f"    also differing at step {d.step}: {len(others)} of "
            f"{plural(d.keys_total - 1, 'other key')} ({shown})"
        )
    elif d.keys_total > 2:
        lines.append(
            f"    every other key ({d.keys_total - 1}) is still bitwise equal at step {d.step}"
        )
    elif d.keys_total == 2:
        lines.append(f"    the other key is still bitwise equal at step {d.step}")
    if d.growth:
        lines.append("  how the divergence grows:")
        metric_names = list(d.growth[0].metrics)
        headers = ["step", "keys differing", f"max abs diff {d.key}"] + [
            f"{name} (ref / other)" for name in metric_names
        ]
        rows = []
        for row in d.growth:
            cells: list[Any] = [
                row.step,
                f"{row.keys_differing}/{row.keys_total}",
                "n/a" if row.max_abs is None else f"{row.max_abs:.3g}",
            ]
            for name in metric_names:
                a, b = row.metrics.get(name, (None, None))
                cells.append(f"{_num(a)} / {_num(b)}")
            rows.append(cells)
        lines.append(_indent(tabulate(rows, headers=headers, tablefmt="simple"), "    "))
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.9g}"


SUMMARY_HEADERS = [
    "test",
    "replicas",
    "steps",
    "tensors",
    "fingerprinted",
    "verdict",
    "baseline",
    "first divergence",
]


def baseline_cell(v: TestVerdict) -> str:
    b = v.baseline
    if b is None:
        return "-"
    if b.check is not None:
        return b.check.cell()
    return {"unchecked": "missing (warned)", "created": "created (commit it)"}.get(
        b.action, b.action
    )


_PYTEST_ERROR_LINE = re.compile(r"^E {3,}(.*)$")
_EXCEPTION_LINE = re.compile(
    r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failure|Warning))\b"
)


def error_headline(error: str, limit: int = 80) -> str:
    """The exception line of a replica's error text (``ValueError: bad shape``), not the first
    line of pytest's traceback (which is often a fixture's repr).

    Replica errors are ``[when] <pytest long repr>``: the exception is the first line of the
    last block of ``E   `` lines. In-process errors are Python tracebacks (last exception
    line); a crashed replica's text starts with what happened to its process.
    """
    text = error.strip()
    if not text:
        return "-"
    when = ""
    match = re.match(r"^\[(setup|call|teardown)\] ", text)
    if match:
        when, text = match.group(1), text[match.end() :]
    lines = text.splitlines()
    blocks: list[list[str]] = []
    previous_was_error = False
    for line in lines:
        found = _PYTEST_ERROR_LINE.match(line)
        if found and not previous_was_error:
            blocks.append([])
        if found:
            blocks[-1].append(found.group(1).strip())
        previous_was_error = bool(found)
    if blocks:
        headline = next((line for line in blocks[-1] if line), blocks[-1][0])
    elif lines[0].startswith("Traceback"):
        headline = next(
            (line for line in reversed(lines) if _EXCEPTION_LINE.match(line)), lines[-1]
        )
    else:
        headline = lines[0]
    if when and when != "call":
        headline = f"in {when}: {headline}"
    headline = headline.strip()
    return headline if len(headline) <= limit else headline[: limit - 3] + "..."


@dataclass
class RenderedVerdict:
    """A verdict as the reports need it: JSON, summary row, failure text. Plain data, so that
    pytest-xdist workers can ship their verdicts to the controller, which writes the reports."""

    json: dict[str, Any]
    row: list[Any]
    failure: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"json": self.json, "row": self.row, "failure": self.failure}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderedVerdict:
        return cls(data["json"], data["row"], data.get("failure", ""))


def summary_row(v: TestVerdict) -> list[Any]:
    status = v.agreement or v.status  # the baseline's state has a column of its own
    if v.nonfinite and not v.failed:
        status += " (NaN/inf)"
    detail = v.first_divergence() or error_headline(v.error)
    if v.variants is not None and v.variants.failed:  # the replicas agree; a variant does not
        status = "variant-mismatch" if v.status == "variant-mismatch" else status
        bad = v.variants.failing()[0]
        detail = detail if detail != "-" else f"variant {bad.name}: {bad.status}"
    return [
        v.nodeid,
        len(v.specs),
        v.steps,
        v.keys,
        human_bytes(v.bytes_fingerprinted),
        status,
        baseline_cell(v),
        detail,
    ]


def render(v: TestVerdict) -> RenderedVerdict:
    failure = failure_message(v) if (v.failed or v.diagnosis) else ""
    return RenderedVerdict(v.to_json(), summary_row(v), failure)


def summary_table(verdicts: Sequence[RenderedVerdict], tablefmt: str = "simple") -> str:
    return tabulate([v.row for v in verdicts], headers=SUMMARY_HEADERS, tablefmt=tablefmt)
