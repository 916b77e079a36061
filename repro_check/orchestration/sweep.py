"""Seed-sensitivity sweeps: which runs to make, where their results live, how to resume.

For each named source, K runs perturb only that source's stream (``SeedPlan`` perturbations);
``all`` perturbs every stream at once, with perturbation indices no one-source run uses (so
Var(all) is estimated from runs independent of each source's); ``bitflip`` keeps every seed and
nudges one weight by one ulp; an optional crossed design runs K_a x K_b seeds of two sources.

Results are appended, one JSON line per finished run, to ``runs.jsonl`` in the report folder
(an append-only stream: a killed sweep restarts from the runs already finished). Each row
carries the inputs that decide its numbers (test source, steps, root seed, threads, torch...);
a resumed sweep reuses a stored run only when they are unchanged, and says what changed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.core.seeding import GLOBAL_SOURCE
from repro_check.orchestration.executor import append_channel
from repro_check.orchestration.replicas import ReplicaResult, RunSpec

ALL = "all"
BITFLIP = "bitflip"
BACKEND = "backend"
#: What a ``backend`` run changes instead of a seed, cycled over its K runs.
BACKEND_VARIANTS = (
    {"threads": 1},
    {"threads": 2},
    {"deterministic": True},
    {"threads": 1, "deterministic": True},
)
DEFAULT_SOURCES = ("init", "data", GLOBAL_SOURCE)
STORE_NAME = "runs.jsonl"
ROW_SCHEMA = "repro-check/sweep-run"
ROW_SCHEMA_VERSION = 2
#: Bumped whenever the plan gives a run other seeds (2: ``all`` runs got seeds of their own).
PLAN_VERSION = 2
#: ``all:k`` perturbs every stream with index ALL_OFFSET + k + 1; ``<source>:k`` uses k + 1.
ALL_OFFSET = 1_000_000
#: The source name of a crossed design: ``init+data``; run ``init+data:k`` has seed
#: i = k // K_b of ``init`` and j = k % K_b of ``data`` (stored as ``k_a``, ``k_b``).
CROSS = "+"
METRIC_PREFIX = "metric."


def perturbation_index(source: str, k: int) -> int:
    return ALL_OFFSET + k + 1 if source == ALL else k + 1


def crossed_source(a: str, b: str) -> str:
    return f"{a}{CROSS}{b}"


def plan_runs(
    sources: Sequence[str],
    k: int,
    only: str | None = None,
    crossed: Sequence[str] | None = None,
    crossed_k: tuple[int, int] | None = None,
) -> list[RunSpec]:
    """K runs per source, plus K runs of ``all`` (always: the reference for variance shares),
    plus, with ``crossed=(a, b)``, K_a x K_b runs varying a and b together (``crossed_k``,
    default K x K)."""
    names = list(dict.fromkeys([*sources, ALL]))
    runs = []
    for source in names:
        for index in range(k):
            if source == BITFLIP:
                run = RunSpec(f"{source}:{index}", {}, bitflip=index, label=source)
            elif source == BACKEND:
                variant = BACKEND_VARIANTS[index % len(BACKEND_VARIANTS)]
                run = RunSpec(f"{source}:{index}", {}, label=source, backend=variant)
            else:
                perturbation = perturbation_index(source, index)
                run = RunSpec(f"{source}:{index}", {source: perturbation}, label=source)
            runs.append(run)
    if crossed:
        runs += plan_crossed(crossed, crossed_k or (k, k))
    if only is not None:
        runs = [run for run in runs if run.run_id == only]
    return runs


def plan_crossed(sources: Sequence[str], shape: tuple[int, int]) -> list[RunSpec]:
    """Every seed i of source a with every seed j of source b (other seeds fixed)."""
    if len(sources) != 2 or len(set(sources)) != 2:
        raise ValueError(f"a crossed design takes two different sources, got {list(sources)}")
    a, b = sources
    for name in (a, b):
        if name in (ALL, BITFLIP, BACKEND) or CROSS in name:
            raise ValueError(f"source {name!r} cannot be crossed: it is not one seed stream")
    ka, kb = shape
    if ka < 2 or kb < 2:
        raise ValueError(f"a crossed design needs at least 2 x 2 runs, got {ka} x {kb}")
    label = crossed_source(a, b)
    return [
        RunSpec(f"{label}:{i * kb + j}", {a: i + 1, b: j + 1}, label=label)
        for i in range(ka)
        for j in range(kb)
    ]


def parse_crossed(
    sources: str | None, shape: str | None, k: int
) -> tuple[tuple[str, str] | None, tuple[int, int] | None]:
    """``--repro-crossed=init,data`` and ``--repro-crossed-seeds=4x4`` (default K x K)."""
    if not sources:
        if shape:
            raise ValueError(f"--repro-crossed-seeds={shape} needs --repro-crossed=A,B")
        return None, None
    names = [s.strip() for s in sources.split(",") if s.strip()]
    if len(names) != 2:
        raise ValueError(f"--repro-crossed={sources!r}: name two sources, e.g. init,data")
    ka = kb = k
    if shape:
        parts = shape.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"--repro-crossed-seeds={shape!r}: write K_AxK_B, e.g. 4x4")
        ka, kb = (int(p) for p in parts)
    plan_crossed(names, (ka, kb))  # validates the names and the shape
    return (names[0], names[1]), (ka, kb)


def split_round_robin(runs: Sequence[RunSpec], jobs: int) -> list[list[RunSpec]]:
    buckets: list[list[RunSpec]] = [[] for _ in range(max(1, min(jobs, len(runs))))]
    for position, run in enumerate(runs):
        buckets[position % len(buckets)].append(run)
    return buckets


# --------------------------------------------------------------------------------------------
# what decides a run's numbers


def source_files_of(test_file: Path, root: Path) -> list[Path]:
    """The test's module and every ``conftest.py`` from its folder up to ``root``."""
    files = [test_file]
    folder = test_file.parent
    while True:
        conftest = folder / "conftest.py"
        if conftest.is_file():
            files.append(conftest)
        if folder == root or folder == folder.parent or root not in folder.parents:
            break
        folder = folder.parent
    return files


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode("utf-8") + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"<missing>")
    return digest.hexdigest()[:16]


def _installed_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def run_inputs(
    *,
    source_files: Sequence[Path],
    steps: int,
    root_seed: int,
    threads: int,
    deterministic: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that changes a run's numbers besides its own seed plan: stored with each
    row and compared on resume (:meth:`SweepStore.load`)."""
    inputs = {
        "plan": PLAN_VERSION,
        "test source": _hash_files(source_files),
        "steps": steps,
        "root seed": root_seed,
        "threads": threads,
        "deterministic": deterministic,
        "torch": _installed_version("torch"),
        **dict(extra or {}),
    }
    return json.loads(json.dumps(inputs))  # as a stored row reads back (tuples -> lists)


def _changes(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> str:
    if not old:
        return "stored without input keys by an older repro-check"
    parts = []
    for key in dict.fromkeys([*new, *old]):
        if old.get(key) != new.get(key):
            if key == "test source":
                parts.append("the test's source (its module or a conftest.py) changed")
            else:
                parts.append(f"{key} {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# the store


@dataclass
class StoredRuns:
    """What a resumed sweep may reuse: ``done`` by (test, run id); ``redo`` says which stored
    runs are stale and why; ``problems`` names unreadable lines by number."""

    done: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    redo: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def messages(self) -> list[str]:
        return [*self.problems, *self.redo]


@dataclass
class SweepStore:
    """``runs.jsonl``: one JSON line per finished run, appended as runs finish."""

    path: Path
    base_seed: int
    _checked_tail: bool = field(default=False, repr=False)

    def _lines(self) -> tuple[list[bytes], bool]:
        """The stored lines and whether the last one is complete (ends in a newline)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], True
        lines = data.split(b"\n")
        complete = data.endswith(b"\n") or not data
        return (lines[:-1] if complete else lines), complete

    def load(
        self,
        inputs: Mapping[str, Mapping[str, Any]] | None = None,
        run_ids: Collection[str] | None = None,
    ) -> StoredRuns:
        """Finished rows of this base seed whose inputs equal ``inputs[test]`` (every row of
        this base seed when ``inputs`` is None), among the runs ``run_ids`` of this plan."""
        stored = StoredRuns()
        lines, complete = self._lines()
        stale: dict[str, dict[str, int]] = {}
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            torn = number == len(lines) and not complete
            row = self._parse(raw, number, torn, stored.problems)
            if row is None or row.get("base_seed") != self.base_seed:
                continue
            if row.get("status") not in ("ok", "nan"):
                continue
            if run_ids is not None and row["run_id"] not in run_ids:
                continue  # not in this session's plan
            if inputs is not None and row["test"] not in inputs:
                continue  # not collected in this session
            expected = inputs[row["test"]] if inputs is not None else None
            if expected is not None and row.get("inputs") != expected:
                why = _changes(row.get("inputs"), expected)
                stale.setdefault(row["test"], {}).setdefault(why, 0)
                stale[row["test"]][why] += 1
                continue
            stored.done[(row["test"], row["run_id"])] = row
        for test, reasons in stale.items():
            for why, count in reasons.items():
                stored.redo.append(
                    f"{test}: {count} stored run{'s' if count != 1 else ''} in {self.path.name} "
                    f"will be redone: {why}"
                )
        return stored

    def _parse(
        self, raw: bytes, number: int, torn: bool, problems: list[str]
    ) -> dict[str, Any] | None:
        where = f"{self.path}, line {number}"
        try:
            row = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if torn:
                problems.append(
                    f"{where}: the last line was cut off (the sweep was killed while writing "
                    f"it); that run will be redone"
                )
            else:
                problems.append(f"{where}: not valid JSON ({exc}); that run will be redone")
            return None
        missing = [
            k for k in ("test", "run_id", "status") if not isinstance(row, dict) or k not in row
        ]
        if missing:
            problems.append(f"{where}: not a sweep run (missing {', '.join(missing)}); skipped")
            return None
        version = row.get("schema_version", 1)
        if not isinstance(version, int) or version > ROW_SCHEMA_VERSION:
            problems.append(
                f"{where}: written by a newer repro-check (schema_version {version!r} > "
                f"{ROW_SCHEMA_VERSION}); that run will be redone -- upgrade to reuse it"
            )
            return None
        return row

    def repair_tail(self) -> str | None:
        """Make sure the next row starts on a line of its own after a killed sweep: a last line
        without its newline is completed when it is a whole row, cut when it is torn. Returns
        what was done, or None when the file was intact."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        if not data or data.endswith(b"\n"):
            return None
        keep = data.rfind(b"\n") + 1
        try:
            json.loads(data[keep:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            with open(self.path, "r+b") as handle:
                handle.truncate(keep)
            return (
                f"{self.path}: removed a cut-off last line ({len(data) - keep} bytes, a sweep "
                f"killed while writing it) before appending; that run is redone"
            )
        with open(self.path, "ab") as handle:
            handle.write(b"\n")
        return None

    def append(self, row: dict[str, Any]) -> str | None:
        """Append one row; the first append repairs a torn tail (returns that message)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        if not self._checked_tail:
            note = self.repair_tail()
            self._checked_tail = True
        append_channel(self.path, row)
        return note


# --------------------------------------------------------------------------------------------
# rows


def _number(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)


def result_row(
    result: ReplicaResult,
    *,
    base_seed: int,
    root_seed: int,
    command: str,
    run: RunSpec | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored row of one finished run. Declared outcomes (``repro.record_outcome``) are
    what the report measures; without any, the scalars recorded at the last step are."""
    source, _, index = result.run_id.partition(":")
    metrics = result.metrics
    outcomes = dict(result.run_info.get("outcomes", {}))
    values = [o["value"] for o in outcomes.values()] if outcomes else list(metrics.values())
    status = "ok"
    error = ""
    if result.outcome in ("failed", "crashed"):
        status, error = "failed", result.error
    elif not values:
        status = "failed"
        error = (
            "the test declared no outcome and recorded no scalar metric "
            "(repro.record_outcome('accuracy', acc) or repro.record(step, loss=...))"
        )
    elif any(not math.isfinite(v) for v in values):
        status = "nan"
    perturbations = dict(run.perturbations) if run is not None else {}
    row: dict[str, Any] = {
        "schema": ROW_SCHEMA,
        "schema_version": ROW_SCHEMA_VERSION,
        "test": result.nodeid,
        "run_id": result.run_id,
        "source": source,
        "k": int(index) if index.isdigit() else 0,
        "status": status,
        "base_seed": base_seed,
        "root_seed": root_seed,
        "perturbation": perturbations.get(source, int(index) + 1 if index.isdigit() else 0),
        "command": command,
        "error": error,
        "metrics": {k: _number(v) for k, v in metrics.items()},
        "outcomes": {n: {**o, "value": _number(o["value"])} for n, o in outcomes.items()},
        "seeds": dict(result.run_info.get("seeds", {})),
        "sources_used": result.sources_used,
        "predictions": result.predictions,
        "run_info": {k: v for k, v in result.run_info.items() if k not in ("outcomes", "seeds")},
        "inputs": dict(inputs) if inputs is not None else None,
        "duration_s": round(result.duration, 4),
    }
    if CROSS in source and run is not None:
        a, b = source.split(CROSS, 1)
        row["k_a"], row["k_b"] = perturbations[a] - 1, perturbations[b] - 1
        row["perturbation"] = None
    return row


RUN_FIELDS = ("test", "source", "k", "status", "root_seed", "perturbation", "command", "error")


def runs_frame(rows: Iterable[dict[str, Any]]) -> Any:
    """The DataFrame the analysis reads: one row per run, ``metric.<name>`` columns for the
    outcomes (declared ones; else the recorded scalars), ``diag.<name>`` for recorded scalars
    that are not outcomes, ``seed.<source>`` for the seeds the run actually used."""
    import pandas as pd

    records = []
    for row in rows:
        flat = {key: row.get(key) for key in RUN_FIELDS}
        flat["run_id"] = row["run_id"]
        for key in ("k_a", "k_b"):
            if key in row:
                flat[key] = row[key]
        outcomes = row.get("outcomes") or {}
        for name, value in row["metrics"].items():
            short = name[len(METRIC_PREFIX) :] if name.startswith(METRIC_PREFIX) else name
            column = f"diag.{short}" if outcomes else METRIC_PREFIX + short
            flat[column] = float(value)
        for name, entry in outcomes.items():
            flat[METRIC_PREFIX + name] = float(entry["value"])
        for name, seed in (row.get("seeds") or {}).items():
            flat[f"seed.{name}"] = seed
        records.append(flat)
    return pd.DataFrame.from_records(records)


def prediction_agreement(rows: Iterable[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per test and source: mean pairwise disagreement and correlation of the predictions."""
    import itertools

    import numpy as np

    grouped: dict[tuple[str, str], list[np.ndarray]] = {}
    for row in rows:
        if row.get("predictions"):
            grouped.setdefault((row["test"], row["source"]), []).append(
                np.asarray(row["predictions"], dtype=np.float64)
            )
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (test, source), arrays in grouped.items():
        pairs = [(a, b) for a, b in itertools.combinations(arrays, 2) if a.shape == b.shape]
        if not pairs:
            continue
        disagreement = float(np.mean([np.mean(a != b) for a, b in pairs]))
        correlations = [
            float(np.corrcoef(a, b)[0, 1]) for a, b in pairs if np.std(a) > 0 and np.std(b) > 0
        ]
        out.setdefault(test, {})[source] = {
            "mean_disagreement": disagreement,
            "mean_correlation": float(np.mean(correlations)) if correlations else float("nan"),
            "pairs": len(pairs),
        }
    return out
