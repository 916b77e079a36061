"""Capture, save, load, hash and summarise snapshots; read one out of a baseline or report folder."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from repro_check.core.atomic import StoredFileError, parse_json_file, write_json
from repro_check.environment._common import (
    SCHEMA,
    SCHEMA_VERSION,
    VOLATILE_KEYS,
    get,
    guard,
    jsonable,
)
from repro_check.environment.probes import (
    clear_cache,
    env_vars,
    git_state,
    nvml,
    system,
    torch_state,
)
from repro_check.environment.probes import packages as packages_probe

#: Documents that embed or point at a snapshot. Named here, not imported, so that the core does
#: not depend on the layers above it.
BASELINE_SCHEMA = "repro-check/baseline"
REPORT_SCHEMA = "repro-check/report"
REPORT_ENVIRONMENT_FILE = "environment.json"

#: A real snapshot nests about six levels deep; anything far deeper was not written by us.
MAX_DEPTH = 32


def _repro_check_version() -> str | None:
    try:
        from repro_check import __version__  # noqa: PLC0415
    except ImportError:
        return None
    return __version__


def capture(
    repo_dir: str | None = None,
    include_packages: bool = True,
    *,
    init_cuda: bool = False,
    refresh: bool = False,
) -> dict[str, Any]:
    """Snapshot everything that decides the numbers; never raises for a failing probe.

    ``repo_dir`` is where git looks (default: the current directory). ``init_cuda`` allows
    initialising CUDA to read per-device properties through torch (otherwise they are read only
    when CUDA is already initialised; NVML covers GPUs either way). ``refresh`` drops the
    per-process cache of static facts first.
    """
    start = time.perf_counter()
    if refresh:
        clear_cache()
    snapshot: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "captured_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "repro_check_version": _repro_check_version(),
        "host": guard(lambda: {"hostname": socket.gethostname()}),
        "python": guard(system.python_info),
        "platform": guard(system.platform_info),
        "cpu": guard(system.cpu_info),
        "threads": guard(system.threads_info),
        "torch": guard(torch_state.torch_info),
        "determinism": guard(torch_state.determinism_info),
        "backends": guard(torch_state.backends_info),
        "blas": guard(torch_state.blas_info),
        "cuda": guard(lambda: torch_state.cuda_info(init_cuda)),
        "gpus": guard(nvml.gpus_info),
        "packages": (
            guard(packages_probe.packages_cached)
            if include_packages
            else {"status": "not-captured", "hint": "capture(include_packages=True)"}
        ),
        "git": guard(lambda: git_state.git_info(repo_dir)),
        "env_vars": guard(env_vars.env_vars),
    }
    snapshot = jsonable(snapshot)
    snapshot["capture_seconds"] = round(time.perf_counter() - start, 4)
    return snapshot


def _gpu_names(snapshot: dict[str, Any]) -> list[str]:
    for path in ("gpus.devices", "cuda.devices"):
        devices = get(snapshot, path)
        if isinstance(devices, list) and devices:
            return [str(d.get("name")) for d in devices if isinstance(d, dict)]
    return []


def summary(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The handful of fields a report header needs."""
    return {
        "python": get(snapshot, "python.version"),
        "platform": get(snapshot, "platform.platform"),
        "torch": get(snapshot, "torch.version"),
        "cpu_capability": get(snapshot, "cpu.capability"),
        "threads": {
            "intra_op": get(snapshot, "threads.torch_num_threads"),
            "inter_op": get(snapshot, "threads.torch_num_interop_threads"),
        },
        "deterministic": {
            "algorithms": get(snapshot, "determinism.deterministic_algorithms"),
            "warn_only": get(snapshot, "determinism.deterministic_warn_only"),
            "cudnn_deterministic": get(snapshot, "determinism.cudnn.deterministic"),
            "cudnn_benchmark": get(snapshot, "determinism.cudnn.benchmark"),
        },
        "cuda": {
            "built": get(snapshot, "cuda.built"),
            "available": get(snapshot, "cuda.available"),
            "cudnn": get(snapshot, "cuda.cudnn.loaded_version"),
        },
        "gpus": _gpu_names(snapshot),
        "git": {"commit": get(snapshot, "git.commit"), "dirty": get(snapshot, "git.dirty")},
    }


def snapshot_hash(snapshot: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the snapshot, without the capture time."""
    body = {k: v for k, v in snapshot.items() if k not in VOLATILE_KEYS}
    canonical = json.dumps(
        jsonable(body), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def save(snapshot: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the snapshot atomically as versioned JSON."""
    if snapshot.get("schema") != SCHEMA:
        raise ValueError(f"not an environment snapshot (schema={snapshot.get('schema')!r})")
    write_json(path, jsonable(snapshot))


# ------------------------------------------------------------------------------------ reading


def _parse(path: Path) -> Any:
    """The JSON in ``path``; :class:`StoredFileError` (never a traceback) for anything else."""
    if path.is_dir():
        raise StoredFileError(f"{path}: is a folder, not a snapshot file")
    return parse_json_file(path)


def _too_deep(node: Any) -> bool:
    stack = [(node, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return False


def _kind(document: Any) -> str:
    found = document.get("schema") if isinstance(document, dict) else type(document).__name__
    text = repr(found)
    return text if len(text) <= 80 else text[:77] + "..."


def _checked(document: Any, where: str) -> dict[str, Any]:
    """``document`` when it is a snapshot this release reads; a one-line error otherwise."""
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise StoredFileError(f"{where}: expected a {SCHEMA!r} document, found {_kind(document)}")
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoredFileError(f"{where}: missing or invalid 'schema_version'")
    if version > SCHEMA_VERSION:
        raise StoredFileError(
            f"{where}: schema_version {version} is newer than this repro-check understands "
            f"({SCHEMA_VERSION}); upgrade repro-check (pip install -U repro-check)."
        )
    if _too_deep(document):
        raise StoredFileError(
            f"{where}: nested deeper than {MAX_DEPTH} levels, which no snapshot is (damaged or "
            f"hand-made?); regenerate it with: repro-check env -o FILE"
        )
    return document


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a snapshot file; :class:`StoredFileError` with a clear message when it is missing,
    corrupt, of another kind, newer than this release or absurdly nested."""
    return _checked(_parse(Path(path)), str(path))


def load_any(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The snapshot in a snapshot file, a baseline file (its embedded environment), a report
    folder or its ``report.json`` (the folder's ``environment.json``)."""
    p = Path(path)
    if p.is_dir():
        if not (p / REPORT_ENVIRONMENT_FILE).is_file():
            raise StoredFileError(
                f"{p}: no {REPORT_ENVIRONMENT_FILE} in this folder; expected an environment "
                f"snapshot, a baseline file or a report folder (pytest --repro writes "
                f"{REPORT_ENVIRONMENT_FILE} into its report folder)"
            )
        return load(p / REPORT_ENVIRONMENT_FILE)
    document = _parse(p)
    kind = document.get("schema") if isinstance(document, dict) else None
    if kind == BASELINE_SCHEMA:
        embedded = document.get("environment")
        if not isinstance(embedded, dict) or not embedded:
            raise StoredFileError(
                f"{p}: this baseline carries no environment snapshot; regenerate it with "
                f"pytest --repro --repro-update"
            )
        return _checked(embedded, f"{p} (its 'environment')")
    if kind == REPORT_SCHEMA:
        name = get(document, "session.environment_file") or REPORT_ENVIRONMENT_FILE
        # Only a file name beside the report: a report cannot send us elsewhere.
        target = p.parent / Path(str(name)).name
        if not target.is_file():
            raise StoredFileError(f"{p}: the report's snapshot {target} is missing")
        return load(target)
    if kind == SCHEMA:
        return _checked(document, str(p))
    raise StoredFileError(
        f"{p}: expected an environment snapshot, a baseline file or a report folder, "
        f"found {_kind(document)}"
    )
