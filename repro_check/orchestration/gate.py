"""The baseline stage of a verdict: write (``--repro-update``), leave alone, or check.

Runs only for verdicts whose replicas agree (or diverge within an allowance); compares replica
0's record with the committed baseline file of the test (orchestration/baseline.py decides
bitwise vs tolerance and how they differ).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.orchestration.allowance import allowance_atol
from repro_check.orchestration.case import Case
from repro_check.orchestration.verdict import (
    ALLOWED,
    BASELINE_MISMATCH,
    BASELINE_MISSING,
    BaselineOutcome,
    TestVerdict,
)

#: What a test without a baseline does (``repro_missing_baseline``): ``fail`` (the default,
#: so that a deleted baseline cannot pass in CI), ``create`` it and pass (new tests only; existing
#: baselines are still checked), or ``warn`` and pass unchecked.
MISSING_POLICIES = ("fail", "create", "warn")


@dataclass
class BaselineGate:
    rootpath: Path
    invocation_dir: Path
    baseline_dir: str = ""
    update: bool = False
    missing: str = "fail"  # one of MISSING_POLICIES
    #: --repro-steps chose the step count: a shorter run is checked on the steps it has.
    steps_overridden: bool = False
    #: Every baseline file a test of this session used (for the "unused baseline" notice).
    used: set[Path] = field(default_factory=set)

    def path_for(self, nodeid: str) -> Path:
        from repro_check.orchestration.baseline import baseline_path

        return baseline_path(self.rootpath, nodeid, self.baseline_dir)

    def stage(self, case: Case, verdict: TestVerdict, snapshot: dict[str, Any]) -> None:
        """Set ``verdict.baseline`` (and the status, when the baseline is missing or differs)."""
        from repro_check.core.atomic import StoredFileError
        from repro_check.orchestration import baseline as bl

        reference = verdict.reference
        assert reference is not None and reference.record is not None
        path = self.path_for(case.nodeid)
        self.used.add(path)
        shown = os.path.relpath(path, self.invocation_dir)
        verdict.agreement = verdict.status
        absent = not path.exists()
        if self.update or (absent and self.missing == "create"):
            if unchanged(path, reference.record, snapshot, verdict.seed):
                verdict.baseline = BaselineOutcome(shown, "unchanged")
                return
            document = bl.build_baseline(
                case.nodeid,
                verdict.seed,
                verdict.base_seed,
                reference.record,
                snapshot,
                (case.atol, case.rtol),
                fp64_record=verdict.variants.fp64_record if verdict.variants else None,
            )
            try:
                bl.write_baseline(path, document)
            except StoredFileError as exc:  # read-only folder, full disk
                verdict.status = BASELINE_MISMATCH
                verdict.baseline = BaselineOutcome(shown, "unwritable", error=str(exc))
                return
            verdict.baseline = BaselineOutcome(shown, "written" if self.update else "created")
            return
        if absent and self.missing == "warn":
            verdict.baseline = BaselineOutcome(shown, "unchecked")
            return
        if absent:
            verdict.status = BASELINE_MISSING
            verdict.baseline = BaselineOutcome(shown, "missing")
            return
        try:
            document = bl.load_baseline(path)
        except StoredFileError as exc:
            verdict.status = BASELINE_MISMATCH
            verdict.baseline = BaselineOutcome(shown, "unreadable", error=str(exc))
            return
        allowed = verdict.status == ALLOWED
        check = bl.check_baseline(
            document,
            reference.record,
            snapshot,
            allowance_atol(verdict.allowed, case.atol) if allowed else case.atol,
            case.rtol,
            allowed_nondeterminism=", ".join(a.op for a in verdict.allowed) if allowed else "",
            seed=verdict.seed,
            steps_overridden=self.steps_overridden,
        )
        verdict.baseline = BaselineOutcome(shown, "checked", document.get("created"), check=check)
        if check.failed:
            verdict.status = BASELINE_MISMATCH


def unchanged(path: Path, record: Any, snapshot: dict[str, Any], seed: int) -> bool:
    """--repro-update leaves a baseline alone when it already matches bit for bit in the same
    environment: accepting one change must not touch every file (syrupy does the same)."""
    from repro_check.core.atomic import StoredFileError
    from repro_check.orchestration import baseline as bl

    if not path.exists():
        return False
    try:
        check = bl.check_baseline(bl.load_baseline(path), record, snapshot, 0.0, 0.0, seed=seed)
    except (StoredFileError, ValueError, KeyError, TypeError):
        return False  # a damaged file is rewritten, never kept
    return not check.failed and check.mode == "bitwise"
