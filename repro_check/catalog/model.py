"""Typed records of the catalog: what a run is when it starts, what it adds when it ends, and
the rows read back. Plain data; the store turns them into SQL and back."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Kinds of runs: a ``pytest --repro`` session, a sensitivity sweep, a cross-run comparison.
KINDS = ("session", "sweep", "compare")
RUNNING, FINISHED, INTERRUPTED = "running", "finished", "interrupted"


@dataclass(frozen=True)
class RunStart:
    """What is known when a run starts (its row is inserted with status ``running``)."""

    kind: str
    argv: list[str]
    cwd: str
    python: str
    base_seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    report_dir: str | None = None
    verifies: str | None = None  # the run this one re-runs (repro-check runs verify)


@dataclass(frozen=True)
class TestEntry:
    __test__ = False  # not a pytest test class
    nodeid: str
    status: str
    seed: int | None = None
    steps: int | None = None
    keys: int | None = None
    record_digest: str | None = None
    first_divergence: str = ""
    resume: dict[str, Any] | None = None


@dataclass(frozen=True)
class Artifact:
    """A file a run produced or read: where, its sha256 and size; a checkpoint's manifest."""

    kind: str  # "report" | "environment" | "digests" | "checkpoint" | "manifest" | "sweep-runs"
    path: str
    sha256: str
    bytes: int
    nodeid: str = ""
    manifest: dict[str, Any] | None = None


@dataclass(frozen=True)
class DataVersion:
    nodeid: str
    name: str
    kind: str  # "tensor" | "file" | "directory" | "bytes"
    digest: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunEnd:
    """What a run adds when it ends -- written, with the status change, in one transaction."""

    status: str = FINISHED
    outcome: str = ""  # "passed" | "failed" | "interrupted" | "error" | "no tests"
    exit_code: int | None = None
    snapshot: dict[str, Any] | None = None
    git: dict[str, Any] = field(default_factory=dict)  # lineage.git_lineage()
    tests: list[TestEntry] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    data_versions: list[DataVersion] = field(default_factory=list)
    archive: str | None = None  # the folder (beside the catalog) holding the run's JSON files
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRow:
    """A run as read back; ``state`` is what ``runs list`` shows (``interrupted`` for a
    ``running`` row whose process is gone)."""

    id: str
    kind: str
    status: str
    state: str
    outcome: str | None
    exit_code: int | None
    started_at: str
    finished_at: str | None
    host: str
    pid: int
    cwd: str
    argv: list[str]
    python: str
    base_seed: int | None
    options: dict[str, Any]
    git: dict[str, Any]
    snapshot_hash: str | None
    report_dir: str | None
    archive: str | None
    verifies: str | None
    summary: dict[str, Any]
    tests: list[TestEntry] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    data_versions: list[DataVersion] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("tests", "artifacts")}
        out["tests"] = [t.__dict__ for t in self.tests]
        out["artifacts"] = [a.__dict__ for a in self.artifacts]
        out["data_versions"] = [d.__dict__ for d in self.data_versions]
        return out


def dumps(value: Any) -> str:
    """JSON for a TEXT column (non-finite floats as "nan"/"inf", the project's one policy)."""
    from repro_check.core.atomic import json_safe

    return json.dumps(json_safe(value), sort_keys=True, allow_nan=False)


def loads(text: str | None, default: Any = None) -> Any:
    if text is None:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default
