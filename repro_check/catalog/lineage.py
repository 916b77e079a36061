"""Lineage facts of a run: its id, the process that owns it, the code it ran, what it recorded.

Run ids are UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 bits from ``os.urandom``.
They sort by start time and never come from the global RNGs a test seeds (``random``, numpy,
torch), so seeding cannot make two runs share an id.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repro_check.core.record import RunRecord

BLOCK = 1 << 20


def new_run_id(now_ns: int | None = None, entropy: bytes | None = None) -> str:
    """A UUIDv7 string: time-ordered, 74 random bits from the OS (never a seeded RNG)."""
    millis = (time.time_ns() if now_ns is None else now_ns) // 1_000_000
    rand = int.from_bytes(os.urandom(10) if entropy is None else entropy, "big")
    value = (millis & (2**48 - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (rand >> 62 & 0xFFF) << 64  # rand_a: 12 bits
    value |= 0b10 << 62  # the RFC 4122 variant
    value |= rand & (2**62 - 1)  # rand_b: 62 bits
    return str(uuid.UUID(int=value))


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), so that a reused pid
    is not mistaken for the run's own process; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def owner() -> dict[str, Any]:
    """The host and process recorded on a run row at its start."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "process_start": process_start(pid)}


def alive(host: str, pid: int, started: str | None) -> bool | None:
    """Whether the process that owns a ``running`` row still runs: None when it ran elsewhere."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return started is None or process_start(pid) == started


def git_lineage(
    snapshot: Mapping[str, Any] | None, exclude: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, Any]:
    """Commit, branch, dirty flag and the hashes of the uncommitted diff and of the untracked
    files that matter, from an environment snapshot's ``git`` section (None where git had
    nothing to say). Untracked files under ``exclude`` (the report folder, the catalog: they
    change with every session), in ``__pycache__`` or ending in ``.pyc`` do not matter."""
    git = (snapshot or {}).get("git") or {}
    if not isinstance(git, Mapping) or git.get("status") != "ok":
        return {"commit": None, "branch": None, "dirty": None, "diff": None, "untracked": None}
    diff = git.get("diff_sha256")
    untracked = untracked_that_matter(str(git.get("toplevel") or ""), exclude)
    return {
        "commit": git.get("commit"),
        "branch": git.get("branch"),
        "dirty": bool(git.get("dirty")) or bool(untracked and untracked["files"]),
        "diff": diff if isinstance(diff, str) else None,
        "untracked": untracked["sha256"] if untracked and untracked["files"] else None,
    }


def untracked_that_matter(
    top: str, exclude: Sequence[str | os.PathLike[str]]
) -> dict[str, Any] | None:
    """The untracked, not ignored files of the repository at ``top`` that can change what the
    code does, hashed by path and content (the environment probe's rule and limits)."""
    from repro_check.environment.probes.git_state import _git, _hash_untracked

    if not top or not os.path.isdir(top):
        return None
    try:
        found = _git(["ls-files", "--others", "--exclude-standard", "-z"], top)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if found.returncode != 0:
        return None
    real_top = Path(top).resolve()
    skipped = []
    for folder in exclude:
        try:
            skipped.append(Path(folder).resolve().relative_to(real_top).as_posix().encode())
        except ValueError:
            continue  # outside the repository
    kept = [
        path
        for path in found.stdout.split(b"\0")
        if path
        and not path.endswith(b".pyc")
        and b"__pycache__" not in path.split(b"/")
        and not any(path == s or path.startswith(s + b"/") for s in skipped)
    ]
    hashed = _hash_untracked(top, kept)
    return {"sha256": hashed["sha256"], "files": len(kept), "complete": hashed["complete"]}


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """``(sha256 hex, size in bytes)`` of a file's content."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def record_digests(record: RunRecord) -> dict[str, Any]:
    """What a run recorded, as digests: one for the whole record (``runs verify`` compares
    it), one per step, and the per-key table ``runs diff`` walks to the first differing key."""
    whole = hashlib.blake2b(digest_size=16)
    steps, table = [], []
    keys: dict[str, int] = {}
    for step in record.steps:
        h = hashlib.blake2b(digest_size=16)
        h.update(f"step {step.step}\n".encode())
        row: dict[int, str] = {}
        for key, entry in step.entries.items():
            fp = entry.fingerprint
            h.update(f"{key}\0{fp.digest}\0{fp.dtype}\0{fp.shape}\n".encode())
            row[keys.setdefault(key, len(keys))] = fp.digest
        digest = h.hexdigest()
        whole.update(digest.encode())
        steps.append([step.step, digest])
        table.append([step.step, [row.get(i) for i in range(len(keys))]])
    return {
        "record_digest": whole.hexdigest(),
        "step_digests": steps,
        "key_table": {"keys": list(keys), "steps": table},
    }


def first_difference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    """Where two runs' key tables (:func:`record_digests`) first differ: ``step 3: model.w``."""
    if not a or not b:
        return "not comparable: a run's per-key digests are missing"
    steps_a = {int(s): row for s, row in a["steps"]}
    steps_b = {int(s): row for s, row in b["steps"]}
    for step in sorted(set(steps_a) | set(steps_b)):
        if step not in steps_a or step not in steps_b:
            return f"step {step}: recorded by only one run"
        row_a = dict(zip(a["keys"], steps_a[step], strict=False))
        row_b = dict(zip(b["keys"], steps_b[step], strict=False))
        for key in [*a["keys"], *(k for k in b["keys"] if k not in row_a)]:
            if row_a.get(key) != row_b.get(key):
                if row_a.get(key) is None or row_b.get(key) is None:
                    return f"step {step}: {key} recorded by only one run"
                return f"step {step}: {key}"
    return ""
