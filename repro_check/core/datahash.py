"""Content hashes of the data a test declares (``repro.record_data(name, tensor_or_path)``).

A version is a sha256 of the content, never of a name or a timestamp: a tensor or array by its
dtype, shape and raw bytes; a file by its bytes; a directory the way DVC hashes one -- every
regular file under it (symbolic links to files followed, ``.git`` skipped), by sorted relative
POSIX path and that file's own hash, then a hash of that listing. Renaming a file, changing one
byte, or adding a file changes the directory's version; touching a file does not.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

BLOCK = 1 << 20
SKIPPED_DIRS = frozenset({".git", ".dvc", "__pycache__"})


def _hex(digest: Any) -> str:
    return "sha256:" + digest.hexdigest()


def hash_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return _hex(digest)


def directory_listing(path: str | os.PathLike[str]) -> list[tuple[str, str, int]]:
    """``(relative POSIX path, file hash, bytes)`` of every file under ``path``, sorted."""
    root = Path(path)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in files:
            full = Path(folder, name)
            if not full.is_file():  # a dangling link, a socket
                continue
            found.append((full.relative_to(root).as_posix(), hash_file(full), full.stat().st_size))
    return sorted(found)


def hash_directory(path: str | os.PathLike[str]) -> dict[str, Any]:
    listing = directory_listing(path)
    canonical = json.dumps([[rel, digest] for rel, digest, _ in listing], separators=(",", ":"))
    return {
        "kind": "directory",
        "digest": _hex(hashlib.sha256(canonical.encode("utf-8"))),
        "files": len(listing),
        "bytes": sum(size for _, _, size in listing),
    }


def hash_array(value: Any) -> dict[str, Any]:
    """A tensor or numpy array: dtype, shape and the raw bytes of its elements."""
    import torch

    from repro_check.core.fingerprint import dtype_name, raw_bytes

    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(value)
    tensor = tensor.detach()
    data = raw_bytes(tensor)
    header = f"{dtype_name(tensor.dtype)}{tuple(tensor.shape)}".encode()
    digest = hashlib.sha256(header + b"\0")
    digest.update(memoryview(data))
    return {
        "kind": "tensor",
        "digest": _hex(digest),
        "dtype": dtype_name(tensor.dtype),
        "shape": list(tensor.shape),
        "bytes": int(data.nbytes),
    }


def data_version(value: Any) -> dict[str, Any]:
    """The version of ``value``: a tensor, numpy array, bytes, or a path to a file or folder."""
    import numpy as np

    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return {"kind": "bytes", "digest": _hex(hashlib.sha256(data)), "bytes": len(data)}
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.is_dir():
            return {**hash_directory(path), "path": str(path.resolve())}
        if path.is_file():
            size = path.stat().st_size
            return {"kind": "file", "digest": hash_file(path), "bytes": size, "path": str(path)}
        raise FileNotFoundError(
            f"repro.record_data(): {path} is neither a file nor a folder; pass the data set's "
            f"path, or the tensor itself"
        )
    if isinstance(value, np.ndarray) or type(value).__module__.startswith("torch"):
        try:
            return hash_array(value)
        except TypeError:
            pass
    raise TypeError(
        f"repro.record_data(): cannot version a {type(value).__module__}."
        f"{type(value).__qualname__}; pass a tensor, a numpy array, bytes, or a path to a file or "
        f"folder"
    )
