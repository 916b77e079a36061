"""Progress on long work -- a sweep's runs, a test's replicas, localisation reruns -- as pytest
shows it: rewritten in place on a terminal, one line per step of progress in a CI log (at most
one per 10% of the work or per 30 s), nothing under ``-q -q``.

:class:`Progress` decides *what* to print from events and a clock, so every rule is unit-tested
with a fake clock; :class:`LiveProgress` writes those decisions through pytest's terminal
reporter, with output capture suspended (the work happens inside a test, whose output pytest
otherwise captures).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repro_check.orchestration.investigation import TraceWindow
    from repro_check.orchestration.replicas import ReplicaSpec

#: Work shorter than this shows no progress at all (a fast test stays one character in the log),
#: on a terminal and in a log. A sweep is long work by nature: it speaks sooner.
REPLICA_DELAY_S = {"terminal": 5.0, "log": 30.0}
SWEEP_DELAY_S = {"terminal": 1.0, "log": 10.0}


@dataclass(frozen=True)
class Policy:
    """How often to speak. ``in_place``: a terminal, where one line is rewritten."""

    in_place: bool
    silent: bool = False
    delay_s: float = 0.0  # say nothing until the work has run this long
    refresh_s: float = 1.0  # terminal: at most one rewrite per refresh_s
    every_s: float = 30.0  # log: a new line once this much time has passed ...
    every_fraction: float = 0.1  # ... or this much more of the work is done


def policy_for(
    isatty: bool, verbosity: int, delays: Mapping[str, float] = REPLICA_DELAY_S
) -> Policy:
    """The policy for a terminal or a log (CI), at pytest's verbosity (``-q -q`` is -2)."""
    delay_s = delays["terminal" if isatty else "log"]
    return Policy(in_place=isatty, silent=verbosity <= -2, delay_s=delay_s)


@dataclass(frozen=True)
class Emit:
    """One thing to print: a rewrite of the progress line, or a new line of the log."""

    text: str
    in_place: bool
    final: bool = False


def duration(seconds: float) -> str:
    """``45s``, ``3m12s``, ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """The state of one piece of long work and the decision of what to print about it.

    ``done`` may start above zero (a resumed sweep): those count as done but not towards the
    rate that estimates the time left. ``estimate``: say how long is left (a sweep's runs are
    alike; a test's replicas are not -- a replica process runs every test of the session).
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        policy: Policy,
        clock: Callable[[], float] = time.monotonic,
        done: int = 0,
        estimate: bool = True,
    ) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.policy, self.clock, self.estimate = policy, clock, estimate
        self.done = self.resumed = done
        self.failed = 0
        self.note_text = ""
        self.started = clock()
        self.shown = False
        self._last_at = -math.inf
        self._last_done = done
        self._last_note = ""

    # --- events
    def advance(self, count: int = 1, failed: int = 0) -> Emit | None:
        self.done = min(self.total, self.done + count)
        self.failed += failed
        return self.tick()

    def note(self, text: str) -> Emit | None:
        """A phase of the work that is worth naming (``tracing step 3 in ...``)."""
        self.note_text = text
        return self.tick()

    def tick(self) -> Emit | None:
        """Called while waiting: speaks only when the policy says it is time."""
        now = self.clock()
        policy = self.policy
        if policy.silent or now - self.started < policy.delay_s:
            return None
        new_note = self.note_text != self._last_note
        if self.done == self.total and not new_note:
            return None  # finish() says it, with the total time
        if policy.in_place:
            due = new_note or now - self._last_at >= policy.refresh_s
        else:
            step = max(1, math.ceil(policy.every_fraction * self.total))
            due = (
                new_note
                or self.done - self._last_done >= step
                or now - self._last_at >= policy.every_s
            )
        if not due:
            return None
        return self._emit(now)

    def finish(self) -> Emit | None:
        """The closing line -- only when something was shown (fast work stays silent)."""
        if not self.shown or self.policy.silent:
            return None
        now = self.clock()
        failed = f", {self.failed} failed" if self.failed else ""
        text = (
            f"{self.label}: {self.done}/{self.total} {self.unit} done{failed} "
            f"in {duration(now - self.started)}"
        )
        return Emit(text, self.policy.in_place, final=True)

    # --- text
    def text(self, now: float) -> str:
        elapsed = now - self.started
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit} done"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{duration(elapsed)} elapsed")
        fresh = self.done - self.resumed
        if self.estimate and 0 < fresh and self.done < self.total and elapsed > 0:
            parts.append(f"about {duration((self.total - self.done) * elapsed / fresh)} left")
        text = ", ".join(parts)
        return f"{text} -- {self.note_text}" if self.note_text else text

    def _emit(self, now: float) -> Emit:
        self.shown = True
        self._last_at, self._last_done, self._last_note = now, self.done, self.note_text
        return Emit(self.text(now), self.policy.in_place)


def rerun_note(
    originals: Sequence[ReplicaSpec], window: TraceWindow | None, attempt: int, attempts: int
) -> str:
    """What an investigation rerun is doing, in words."""
    replicas = " and ".join(str(spec.index) for spec in originals)
    if window is None:
        return f"control rerun of replica {replicas} with the same process settings..."
    where = (
        f"steps up to {window.stop_at}" if window.start_after is None else f"step {window.stop_at}"
    )
    which = "replica" if len(originals) == 1 else "replicas"
    return (
        f"tracing {where} in reruns of {which} {replicas} (attempt {attempt + 1} of {attempts})..."
    )


class LiveProgress:
    """A :class:`Progress` wired to pytest's terminal reporter (duck-typed: ``ensure_newline``,
    ``rewrite``, ``write``) and capture manager (``global_and_fixture_disabled``). ``resume``
    gives pytest its line back after the last word (it writes the test's outcome there)."""

    def __init__(
        self,
        progress: Progress,
        reporter: Any,
        capture: Any = None,
        resume: Callable[[], None] | None = None,
    ) -> None:
        self.progress = progress
        self.reporter = reporter
        self.capture = capture
        self.resume = resume
        self._line_open = False

    def advance(self, count: int = 1, failed: int = 0) -> None:
        self._write(self.progress.advance(count, failed))

    def note(self, text: str) -> None:
        self._write(self.progress.note(text))

    def tick(self) -> None:
        self._write(self.progress.tick())

    def finish(self) -> None:
        self._write(self.progress.finish())
        if self._line_open and self.resume is not None:
            with self._uncaptured():
                self.resume()
        self._line_open = False

    @contextlib.contextmanager
    def _uncaptured(self) -> Iterator[None]:
        disabled = getattr(self.capture, "global_and_fixture_disabled", None)
        with disabled() if disabled is not None else contextlib.nullcontext():
            yield

    def _write(self, emit: Emit | None) -> None:
        if emit is None or self.reporter is None:
            return
        with self._uncaptured():
            if not self._line_open:
                # Leave the line pytest is writing (``path/test_x.py ..``); ours stays open
                # until the next write, or ``resume``.
                self.reporter.ensure_newline()
            if emit.in_place:
                width = getattr(getattr(self.reporter, "_tw", None), "fullwidth", 120)
                text = emit.text if len(emit.text) < width else emit.text[: width - 4] + "..."
                self.reporter.rewrite(text, erase=True)
            else:
                self.reporter.write(("\n" if self._line_open else "") + emit.text, flush=True)
            self._line_open = True
