"""From replica results to a verdict: judge, investigate, allow, gate, save checkpoints.

:class:`VerdictPipeline` is the whole decision for one marked test. The pytest front end only
collects the replicas' results (from worker processes or in-process runs) and hands them here;
every step is a function of typed records, so the pipeline runs in unit tests with fake results
and a fake rerunner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repro_check.core.seeding import root_seed_for_test
from repro_check.orchestration.case import Case, SessionSettings
from repro_check.orchestration.gate import BaselineGate
from repro_check.orchestration.investigation import (
    Rerunner,
    control_rerun,
    investigate,
    localize_from_replicas,
    parameter_order_differs,
    parameter_order_finding,
    should_localize,
)
from repro_check.orchestration.replicas import ReplicaResult, ReplicaSpec
from repro_check.orchestration.variant_stage import ResultsOf, VariantStage
from repro_check.orchestration.verdict import (
    ALLOWED,
    DIVERGED,
    IDENTICAL,
    RESUME_MISMATCH,
    SINGLE,
    STRUCTURAL,
    TestVerdict,
    judge,
)


@dataclass
class VerdictPipeline:
    settings: SessionSettings
    specs: Sequence[ReplicaSpec]
    #: Reruns replicas in fresh processes for the control and localisation (None: never rerun).
    rerunner: Rerunner | None = None
    gate: BaselineGate | None = None  # None: --repro-baseline=off
    localize_mode: str = "auto"
    #: Replicas ran in processes of their own (a control rerun can then speak of process state).
    subprocess: bool = True
    checkpoint_dir: Path | None = None  # save each replica's last step here (None: do not)
    #: The environment snapshot for the baseline when a replica sent none (in-process replicas).
    snapshot: Callable[[], dict[str, Any]] = dict
    #: Backend variants judged against the reference (None: no --repro-variants/marker).
    variants: VariantStage | None = None
    #: Report folder where each test's record is kept for ``repro-check compare`` (None: not).
    records_dir: Path | None = None
    #: Runs the three runs of a resume check (straight, stop, resume) for a case with
    #: ``resume_at`` (orchestration.resume); None: resume checks are not run.
    resumer: Callable[[Case], Sequence[ReplicaResult]] | None = None

    def decide(
        self,
        case: Case,
        results: Iterable[ReplicaResult],
        variant_results: ResultsOf | None = None,
    ) -> TestVerdict:
        seed = root_seed_for_test(self.settings.base_seed, case.nodeid)
        unsaved: list[str] = []  # checkpoints that could not be written, and why
        if self.checkpoint_dir is not None:
            results = self._saving_checkpoints(results, seed, unsaved)
        verdict = judge(case.nodeid, seed, self.settings.base_seed, list(self.specs), results)
        verdict.notes.extend(unsaved)
        verdict.rerun_command = self.settings.rerun_command(case)
        verdict.accept_command = self.settings.accept_command(case)
        verdict.allowed = case.allowed
        if verdict.status == DIVERGED and verdict.allowed:
            localize_from_replicas(verdict, self.specs)
        # In-process replicas are investigated too when an allowance must be checked: the reruns
        # are fresh processes either way.
        investigable = self.subprocess or bool(verdict.allowed)
        order_differs = _parameter_order_differs(verdict)
        if (
            verdict.status == DIVERGED
            and investigable
            and verdict.localization is None
            and self.rerunner is not None
        ):
            investigate(
                verdict,
                self.specs,
                self.rerunner,
                localize_ops=not order_differs
                and should_localize(self.localize_mode, verdict.duration, len(self.specs)),
                control_speaks=self.subprocess,
            )
        elif verdict.status == STRUCTURAL and self.subprocess and self.rerunner is not None:
            control_rerun(verdict, self.specs, self.rerunner)
        if order_differs:
            found = parameter_order_finding()
            verdict.diagnosis = f"{found} {verdict.diagnosis}".strip()
        if verdict.status == DIVERGED and verdict.allowed:
            apply_allowance(verdict, case.atol)
        passing = verdict.status in (IDENTICAL, SINGLE, ALLOWED)
        if passing and case.resume_at is not None and self.resumer is not None:
            from repro_check.orchestration.resume import judge_resume

            verdict.resume = judge_resume(case.resume_at, *self.resumer(case))
            if verdict.resume.failed:
                verdict.status = RESUME_MISMATCH
        if self.variants is not None and variant_results is not None:
            self.variants.stage(case, verdict, variant_results)
        # After the variants: a float64 variant's record goes into a baseline being written, so
        # that later tolerance checks use the float64 rule.
        if verdict.status in (IDENTICAL, SINGLE, ALLOWED) and self.gate is not None:
            reference = verdict.reference
            assert reference is not None
            self.gate.stage(case, verdict, reference.environment or self.snapshot())
        if self.records_dir is not None and verdict.reference is not None:
            from repro_check.orchestration.records import save_for_later

            environment = verdict.reference.environment or self.snapshot()
            save_for_later(self.records_dir, case, verdict, environment)
        if verdict.variants is not None:
            verdict.variants.fp64_record = None
        verdict.reference = verdict.other = None  # drop records: memory stays flat
        return verdict

    def _saving_checkpoints(
        self, results: Iterable[ReplicaResult], seed: int, unsaved: list[str]
    ) -> Iterator[ReplicaResult]:
        from repro_check.core.atomic import StoredFileError
        from repro_check.core.paths import UnsafePathError, is_no_space, no_space_message
        from repro_check.orchestration.checkpoints import save_last_step

        assert self.checkpoint_dir is not None
        for result in results:
            if result.record is not None and result.record.steps:
                spec = (
                    self.specs[result.replica].to_json() if result.replica < len(self.specs) else {}
                )
                try:
                    save_last_step(
                        self.checkpoint_dir,
                        result,
                        {"seed": seed, "base_seed": self.settings.base_seed, "replica_spec": spec},
                    )
                except (UnsafePathError, StoredFileError, OSError) as exc:
                    reason = (
                        no_space_message(
                            getattr(exc, "filename", None) or self.checkpoint_dir, "a checkpoint"
                        )
                        if is_no_space(exc)
                        else str(exc)
                    )
                    unsaved.append(f"replica {result.replica}'s checkpoint not saved: {reason}")
            yield result


def _parameter_order_differs(verdict: TestVerdict) -> bool:
    pair = (verdict.reference, verdict.other)
    if verdict.status not in (DIVERGED, STRUCTURAL) or any(
        r is None or r.record is None for r in pair
    ):
        return False
    return parameter_order_differs(pair[0].record, pair[1].record)  # type: ignore[union-attr]


def apply_allowance(verdict: TestVerdict, default_atol: float) -> None:
    """Pass a divergence localised to an allowed op when the replicas agree within the stated
    tolerance; otherwise say (in the notes) why the allowance did not apply."""
    from repro_check.core.compare import within_tolerance

    loc = verdict.localization
    op = loc.op if loc else ""
    matched = next((a for a in verdict.allowed if a.covers(op or "")), None)
    if loc is None or loc.kind != "nondeterministic-op" or matched is None:
        found = f"{loc.kind} {op or ''}".strip() if loc else "not localised"
        verdict.notes.append(
            f"allowed nondeterminism ({', '.join(a.op for a in verdict.allowed)}) does not "
            f"cover this divergence (localised: {found})"
        )
        return
    atol = matched.atol if matched.atol is not None else default_atol
    rtol = matched.rtol if matched.rtol is not None else 0.0
    reference, other = verdict.reference, verdict.other
    if reference is None or other is None or reference.record is None or other.record is None:
        return
    check = within_tolerance(reference.record, other.record, atol, rtol)
    if check.within:
        verdict.status = ALLOWED
        verdict.notes.append(f"allowed: {matched.op} ({matched.describe()}); {check.message}")
    else:
        verdict.notes.append(f"{matched.op} is allowed ({matched.describe()}), but {check.message}")
