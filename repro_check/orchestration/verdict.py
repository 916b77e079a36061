"""The verdict on one marked test: compare every replica with replica 0, say what differed.

Replicas are compared one at a time against the reference, so the parent holds at most two
replicas' fingerprints at once, however many replicas run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from repro_check.core.compare import Comparison, compare_runs
from repro_check.core.record import RunRecord
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec

if TYPE_CHECKING:
    from repro_check.orchestration.allowance import Allowance

IDENTICAL = "identical"
DIVERGED = "diverged"
STRUCTURAL = "structural"
ERROR = "error"
SKIPPED = "skipped"
NOT_RECORDED = "not-recorded"
SINGLE = "single-run"
ALLOWED = "allowed"  # diverged only through an op the test declares as known nondeterminism
BASELINE_MISMATCH = "baseline-mismatch"
BASELINE_MISSING = "baseline-missing"
VARIANT_MISMATCH = "variant-mismatch"  # a backend variant disagrees beyond the float64 rule
RESUME_MISMATCH = "resume-mismatch"  # a run resumed from a checkpoint differs, or cannot be checked
FAILING = frozenset(
    {
        DIVERGED,
        STRUCTURAL,
        ERROR,
        NOT_RECORDED,
        BASELINE_MISMATCH,
        BASELINE_MISSING,
        VARIANT_MISMATCH,
        RESUME_MISMATCH,
    }
)


@dataclass
class Localization:
    """The op (or the line where the difference entered) blamed for a divergence."""

    kind: str  # "nondeterministic-op" | "entered" | "identical" | "unavailable" | ...
    message: str = ""
    step: int | None = None
    op: str | None = None
    source: str | None = None
    module_path: str | None = None
    call_index: int | None = None
    entered_at: Any = None
    advice: str | None = None
    events_compared: int | None = None
    truncated: bool = False
    note: str = ""
    attempts: int | None = None
    origin: str = ""  # "the replicas' own traces" when no rerun was needed

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "origin"}
        if self.origin:
            data["from"] = self.origin
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Localization:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "from" in data:
            values["origin"] = data["from"]
        return cls(**values)


@dataclass
class BaselineOutcome:
    """What the baseline stage did with a test: wrote, left, missed, or checked its baseline."""

    path: str  # as shown to the user (relative to the invocation folder)
    action: str  # "written" | "unchanged" | "missing" | "unreadable" | "unwritable" | "checked"
    created: str | None = None
    error: str = ""
    check: Any = None  # orchestration.baseline.BaselineCheck when action == "checked"

    @property
    def failed(self) -> bool:
        failing = ("missing", "unreadable", "unwritable")
        return self.action in failing or bool(self.check and self.check.failed)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "action": self.action}
        if self.error:
            data["error"] = self.error
        if self.action == "checked":
            data["created"] = self.created
        if self.check is not None:
            data.update(self.check.to_json())
        return data


@dataclass
class TestVerdict:
    __test__ = False  # not a pytest test class, despite the name
    nodeid: str
    seed: int
    base_seed: int
    status: str
    specs: list[ReplicaSpec]
    steps: int = 0
    keys: int = 0
    bytes_fingerprinted: int = 0
    duration: float = 0.0
    other_replica: int | None = None  # the replica that differed from replica 0
    comparison: Comparison | None = None
    error: str = ""
    diagnosis: str = ""
    nonfinite: str = ""  # first NaN/inf seen in the reference replica, if any
    rerun_command: str = ""
    accept_command: str = ""
    notes: list[str] = field(default_factory=list)
    #: Replica 0's record and environment, kept only until the baseline has been checked.
    reference: ReplicaResult | None = field(default=None, repr=False)
    other: ReplicaResult | None = field(default=None, repr=False)
    allowed: tuple[Allowance, ...] = ()  # known nondeterminism the test declares
    baseline: BaselineOutcome | None = None
    localization: Localization | None = None  # the op (or line) to blame
    variants: Any = None  # orchestration.drift.VariantReport: the backend variants' drift
    resume: Any = None  # orchestration.resume.ResumeVerdict: the resume-equivalence check
    #: What the replicas' comparison said (identical, allowed, single-run) before the baseline
    #: stage set ``status``: a missing or differing baseline is not a verdict on the replicas.
    agreement: str = ""
    #: The error is the replica's process (it died, hung, ran out of disk, did not collect
    #: the test), not an exception raised by the test.
    crashed: bool = False

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def first_divergence(self) -> str:
        comparison = self.comparison
        check = self.baseline.check if self.baseline else None
        if self.status == BASELINE_MISMATCH and check is not None and check.step is not None:
            return f"vs baseline: step {check.step}: {check.key}"
        if self.status == RESUME_MISMATCH and self.resume is not None:
            return self.resume.headline()
        if comparison is None or comparison.identical:
            return ""
        if comparison.structural is not None:
            s = comparison.structural
            return f"structure ({s.kind}) at step {s.step}" if s.step is not None else s.kind
        d = comparison.divergence
        assert d is not None
        return f"step {d.step}: {d.key}"

    def to_json(self) -> dict[str, Any]:
        comparison = self.comparison
        return {
            "nodeid": self.nodeid,
            "seed": self.seed,
            "base_seed": self.base_seed,
            "status": self.status,
            "replicas": [spec.to_json() for spec in self.specs],
            "steps": self.steps,
            "keys": self.keys,
            "bytes_fingerprinted": self.bytes_fingerprinted,
            "duration_s": round(self.duration, 4),
            "compared_replica": self.other_replica,
            "structural": comparison.structural.to_json()
            if comparison and comparison.structural
            else None,
            "divergence": comparison.divergence.to_json()
            if comparison and comparison.divergence
            else None,
            "error": self.error,
            "diagnosis": self.diagnosis,
            "nonfinite": self.nonfinite,
            "rerun_command": self.rerun_command,
            "accept_command": self.accept_command,
            "agreement": self.agreement or self.status,
            "crashed": self.crashed,
            "notes": self.notes,
            "baseline": self.baseline.to_json() if self.baseline else {},
            "localization": self.localization.to_json() if self.localization else {},
            "variants": self.variants.to_json() if self.variants is not None else None,
            "resume": self.resume.to_json() if self.resume is not None else None,
            "allowed_nondeterminism": {a.op: a.describe() for a in self.allowed},
        }


def first_nonfinite(record: RunRecord) -> str:
    for step in record.steps:
        for key, entry in step.entries.items():
            fp = entry.fingerprint
            if fp.nan or fp.inf:
                return f"step {step.step}, {key}: {fp.nan} NaN, {fp.inf} inf of {fp.numel}"
    return ""


def judge(
    nodeid: str,
    seed: int,
    base_seed: int,
    specs: list[ReplicaSpec],
    results: Iterable[ReplicaResult],
) -> TestVerdict:
    """Compare the replicas' results (consumed one at a time) and decide."""
    verdict = TestVerdict(nodeid, seed, base_seed, IDENTICAL, specs)
    reference: ReplicaResult | None = None
    for result in results:
        verdict.duration += result.duration
        if result.record is not None:
            verdict.bytes_fingerprinted += result.record.bytes_fingerprinted
        if result.outcome in ("failed", "crashed"):
            verdict.status = ERROR
            verdict.other_replica = result.replica
            verdict.error = result.error
            verdict.crashed = result.outcome == "crashed"
            return verdict
        if result.outcome == "skipped":
            verdict.status = SKIPPED
            verdict.error = result.error
            return verdict
        if result.record is None or not result.record.steps:
            verdict.status = NOT_RECORDED
            verdict.other_replica = result.replica
            return verdict
        if reference is None:
            reference = verdict.reference = result
            verdict.steps = len(result.record.steps)
            verdict.keys = len(result.record.keys)
            verdict.nonfinite = first_nonfinite(result.record)
            continue
        assert reference.record is not None
        comparison = compare_runs(reference.record, result.record)
        if not comparison.identical:
            verdict.comparison = comparison
            verdict.other_replica = result.replica
            verdict.other = result
            verdict.status = STRUCTURAL if comparison.structural else DIVERGED
            return verdict
    if len(specs) < 2:
        verdict.status = SINGLE
    return verdict
