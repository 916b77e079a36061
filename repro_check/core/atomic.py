"""Atomic, versioned file IO shared by every stored format.

Every file repro-check writes goes through here: a temp file in the target folder, fsync, then
``os.replace`` -- so a crash or Ctrl-C never leaves a half-written report, baseline or manifest.
Every JSON document carries ``schema`` (its kind) and ``schema_version``; readers refuse newer
versions and say how to fix it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
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


# --- the one JSON policy for floats: JSON has no NaN or infinity, so non-finite values are
# written as the strings "nan", "inf" and "-inf" (readable, and distinct from a missing null).

NONFINITE_WORDS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_float(x: float) -> float | str:
    """A float as JSON can hold it: itself when finite, else "nan" / "inf" / "-inf"."""
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


def decode_float(value: Any) -> float:
    """The inverse of :func:`encode_float` (numbers pass through; other strings are refused)."""
    if isinstance(value, str):
        if value.lower() in NONFINITE_WORDS:
            return NONFINITE_WORDS[value.lower()]
        raise ValueError(f"{value!r} is not a number (expected a number, 'nan', 'inf' or '-inf')")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


def json_safe(value: Any) -> Any:
    """Plain JSON types, recursively: numpy scalars and arrays become Python numbers and lists,
    tuples become lists, non-finite floats follow :func:`encode_float`."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors
        return json_safe(value.tolist())
    return str(value)


def parse_json_file(path: str | os.PathLike[str]) -> Any:
    """Read and parse a JSON file; every way it can fail is a :class:`StoredFileError` naming the
    file (including absurd nesting, which would otherwise end in a RecursionError)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise StoredFileError(f"{p}: no such file") from None
    except OSError as exc:
        raise StoredFileError(f"{p}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoredFileError(
            f"{p}: not valid JSON ({exc}); the file is corrupt or truncated. "
            f"Restore it from version control or delete it and regenerate it."
        ) from None
    except RecursionError:
        raise StoredFileError(
            f"{p}: JSON nested too deeply to be a file repro-check wrote; "
            f"restore it from version control or delete it and regenerate it."
        ) from None


def dump_json(document: dict[str, Any]) -> str:
    """Stable, diff-friendly JSON (sorted keys, two-space indent, trailing newline)."""
    return json.dumps(document, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n"


def write_json(path: str | os.PathLike[str], document: dict[str, Any]) -> None:
    atomic_write_text(path, dump_json(document))


def read_json(path: str | os.PathLike[str], *, schema: str, max_version: int) -> dict[str, Any]:
    """Read a versioned JSON document, with a clear error for every way it can be wrong."""
    p = Path(path)
    document = parse_json_file(p)
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
