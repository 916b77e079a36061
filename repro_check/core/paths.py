"""Paths derived from test ids, and the filesystem facts the rest of the project reports.

One rule turns a test id into file and folder names everywhere (baselines, checkpoints, replica
folders): :func:`id_to_name` keeps a short id that is already a safe file name as it is, and
otherwise keeps a cleaned prefix followed by ``~`` and a hash of the *exact* id. ``~`` never
occurs in a kept name, so a hashed name cannot equal a kept one, and two ids never share a name
(``a b``, ``a::b`` and ``a_b`` stay apart); every name fits the 255-byte limit of a path
component. :func:`nodeid_path` lays a whole test id out as folders the same way.

Writes into a report folder stay inside it (:func:`inside`), and a full disk is named as such
(:func:`no_space_message`) instead of surfacing as a missing result.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from pathlib import Path, PurePosixPath

#: Characters a kept name may contain (``[]`` and ``=`` keep parametrized ids readable).
_UNSAFE = re.compile(r"[^A-Za-z0-9_.=\[\]-]+")
_KEPT = re.compile(r"[A-Za-z0-9_=\[\]-][A-Za-z0-9_.=\[\]-]*")
HASH_MARK = "~"
MAX_NAME = 120  # characters of the id kept in front of the hash (well under 255 bytes)
_DIGEST_BYTES = 12  # 96 bits: no accidental collision, and none an adversary can construct


def id_to_name(text: str, limit: int = MAX_NAME) -> str:
    """One file or folder name per id: the id itself when it is a short, safe name (no
    separators, not hidden, not ``..``), else ``<cleaned prefix>~<hash of the exact id>``."""
    if len(text) <= limit and _KEPT.fullmatch(text):
        return text
    prefix = _UNSAFE.sub("_", text).lstrip(".")[:limit] or "id"
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=_DIGEST_BYTES)
    return f"{prefix}{HASH_MARK}{digest.hexdigest()}"


def nodeid_path(nodeid: str) -> Path:
    """A test id as a relative path: ``<folders of the file>/<file stem>/<test name>``.

    Every component goes through :func:`id_to_name`, so ``..`` (a test file outside the
    rootdir) or an absolute path cannot lead out of the folder the result is joined to. The
    file's ``.py`` is dropped; another suffix is kept, marked, so ``a.txt`` and ``a.txt.py``
    do not meet.
    """
    file_part, _, name = nodeid.partition("::")
    parts = [part for part in PurePosixPath(file_part.replace("\\", "/")).parts if part != "/"]
    filename = parts.pop() if parts else ""
    stem = filename[:-3] if filename.endswith(".py") else f"{filename}{HASH_MARK}file"
    return Path(*(id_to_name(part) for part in parts), id_to_name(stem), id_to_name(name))


class UnsafePathError(ValueError):
    """A path that would lead out of the folder it must stay in (through a symbolic link)."""


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str], what: str) -> Path:
    """``path``, checked to resolve inside ``root`` (links followed as far as the path exists).

    ``root`` itself counts as it is named, not where a link there points: a ``checkpoints``
    folder that is a symbolic link to elsewhere is refused, not written through (a link
    further up, e.g. the report folder itself, is the user's choice and is followed).
    """
    named = Path(root).absolute()
    real_root = named.parent.resolve() / named.name
    real = Path(path).absolute().resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(
            f"refusing to write {what} to {path}: it resolves to {real}, outside {real_root} "
            f"(a symbolic link?); remove the link or choose another folder"
        )
    return Path(path)


NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS


def no_space_message(path: str | os.PathLike[str], what: str) -> str:
    """``no space left in <dir> while writing <what>``, with where it happened and the fix."""
    folder = Path(path).parent
    return (
        f"no space left in {folder} while writing {what} ({Path(path).name}); free space "
        f"there, or point TMPDIR (replica files) or --repro-report at a disk with room"
    )


class NoSpaceError(OSError):
    """A write failed for want of disk space; the message says where and what."""

    def __init__(self, path: str | os.PathLike[str], what: str) -> None:
        super().__init__(errno.ENOSPC, no_space_message(path, what), str(path))

    def __str__(self) -> str:
        return str(self.strerror)
