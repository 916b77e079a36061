"""The verdict on a variant's drift, and the variant stage of a test's verdict pipeline.

:func:`decide` turns a :class:`~repro_check.orchestration.drift.DriftAnalysis` into a status
(the rule is in :mod:`repro_check.orchestration.drift`'s docstring): enforced at the first drift
step, reported afterwards. :class:`VariantStage` runs for every marked test that asked for
variants: it judges each variant's own replicas bit for bit, measures the drift of each against
the reference replicas with the float64 run as the judge, and traces the first drift step of
each drifting variant to name the first drift op.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_check.core.compare import Fp64Judgement
from repro_check.core.record import RunRecord
from repro_check.orchestration.drift import (
    AGREES,
    DISAGREES,
    DRIFTS,
    FAILED,
    FAILING_STATUSES,
    IDENTICAL,
    JUDGE,
    SKIPPED,
    DriftAnalysis,
    DriftStep,
    Loader,
    analyze_drift,
    load_spilled,
)


@dataclass
class Decision:
    status: str
    reason: str
    amplified_from: int | None = None  # the first later step beyond the rule (a note)


def decide(analysis: DriftAnalysis, *, is_judge: bool = False) -> Decision:
    """The verdict on one variant's drift (see the module docstring for the rule)."""
    if analysis.structural:
        return Decision(DISAGREES, f"the records cannot be compared: {analysis.structural}")
    if analysis.new_nonfinite:
        return Decision(
            DISAGREES, f"NaN/inf where the reference has none: {analysis.new_nonfinite}"
        )
    if analysis.exact_mismatch:
        return Decision(DISAGREES, analysis.exact_mismatch)
    first = analysis.first_step
    if first is None:
        return Decision(IDENTICAL, "bit for bit the reference's record at every step")
    where = f"first drift at step {first.step} ({first.first_key})"
    if is_judge:
        return Decision(JUDGE, f"the float64 run (the yardstick); {where}")
    if analysis.judged_by == "tolerances":
        bad = next((s for s in analysis.steps if s.tolerance), None)
        if bad is not None:
            return Decision(
                DISAGREES, f"beyond the stated tolerances at step {bad.step}: {bad.tolerance}"
            )
        return Decision(AGREES, f"{where}; within the stated tolerances at every step")
    if first.values_missing or (first.judgement is None and first.keys_differing):
        missing = first.values_missing or first.keys_differing
        return Decision(
            DISAGREES,
            f"{where}, but {missing} differing key(s) have no values to judge (neither spilled "
            f"tensors nor statistics, or no float64 values): raise --repro-spill-mb",
        )
    judged = [k for k in analysis.first_keys if k.judgement is not None]
    failing = [k for k in judged if not k.judgement.agrees]  # type: ignore[union-attr]
    if failing:
        # The largest failing key: its RMS rests on the most numbers (small keys are noisy).
        worst = max(failing, key=lambda k: (k.numel, _ratio(k.judgement)))  # type: ignore[arg-type]
        assert worst.judgement is not None
        pooled = (
            f"; over all {len(judged)} differing keys: {first.judgement.reason}"
            if (first.judgement is not None)
            else ""
        )
        return Decision(
            DISAGREES,
            f"{where}: beyond the float64 rule in {len(failing)} of {len(judged)} differing "
            f"key(s); the largest, {worst.key} ({worst.numel} values): {worst.judgement.reason}"
            f"{pooled}",
        )
    if first.judgement is not None and not first.judgement.agrees:
        return Decision(
            DISAGREES,
            f"{where}: beyond the float64 rule over the differing keys: {first.judgement.reason}",
        )
    later = next(
        (
            s
            for s in analysis.steps[analysis.first_drift + 1 :]  # type: ignore[operator]
            if s.judgement is not None and not s.judgement.agrees
        ),
        None,
    )
    if later is not None:
        return Decision(
            DRIFTS,
            f"{where}, within the float64 rule there; from step {later.step} the drift outgrew "
            f"it (amplified by training: {_ratio_text(later.judgement)})",
            amplified_from=later.step,
        )
    return Decision(AGREES, f"{where}; within the float64 rule at every step")


def _ratio(judgement: Fp64Judgement) -> float:
    return judgement.candidate_error / judgement.allowed if judgement.allowed else float("inf")


def _ratio_text(judgement: Fp64Judgement | None) -> str:
    if judgement is None:
        return "n/a"
    return f"error {_ratio(judgement):.3g}x the allowed {judgement.allowed:.3g}"


# ---------------------------------------------------------------------------- the stage


@dataclass
class VariantOutcome:
    """What one variant of one test came to."""

    name: str
    label: str
    status: str
    reason: str
    replicas: int = 0
    analysis: DriftAnalysis | None = None
    drift_op: Any = None  # orchestration.drift_op.DriftOp
    amplified_from: int | None = None
    judge_only: bool = False

    @property
    def failed(self) -> bool:
        return self.status in FAILING_STATUSES

    @property
    def first_drift(self) -> DriftStep | None:
        return self.analysis.first_step if self.analysis is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "status": self.status,
            "reason": self.reason,
            "replicas": self.replicas,
            "failed": self.failed,
            "judge_only": self.judge_only,
            "amplified_from": self.amplified_from,
            "drift_op": self.drift_op.to_json() if self.drift_op is not None else None,
            "drift": self.analysis.to_json() if self.analysis is not None else None,
        }


@dataclass
class VariantReport:
    """Every variant of one test, and what judged them."""

    outcomes: list[VariantOutcome] = field(default_factory=list)
    judged_by: str = ""
    note: str = ""
    #: The float64 run's record, kept until the run's record file is written (not serialised).
    fp64_record: RunRecord | None = field(default=None, repr=False)

    @property
    def failed(self) -> bool:
        return any(o.failed for o in self.outcomes)

    def failing(self) -> list[VariantOutcome]:
        return [o for o in self.outcomes if o.failed]

    def to_json(self) -> dict[str, Any]:
        return {
            "judged_by": self.judged_by,
            "note": self.note,
            "failed": self.failed,
            "outcomes": [o.to_json() for o in self.outcomes],
        }


ResultsOf = Callable[[Any], Iterable[Any]]  # PlannedVariant -> its replicas' ReplicaResults


@dataclass
class VariantStage:
    """Judge every variant a test asked for against its reference replicas (see the module
    docstring), then trace the first drift step of each drifting variant to name the op."""

    plan: Sequence[Any]  # orchestration.variants.PlannedVariant
    #: Reruns specs with a trace window (the investigation's rerunner); None: never trace.
    rerunner: Any = None
    localize_mode: str = "auto"
    load: Loader = load_spilled

    def applies(self, nodeid: str) -> list[Any]:
        return [p for p in self.plan if nodeid in p.nodeids]

    def stage(self, case: Any, verdict: Any, results_of: ResultsOf) -> None:
        """Attach a :class:`VariantReport` to ``verdict``; a failing variant fails the test."""
        from repro_check.orchestration.variants import FLOAT64
        from repro_check.orchestration.verdict import VARIANT_MISMATCH

        planned = self.applies(case.nodeid)
        if not planned:
            return
        report = VariantReport()
        reference = verdict.reference
        if (
            reference is None
            or reference.record is None
            or verdict.status in ("diverged", "structural", "error", "not-recorded", "skipped")
        ):
            report.note = f"variants not judged: the reference replicas are {verdict.status}"
            for plan in planned:
                list(results_of(plan)) if plan.specs else None  # drain what the workers sent
                report.outcomes.append(
                    VariantOutcome(plan.name, plan.variant.describe(), SKIPPED, report.note)
                )
            verdict.variants = report
            return
        judge_plan = next((p for p in planned if p.name == FLOAT64), None)
        fp64_record: RunRecord | None = None
        ordered = ([judge_plan] if judge_plan else []) + [p for p in planned if p is not judge_plan]
        for plan in ordered:
            outcome, record = self._run(case, verdict, plan, results_of)
            if outcome is None:
                assert record is not None
                is_judge = plan is judge_plan
                analysis = analyze_drift(
                    reference.record,
                    record,
                    None if is_judge else fp64_record,
                    atol=case.atol,
                    rtol=case.rtol,
                    load=self.load,
                )
                decision = decide(analysis, is_judge=is_judge)
                outcome = VariantOutcome(
                    plan.name,
                    plan.variant.describe(),
                    decision.status,
                    decision.reason,
                    len(plan.specs),
                    analysis,
                    amplified_from=decision.amplified_from,
                    judge_only=plan.variant.judge_only,
                )
                if is_judge and decision.status != DISAGREES:
                    fp64_record = record
            report.outcomes.append(outcome)
        report.judged_by = (
            "the float64 run (the float64 rule)"
            if fp64_record is not None
            else f"the stated tolerances (atol={case.atol:g}, rtol={case.rtol:g}): no usable "
            f"float64 run"
        )
        self._locate_drift_ops(case, report, planned, verdict)
        report.fp64_record = fp64_record
        verdict.variants = report
        if report.failed and not verdict.failed:
            verdict.status = VARIANT_MISMATCH

    def _run(
        self, case: Any, verdict: Any, plan: Any, results_of: ResultsOf
    ) -> tuple[VariantOutcome | None, RunRecord | None]:
        """The variant's own replicas, judged bitwise; (None, record) when they agree."""
        from repro_check.orchestration.verdict import judge

        label = plan.variant.describe()
        if plan.skipped:
            return VariantOutcome(
                plan.name, label, SKIPPED, plan.skipped, judge_only=plan.variant.judge_only
            ), None
        own = judge(
            case.nodeid, verdict.seed, verdict.base_seed, list(plan.specs), results_of(plan)
        )
        made = len(plan.specs)
        if own.status == "skipped":
            return VariantOutcome(
                plan.name, label, SKIPPED, f"the test skipped itself: {own.error}", made
            ), None
        if own.status in ("error", "not-recorded"):
            what = own.error.strip().splitlines()[-1:] if own.error else ["recorded nothing"]
            return VariantOutcome(
                plan.name, label, FAILED, f"the variant failed to run: {what[0]}", made
            ), None
        # A test that declares known nondeterminism (allow=...) may part within a variant too,
        # as its reference replicas may: replica 0 stands for the variant, as it does there.
        if own.status == "structural" or (own.status == "diverged" and not case.allowed):
            return VariantOutcome(
                plan.name,
                label,
                FAILED,
                f"its own replicas differ bit for bit ({own.first_divergence()}): the test is not "
                f"reproducible in this environment",
                made,
            ), None
        assert own.reference is not None and own.reference.record is not None
        return None, own.reference.record

    def _locate_drift_ops(
        self, case: Any, report: VariantReport, planned: list[Any], verdict: Any
    ) -> None:
        from repro_check.orchestration.drift_op import locate
        from repro_check.orchestration.investigation import (
            TraceWindow,
            should_localize,
            window_start,
        )

        if self.rerunner is None or not should_localize(
            self.localize_mode, verdict.duration, len(verdict.specs)
        ):
            return
        by_name = {p.name: p for p in planned}
        steps = [s.step for s in verdict.reference.record.steps]
        # Variants that first drift at the same step share one traced rerun of the reference.
        groups: dict[int, list[tuple[VariantOutcome, Any]]] = {}
        for outcome in report.outcomes:
            first = outcome.first_drift
            plan = by_name.get(outcome.name)
            if first is None or plan is None or not plan.specs:
                continue
            if outcome.status not in (JUDGE, FAILED, SKIPPED):
                groups.setdefault(first.step, []).append((outcome, plan))
        for step, members in groups.items():
            start = window_start(steps, step, 0)
            originals = [verdict.specs[0], *(plan.specs[0] for _, plan in members)]
            reruns = self.rerunner(case.nodeid, originals, TraceWindow(start, step), 0)
            for position, (outcome, plan) in enumerate(members, start=1):
                pair = [reruns[0], reruns[position]] if len(reruns) > position else reruns[:1]
                outcome.drift_op = locate(pair, step, start, plan.variant)
