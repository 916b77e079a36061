"""Declared outcomes of a run (``repro.record_outcome``): what a sensitivity report measures.

A sweep used to treat every scalar recorded at the last step as an outcome, so the training
loss of the last minibatch got a variance share and an expected-min curve. A test now says
which numbers are results, in which direction they improve, and -- for a proportion such as an
accuracy -- how many evaluation examples it was computed on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class OutcomeError(ValueError):
    """A ``record_outcome`` call that cannot be used; the message says which argument."""


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise OutcomeError(f"repro.record_outcome({name!r}, {value!r}): value must be a number")
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()  # a one-element tensor or numpy scalar
        except (ValueError, RuntimeError) as exc:
            raise OutcomeError(
                f"repro.record_outcome({name!r}, ...): value must be one number or a "
                f"one-element tensor ({exc})"
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise OutcomeError(
            f"repro.record_outcome({name!r}, ...): value must be a number, got "
            f"{type(value).__name__}"
        )
    return float(value)


def outcome_entry(
    name: str, value: Any, higher_is_better: bool | None, n_examples: int | None
) -> dict[str, Any]:
    """The validated ``run_info["outcomes"][name]`` entry."""
    if not isinstance(name, str) or not name.strip():
        raise OutcomeError(f"repro.record_outcome: name must be a non-empty string, got {name!r}")
    number = _as_float(name, value)
    if higher_is_better is not None and not isinstance(higher_is_better, bool):
        raise OutcomeError(
            f"repro.record_outcome({name!r}, ...): higher_is_better must be True or False, got "
            f"{higher_is_better!r}"
        )
    if n_examples is not None:
        if isinstance(n_examples, bool) or not isinstance(n_examples, int) or n_examples < 1:
            raise OutcomeError(
                f"repro.record_outcome({name!r}, ...): n_examples must be an integer >= 1 (the "
                f"evaluation set size), got {n_examples!r}"
            )
        if math.isfinite(number) and not 0.0 <= number <= 1.0:
            raise OutcomeError(
                f"repro.record_outcome({name!r}, {number!r}, n_examples={n_examples}): with "
                f"n_examples the outcome is a proportion and must be in [0, 1]"
            )
    return {"value": number, "higher_is_better": higher_is_better, "n_examples": n_examples}


def outcome_specs(
    rows: list[Mapping[str, Any]],
) -> tuple[dict[str, dict[str, dict[str, Any]]], list[str]]:
    """``{test: {name: {"higher_is_better", "n_examples"}}}`` from the declared outcomes of
    finished runs, and a message per outcome whose runs declare it differently (the first
    declaration is kept)."""
    specs: dict[str, dict[str, dict[str, Any]]] = {}
    problems: list[str] = []
    for row in rows:
        for name, entry in (row.get("outcomes") or {}).items():
            spec = {k: entry.get(k) for k in ("higher_is_better", "n_examples")}
            known = specs.setdefault(row["test"], {}).setdefault(name, spec)
            if known != spec:
                problem = (
                    f"{row['test']}: runs declare outcome {name!r} differently ({known} and "
                    f"{spec}); the first is used -- declare it the same way in every run"
                )
                if problem not in problems:
                    problems.append(problem)
    return specs, problems
