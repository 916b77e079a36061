"""Atomic, versioned file IO shared by every stored format.

Every file repro-check writes goes through here: a temp file in the target folder, fsync, then
``os.replace`` -- so a crash or Ctrl-C never leaves a half-written report, baseline or manifest.
Every JSON document carries ``schema`` (its kind) and ``schema_version``; readers refuse newer
versions and say how to fix it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO


class StoredFileError(ValueError):
    """A stored file (report, baseline, manifest, checkpoint) is missing, corrupt or incompatible."""


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success rename it over ``path``, else remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_writer(path) as handle:
        handle.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dump_json(document: dict[str, Any]) -> str:
    """Stable, diff-friendly JSON (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"


def write_json(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    atomic_write_text(path, dump_json(document))


def read_json(path: str | os.PathLike[str], *, schema: str, max_version: int) -> dict[str, Any]:
    """Read a versioned JSON document, with a clear error for every way it can be wrong."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise StoredFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise StoredFileError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoredFileError(
            f"{p}: not valid JSON ({exc}); the file is corrupt or truncated. "
            f"Restore it from version control or delete it and regenerate it."
        ) from None
    if not isinstance(document, dict) or document.get("schema") != schema:
        found = document.get("schema") if isinstance(document, dict) else type(document).__name__
        raise StoredFileError(f"{p}: expected a {schema!r} document, found {found!r}")
    version = document.get("schema_version")
    if not isinstance(version, int):
        raise StoredFileError(f"{p}: missing or invalid 'schema_version'")
    if version > max_version:
        raise StoredFileError(
            f"{p}: schema_version {version} is newer than this repro-check understands "
            f"({max_version}); upgrade repro-check (pip install -U repro-check)."
        )
    return document
