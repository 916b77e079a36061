"""Installed distributions, with PEP 610 ``direct_url.json`` origins (credentials masked)."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from repro_check.environment._common import error_of, guard, scrub_credentials


def normalize_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_entry(dist: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": dist.metadata["Name"], "version": dist.version}
    installer = guard(lambda: (dist.read_text("INSTALLER") or "").strip() or None)
    if installer:
        entry["installer"] = installer
    raw = guard(lambda: dist.read_text("direct_url.json"))
    if isinstance(raw, str) and raw.strip():
        try:
            direct = json.loads(raw)
        except json.JSONDecodeError as exc:
            entry["direct_url"] = error_of(exc)
            return entry
        if not isinstance(direct, dict):
            return entry
        url = direct.get("url")
        # pip records the URL as typed: a token in it would otherwise travel with every report.
        entry["url"] = scrub_credentials(url) if isinstance(url, str) else None
        dir_info = direct.get("dir_info") or {}
        vcs_info = direct.get("vcs_info") or {}
        archive_info = direct.get("archive_info") or {}
        entry["editable"] = bool(dir_info.get("editable", False))
        if vcs_info:
            entry["vcs"] = vcs_info.get("vcs")
            entry["commit_id"] = vcs_info.get("commit_id")
            if vcs_info.get("requested_revision"):
                entry["requested_revision"] = vcs_info["requested_revision"]
        elif archive_info:
            hashes = archive_info.get("hashes") or {}
            digest = hashes.get("sha256") or archive_info.get("hash")
            if digest:
                entry["archive_hash"] = digest if "=" in digest else f"sha256={digest}"
        elif dir_info:
            entry["local_directory"] = True
    return entry


@functools.lru_cache(maxsize=1)
def packages_cached() -> dict[str, Any]:
    import importlib.metadata as metadata  # noqa: PLC0415

    packages: dict[str, Any] = {}
    for dist in metadata.distributions():
        try:
            name = dist.metadata["Name"]
        except Exception:  # noqa: BLE001 - broken metadata
            continue
        if not name:
            continue
        key = normalize_name(name)
        if key in packages:  # the first one on sys.path is the one that imports
            continue
        packages[key] = guard(lambda d=dist: package_entry(d))
    return dict(sorted(packages.items()))
