"""Known nondeterminism a test declares, and whether a divergence is covered by it.

An allowance names an aten op, says why its nondeterminism is acceptable, and may bound it
(``atol``/``rtol``). It comes from the marker or the ini file, in a structured form::

    @pytest.mark.repro(allow={"aten::index_put": {"why": "scatter-add in the loss", "atol": 1e-4}})

or as sugar, one string parsed once and strictly: ``"scatter-add in the loss; atol=1e-4"``
(ini: ``aten::index_put: scatter-add in the loss; atol=1e-4``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

BOUND_NAMES = ("atol", "rtol")
_INI_LINE = re.compile(r"^(aten::[\w.]+)\s*:\s*(.*)$")
_ASSIGNMENT = re.compile(r"([A-Za-z_]+)\s*=\s*(\S+)")


class AllowanceError(ValueError):
    """An allowance that cannot be read; the message says which and how to write it."""


@dataclass(frozen=True)
class Allowance:
    op: str  # "aten::index_put" -- also covers aten::index_put_ and its overloads
    why: str
    atol: float | None = None
    rtol: float | None = None
    #: The rationale as the user wrote it (the sugar form), shown instead of a re-rendering.
    text: str = field(default="", compare=False)

    def covers(self, op: str) -> bool:
        def base(name: str) -> str:
            return name.split(".")[0].rstrip("_")

        return bool(op) and base(self.op) == base(op)

    def describe(self) -> str:
        if self.text:
            return self.text
        bounds = [f"{n}={getattr(self, n):g}" for n in BOUND_NAMES if getattr(self, n) is not None]
        return "; ".join([self.why, *bounds]) if bounds else self.why

    def to_json(self) -> dict[str, Any]:
        return {"op": self.op, "why": self.why, "atol": self.atol, "rtol": self.rtol}


def _bound(value: Any, name: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise AllowanceError(f"{where}: {name}={value!r} must be a number, e.g. {name}=1e-4")
    try:
        number = float(value)
    except ValueError:
        raise AllowanceError(
            f"{where}: {name}={value!r} must be a number, e.g. {name}=1e-4"
        ) from None
    if not math.isfinite(number) or number < 0:
        raise AllowanceError(f"{where}: {name}={value!r} must be a finite number >= 0")
    return number


def parse_rationale(op: str, text: str, where: str) -> Allowance:
    """``"why; bounded by atol=1e-4; rtol=0"``: the reason first, then parts that may state
    bounds (prose around them is kept as part of the reason). Every ``name=value`` after the
    first ``;`` must be a readable atol or rtol, so a typo never silently drops a bound."""
    why, *rest = [part.strip() for part in str(text).split(";")]
    bounds: dict[str, float] = {}
    prose = [why]
    for part in filter(None, rest):
        assignments = _ASSIGNMENT.findall(part)
        if not assignments:
            prose.append(part)
            continue
        for name, value in assignments:
            if name not in BOUND_NAMES:
                raise AllowanceError(
                    f"{where}: cannot read {name}={value} in the allowance of {op}; the bounds "
                    f"are atol and rtol, e.g. '<why>; atol=1e-4; rtol=1e-5', or use the mapping "
                    f"form {{'why': ..., 'atol': 1e-4}}"
                )
            bounds[name] = _bound(value.rstrip(".,"), name, where)
        words = _ASSIGNMENT.sub("", part).strip(" .,")
        if words and words not in ("bounded by", "within"):
            prose.append(words)
    reason = "; ".join(p for p in prose if p).rstrip(".")
    allowance = Allowance(
        op, reason, bounds.get("atol"), bounds.get("rtol"), text=str(text).strip()
    )
    return _checked(allowance, where)


def _checked(allowance: Allowance, where: str) -> Allowance:
    if not allowance.op.startswith("aten::") or allowance.op == "aten::":
        raise AllowanceError(
            f"{where}: {allowance.op!r} is not an aten op name; allowances name the op the "
            f"localisation reports, e.g. 'aten::index_put'"
        )
    if not allowance.why:
        raise AllowanceError(f"{where}: the allowance of {allowance.op} needs a reason ('why')")
    return allowance


def from_mapping(allow: Any, where: str) -> list[Allowance]:
    """The marker's ``allow=`` argument: {op: "why; atol=..."} or {op: {"why":, "atol":, ...}}."""
    if allow is None:
        return []
    if not isinstance(allow, Mapping):
        raise AllowanceError(
            f"{where}: allow= must be a mapping of op name to reason, e.g. "
            f"allow={{'aten::index_put': 'scatter-add; atol=1e-5'}} (got {type(allow).__name__})"
        )
    allowances = []
    for op, value in allow.items():
        op = str(op).strip()
        if isinstance(value, str):
            allowances.append(parse_rationale(op, value, where))
            continue
        if not isinstance(value, Mapping):
            raise AllowanceError(
                f"{where}: the allowance of {op} must be a reason string or a mapping "
                f"{{'why': ..., 'atol': ..., 'rtol': ...}} (got {type(value).__name__})"
            )
        unknown = sorted(set(map(str, value)) - {"why", *BOUND_NAMES})
        if unknown:
            raise AllowanceError(
                f"{where}: unknown field(s) {', '.join(unknown)} in the allowance of {op}; "
                f"expected why, atol, rtol"
            )
        bounds = {n: _bound(value[n], n, where) for n in BOUND_NAMES if value.get(n) is not None}
        allowances.append(
            _checked(Allowance(op, str(value.get("why", "")).strip(), **bounds), where)
        )
    return allowances


def from_ini_lines(lines: Iterable[str], where: str = "repro_allow") -> list[Allowance]:
    """``aten::op: why; atol=1e-5`` per line (the op's own ``::`` is not the separator)."""
    allowances = []
    for line in lines:
        line = str(line).strip()
        if not line:
            continue
        match = _INI_LINE.match(line)
        if match is None:
            raise AllowanceError(
                f"{where}: cannot read {line!r}; write one allowance per line as "
                f"'aten::op: why; atol=1e-5'"
            )
        allowances.append(parse_rationale(match.group(1), match.group(2), where))
    return allowances


def merge(ini: list[Allowance], marker: list[Allowance]) -> tuple[Allowance, ...]:
    """The marker's allowance of an op replaces the ini file's."""
    merged = {a.op: a for a in ini}
    merged.update((a.op, a) for a in marker)
    return tuple(merged.values())


def allowance_atol(allowances: Iterable[Allowance], default: float) -> float:
    """The largest absolute bound any allowance states (the default when none does)."""
    return max([default, *(a.atol for a in allowances if a.atol is not None)])
