"""Shared by the environment tests: real snapshots of this machine, edited field by field, and
the `repro-check` command line run in a fresh process."""

from __future__ import annotations

import copy
import functools
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from repro_check import environment as env

# Variables the tests set themselves; removed so results do not depend on the calling shell.
CONTROLLED = ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "MKL_CBWR")

DELETE = object()


def drop_controlled(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CONTROLLED:
        monkeypatch.delenv(name, raising=False)


@functools.cache
def _captured() -> dict[str, Any]:
    saved = {name: os.environ.pop(name) for name in CONTROLLED if name in os.environ}
    try:
        return env.capture(include_packages=True)
    finally:
        os.environ.update(saved)


def full_snapshot() -> dict[str, Any]:
    """A real snapshot of this machine, with packages (captured once; each caller gets a copy)."""
    return copy.deepcopy(_captured())


def mutate(snapshot: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``snapshot`` with ``path`` (``"gpus.devices[0].name"``) set to ``value`` (or
    removed, with :data:`DELETE`); missing dicts on the way are created."""
    out = copy.deepcopy(snapshot)
    parts = [p for p in re.split(r"\.|(?=\[)", path) if p]
    node: Any = out
    for part in parts[:-1]:
        key: Any = int(part[1:-1]) if part.startswith("[") else part
        if isinstance(node, dict) and not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    last: Any = int(parts[-1][1:-1]) if parts[-1].startswith("[") else parts[-1]
    if value is DELETE:
        node.pop(last, None) if isinstance(node, dict) else node.pop(last)
    else:
        node[last] = copy.deepcopy(value)
    return out


def run_cli(args: list[str], cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m repro_check.cli ARGS`` in a fresh process, without the controlled variables."""
    child_env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    child_env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "repro_check.cli", *args],
        cwd=cwd,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
