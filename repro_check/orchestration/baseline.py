"""Baselines: a committed record of what a marked test computed, to gate merges on.

One small JSON file per test (schema ``repro-check/baseline``, version 2) holds, for *every*
recorded step and key, the fingerprint and the tensor's statistics (min, max, mean and L2 norm
over its finite elements, exact NaN/+inf/-inf counts, and a fixed sample of elements), taken
from :attr:`Fingerprint.stats` and so independent of the spill budget; optionally the same
statistics of a float64 run of the test (``"fp64"``), plus the environment snapshot it was made
in. A later run is compared *bitwise* when the environment is the same in every
determinism-relevant way, and *with tolerances* when it is not, because then bitwise equality
cannot be expected: every step, NaN/inf counts exactly, the statistics and the sample within
``atol``/``rtol`` -- or, when the baseline carries a float64 record, by the float64 rule
(:func:`repro_check.core.compare.judge_against_fp64`). An entry the baseline cannot compare with
tolerances (no statistics) fails the check with the reason, never passes. Version 1 files (values
for tensors of at most 16 elements, statistics for eight steps) are still read.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from repro_check import environment
from repro_check.core.atomic import StoredFileError, atomic_write_text, decode_float, read_json
from repro_check.core.compare import Mismatch, find_mismatch, judge_against_fp64
from repro_check.core.paths import is_no_space, nodeid_path
from repro_check.core.record import Entry, RunRecord
from repro_check.core.seeding import legacy_seed_note
from repro_check.orchestration import baseline_schema as schema
from repro_check.orchestration.baseline_schema import COUNT_NAMES, STAT_NAMES, number

SCHEMA = "repro-check/baseline"
SCHEMA_VERSION = 2
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-3
BASELINE_DIRNAME = "repro_baselines"
#: How to repair a baseline that is damaged or cannot support a comparison.
UPDATE_HINT = (
    "rewrite it with --repro-update on the reference machine (the environment the baseline "
    "should describe) and commit it"
)
#: Dtypes whose values (complex: parts) are float32-representable, so stored at float32
#: precision: the shortest text that reads back exactly.
_FLOAT32_EXACT = frozenset({"float32", "float16", "bfloat16", "complex64", "complex32"})


def baseline_path(rootpath: Path, nodeid: str, baseline_dir: str | None) -> Path:
    """``<test dir>/repro_baselines/<file stem>/<test name>.json``, or, with a configured
    folder, ``<folder>/<test path>/<test name>.json`` (both relative to the rootdir)."""
    # One injective id-to-path rule for the project (core.paths): a test name that is not a
    # safe file name, or is long, gets a hash of the exact id; ``..`` cannot lead out.
    relative = nodeid_path(nodeid)
    file_name = f"{relative.name}.json"
    if baseline_dir:
        return rootpath / baseline_dir / relative.parent / file_name
    return rootpath / relative.parent.parent / BASELINE_DIRNAME / relative.parent.name / file_name


# ----------------------------------------------------------------------------- numbers in JSON


def _element(x: float, dtype: str) -> float | int | str:
    """A sampled element, at its dtype's precision (the shortest text that reads back exactly)."""
    if not math.isfinite(x):
        return number(x)
    if dtype in _FLOAT32_EXACT:
        return float(str(np.float32(x)))
    if not dtype.startswith(("float", "complex")) and abs(x) < 2**53 and x == int(x):
        return int(x)
    return x


def _read_element(x: float | int | str, dtype: str) -> float:
    value = decode_float(x)
    return float(np.float32(value)) if dtype in _FLOAT32_EXACT else value


# ----------------------------------------------------------------------------- writing


def stats_json(stats: Any, dtype: str) -> dict[str, Any] | None:
    """A :class:`TensorStats` (or anything with its fields) as stored in a baseline."""
    if stats is None:
        return None
    data: dict[str, Any] = {name: number(float(getattr(stats, name))) for name in STAT_NAMES}
    counts = {name: int(getattr(stats, name)) for name in COUNT_NAMES}
    data.update({name: n for name, n in counts.items() if n})  # zero counts are left out
    sample = [_element(float(v), dtype) for v in stats.sample]
    index = [int(i) for i in stats.sample_index]
    data["sample"] = sample
    if index != list(range(len(sample))):  # the whole tensor (small ones) needs no index
        data["sample_index"] = index
    return data


def entry_summary(entry: Entry, fp64: Entry | None = None) -> dict[str, Any]:
    """Fingerprint and statistics of one entry (and of its float64 twin, when given)."""
    fp = entry.fingerprint
    summary: dict[str, Any] = {"digest": fp.digest, "dtype": fp.dtype, "shape": list(fp.shape)}
    stats = stats_json(getattr(fp, "stats", None), fp.dtype)
    if stats is not None:
        summary["stats"] = stats
    if fp64 is not None and stats is not None:
        twin = stats_json(getattr(fp64.fingerprint, "stats", None), fp64.fingerprint.dtype)
        if twin is not None and fp64.fingerprint.shape == fp.shape:
            summary["fp64"] = twin
    return summary


def build_baseline(
    nodeid: str,
    seed: int,
    base_seed: int,
    record: RunRecord,
    snapshot: dict[str, Any],
    tolerances: tuple[float, float],
    *,
    fp64_record: RunRecord | None = None,
) -> dict[str, Any]:
    """The baseline document of one run; ``fp64_record`` (the same test run in float64, same
    steps and keys) makes later tolerance checks use the float64 rule."""
    twins: dict[int, Any] = {s.step: s.entries for s in fp64_record.steps} if fp64_record else {}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "test_id": nodeid,
        "seed": seed,
        "base_seed": base_seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tolerances": {"atol": tolerances[0], "rtol": tolerances[1]},
        "environment": environment.for_baseline(snapshot),
        "steps": [
            {
                "step": s.step,
                "entries": {
                    key: entry_summary(e, twins.get(s.step, {}).get(key))
                    for key, e in s.entries.items()
                },
            }
            for s in record.steps
        ],
    }


def dump_baseline(document: dict[str, Any]) -> str:
    """JSON with one line per recorded entry: small, and a change shows as changed lines."""
    head = {k: v for k, v in document.items() if k != "steps"}
    text = json.dumps(head, indent=2, sort_keys=True, allow_nan=False)
    steps = []
    for step in document["steps"]:
        entries = ",\n".join(
            f"      {json.dumps(key)}: {json.dumps(value, sort_keys=True, allow_nan=False)}"
            for key, value in step["entries"].items()
        )
        steps.append(f'    {{"step": {step["step"]}, "entries": {{\n{entries}\n    }}}}')
    return text[:-2] + ',\n  "steps": [\n' + ",\n".join(steps) + "\n  ]\n}\n"


def write_baseline(path: Path, document: dict[str, Any]) -> None:
    """Atomic, and serialised with a lock file so that concurrent writers never interleave.

    A folder that cannot be written (read-only, full disk) is a :class:`StoredFileError` naming
    the file; the lock file never outlives the call.
    """
    from filelock import FileLock, Timeout

    lock = Path(str(path) + ".lock")
    text = dump_baseline(document)
    acquired = False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock), timeout=60):
            acquired = True
            atomic_write_text(path, text)
    except Timeout:
        raise StoredFileError(
            f"{path}: cannot write the baseline: another process has held {lock.name} for 60 s; "
            f"delete {lock} if no repro-check is running"
        ) from None
    except OSError as exc:
        raise StoredFileError(
            f"{path}: cannot write the baseline: {exc.strerror or exc}{_why(exc)}; make "
            f"{path.parent} writable (or free space), then rerun with --repro-update"
        ) from None
    finally:
        if acquired:  # never another process's lock
            with contextlib.suppress(OSError):
                lock.unlink()


def _why(exc: OSError) -> str:
    import errno

    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return " (the folder is read-only)"
    if is_no_space(exc):
        return " (no space left on the disk)"
    return ""


# ----------------------------------------------------------------------------- reading


def load_baseline(path: Path) -> dict[str, Any]:
    """Read and check every field of a baseline, so that a hand-edited or damaged file fails
    with its name and the field, never deep inside the comparison. Version 1 files are
    converted to the version 2 layout in memory (``schema_version`` still says 1)."""
    try:
        document = read_json(path, schema=SCHEMA, max_version=SCHEMA_VERSION)
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        if isinstance(exc, StoredFileError):
            raise
        raise StoredFileError(
            f"{path}: not a usable baseline ({str(exc).split(';')[0]}; hand-edited or damaged?); "
            f"{UPDATE_HINT}"
        ) from None
    try:
        schema.validate(document)
    except schema.SchemaError as exc:
        raise StoredFileError(f"{path}: {exc} (hand-edited or damaged?); {UPDATE_HINT}") from None
    if document["schema_version"] < 2:
        schema.upgrade_v1(document)
    return document


# ----------------------------------------------------------------------------- checking


@dataclass
class BaselineCheck:
    """The outcome of comparing a run with its baseline."""

    status: str  # "match" | "mismatch" | "structural" | "steps" | "unsupported"
    mode: str  # "bitwise" | "tolerance"
    reason: str  # why this mode (and, in tolerance mode, by which rule)
    env_differences: list[str] = field(default_factory=list)
    seed_note: str = ""  # set when the run's seed is not the baseline's
    steps_note: str = ""  # set when the run and the baseline recorded different steps
    compared_steps: int = 0  # steps both recorded
    baseline_steps: int = 0
    step: int | None = None
    key: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status != "match"

    def cell(self) -> str:
        """The summary's baseline cell: ``match (bitwise)``, ``match (bitwise; 10 of 30 steps)``."""
        steps = f"; {self.compared_steps} of {self.baseline_steps} steps" if self.steps_note else ""
        return f"{self.status} ({self.mode}{steps})"

    def reason_lines(self) -> list[str]:
        """Why this mode: the reason, then one line per relevant environment difference."""
        return [self.reason, *(f"  {d}" for d in self.env_differences)]

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lines"}
        return {**data, "detail": self.lines}


def relevant_env_differences(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(determinism-relevant differences, all differences), formatted one per line."""
    differences = environment.diff(before, after)
    return [str(d) for d in differences if d.relevant], [str(d) for d in differences]


def check_baseline(
    baseline: dict[str, Any],
    record: RunRecord,
    snapshot: dict[str, Any],
    atol: float,
    rtol: float,
    *,
    allowed_nondeterminism: str = "",
    seed: int | None = None,
    steps_overridden: bool = False,
) -> BaselineCheck:
    """Compare a run with a loaded baseline (see the module docstring for the rules).

    ``steps_overridden`` says the run's step count was chosen on the command line
    (``--repro-steps``): then a run whose steps the baseline all holds passes on the steps it
    has; otherwise a different step count fails, saying so (and whether the common steps agree).
    """
    relevant, _ = relevant_env_differences(baseline.get("environment", {}), snapshot)
    has_fp64 = any("fp64" in e for s in baseline["steps"] for e in s["entries"].values())
    rule = (
        "judged by the float64 rule against the baseline's float64 record (atol="
        f"{atol:g}, rtol={rtol:g} for entries without one)"
        if has_fp64
        else f"compared with atol={atol:g}, rtol={rtol:g}"
    )
    if allowed_nondeterminism:
        mode = "tolerance"
        reason = (
            f"the test allows nondeterminism ({allowed_nondeterminism}), so its bits vary "
            f"between runs; {rule}"
        )
    elif relevant:
        mode = "tolerance"
        reason = (
            f"the environment differs from the baseline's in {len(relevant)} "
            f"determinism-relevant way(s), so bitwise equality cannot be expected; {rule}"
        )
    else:
        mode = "bitwise"
        reason = "the environment matches the baseline's in every determinism-relevant way"
    check = BaselineCheck("match", mode, reason, relevant)
    if seed is not None and baseline.get("seed") not in (None, seed):
        check.seed_note = legacy_seed_note(
            baseline.get("test_id"), baseline.get("base_seed"), baseline.get("seed"), seed
        ) or (
            f"the seed differs: the baseline was recorded with root seed {baseline.get('seed')} "
            f"(--repro-seed={baseline.get('base_seed')}), this run uses {seed}; rerun with "
            f"--repro-seed={baseline.get('base_seed')} to compare like with like"
        )
    base_steps = {s["step"]: s["entries"] for s in baseline["steps"]}
    now_steps = [s.step for s in record.steps]
    common = [s for s in record.steps if s.step in base_steps]
    check.compared_steps, check.baseline_steps = len(common), len(base_steps)
    if list(base_steps) != now_steps:
        check.steps_note = (
            f"the step counts differ (baseline {len(base_steps)} steps "
            f"{_span(list(base_steps))}, this run {len(now_steps)} {_span(now_steps)}); "
            + (f"compared the {len(common)} common steps" if common else "no step in common")
        )
    differs = any(
        _check_step(check, base_steps[s.step], s.step, s.entries, atol, rtol) for s in common
    )
    if check.steps_note and differs:
        check.lines.append(check.steps_note)
    elif check.steps_note and not (
        steps_overridden and common and set(now_steps) <= base_steps.keys()
    ):
        check.status = "steps" if common else "structural"
        agree = "bitwise" if mode == "bitwise" else "within the tolerance"
        check.lines.append(
            check.steps_note
            + (f", and they agree {agree}" if common else "")
            + " (--repro-steps, or a change to the test's steps=, changes the count; "
            "accept a new count with --repro-update)"
        )
    return check


def _span(steps: Sequence[int]) -> str:
    return f"{steps[0]}..{steps[-1]}" if steps else "(none)"


def _check_step(
    check: BaselineCheck,
    base_entries: dict[str, Any],
    step: int,
    entries: dict[str, Entry],
    atol: float,
    rtol: float,
) -> bool:
    """Compare one step; on the first difference fill ``check`` and return True."""
    missing = [k for k in base_entries if k not in entries]
    extra = [k for k in entries if k not in base_entries]
    if missing or extra:
        check.status, check.step, check.key = "structural", step, (missing or extra)[0]
        check.lines.append(
            f"step {step}: keys only in the baseline: {missing[:5]}; only now: {extra[:5]}"
        )
        return True
    for key, entry in entries.items():
        base, fp = base_entries[key], entry.fingerprint
        where = f"step {step}, {key} ({fp.dtype}, shape {fp.shape})"
        if base["dtype"] != fp.dtype or tuple(base["shape"]) != fp.shape:
            check.status, check.step, check.key = "structural", step, key
            check.lines.append(
                f"step {step}, {key}: baseline {base['dtype']}{tuple(base['shape'])}, "
                f"now {fp.dtype}{fp.shape}"
            )
            return True
        if base["digest"] == fp.digest:
            continue
        now = stats_json(getattr(fp, "stats", None), fp.dtype)
        if check.mode == "bitwise":
            check.status, check.step, check.key = "mismatch", step, key
            check.lines.append(f"first difference: {where} is no longer bitwise equal")
            check.lines.extend(_describe(base, now, fp, 0.0, 0.0))
            return True
        if not _floating(fp.dtype):
            check.status, check.step, check.key = "mismatch", step, key
            check.lines.append(f"first difference beyond tolerance: {where}")
            check.lines.append(
                f"    its values changed: {fp.dtype} values are compared exactly (no tolerance "
                "applies to integers and booleans)"
            )
            return True
        unsupported = _unsupported(base, now, fp.dtype)
        if unsupported:
            check.status, check.step, check.key = "unsupported", step, key
            check.lines.append(f"cannot compare {where} with tolerances: {unsupported}")
            return True
        problems = _describe(base, now, fp, atol, rtol, violations_only=True)
        if problems:
            check.status, check.step, check.key = "mismatch", step, key
            check.lines.append(f"first difference beyond tolerance: {where}")
            check.lines.extend(problems)
            return True
    return False


def _unsupported(base: dict[str, Any], now: dict[str, Any] | None, dtype: str) -> str:
    """Why this entry cannot be compared with tolerances ('' when it can)."""
    if "stats" not in base:
        return (
            "the baseline holds only its fingerprint, no statistics (baselines before schema 2 "
            f"kept them for a few steps, and none once the spill budget ran out); {UPDATE_HINT}"
        )
    if now is None:
        return f"this run kept no statistics for it (dtype {dtype})"
    stored = _sample_index(base["stats"])
    if stored and stored != _sample_index(now):
        return (
            "the baseline sampled other elements than this repro-check samples (written by "
            f"another version); {UPDATE_HINT}"
        )
    return ""


def _describe(
    base: dict[str, Any],
    now: dict[str, Any] | None,
    fp: Any,
    atol: float,
    rtol: float,
    *,
    violations_only: bool = False,
) -> list[str]:
    """How an entry differs from its baseline: NaN/inf counts, the float64 rule when the
    baseline has a float64 record, else statistics and sampled elements within atol/rtol
    (every difference, or only violations)."""
    dtype, shape, stats = fp.dtype, fp.shape, base.get("stats")
    if stats is None or now is None:
        return [f"    fingerprint {base['digest']} -> {fp.digest}; no statistics to show"]
    lines = _count_lines(stats, now)
    if "fp64" in base and violations_only:
        judged = judge_against_fp64(
            _vector(stats, dtype, shape),
            _vector(now, dtype, shape),
            _vector(base["fp64"], "float64", shape),
            dtype=dtype,
        )
        if not judged.agrees:
            lines.append(f"    float64 rule: {judged.reason}")
        return lines
    for found in _mismatches(stats, now, dtype, shape, atol, rtol):
        if found.mismatched:
            lines.extend(found.lines("    "))
    if not lines and not violations_only:
        lines.append(
            f"    its statistics and {len(stats['sample'])} sampled elements are unchanged: the "
            "change is in elements the baseline does not sample"
        )
    return lines


def _count_lines(stats: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """NaN/inf counts are compared exactly: a NaN appearing is never within a tolerance."""
    if "inf" in stats:  # version 1: +inf and -inf together
        before = (stats.get("nan", 0), stats["inf"])
        after = (now.get("nan", 0), now.get("posinf", 0) + now.get("neginf", 0))
        names = ("NaN", "inf")
    else:
        before = tuple(stats.get(n, 0) for n in COUNT_NAMES)
        after = tuple(now.get(n, 0) for n in COUNT_NAMES)
        names = ("NaN", "+inf", "-inf")
    if before == after:
        return []
    show = ", ".join(f"{n} {b} -> {a}" for n, b, a in zip(names, before, after, strict=True))
    return [f"    non-finite counts differ: {show}"]


def _floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


def _elements(dtype: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape statistics see: complex tensors through their real view (re, im)."""
    return (*shape, 2) if dtype.startswith("complex") else tuple(shape)


def _sample_index(stats: dict[str, Any]) -> list[int]:
    return stats.get("sample_index", list(range(len(stats["sample"]))))


def _stat_values(stats: dict[str, Any]) -> list[float]:
    return [decode_float(stats[name]) for name in STAT_NAMES]


def _sample_values(stats: dict[str, Any], dtype: str) -> list[float]:
    return [_read_element(v, dtype) for v in stats["sample"]]


def _vector(stats: dict[str, Any], dtype: str, shape: tuple[int, ...]) -> list[float]:
    """Sample and statistics on the elements' scale (the norm as an RMS), for the float64 rule."""
    numel = math.prod(_elements(dtype, shape))
    finite = max(numel - sum(int(stats.get(n, 0)) for n in (*COUNT_NAMES, "inf")), 1)
    values = _stat_values(stats)
    values[3] /= math.sqrt(finite)
    return _sample_values(stats, dtype) + values


def _mismatches(
    stats: dict[str, Any],
    now: dict[str, Any],
    dtype: str,
    shape: tuple[int, ...],
    atol: float,
    rtol: float,
) -> Iterator[Mismatch]:
    """Statistics, then sampled elements, each in assert_close's words.

    A statistic's ``rtol`` scale is the tensor's RMS (the norm's own size for the norm): a
    mean near zero is held to the magnitude of the values it averages, not to ~0.
    """
    base_stats, now_stats = _stat_values(stats), _stat_values(now)
    numel = max(math.prod(_elements(dtype, shape)), 1)
    rms = abs(base_stats[3]) / math.sqrt(numel) if math.isfinite(base_stats[3]) else 0.0
    scale = [max(abs(v), rms) if math.isfinite(v) else rms for v in base_stats[:3]]
    yield find_mismatch(
        base_stats,
        now_stats,
        atol=atol,
        rtol=rtol,
        labels=[f"in {name}" for name in STAT_NAMES],
        scale=[*scale, abs(base_stats[3])],
        noun="statistics",
    )
    index = _sample_index(stats)
    if index and index == _sample_index(now):
        yield find_mismatch(
            _sample_values(stats, dtype),
            _sample_values(now, dtype),
            atol=atol,
            rtol=rtol,
            labels=[f"at index {_unravel(i, _elements(dtype, shape))}" for i in index],
            noun="sampled elements",
        )


def _unravel(flat: int, shape: tuple[int, ...]) -> str:
    index = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
    return "(" + ", ".join(map(str, index)) + ")"


def find_unused(folders: set[Path], used: set[Path]) -> list[Path]:
    """Baseline files in the given folders that no collected test uses any more."""
    unused = []
    for folder in sorted(folders):
        if folder.is_dir():
            unused.extend(p for p in sorted(folder.glob("*.json")) if p not in used)
    return unused
