"""Resume equivalence: does checkpoint-and-restore reproduce the run that never stopped?

A test marked ``resume_at=k`` runs *straight* (the harness notes its state at
``repro.checkpoint(k)``), then *stops* after step k with a checkpoint, then *resumes* from that
checkpoint in a fresh process (:func:`resume_runs` plans the three). :func:`judge_resume` decides
from their results alone: every recorded step after k must match the straight run bit for bit.

On a mismatch it says what was not restored. First the state right after ``repro.restore()``
is compared with the straight run's state at step k, key by key (optimizer moments, scheduler
counters, RNG states, the sampler position -- whatever the test passed), and the first key that
differs is named, with why (the checkpoint does not carry it; it was saved but never given to
``restore``). When that state matches but step k+1 still differs, the step consumed something
the checkpoint did not carry: the data it read (the batch of an earlier step: the iterator was
restarted), a global RNG or generator it drew from differently, or a counter outside the state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_check.core.compare import compare_runs
from repro_check.core.record import SCALAR_PREFIX, RunRecord
from repro_check.orchestration.replicas import ReplicaResult, RunSpec

EQUIVALENT = "equivalent"
MISMATCH = "mismatch"  # the resumed run differs from the straight run
UNSUPPORTED = "unsupported"  # the test cannot be checked as it is written: a failure, with why
ERROR = "error"  # one of the three runs raised
SKIPPED = "skipped"
FAILING = frozenset({MISMATCH, UNSUPPORTED, ERROR})

STRAIGHT, STOP, RESUME = "straight", "stop", "resume"
RNG_WORDS = {
    "rng.python": "Python's global `random` state",
    "rng.python_gauss": "Python's global `random` state (its cached gauss)",
    "rng.numpy": "numpy's global RNG state",
    "rng.numpy_gauss": "numpy's global RNG state (its cached gaussian)",
    "rng.torch": "torch's global CPU RNG state",
}
#: What each kind of state is called in a finding.
KIND_WORDS = {
    "optimizer": "the optimizer",
    "scheduler": "the LR scheduler",
    "generator": "the torch.Generator",
    "mapping": "the sampler/iterator position",
    "module": "the model",
    "stateful": "the stateful object",
    "tensor": "the tensor",
}
CHECKPOINT_ADVICE = "pass it to repro.checkpoint(step, ...) as well as to repro.restore(...)"


def resume_runs(
    checks: Mapping[str, tuple[int, str]],
) -> tuple[list[RunSpec], list[RunSpec]]:
    """The runs of a batch of checks (test id -> (k, checkpoint path)): straight and stop in a
    first process, resume in a fresh one. Each run carries every test's own k and path."""

    def run(role: str) -> RunSpec:
        tests = {nodeid: {"at": at, "path": path} for nodeid, (at, path) in checks.items()}
        return RunSpec(
            f"resume-{role}",
            label=f"resume check ({role})",
            resume={"role": role, "tests": tests},
        )

    return [run(STRAIGHT), run(STOP)], [run(RESUME)]


def plan_for(resume: Mapping[str, Any] | None, nodeid: str) -> dict[str, Any] | None:
    """One test's part in a batch's run (``{"role", "at", "path"}``), or None."""
    if not resume:
        return None
    entry = (resume.get("tests") or {}).get(nodeid)
    return {"role": resume["role"], **entry} if entry else None


@dataclass
class ResumeFinding:
    """What the check found: ``kind`` is ``not-restored`` (state right after restore differs
    from the straight run's at k), ``not-carried`` (that state matched, step k+1 did not),
    ``structural`` (the resumed run recorded other steps or keys)."""

    kind: str
    message: str
    step: int | None = None
    key: str | None = None
    advice: str = ""
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "step": self.step,
            "key": self.key,
            "advice": self.advice,
            "details": self.details,
        }


@dataclass
class ResumeVerdict:
    at: int
    status: str
    steps_compared: int = 0
    finding: ResumeFinding | None = None
    error: str = ""
    checkpoint: str = ""  # the manifest of the checkpoint the resumed run restored

    @property
    def failed(self) -> bool:
        return self.status in FAILING

    def headline(self) -> str:
        """The summary table's cell."""
        if self.status == EQUIVALENT:
            return f"resume at {self.at}: equivalent"
        if self.finding is not None:
            where = f"step {self.finding.step}: " if self.finding.step is not None else ""
            return f"resume at {self.at}: {self.finding.kind} {where}{self.finding.key or ''}"
        return f"resume at {self.at}: {self.status}"

    def lines(self, head: str) -> list[str]:
        """The failure message."""
        title = {
            MISMATCH: f"{head} does not resume equivalently from a checkpoint after step {self.at}",
            UNSUPPORTED: f"{head}: resume equivalence (resume_at={self.at}) cannot be checked",
            ERROR: f"{head}: a run of the resume check (resume_at={self.at}) raised an error",
        }.get(self.status, f"{head}: resume check {self.status}")
        lines = [title]
        if self.finding is not None:
            lines.append("  " + self.finding.message)
            lines += ["    " + line for line in self.finding.details]
            if self.finding.advice:
                lines.append("  fix: " + self.finding.advice)
        if self.error:
            lines += ["  | " + line for line in self.error.rstrip().splitlines()[-25:]]
        if self.checkpoint:
            lines.append(f"  checkpoint restored: {self.checkpoint}")
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "status": self.status,
            "steps_compared": self.steps_compared,
            "finding": self.finding.to_json() if self.finding else None,
            "error": self.error,
            "checkpoint": self.checkpoint,
        }


# ------------------------------------------------------------------------------ judging


def judge_resume(
    at: int, straight: ReplicaResult, stop: ReplicaResult, resumed: ReplicaResult
) -> ResumeVerdict:
    """The verdict of one resume check, from its three runs' results."""
    # In order: a run that stopped at step k cannot be resumed from when the first two failed.
    for role, result in ((STRAIGHT, straight), (STOP, stop), (RESUME, resumed)):
        problem = _unsupported(at, straight, stop) if role == RESUME else None
        if problem is not None:
            return ResumeVerdict(at, UNSUPPORTED, finding=problem)
        if result.outcome in ("failed", "crashed"):
            return ResumeVerdict(at, ERROR, error=f"the {role} run: {result.error}")
        if result.outcome == "skipped":
            return ResumeVerdict(at, SKIPPED, error=result.error)
    problem = _not_resumed(resumed)
    if problem is not None:
        return ResumeVerdict(at, UNSUPPORTED, finding=problem)
    s_info, r_info = _info(straight), _info(resumed)
    assert straight.record is not None and resumed.record is not None and stop.record is not None
    checkpoint = str(_info(stop).get("checkpoint", ""))
    before = _upto(straight.record, at)
    stopped = compare_runs(before, _upto(stop.record, at))
    if not stopped.identical:
        return ResumeVerdict(
            at,
            MISMATCH,
            finding=ResumeFinding(
                "not-reproducible",
                f"the run that stopped at step {at} already differs from the straight run before "
                f"it stopped ({_where(stopped)}): the test is not reproducible, so resuming "
                f"cannot be judged; fix the divergence first (pytest --repro shows it)",
            ),
            checkpoint=checkpoint,
        )
    after = _after(straight.record, at)
    comparison = compare_runs(after, resumed.record)
    verdict = ResumeVerdict(at, EQUIVALENT, steps_compared=len(after.steps), checkpoint=checkpoint)
    if comparison.identical:
        # The recorded steps agree; the restored state must too, or a longer run would part.
        finding = state_finding(at, s_info, r_info)
        if finding is not None:
            verdict.status = MISMATCH
            finding.details.append(
                f"the {len(after.steps)} recorded steps after {at} still match, but a run "
                f"longer than this test would part once {finding.key} is used"
            )
            verdict.finding = finding
        return verdict
    verdict.status = MISMATCH
    if comparison.structural is not None:
        s = comparison.structural
        verdict.finding = ResumeFinding(
            "structural",
            f"the resumed run recorded other steps or keys than the straight run after step "
            f"{at}: {s.message}",
            s.step,
            s.key,
            "start the loop at the step repro.restore() returns: "
            "for step in range(repro.restore(...), repro.steps)",
        )
        return verdict
    verdict.finding = state_finding(at, s_info, r_info) or step_finding(
        at, comparison.divergence.step, comparison.divergence.keys_differing, straight, resumed
    )
    return verdict


def _info(result: ReplicaResult) -> dict[str, Any]:
    return dict(result.run_info.get("resume") or {})


def _upto(record: RunRecord, at: int) -> RunRecord:
    return RunRecord([s for s in record.steps if s.step <= at], spill_path=record.spill_path)


def _after(record: RunRecord, at: int) -> RunRecord:
    return RunRecord([s for s in record.steps if s.step > at], spill_path=record.spill_path)


def _where(comparison: Any) -> str:
    if comparison.structural is not None:
        return comparison.structural.message
    d = comparison.divergence
    return f"step {d.step}, {d.key}"


def _unsupported(at: int, straight: ReplicaResult, stop: ReplicaResult) -> ResumeFinding | None:
    """A check the test does not allow, said plainly (never a pass)."""
    if straight.record is None or not straight.record.steps:
        return ResumeFinding("not-recorded", "the straight run recorded nothing (repro.record)")
    if "state_at" not in _info(straight):
        recorded = [s.step for s in straight.record.steps]
        return ResumeFinding(
            "no-checkpoint",
            f"the test never called repro.checkpoint({at}, ...) (recorded steps: "
            f"{_steps(recorded)}), so there is nothing to stop at",
            advice="call repro.checkpoint(step, model=..., optimizer=..., ...) after every "
            "training step, and start the loop at repro.restore(...)",
        )
    if not _after(straight.record, at).steps:
        return ResumeFinding(
            "nothing-after",
            f"the straight run recorded no step after {at}, so a resumed run has nothing to "
            f"match; choose resume_at below the last step",
        )
    if stop.record is None or "checkpoint" not in _info(stop):
        return ResumeFinding("no-checkpoint", f"the stop run wrote no checkpoint at step {at}")
    return None


def _not_resumed(resumed: ReplicaResult) -> ResumeFinding | None:
    info = _info(resumed)
    if "restored_state" not in info:
        return ResumeFinding(
            "no-restore",
            "the resumed run never called repro.restore(...), so it started from scratch",
            advice="start the loop at the step it returns: "
            "for step in range(repro.restore(model=model, optimizer=opt, ...), repro.steps)",
        )
    if resumed.record is None or not resumed.record.steps:
        return ResumeFinding("not-recorded", "the resumed run recorded nothing after restoring")
    return None


def _steps(steps: Sequence[int]) -> str:
    return ", ".join(map(str, steps[:8])) + (", ..." if len(steps) > 8 else "")


# ------------------------------------------------------------------------------ state


def _name_of(key: str) -> str:
    return "rng" if key.startswith("rng.") else key.split(".", 1)[0]


def describe_key(key: str, kinds: Mapping[str, str]) -> str:
    if key in RNG_WORDS:
        return RNG_WORDS[key]
    if key.startswith("rng.cuda."):
        return f"the CUDA RNG state of device {key.rsplit('.', 1)[1]}"
    name = _name_of(key)
    kind = kinds.get(name, "")
    if kind == "optimizer" and ".state." in key:
        return f"the optimizer's moments ({key})"
    if kind == "generator":
        return f"the torch.Generator {name} (its shuffling and DataLoader worker base seeds)"
    words = KIND_WORDS.get(kind)
    return f"{words} {name} ({key})" if words else key


def _value(probe: Sequence[Any] | None) -> str:
    if probe is None:
        return "absent"
    digest, dtype, shape, preview = probe
    if preview is not None and len(preview) <= 4:
        shown = preview[0] if len(preview) == 1 and not shape else preview
        return f"{shown}"
    return f"{dtype} {tuple(shape)} (digest {str(digest)[:12]})"


def state_finding(
    at: int, straight: Mapping[str, Any], resumed: Mapping[str, Any]
) -> ResumeFinding | None:
    """The first key whose state right after restore differs from the straight run's at k."""
    before: Mapping[str, Any] = straight.get("state_at") or {}
    after: Mapping[str, Any] = resumed.get("restored_state") or {}
    restore = resumed.get("restore") or {}
    kinds = {**straight.get("checkpoint_kinds", {}), **straight.get("kinds", {})}
    kinds.update(resumed.get("kinds", {}))
    differing = [
        key
        for key, probe in before.items()
        if key not in after or list(after[key][:3]) != list(probe[:3])
    ]
    if not differing:
        return None
    key = differing[0]
    name = _name_of(key)
    what = describe_key(key, kinds)
    message = (
        f"not restored: {what} -- right after repro.restore() {key} is "
        f"{_value(after.get(key))}, but the straight run had {_value(before[key])} at step {at}"
    )
    details = []
    others = sorted({_name_of(k) for k in differing[1:]} - {name})
    if others:
        details.append(f"also differing right after restore: {', '.join(others)}")
    carried = set(straight.get("checkpoint_names", []))
    if name == "rng":
        if restore.get("rng"):
            advice = (
                "the checkpoint carries the global RNGs, but they differ after restore: "
                "something drew from them between repro.restore() and the first step, or the "
                "checkpoint was taken at another point than step "
                f"{at}'s end"
            )
        else:
            advice = (
                "the checkpoint does not carry the global RNG states: pass "
                "rng=repro.rng_state() to repro.checkpoint(); repro.restore() then restores "
                "random, numpy, torch (and CUDA) exactly"
            )
    elif name in restore.get("missing", []) or name not in carried:
        advice = f"the checkpoint does not carry {name}: {CHECKPOINT_ADVICE}"
    elif key not in after or name in restore.get("not_given", []):
        advice = (
            f"the checkpoint carries {name}, but repro.restore() was not given it, so it was "
            f"never restored: pass {name}=... to repro.restore()"
        )
    else:
        advice = (
            f"the checkpoint carries {name}, yet what it restored differs from the straight "
            f"run's state at step {at}: was it saved before step {at} finished, or restored into "
            f"another object than the one the loop uses?"
        )
    return ResumeFinding("not-restored", message, at, key, advice, details)


# ------------------------------------------------------------------------------ step k+1


def _input_keys(keys: Sequence[str], state_names: set[str]) -> list[str]:
    """Recorded keys that are not part of the restored state: the data a step consumed."""
    return [
        k
        for k in keys
        if not k.startswith(SCALAR_PREFIX)
        and not k.startswith("rng.")
        and _name_of(k) not in state_names
    ]


def step_finding(
    at: int,
    step: int,
    differing: Sequence[str],
    straight: ReplicaResult,
    resumed: ReplicaResult,
) -> ResumeFinding:
    """The state matched right after restore, yet step ``step`` differs: name what the step
    consumed that the checkpoint did not carry."""
    s_info, r_info = _info(straight), _info(resumed)
    names = set(s_info.get("kinds", {})) | set(s_info.get("checkpoint_names", []))
    kinds = {**s_info.get("checkpoint_kinds", {}), **s_info.get("kinds", {})}
    head = f"the state matched right after restore, but step {step} differs ({differing[0]})"
    for key in _input_keys(differing, names):
        earlier = _same_value_at(straight.record, resumed.record, key, step)
        if earlier is not None:
            return ResumeFinding(
                "not-carried",
                f"{head}: the step consumed {key} = what the straight run consumed at step "
                f"{earlier}: the data iterator was restarted (from the start of its epoch) "
                f"instead of continuing from its position",
                step,
                key,
                "carry the sampler/iterator position in the checkpoint (e.g. data={'consumed': "
                "n, 'epoch_rng': generator state at epoch start}) and skip the consumed batches "
                "after restore",
            )
        return ResumeFinding(
            "not-carried",
            f"{head}: the step consumed different {key}: the data iterator's position was not "
            f"carried by the checkpoint",
            step,
            key,
            "carry the sampler/iterator position (and the generator it shuffles with) in "
            "repro.checkpoint, and continue the iterator from there after restore",
        )
    drawn = _drawn_differently(s_info, r_info)
    if drawn:
        key = drawn[0]
        what = describe_key(key, kinds)
        if key.startswith("rng."):
            message = (
                f"{head}: during that step {what} was drawn differently although it matched "
                f"right after restore: the step drew from a global RNG something the checkpoint "
                f"did not carry -- e.g. a DataLoader created or restarted after the restore "
                f"(without generator= it draws its shuffling and worker base seed from torch's "
                f"global RNG), or workers whose augmentations use the global numpy RNG"
            )
            advice = (
                "give the DataLoader a generator (repro.dataloader_kwargs()) and carry it, "
                "with the iterator position, in repro.checkpoint"
            )
        else:
            message = (
                f"{head}: during that step {what} advanced differently although it matched "
                f"right after restore: the step re-created what draws from it (a new DataLoader "
                f"iterator draws the epoch's shuffling and worker seeds from its generator)"
            )
            advice = "carry the iterator position and continue it after restore"
        return ResumeFinding("not-carried", message, step, key, advice)
    return ResumeFinding(
        "not-carried",
        f"{head}: everything the checkpoint and repro.restore() hold matched, so the step "
        f"consumed something outside them -- the data iterator's position, a global RNG drawn "
        f"in a DataLoader worker, or a Python-side counter",
        step,
        differing[0],
        "record what the step consumes (repro.record(step, ..., batch=x)) to see it differ, "
        "and carry it in repro.checkpoint",
    )


def _drawn_differently(straight: Mapping[str, Any], resumed: Mapping[str, Any]) -> list[str]:
    a = (straight.get("after_step") or {}).get("state") or {}
    b = (resumed.get("after_step") or {}).get("state") or {}
    return [k for k, probe in a.items() if k in b and list(b[k][:3]) != list(probe[:3])]


def _same_value_at(
    straight: RunRecord | None, resumed: RunRecord | None, key: str, step: int
) -> int | None:
    """The earlier step at which the straight run recorded the value the resumed run recorded
    for ``key`` at ``step`` (a restarted iterator serves old batches again)."""
    if straight is None or resumed is None:
        return None
    target = next((s.entries.get(key) for s in resumed.steps if s.step == step), None)
    if target is None:
        return None
    for s in straight.steps:
        entry = s.entries.get(key)
        if s.step < step and entry is not None and entry.fingerprint.same_bits(target.fingerprint):
            return s.step
    return None
