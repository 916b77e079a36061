"""One marked test as the orchestration layer sees it, and the session settings around it.

The pytest front end turns an item and its ``@pytest.mark.repro(...)`` into a :class:`Case`
(``parse_marker`` validates the marker strictly), so that every later decision works on plain
data.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from repro_check.orchestration.allowance import Allowance, AllowanceError, from_mapping

DEFAULT_STEPS = 10
MARKER_KEYWORDS = ("steps", "atol", "rtol", "allow", "timeout", "variants", "resume_at")


class MarkerError(ValueError):
    """A ``@pytest.mark.repro(...)`` that cannot be used; the message names the test."""


@dataclass(frozen=True)
class MarkerSettings:
    steps: int = DEFAULT_STEPS
    atol: float | None = None
    rtol: float | None = None
    allow: tuple[Allowance, ...] = ()
    #: Seconds a replica may spend in the test (None: the session's --repro-timeout; 0: none).
    timeout: float | None = None
    #: Backend variant names (orchestration.variants), validated and spelled canonically.
    variants: tuple[str, ...] = ()
    #: Check resume equivalence from a checkpoint after this step (orchestration.resume).
    resume_at: int | None = None


def parse_resume_at(value: Any, where: str) -> int | None:
    """``resume_at=k``: an integer step >= 0 (None: no resume check)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MarkerError(
            f"{where} got {value!r}; resume_at must be the integer step after which the run "
            f"stops and resumes (>= 0, below the last recorded step)"
        )
    return value


def parse_timeout(value: Any, where: str) -> float:
    """A time limit in seconds: a finite number >= 0 (0: no limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise MarkerError(f"{where} got {value!r}; timeout must be a number of seconds >= 0")
    if value < 0:
        raise MarkerError(f"{where} got {value!r}; timeout must be >= 0 (0: no limit)")
    return float(value)


def _tolerance(value: Any, name: str, nodeid: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MarkerError(
            f"{nodeid}: @pytest.mark.repro({name}={value!r}): {name} must be a number >= 0"
        )
    if not math.isfinite(value) or value < 0:
        raise MarkerError(f"{nodeid}: @pytest.mark.repro({name}={value!r}): must be >= 0")
    return float(value)


def parse_steps(value: Any, nodeid: str, what: str = "@pytest.mark.repro(steps=...)") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MarkerError(f"{nodeid}: {what} got {value!r}; steps must be an integer >= 1")
    return value


def parse_marker(
    nodeid: str, args: Sequence[Any], kwargs: Mapping[str, Any], *, extra: Sequence[str] = ()
) -> MarkerSettings:
    """Validate a marker's arguments; ``extra`` names keywords that other features read."""
    if args:
        raise MarkerError(
            f"{nodeid}: @pytest.mark.repro takes keyword arguments only "
            f"(got positional {list(args)!r}); write e.g. @pytest.mark.repro(steps=20)"
        )
    known = (*MARKER_KEYWORDS, *extra)
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise MarkerError(
            f"{nodeid}: @pytest.mark.repro got unknown keyword(s) {', '.join(unknown)}; "
            f"it accepts {', '.join(known)}"
        )
    steps = parse_steps(kwargs.get("steps", DEFAULT_STEPS), nodeid)
    tolerances = {
        name: _tolerance(kwargs[name], name, nodeid) for name in ("atol", "rtol") if name in kwargs
    }
    try:
        allow = tuple(from_mapping(kwargs.get("allow"), f"{nodeid}: @pytest.mark.repro(allow=...)"))
    except AllowanceError as exc:
        raise MarkerError(str(exc)) from None
    timeout = (
        parse_timeout(kwargs["timeout"], f"{nodeid}: @pytest.mark.repro(timeout=...)")
        if kwargs.get("timeout") is not None
        else None
    )
    variants = _variant_names(kwargs.get("variants"), nodeid)
    where = f"{nodeid}: @pytest.mark.repro(resume_at=...)"
    resume_at = parse_resume_at(kwargs.get("resume_at"), where)
    return MarkerSettings(
        steps,
        tolerances.get("atol"),
        tolerances.get("rtol"),
        allow,
        timeout,
        variants,
        resume_at=resume_at,
    )


def _variant_names(value: Any, nodeid: str) -> tuple[str, ...]:
    from repro_check.orchestration.variants import VariantError, parse_variants

    if value is None:
        return ()
    where = f"{nodeid}: @pytest.mark.repro(variants=...)"
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise MarkerError(
            f"{where} got {value!r}; give a list of variant names, e.g. "
            f"variants=['threads=1', 'isa=default', 'float64']"
        )
    try:
        return tuple(v.name for v in parse_variants(value, where))
    except VariantError as exc:
        raise MarkerError(str(exc)) from None


@dataclass(frozen=True)
class Case:
    """One marked test: what it runs, how it is judged, how a user reruns it."""

    nodeid: str
    target: str  # the test as a user names it from the invocation folder (path::name)
    steps: int = DEFAULT_STEPS
    atol: float = 0.0
    rtol: float = 0.0
    allowed: tuple[Allowance, ...] = ()
    resume_at: int | None = None  # check resume equivalence after this step (None: do not)


@dataclass(frozen=True)
class SessionSettings:
    """The options that decide what a case computes and where its baseline lives."""

    base_seed: int
    runs: int = 2
    deterministic: bool = False
    steps_override: int | None = None
    inprocess: bool = False
    baseline_dir: str = ""
    extra: tuple[str, ...] = field(default=())

    def case_options(self) -> list[str]:
        parts = [f"--repro-seed={self.base_seed}"]
        if self.deterministic:
            parts.append("--repro-deterministic")
        if self.steps_override is not None:
            parts.append(f"--repro-steps={self.steps_override}")
        if self.inprocess:
            parts.append("--repro-mode=inprocess")
        if self.baseline_dir:
            parts.append(f"--repro-baseline-dir={self.baseline_dir}")
        return [*parts, *self.extra]

    def rerun_command(self, case: Case) -> str:
        seed, *others = self.case_options()
        parts = ["pytest", "--repro", seed, f"--repro-runs={self.runs}", *others]
        return " ".join([*parts, shlex.quote(case.target)])

    def accept_command(self, case: Case) -> str:
        parts = ["pytest", "--repro", "--repro-update", *self.case_options()]
        return " ".join([*parts, shlex.quote(case.target)])
