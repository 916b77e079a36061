"""Baselines: a committed record of what a marked test computed, to gate merges on.

One small JSON file per test (schema ``repro-check/baseline``) holds, for every recorded step
and key, the fingerprint, compact statistics (mean, std, min, max, L2 norm) and -- for tensors of
at most :data:`EXACT_VALUES_MAX` elements -- the values themselves, plus the environment snapshot
it was made in. A later run is compared *bitwise* when the environment is the same in every
determinism-relevant way, and *with tolerances* (``atol``/``rtol``) against the statistics when
it is not, because then bitwise equality cannot be expected. The result always says which mode
was used and why.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from repro_check.core.atomic import StoredFileError, atomic_write_text, read_json
from repro_check.core.record import Entry, RunRecord
from repro_check.core.spill import read_spilled

SCHEMA = "repro-check/baseline"
SCHEMA_VERSION = 1
EXACT_VALUES_MAX = 16
#: Steps whose statistics are kept (evenly spaced, first and last included); every step keeps
#: its fingerprints, so a bitwise gate still finds the first differing step.
STAT_STEPS = 8
STATS = ("mean", "std", "min", "max", "l2")
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-3
BASELINE_DIRNAME = "repro_baselines"
MAX_NAME = 120  # characters of the test name kept in a baseline's file name


def baseline_path(rootpath: Path, nodeid: str, baseline_dir: str | None) -> Path:
    """``<test dir>/repro_baselines/<file stem>/<test name>.json``, or, with a configured
    folder, ``<folder>/<test path>/<test name>.json`` (both relative to the rootdir)."""
    file_part, _, name = nodeid.partition("::")
    safe_name = re.sub(r"[^A-Za-z0-9_.=\[\]-]+", "_", name).strip("_") or "test"
    if safe_name != name or len(safe_name) > MAX_NAME:
        # Cleaning can merge distinct ids (test[a b] and test[a_b]) and ids can be long: a hash
        # of the exact id keeps every test's file its own.
        safe_name = f"{safe_name[:MAX_NAME]}-{xxhash.xxh32_hexdigest(name.encode())}"
    test_file = Path(file_part)
    if baseline_dir:
        return rootpath / baseline_dir / test_file.parent / test_file.stem / f"{safe_name}.json"
    return rootpath / test_file.parent / BASELINE_DIRNAME / test_file.stem / f"{safe_name}.json"


def _finite(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)


def _as_float(x: float | str) -> float:
    return float(x)


def stat_step_indices(count: int, keep: int = STAT_STEPS) -> set[int]:
    if count <= keep:
        return set(range(count))
    return {round(i * (count - 1) / (keep - 1)) for i in range(keep)}


def entry_summary(entry: Entry, *, with_stats: bool = True) -> dict[str, Any]:
    """Fingerprint and, when asked, statistics or (small tensors) exact values of one entry."""
    fp = entry.fingerprint
    summary: dict[str, Any] = {"digest": fp.digest, "dtype": fp.dtype, "shape": list(fp.shape)}
    if fp.nan or fp.inf:
        summary["nonfinite"] = [fp.nan, fp.inf]
    if entry.spill is None or not with_stats:
        return summary
    import torch

    tensor = read_spilled(entry.spill, fp.dtype, fp.shape)
    if tensor.is_complex():
        tensor = tensor.abs()
    values = tensor.to(torch.float64).reshape(-1)
    if values.numel() == 0:
        return summary
    if values.numel() <= EXACT_VALUES_MAX:
        summary["values"] = [_finite(v) for v in values.tolist()]
        return summary
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        return summary
    summary["stats"] = {
        "mean": _finite(float(finite.mean())),
        "std": _finite(float(finite.std(correction=0))),
        "min": _finite(float(finite.min())),
        "max": _finite(float(finite.max())),
        "l2": _finite(float(finite.norm())),
    }
    return summary


def build_baseline(
    nodeid: str,
    seed: int,
    base_seed: int,
    record: RunRecord,
    snapshot: dict[str, Any],
    tolerances: tuple[float, float],
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "test_id": nodeid,
        "seed": seed,
        "base_seed": base_seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tolerances": {"atol": tolerances[0], "rtol": tolerances[1]},
        "environment": snapshot,
        "steps": [
            {
                "step": s.step,
                "entries": {
                    k: entry_summary(e, with_stats=index in stat_steps)
                    for k, e in s.entries.items()
                },
            }
            for index, s in enumerate(record.steps)
            for stat_steps in [stat_step_indices(len(record.steps))]
        ],
    }


def dump_baseline(document: dict[str, Any]) -> str:
    """JSON with one line per recorded entry: small, and a change shows as changed lines."""
    import json

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


def load_baseline(path: Path) -> dict[str, Any]:
    """Read a baseline and check every entry, so a hand-edited file fails with its location."""
    document = read_json(path, schema=SCHEMA, max_version=SCHEMA_VERSION)
    problem = _malformed(document)
    if problem:
        raise StoredFileError(
            f"{path}: {problem} (hand-edited or damaged?); regenerate it with --repro-update"
        )
    return document


def _malformed(document: dict[str, Any]) -> str:
    if not isinstance(document.get("environment", {}), dict):
        return "'environment' is not an object"
    steps = document.get("steps")
    if not isinstance(steps, list):
        return "'steps' is not a list"
    for position, step in enumerate(steps):
        if (
            not isinstance(step, dict)
            or not isinstance(step.get("entries"), dict)
            or not (isinstance(step.get("step"), int))
        ):
            return f"steps[{position}] is not a {{'step': int, 'entries': {{...}}}} object"
        for key, entry in step["entries"].items():
            where = f"step {step['step']}, {key}"
            if not isinstance(entry, dict):
                return f"{where}: the entry is not an object"
            shape = entry.get("shape")
            if not (
                isinstance(entry.get("digest"), str)
                and isinstance(entry.get("dtype"), str)
                and isinstance(shape, list)
                and all(isinstance(n, int) for n in shape)
            ):
                return f"{where}: needs 'digest' and 'dtype' strings and a 'shape' list of ints"
            values = entry.get("values")
            if values is not None and (
                not isinstance(values, list) or len(values) != math.prod(shape)
            ):
                return f"{where}: 'values' must list {math.prod(shape)} numbers"
            stats = entry.get("stats")
            if stats is not None and (not isinstance(stats, dict) or set(stats) != set(STATS)):
                return f"{where}: 'stats' must have exactly {', '.join(STATS)}"
    return ""


def write_baseline(path: Path, document: dict[str, Any]) -> None:
    """Atomic, and serialised with a lock file so that concurrent writers never interleave."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        atomic_write_text(path, dump_baseline(document))
    try:
        os.unlink(str(path) + ".lock")
    except OSError:
        pass


@dataclass
class BaselineCheck:
    """The outcome of comparing a run with its baseline."""

    status: str  # "match" | "mismatch" | "structural"
    mode: str  # "bitwise" | "tolerance"
    reason: str  # why this mode
    env_differences: list[str] = field(default_factory=list)
    seed_note: str = ""  # set when the run's seed is not the baseline's
    step: int | None = None
    key: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status != "match"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "mode": self.mode,
            "reason": self.reason,
            "seed_note": self.seed_note,
            "env_differences": self.env_differences,
            "step": self.step,
            "key": self.key,
            "detail": self.lines,
        }


def relevant_env_differences(
    before: dict[str, Any], after: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """(determinism-relevant differences, all differences), formatted one per line."""
    from repro_check.core import environment

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
) -> BaselineCheck:
    relevant, _ = relevant_env_differences(baseline.get("environment", {}), snapshot)
    if allowed_nondeterminism:
        mode = "tolerance"
        reason = (
            f"the test allows nondeterminism ({allowed_nondeterminism}), so its bits vary "
            f"between runs; compared with atol={atol:g}, rtol={rtol:g}"
        )
    elif relevant:
        mode = "tolerance"
        reason = (
            f"the environment differs from the baseline's in {len(relevant)} "
            f"determinism-relevant way(s), so bitwise equality cannot be expected; "
            f"compared with atol={atol:g}, rtol={rtol:g}"
        )
    else:
        mode = "bitwise"
        reason = "the environment matches the baseline's in every determinism-relevant way"
    check = BaselineCheck("match", mode, reason, relevant)
    if seed is not None and baseline.get("seed") not in (None, seed):
        check.seed_note = (
            f"the seed differs: the baseline was recorded with root seed {baseline.get('seed')} "
            f"(--repro-seed={baseline.get('base_seed')}), this run uses {seed}; rerun with "
            f"--repro-seed={baseline.get('base_seed')} to compare like with like"
        )
    base_steps = baseline["steps"]
    now_steps = [s.step for s in record.steps]
    if [s["step"] for s in base_steps] != now_steps:
        check.status = "structural"
        check.lines.append(
            f"the baseline has {len(base_steps)} recorded steps, this run {len(now_steps)} "
            f"(baseline steps {_span([s['step'] for s in base_steps])}, now {_span(now_steps)})"
        )
        return check
    for base_step, step in zip(base_steps, record.steps, strict=True):
        base_entries = base_step["entries"]
        missing = [k for k in base_entries if k not in step.entries]
        extra = [k for k in step.entries if k not in base_entries]
        if missing or extra:
            check.status, check.step = "structural", step.step
            check.key = (missing or extra)[0]
            check.lines.append(
                f"step {step.step}: keys only in the baseline: {missing[:5]}; only now: {extra[:5]}"
            )
            return check
        for key, entry in step.entries.items():
            base = base_entries[key]
            fp = entry.fingerprint
            if base["dtype"] != fp.dtype or tuple(base["shape"]) != fp.shape:
                check.status, check.step, check.key = "structural", step.step, key
                check.lines.append(
                    f"step {step.step}, {key}: baseline {base['dtype']}{tuple(base['shape'])}, "
                    f"now {fp.dtype}{fp.shape}"
                )
                return check
            if base["digest"] == fp.digest:
                continue
            now = entry_summary(entry, with_stats="stats" in base or "values" in base)
            if mode == "bitwise":
                check.status, check.step, check.key = "mismatch", step.step, key
                check.lines.append(
                    f"first difference: step {step.step}, {key} "
                    f"({fp.dtype}, shape {fp.shape}) is no longer bitwise equal"
                )
                check.lines.extend(_describe_delta(base, now, atol, rtol, show_all=True))
                return check
            violations = _describe_delta(base, now, atol, rtol, show_all=False)
            if violations:
                check.status, check.step, check.key = "mismatch", step.step, key
                check.lines.append(
                    f"first difference beyond tolerance: step {step.step}, {key} "
                    f"({fp.dtype}, shape {fp.shape})"
                )
                check.lines.extend(violations)
                return check
    return check


def _span(steps: list[int]) -> str:
    return f"{steps[0]}..{steps[-1]}" if steps else "(none)"


def _describe_delta(
    base: dict[str, Any], now: dict[str, Any], atol: float, rtol: float, *, show_all: bool
) -> list[str]:
    """Lines describing how ``now`` differs from ``base``; only violations unless show_all."""
    lines = []
    if "values" in base and "values" not in now and not show_all:
        return [
            "    cannot compare with tolerances: this run kept no raw values for it (the "
            "spill budget was exhausted); raise --repro-spill-mb"
        ]
    if "values" in base and "values" in now:
        worst = None
        for index, (b, n) in enumerate(zip(base["values"], now["values"], strict=True)):
            b, n = _as_float(b), _as_float(n)
            if math.isnan(b) and math.isnan(n):
                continue
            diff = abs(n - b)
            allowed = atol + rtol * abs(b)
            if (math.isnan(diff) or diff > allowed or show_all) and (
                worst is None or not diff <= worst[1]
            ):
                worst = (index, diff, b, n, allowed)
        if worst is not None and (show_all or not worst[1] <= worst[4]):
            index, diff, b, n, allowed = worst
            lines.append(
                f"    element {index}: baseline {b!r}, now {n!r} (|diff| {diff:.3g}, "
                f"allowed {allowed:.3g})"
            )
        return lines
    base_stats, now_stats = base.get("stats"), now.get("stats")
    if base_stats and not now_stats and not show_all:
        return [
            "    cannot compare with tolerances: this run kept no raw values for it (the "
            "spill budget was exhausted); raise --repro-spill-mb"
        ]
    if not base_stats or not now_stats:
        if show_all:
            lines.append(
                f"    fingerprint {base['digest']} -> {now['digest']} (statistics are kept "
                f"for {STAT_STEPS} evenly spaced steps only)"
            )
        return lines
    numel = math.prod(base["shape"]) or 1
    # A statistic's scale is the tensor's RMS: a mean near zero is not held to a tolerance
    # relative to itself (which would be ~0), but to the magnitude of the values it averages.
    rms = _as_float(base_stats["l2"]) / math.sqrt(numel)
    for name in STATS:
        b, n = _as_float(base_stats[name]), _as_float(now_stats[name])
        diff = abs(n - b)
        scale = abs(b) if name == "l2" else max(abs(b), rms)
        allowed = atol + rtol * scale
        if show_all or not diff <= allowed:
            lines.append(
                f"    {name}: baseline {b:.9g}, now {n:.9g} (|diff| {diff:.3g}, "
                f"allowed {allowed:.3g})"
            )
    return lines


def find_unused(folders: set[Path], used: set[Path]) -> list[Path]:
    """Baseline files in the given folders that no collected test uses any more."""
    unused = []
    for folder in sorted(folders):
        if folder.is_dir():
            unused.extend(p for p in sorted(folder.glob("*.json")) if p not in used)
    return unused
