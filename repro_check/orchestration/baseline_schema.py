"""The baseline file format (schema ``repro-check/baseline``): field by field checks of a loaded
document, and the reader of version 1 files.

Every field the gate reads is checked here, so a hand-edited or damaged file (a string, null or
huge number where a number belongs, absurd nesting) fails with the field's name instead of a
traceback deep inside the comparison -- and ``--repro-update`` can then overwrite it.
"""

from __future__ import annotations

import math
from typing import Any

from repro_check.core.atomic import encode_float as number  # the project's one NaN/inf policy

STAT_NAMES = ("min", "max", "mean", "norm")
COUNT_NAMES = ("nan", "posinf", "neginf")
#: Bounds a hand-edited file must keep (deeper or larger means damage, not a baseline).
MAX_DEPTH = 32
MAX_SAMPLE = 4096
_V1_STATS = ("mean", "std", "min", "max", "l2")
_WORDS = ("nan", "inf", "-inf")


class SchemaError(Exception):
    """One field of a baseline that cannot be right; the message names it."""


_MISSING = object()


def _require(condition: bool, where: str, what: str, value: Any = _MISSING) -> None:
    """Raise ``'<field>' <what>[, not <value>]`` unless ``condition``."""
    if not condition:
        shown = "" if value is _MISSING else f", not {_show(value)}"
        raise SchemaError(f"'{where}' {what}{shown}")


def _show(value: Any) -> str:
    """A short, safe rendering of a bad value (bounded depth and length)."""
    import reprlib

    shown = reprlib.Repr()
    shown.maxlevel, shown.maxstring, shown.maxother, shown.maxlong = 2, 40, 40, 40
    return shown.repr(value)


def _is_int(x: Any, low: int = -(2**63), high: int = 2**63) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and low <= x < high


def _is_number(x: Any) -> bool:
    """A finite number a float can hold, or one of the words NaN/inf are stored as."""
    if isinstance(x, str):
        return x in _WORDS
    if isinstance(x, bool):
        return False
    if isinstance(x, int):
        return abs(x) < 2**1000
    return isinstance(x, float) and math.isfinite(x)


def validate(document: dict[str, Any]) -> None:
    """Check every field the gate reads; raise :class:`SchemaError` naming the first bad one."""
    for name in ("seed", "base_seed"):
        value = document.get(name)
        _require(value is None or _is_int(value, 0, 2**64), name, "must be an integer >= 0", value)
    for name in ("test_id", "created"):
        value = document.get(name)
        _require(value is None or isinstance(value, str), name, "must be a string", value)
    tolerances = document.get("tolerances", {})
    _require(isinstance(tolerances, dict), "tolerances", "must be an object", tolerances)
    for name, value in tolerances.items():
        _require(
            _is_number(value) and not isinstance(value, str) and value >= 0,
            f"tolerances.{name}",
            "must be a number >= 0",
            value,
        )
    _validate_environment(document.get("environment", {}))
    steps = document.get("steps")
    _require(isinstance(steps, list), "steps", "is not a list", steps)
    previous = None
    for position, step in enumerate(steps):
        where = f"steps[{position}]"
        _require(
            isinstance(step, dict) and isinstance(step.get("entries"), dict),
            where,
            "is not a {'step': int, 'entries': {...}} object",
        )
        number = step.get("step")
        _require(_is_int(number), f"{where}.step", "must be an integer", number)
        _require(
            previous is None or number > previous,
            f"{where}.step",
            f"must be above the step before it ({previous})",
            number,
        )
        previous = number
        for key, entry in step["entries"].items():
            _validate_entry(entry, f"{where}.entries.{key}", document["schema_version"])


def _validate_environment(env: Any) -> None:
    """Objects, lists, strings, bounded numbers; no deeper than :data:`MAX_DEPTH`."""
    _require(isinstance(env, dict), "environment", "is not an object", env)
    stack: list[tuple[Any, str, int]] = [(env, "environment", 0)]
    while stack:
        value, where, depth = stack.pop()
        _require(depth <= MAX_DEPTH, where, f"is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, f"{where}.{k}", depth + 1) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))
        elif isinstance(value, int) and not isinstance(value, bool):
            _require(abs(value) < 2**64, where, "is an integer too large to be a setting")
        elif isinstance(value, float):
            _require(math.isfinite(value), where, "is not a finite number", value)


def _validate_entry(entry: Any, where: str, version: int) -> None:
    _require(isinstance(entry, dict), where, "is not an object", entry)
    digest, dtype, shape = entry.get("digest"), entry.get("dtype"), entry.get("shape")
    _require(isinstance(digest, str), f"{where}.digest", "must be a string", digest)
    _require(
        isinstance(dtype, str) and 0 < len(dtype) <= 32,
        f"{where}.dtype",
        "must be a dtype name",
        dtype,
    )
    _require(
        isinstance(shape, list)
        and len(shape) <= 64
        and all(_is_int(n, 0) for n in shape)
        and math.prod(shape) < 2**63,
        f"{where}.shape",
        "must be a list of sizes >= 0",
        shape,
    )
    numel = math.prod(shape)
    if version < 2:
        _validate_v1_entry(entry, where, numel)
        return
    numel *= 2 if dtype.startswith("complex") else 1  # statistics see the real view
    for name in ("stats", "fp64"):
        if name in entry:
            _validate_stats(entry[name], f"{where}.{name}", numel)
    if "fp64" in entry:
        _require("stats" in entry, f"{where}.fp64", "needs 'stats' beside it")
        _require(
            entry["fp64"].get("sample_index") == entry["stats"].get("sample_index")
            and len(entry["fp64"]["sample"]) == len(entry["stats"]["sample"]),
            f"{where}.fp64",
            "must sample the same elements as 'stats'",
        )


def _validate_stats(stats: Any, where: str, numel: int) -> None:
    _require(isinstance(stats, dict), where, "must be an object", stats)
    for name in STAT_NAMES:
        value = stats.get(name)
        _require(_is_number(value), f"{where}.{name}", "must be a number", value)
    for name in COUNT_NAMES:  # absent: 0
        value = stats.get(name, 0)
        _require(_is_int(value, 0, numel + 1), f"{where}.{name}", f"must be 0..{numel}", value)
    sample = stats.get("sample")
    limit = min(numel, MAX_SAMPLE)
    _require(
        isinstance(sample, list) and len(sample) <= limit,
        f"{where}.sample",
        f"must be a list of at most {limit} numbers",
        sample,
    )
    bad = next((v for v in sample if not _is_number(v)), _MISSING)
    _require(bad is _MISSING, f"{where}.sample", "must hold numbers only", bad)
    index = stats.get("sample_index", list(range(len(sample))))
    _require(
        isinstance(index, list)
        and len(index) == len(sample)
        and all(_is_int(i, 0, max(numel, 1)) for i in index)
        and len(set(index)) == len(index),
        f"{where}.sample_index",
        f"must list {len(sample)} distinct element indices below {numel}",
        index,
    )


def _validate_v1_entry(entry: dict[str, Any], where: str, numel: int) -> None:
    values = entry.get("values")
    _require(
        values is None
        or (isinstance(values, list) and len(values) == numel and all(map(_is_number, values))),
        f"{where}.values",
        f"must list {numel} numbers",
        values,
    )
    stats = entry.get("stats")
    _require(
        stats is None
        or (
            isinstance(stats, dict)
            and set(stats) == set(_V1_STATS)
            and all(map(_is_number, stats.values()))
        ),
        f"{where}.stats",
        f"must have exactly the numbers {', '.join(_V1_STATS)}",
        stats,
    )
    nonfinite = entry.get("nonfinite", [0, 0])
    _require(
        isinstance(nonfinite, list)
        and len(nonfinite) == 2
        and all(_is_int(n, 0) for n in nonfinite),
        f"{where}.nonfinite",
        "must be [NaN count, inf count]",
        nonfinite,
    )


def upgrade_v1(document: dict[str, Any]) -> None:
    """Version 1 entries in the version 2 layout: small tensors' values become the sample and
    give every statistic; the statistics of eight steps keep their min/max/mean/norm, and their
    inf count is +inf and -inf together (key ``inf``); fingerprint-only entries stay so."""
    for step in document["steps"]:
        for entry in step["entries"].values():
            nan, inf = entry.pop("nonfinite", [0, 0])
            values, old = entry.pop("values", None), entry.pop("stats", None)
            if entry["dtype"].startswith("complex"):
                continue  # version 1 summarised magnitudes, version 2 the real view
            if values is not None:
                numbers = [float(v) for v in values]
                finite = [v for v in numbers if math.isfinite(v)]
                entry["stats"] = {
                    "min": number(min(finite, default=math.nan)),
                    "max": number(max(finite, default=math.nan)),
                    "mean": number(math.fsum(finite) / len(finite) if finite else math.nan),
                    "norm": number(math.sqrt(math.fsum(v * v for v in finite))),
                    "nan": sum(math.isnan(v) for v in numbers),
                    "posinf": sum(v == math.inf for v in numbers),
                    "neginf": sum(v == -math.inf for v in numbers),
                    "sample": values,
                }
            elif old is not None:
                entry["stats"] = {
                    **{name: old[name] for name in ("min", "max", "mean")},
                    "norm": old["l2"],
                    "nan": nan,
                    **({"posinf": 0, "neginf": 0} if inf == 0 else {"inf": inf}),
                    "sample": [],
                }
