"""Checkpoints: safetensors files with a JSON manifest of provenance -- never pickle.

``save_checkpoint`` writes ``NAME.safetensors`` and ``NAME.json`` atomically. The manifest
records the test id, seeds, step, environment summary, a digest of the safetensors file and the
fingerprint of every tensor, so that ``load_checkpoint`` can tell a truncated or edited file from
a good one before anybody trusts it. ``load_tensors`` also reads plain ``torch.save`` files, with
``weights_only=True`` (no code runs while loading).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repro_check.core.atomic import StoredFileError, atomic_write_bytes, read_json, write_json
from repro_check.core.compare import TensorDiff, tensor_diff
from repro_check.core.fingerprint import fingerprint_bytes, fingerprint_tensor

if TYPE_CHECKING:
    import torch

MANIFEST_SCHEMA = "repro-check/checkpoint"
MANIFEST_VERSION = 1
UNSUPPORTED_DTYPES = ("complex32", "complex64", "complex128")


def manifest_path(path: str | os.PathLike[str]) -> Path:
    return Path(path).with_suffix(".json")


def save_checkpoint(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> Path:
    """Write ``path`` (.safetensors) and its manifest; returns the manifest's path."""
    from safetensors.torch import save

    target = Path(path).with_suffix(".safetensors")
    storable = {
        k: t.detach().cpu().contiguous()
        for k, t in tensors.items()
        if str(t.dtype).removeprefix("torch.") not in UNSUPPORTED_DTYPES
    }
    skipped = sorted(set(tensors) - set(storable))
    data = save(storable)
    atomic_write_bytes(target, data)
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "schema_version": MANIFEST_VERSION,
        "file": target.name,
        "file_xxh3": fingerprint_bytes(data),
        "file_bytes": len(data),
        "tensors": {k: fingerprint_tensor(t).to_json() for k, t in storable.items()},
        "skipped_unsupported_dtype": skipped,
        **metadata,
    }
    write_json(manifest_path(target), manifest)
    return manifest_path(target)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` and verify it against its manifest."""
    tensor_path = Path(path).with_suffix(".safetensors")
    manifest = read_json(
        manifest_path(tensor_path), schema=MANIFEST_SCHEMA, max_version=MANIFEST_VERSION
    )
    _check_manifest(manifest, manifest_path(tensor_path))
    try:
        data = tensor_path.read_bytes()
    except OSError as exc:
        raise StoredFileError(f"{tensor_path}: cannot read ({exc.strerror})") from None
    if len(data) != manifest["file_bytes"] or fingerprint_bytes(data) != manifest["file_xxh3"]:
        raise StoredFileError(
            f"{tensor_path}: the file does not match its manifest ({len(data)} bytes, expected "
            f"{manifest['file_bytes']}): it is truncated or was modified after it was written"
        )
    tensors = _parse_safetensors(data, tensor_path)
    for key, expected in manifest["tensors"].items():
        if key not in tensors:
            raise StoredFileError(
                f"{tensor_path}: tensor {key!r} listed in the manifest is missing"
            )
        actual = fingerprint_tensor(tensors[key]).to_json()
        if actual != expected:
            raise StoredFileError(f"{tensor_path}: tensor {key!r} does not match its fingerprint")
    return tensors, manifest


#: Manifest fields that load_checkpoint relies on, with the JSON type each must have.
_MANIFEST_FIELDS: dict[str, tuple[type, str]] = {
    "file_bytes": (int, "an integer (the size of the .safetensors file)"),
    "file_xxh3": (str, "a string (the xxh3 digest of the .safetensors file)"),
    "tensors": (dict, "an object mapping each tensor's key to its fingerprint"),
}


def _check_manifest(manifest: dict[str, Any], path: Path) -> None:
    """A hand-edited or foreign manifest fails with the field named, not with a KeyError."""
    for name, (kind, expected) in _MANIFEST_FIELDS.items():
        value = manifest.get(name)
        if name not in manifest or isinstance(value, bool) or not isinstance(value, kind):
            found = "missing" if name not in manifest else f"{type(value).__name__} {value!r:.60}"
            raise StoredFileError(
                f"{path}: field {name!r} must be {expected}, found {found}; the manifest was "
                f"edited or not written by repro-check -- write the checkpoint again"
            )
    for key, fingerprint in manifest["tensors"].items():
        if not isinstance(fingerprint, list):
            raise StoredFileError(
                f"{path}: tensors[{key!r}] must be a fingerprint list, found "
                f"{type(fingerprint).__name__}; write the checkpoint again"
            )


def _parse_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise StoredFileError(f"{path}: not a valid safetensors file ({exc})") from None


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors from a repro-check checkpoint, a bare .safetensors file or a ``torch.save`` file
    holding a (nested) state dict -- the last with ``weights_only=True``, never arbitrary code."""
    import torch

    p = Path(path)
    if not p.exists():
        raise StoredFileError(f"{p}: no such file")
    if p.suffix in (".safetensors", ".json"):
        if manifest_path(p).exists():
            return load_checkpoint(p)[0]
        return _parse_safetensors(p.read_bytes(), p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next(
            (line for line in lines if "Unsupported global" in line), lines[0] if lines else ""
        )
        raise StoredFileError(
            f"{p}: refused by torch.load(weights_only=True) ({reason}). The file holds objects "
            f"other than tensors and plain containers, or is corrupt; repro-check never unpickles "
            f"arbitrary objects. Save a state_dict of tensors, or use safetensors."
        ) from None
    from repro_check.core.record import flatten_state

    if isinstance(obj, torch.Tensor):
        return {"tensor": obj}
    if not isinstance(obj, dict):
        raise StoredFileError(f"{p}: expected a state dict, found {type(obj).__name__}")
    flat: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        for key, leaf in flatten_state(str(name), value, top_level=False):
            if isinstance(leaf, torch.Tensor):
                flat[key] = leaf
    return flat


@dataclass
class KeyDiff:
    key: str
    status: str  # "equal" | "differs" | "only-in-a" | "only-in-b" | "dtype" | "shape"
    detail: TensorDiff | None = None
    note: str = ""


def diff_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[KeyDiff]:
    """Key by key: presence, dtype, shape, bits, and the element-level difference."""
    result = []
    for key in list(a) + [k for k in b if k not in a]:
        if key not in b:
            result.append(KeyDiff(key, "only-in-a"))
        elif key not in a:
            result.append(KeyDiff(key, "only-in-b"))
        elif a[key].dtype != b[key].dtype:
            result.append(KeyDiff(key, "dtype", note=f"{a[key].dtype} vs {b[key].dtype}"))
        elif a[key].shape != b[key].shape:
            result.append(
                KeyDiff(key, "shape", note=f"{tuple(a[key].shape)} vs {tuple(b[key].shape)}")
            )
        elif fingerprint_tensor(a[key]).same_bits(fingerprint_tensor(b[key])):
            result.append(KeyDiff(key, "equal"))
        else:
            result.append(KeyDiff(key, "differs", tensor_diff(a[key], b[key])))
    return result
