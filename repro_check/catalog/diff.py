"""Two runs side by side: lineage, options, environment, data, verdicts and records.

:func:`diff_runs` is plain data in, plain data out: the command prints it. Every section lists
only what differs, so the explanation of "why do these two runs disagree" reads top down: the
code (commit, uncommitted diff), how it was run (seed, options), where (environment), on what
(data versions), and what came out (verdicts; the first step and key whose digests differ).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from repro_check.catalog.lineage import first_difference
from repro_check.catalog.model import RunRow

MISSING = "(absent)"


@dataclass
class RunDiff:
    a: str
    b: str
    lineage: list[tuple[str, str, str]] = field(default_factory=list)
    options: list[tuple[str, str, str]] = field(default_factory=list)
    environment: list[str] = field(default_factory=list)
    data: list[tuple[str, str, str]] = field(default_factory=list)
    tests: list[tuple[str, str, str, str]] = field(default_factory=list)  # test, a, b, detail

    @property
    def same_results(self) -> bool:
        """Same tests, same verdicts, same recorded digests."""
        return not self.tests

    def lines(self) -> list[str]:
        out = [f"A: {self.a}", f"B: {self.b}"]
        for title, rows in (
            ("lineage", self.lineage),
            ("options", self.options),
            ("data versions", self.data),
        ):
            if rows:
                out.append(f"{title} ({len(rows)} differ):")
                out += [f"  {name}: {a} -> {b}" for name, a, b in rows]
        if self.environment:
            out.append("environment:")
            out += ["  " + line for line in self.environment]
        if self.tests:
            out.append(f"tests ({len(self.tests)} differ):")
            for nodeid, a, b, detail in self.tests:
                out.append(f"  {nodeid}: {a} -> {b}" + (f"; {detail}" if detail else ""))
        else:
            out.append("tests: same verdicts and same recorded digests")
        return out


def _short(value: Any) -> str:
    if value is None:
        return MISSING
    text = str(value)
    hexadecimal = len(text) >= 40 and all(c in "0123456789abcdef" for c in text)
    return text[:12] if hexadecimal else text  # a commit or a sha256: its prefix


def _rows(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (key, _short(a.get(key)), _short(b.get(key)))
        for key in sorted(set(a) | set(b))
        if a.get(key) != b.get(key)
    ]


def lineage_of(run: RunRow) -> dict[str, Any]:
    return {
        "git commit": run.git.get("commit"),
        "git branch": run.git.get("branch"),
        "uncommitted changes": run.git.get("dirty"),
        "uncommitted diff (sha256)": run.git.get("diff"),
        "untracked files (sha256)": run.git.get("untracked"),
        "base seed": run.base_seed,
        "environment snapshot": run.snapshot_hash,
        "host": run.host,
        "python": run.python,
        "kind": run.kind,
    }


def diff_runs(
    a: RunRow,
    b: RunRow,
    snapshots: tuple[dict[str, Any] | None, dict[str, Any] | None] = (None, None),
    tables: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
) -> RunDiff:
    """What differs from run ``a`` to run ``b``; ``tables`` are their per-key digests."""
    result = RunDiff(_label(a), _label(b))
    result.lineage = _rows(lineage_of(a), lineage_of(b))
    result.options = _rows(a.options, b.options)
    if all(snapshots):
        from repro_check import environment

        differences = environment.diff(snapshots[0], snapshots[1])  # type: ignore[arg-type]
        result.environment = [
            f"{'relevant' if d.relevant else 'informational'}: {d}"
            for d in differences
            if d.path.split(".")[0] != "git"  # in the lineage section already
        ][:40]
    elif a.snapshot_hash != b.snapshot_hash:
        result.environment = ["a run's environment snapshot is not stored; compare the hashes"]
    data_a = {f"{d.nodeid} {d.name}": d.digest for d in a.data_versions}
    data_b = {f"{d.nodeid} {d.name}": d.digest for d in b.data_versions}
    result.data = _rows(data_a, data_b)
    tests_a = {t.nodeid: t for t in a.tests}
    tests_b = {t.nodeid: t for t in b.tests}
    for nodeid in sorted(set(tests_a) | set(tests_b)):
        ta, tb = tests_a.get(nodeid), tests_b.get(nodeid)
        if ta is None or tb is None:
            result.tests.append(
                (nodeid, ta.status if ta else MISSING, tb.status if tb else MISSING, "")
            )
            continue
        if ta.status == tb.status and ta.record_digest == tb.record_digest:
            continue
        detail = ""
        if ta.record_digest != tb.record_digest:
            where = first_difference(tables[0].get(nodeid), tables[1].get(nodeid))
            detail = f"records differ first at {where}" if where else "records differ"
        result.tests.append((nodeid, ta.status, tb.status, detail))
    return result


def _label(run: RunRow) -> str:
    commit = (run.git.get("commit") or "no commit")[:10]
    dirty = "+dirty" if run.git.get("dirty") else ""
    return f"{run.id} ({run.kind}, {run.started_at}, {commit}{dirty}, {run.state})"
