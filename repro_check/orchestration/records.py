"""Run records in a report folder: what a run leaves behind to be compared with a run made
elsewhere (``repro-check compare A B``).

Every ``pytest --repro`` session with a report folder writes, per marked test,
``REPORT_DIR/records/<test path>.json`` (schema ``repro-check/run-record``): replica 0's record
-- for every recorded step and key the fingerprint and the tensor's statistics (min, max, mean,
norm, NaN/inf counts, a fixed sample of elements), whatever the spill budget -- the float64
run's record when a float64 variant ran, the tolerances of the test and the environment
snapshot. :func:`load_runs` reads those back, and also baseline files and checkpoints, as
:class:`StoredRun` records that :func:`repro_check.orchestration.drift.analyze_drift` compares.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repro_check.core.atomic import StoredFileError, read_json, write_json
from repro_check.core.paths import nodeid_path
from repro_check.core.record import Entry, RunRecord, StepRecord

RECORD_SCHEMA = "repro-check/run-record"
RECORD_VERSION = 1
RECORDS_DIRNAME = "records"


def record_path(report_dir: Path, nodeid: str) -> Path:
    """Where a test's record goes in a report folder (one injective id-to-path rule)."""
    relative = nodeid_path(nodeid)
    return report_dir / RECORDS_DIRNAME / relative.parent / (relative.name + ".json")


def _portable(record: RunRecord) -> dict[str, Any]:
    """The record without its spill references (a temporary file of the session)."""
    data = record.to_json()
    data["spill_path"] = None
    return data


def write_record(
    report_dir: Path,
    nodeid: str,
    *,
    seed: int,
    base_seed: int,
    record: RunRecord,
    environment: dict[str, Any],
    tolerances: tuple[float, float],
    status: str,
    fp64: RunRecord | None = None,
) -> Path:
    """Write one test's record into ``report_dir`` (atomically); returns its path."""
    path = record_path(report_dir, nodeid)
    write_json(
        path,
        {
            "schema": RECORD_SCHEMA,
            "schema_version": RECORD_VERSION,
            "test_id": nodeid,
            "seed": seed,
            "base_seed": base_seed,
            "status": status,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "tolerances": {"atol": tolerances[0], "rtol": tolerances[1]},
            "environment": environment,
            "record": _portable(record),
            "fp64": _portable(fp64) if fp64 is not None else None,
        },
    )
    return path


def save_for_later(report_dir: Path, case: Any, verdict: Any, environment: dict[str, Any]) -> None:
    """Write the record of a judged test (replica 0, and the float64 run's when one ran);
    a write that fails becomes a note on the verdict, not a failure of the test."""
    reference = verdict.reference
    if reference is None or reference.record is None or not reference.record.steps:
        return
    variants = verdict.variants
    try:
        write_record(
            report_dir,
            case.nodeid,
            seed=verdict.seed,
            base_seed=verdict.base_seed,
            record=reference.record,
            environment=environment,
            tolerances=(case.atol, case.rtol),
            status=verdict.status,
            fp64=variants.fp64_record if variants is not None else None,
        )
    except (OSError, StoredFileError) as exc:
        verdict.notes.append(f"the run record for repro-check compare was not written: {exc}")


@dataclass
class StoredRun:
    """One test's run as read back from a record file, a baseline or a checkpoint."""

    nodeid: str
    record: RunRecord
    source: str
    environment: dict[str, Any] = field(default_factory=dict)
    fp64: RunRecord | None = None
    seed: int | None = None
    tolerances: tuple[float, float] | None = None
    #: Full tensors by entry (checkpoints): read instead of the statistics.
    tensors: dict[int, Any] = field(default_factory=dict)


def load_runs(path: Path) -> dict[str, StoredRun]:
    """Every test's run in ``path``: a report folder (its ``records/``), a record file, a
    baseline file or a checkpoint (``.safetensors`` or its ``.json`` manifest).

    Raises :class:`StoredFileError` naming the file and what is wrong with it."""
    if path.is_dir():
        folder = path / RECORDS_DIRNAME if (path / RECORDS_DIRNAME).is_dir() else path
        files = sorted(folder.rglob("*.json"))
        runs = {}
        for file in files:
            run = _load_file(file)
            if run is not None:
                runs[run.nodeid] = run
        if not runs:
            raise StoredFileError(
                f"{path}: no run records here; expected a report folder of pytest --repro "
                f"(it writes {RECORDS_DIRNAME}/<test>.json), a record, baseline or checkpoint file"
            )
        return runs
    if not path.exists():
        raise StoredFileError(f"{path}: no such file or folder")
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    run = _load_file(path, strict=True)
    assert run is not None
    return {run.nodeid: run}


def _load_file(path: Path, strict: bool = False) -> StoredRun | None:
    import json

    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if strict:
            raise StoredFileError(f"{path}: not a readable JSON file ({exc})") from None
        return None
    kind = head.get("schema") if isinstance(head, dict) else None
    try:
        if kind == RECORD_SCHEMA:
            return _from_record_file(path)
        if kind == "repro-check/baseline":
            return _from_baseline(path)
        if kind == "repro-check/checkpoint":
            return _from_checkpoint(path)
    except (KeyError, TypeError, ValueError) as exc:
        raise StoredFileError(
            f"{path}: damaged {kind} file ({type(exc).__name__}: {exc})"
        ) from None
    if strict:
        raise StoredFileError(
            f"{path}: schema {kind!r} is not a run record, baseline or checkpoint; expected a "
            f"file written by pytest --repro (REPORT_DIR/{RECORDS_DIRNAME}/...), a baseline or a "
            f"checkpoint"
        )
    return None


def _from_record_file(path: Path) -> StoredRun:
    data = read_json(path, schema=RECORD_SCHEMA, max_version=RECORD_VERSION)
    tolerances = data.get("tolerances") or {}
    return StoredRun(
        str(data["test_id"]),
        RunRecord.from_json(data["record"]),
        str(path),
        dict(data.get("environment") or {}),
        RunRecord.from_json(data["fp64"]) if data.get("fp64") else None,
        int(data["seed"]),
        (float(tolerances.get("atol", 0.0)), float(tolerances.get("rtol", 0.0))),
    )


def _from_baseline(path: Path) -> StoredRun:
    from repro_check.orchestration.baseline import load_baseline

    document = load_baseline(path)
    steps, twins = [], []
    for step in document["steps"]:
        entries, fp64 = {}, {}
        for key, summary in step["entries"].items():
            entries[key] = _baseline_entry(summary, summary.get("stats"))
            if summary.get("fp64") is not None:
                fp64[key] = _baseline_entry(summary, summary["fp64"], dtype="float64")
        steps.append(StepRecord(int(step["step"]), entries))
        twins.append(StepRecord(int(step["step"]), fp64))
    has_fp64 = any(t.entries for t in twins)
    tolerances = document.get("tolerances") or {}
    return StoredRun(
        str(document["test_id"]),
        RunRecord(steps),
        str(path),
        dict(document.get("environment") or {}),
        RunRecord(_complete(twins, steps)) if has_fp64 else None,
        int(document["seed"]),
        (float(tolerances.get("atol", 0.0)), float(tolerances.get("rtol", 0.0))),
    )


def _complete(twins: list[StepRecord], steps: list[StepRecord]) -> list[StepRecord]:
    """A float64 record needs every key: non-floating keys are the run's own."""
    return [
        StepRecord(t.step, {k: t.entries.get(k, e) for k, e in s.entries.items()})
        for t, s in zip(twins, steps, strict=True)
    ]


def _baseline_entry(summary: dict[str, Any], stats: Any, dtype: str | None = None) -> Entry:
    from repro_check.core.fingerprint import Fingerprint, TensorStats

    shape = tuple(int(s) for s in summary["shape"])
    parsed = None
    if stats is not None:
        sample = [float(x) for x in stats.get("sample", [])]
        index = stats.get("sample_index", list(range(len(sample))))
        parsed = TensorStats(
            float(stats["min"]),
            float(stats["max"]),
            float(stats["mean"]),
            float(stats["norm"]),
            int(stats.get("nan", 0)),
            int(stats.get("posinf", 0)),
            int(stats.get("neginf", 0)),
            tuple(sample),
            tuple(int(i) for i in index),
        )
    nan = parsed.nan if parsed else 0
    inf = parsed.posinf + parsed.neginf if parsed else 0
    digest = str(summary.get("digest", "")) if dtype is None else ""
    fingerprint = Fingerprint(digest, dtype or str(summary["dtype"]), shape, nan, inf, parsed)
    return Entry(fingerprint)


def _from_checkpoint(path: Path) -> StoredRun:
    from repro_check.core.checkpoint import load_checkpoint
    from repro_check.core.fingerprint import fingerprint_tensor

    tensors, manifest = load_checkpoint(path)
    entries = {key: Entry(fingerprint_tensor(tensor)) for key, tensor in sorted(tensors.items())}
    step = int(manifest.get("step", 0) or 0)
    nodeid = str(manifest.get("test_id") or manifest.get("nodeid") or path.stem)
    run = StoredRun(nodeid, RunRecord([StepRecord(step, entries)]), str(path))
    run.tensors = {id(entries[key]): tensor for key, tensor in tensors.items() if key in entries}
    return run


def iter_pairs(
    a: dict[str, StoredRun], b: dict[str, StoredRun]
) -> Iterator[tuple[str, StoredRun | None, StoredRun | None]]:
    """Tests in either side, in A's order then B's extras (a single pair matches by itself)."""
    if len(a) == 1 and len(b) == 1:
        (name, run_a), (_, run_b) = next(iter(a.items())), next(iter(b.items()))
        yield name, run_a, run_b
        return
    for name in [*a, *(n for n in b if n not in a)]:
        yield name, a.get(name), b.get(name)
