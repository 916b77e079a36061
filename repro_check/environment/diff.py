"""Differences between two snapshots, relevant ones first, and their one-line rendering."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from repro_check.environment._common import VOLATILE_KEYS, jsonable, printable
from repro_check.environment.relevance import (
    is_relevant,
    not_captured,
    probe_blind,
    section_rank,
)


class _Unset:
    """Marks a field absent on one side of a diff."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "(unset)"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclasses.dataclass(frozen=True)
class EnvDifference:
    """One differing field: ``path`` like ``"env_vars.ATEN_CPU_CAPABILITY"``; UNSET when absent."""

    path: str
    before: Any
    after: Any
    relevant: bool

    def __str__(self) -> str:
        return format_line(self)


def _has_dicts(value: Any) -> bool:
    return isinstance(value, list) and any(isinstance(v, dict) for v in value)


def _walk(a: Any, b: Any, path: str, out: list[EnvDifference], blind: bool) -> None:
    if not_captured(a) or not_captured(b):
        return
    blind = blind or probe_blind(path, a) or probe_blind(path, b)
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            child = f"{path}.{key}" if path else key
            _walk(a.get(key, UNSET), b.get(key, UNSET), child, out, blind)
        return
    if isinstance(a, list) and isinstance(b, list) and (_has_dicts(a) or _has_dicts(b)):
        for i in range(max(len(a), len(b))):
            before = a[i] if i < len(a) else UNSET
            after = b[i] if i < len(b) else UNSET
            _walk(before, after, f"{path}[{i}]", out, blind)
        return
    if a != b or type(a) is not type(b):
        out.append(EnvDifference(path, a, b, not blind and is_relevant(path)))


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[EnvDifference]:
    """Fields that differ from ``a`` to ``b``: relevant ones first, then by section and path.

    Parts one side did not capture are not compared; below a probe that could not look on one
    side (no nvidia-ml-py, no threadpoolctl), differences are informational.
    """
    a = {k: v for k, v in jsonable(a).items() if k not in VOLATILE_KEYS and k != "schema"}
    b = {k: v for k, v in jsonable(b).items() if k not in VOLATILE_KEYS and k != "schema"}
    out: list[EnvDifference] = []
    _walk(a, b, "", out, False)
    out.sort(key=lambda d: (not d.relevant, section_rank(d.path), d.path))
    return out


def _shorten(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 20] + " ... " + text[-15:]


def _format_value(value: Any) -> str:
    if value is UNSET:
        return "(unset)"
    if isinstance(value, str):
        # Quoted when blank or padded; control characters are escaped for the whole line.
        return _shorten(value) if value and value.strip() == value else f'"{_shorten(value)}"'
    if isinstance(value, dict):
        if "error" in value and len(value) <= 2:
            return _shorten(f"error: {value['error']}")
        if "version" in value and isinstance(value["version"], str):
            extra = " (editable)" if value.get("editable") else ""
            return f"{value['version']}{extra}"
        if "status" in value and isinstance(value["status"], str):
            return f"status: {value['status']}"
    return _shorten(json.dumps(value, sort_keys=True, default=str))


def format_line(d: EnvDifference) -> str:
    """``path: before -> after`` (lists as ``-removed +added``), control characters escaped."""
    a, b = d.before, d.after
    if isinstance(a, list) and isinstance(b, list) and not (_has_dicts(a) or _has_dicts(b)):
        removed = [x for x in a if x not in b]
        added = [x for x in b if x not in a]
        if removed or added:
            parts = [f"-{x}" for x in removed] + [f"+{x}" for x in added]
            return printable(f"{d.path}: {_shorten(' '.join(map(str, parts)))}")
    return printable(f"{d.path}: {_format_value(a)} -> {_format_value(b)}")


def format_diff(diffs: list[EnvDifference]) -> str:
    """Readable lines, relevant differences first: ``torch.version: 2.13.0 -> 2.14.1``."""
    if not diffs:
        return "no differences"
    relevant = [d for d in diffs if d.relevant]
    informational = [d for d in diffs if not d.relevant]
    lines: list[str] = []
    if relevant:
        lines.append(f"relevant differences ({len(relevant)}), these can change results:")
        lines.extend(f"  {format_line(d)}" for d in relevant)
    if informational:
        lines.append(f"informational differences ({len(informational)}):")
        lines.extend(f"  {format_line(d)}" for d in informational)
    return "\n".join(lines)
