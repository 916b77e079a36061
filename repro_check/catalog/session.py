"""From what a session or sweep produced (verdicts, sweep rows, report files) to catalog rows.

The JSON report files stay the source of truth: at the end of a run they are copied, with the
per-key record digests, into the run's archive folder beside the catalog
(``<catalog folder>/runs/<run id>/``) -- the report folder's own ``report.json`` is rewritten by
the next session, the archive never is -- and the catalog indexes them by sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from repro_check.catalog.lineage import sha256_file
from repro_check.catalog.model import Artifact, DataVersion, TestEntry
from repro_check.core.atomic import atomic_writer, parse_json_file, write_json
from repro_check.core.paths import nodeid_path
from repro_check.orchestration.verdict import FAILING

ARCHIVE = "runs"
DIGESTS_FILE = "digests.json"
DIGESTS_SCHEMA = "repro-check/record-digests"


def archive_folder(catalog_path: Path, run_id: str) -> Path:
    return catalog_path.parent / ARCHIVE / run_id


def archive_file(source: Path, folder: Path, kind: str) -> Artifact:
    """Copy ``source`` into the archive (atomically) and index the copy."""
    target = folder / source.name
    with open(source, "rb") as src, atomic_writer(target) as dst:
        shutil.copyfileobj(src, dst)
    digest, size = sha256_file(target)
    return Artifact(kind, str(target), digest, size)


def write_digests(folder: Path, tables: Mapping[str, Any]) -> Artifact:
    """The per-key record digests of every test (``runs diff`` finds the first differing key)."""
    target = folder / DIGESTS_FILE
    write_json(target, {"schema": DIGESTS_SCHEMA, "schema_version": 1, "tests": dict(tables)})
    digest, size = sha256_file(target)
    return Artifact("digests", str(target), digest, size)


def read_digests(archive: str | None) -> dict[str, Any]:
    """The key tables archived with a run ({} when there are none)."""
    if not archive:
        return {}
    path = Path(archive) / DIGESTS_FILE
    if not path.is_file():
        return {}
    document = parse_json_file(path)
    return dict(document.get("tests", {})) if isinstance(document, dict) else {}


def first_divergence(verdict: Mapping[str, Any]) -> str:
    if verdict.get("resume") and str(verdict.get("status")) == "resume-mismatch":
        finding = (verdict["resume"] or {}).get("finding") or {}
        return f"resume: {finding.get('kind', '')} step {finding.get('step')}: {finding.get('key')}"
    divergence = verdict.get("divergence") or {}
    if divergence:
        return f"step {divergence.get('step')}: {divergence.get('key')}"
    structural = verdict.get("structural") or {}
    return str(structural.get("message", ""))


def session_entries(
    verdicts: Iterable[Mapping[str, Any]],
) -> tuple[list[TestEntry], list[DataVersion]]:
    """Tests and declared data versions from the verdicts of a ``pytest --repro`` session."""
    tests, data = [], []
    for v in verdicts:
        nodeid = str(v["nodeid"])
        tests.append(
            TestEntry(
                nodeid,
                str(v.get("status", "")),
                v.get("seed"),
                v.get("steps"),
                v.get("keys"),
                v.get("record_digest"),
                first_divergence(v),
                v.get("resume") or None,
            )
        )
        data += data_entries(nodeid, v.get("data_versions") or {})
    return tests, data


def data_entries(nodeid: str, versions: Mapping[str, Any]) -> list[DataVersion]:
    return [
        DataVersion(
            nodeid,
            str(name),
            str(version.get("kind", "")),
            str(version.get("digest", "")),
            {k: v for k, v in version.items() if k not in ("kind", "digest")},
        )
        for name, version in versions.items()
        if isinstance(version, Mapping)
    ]


def sweep_entries(
    rows: Sequence[Mapping[str, Any]],
) -> tuple[list[TestEntry], list[DataVersion]]:
    """A sweep's tests: status ``swept`` (``failed`` when a run failed), and a digest of every
    run's status and results -- what ``runs verify`` compares."""
    by_test: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_test.setdefault(str(row.get("test")), []).append(row)
    tests, data = [], []
    for nodeid, own in sorted(by_test.items()):
        facts = sorted(
            [
                r.get("run_id"),
                r.get("status"),
                r.get("metrics"),
                {n: o.get("value") for n, o in (r.get("outcomes") or {}).items()},
            ]
            for r in own
        )
        digest = hashlib.blake2b(
            json.dumps(facts, sort_keys=True, default=str).encode(), digest_size=16
        ).hexdigest()
        failed = any(r.get("status") == "failed" for r in own)
        tests.append(
            TestEntry(
                nodeid,
                "failed" if failed else "swept",
                own[0].get("root_seed"),
                None,
                None,
                digest,
                f"{len(own)} runs",
            )
        )
        versions = next(
            (
                r["run_info"].get("data_versions")
                for r in own
                if (r.get("run_info") or {}).get("data_versions")
            ),
            None,
        )
        data += data_entries(nodeid, versions or {})
    return tests, data


def outcome_of(statuses: Iterable[str], interrupted: bool) -> str:
    statuses = list(statuses)
    if interrupted:
        return "interrupted"
    if not statuses:
        return "no tests"
    return "failed" if any(s in FAILING or s == "failed" for s in statuses) else "passed"


def checkpoint_artifacts(report_dir: Path | None, nodeids: Iterable[str]) -> list[Artifact]:
    """The checkpoints this session's tests left in the report folder: the replicas' last
    steps (``checkpoints/``) and resume checks' (``resume/``), each with its manifest."""
    if report_dir is None:
        return []
    found = []
    for nodeid in nodeids:
        for area in ("checkpoints", "resume"):
            folder = report_dir / area / nodeid_path(nodeid)
            if not folder.is_dir():
                continue
            for tensors in sorted(folder.rglob("*.safetensors")):
                found += _checkpoint(tensors, nodeid)
    return found


def _checkpoint(tensors: Path, nodeid: str) -> list[Artifact]:
    manifest_path = tensors.with_suffix(".json")
    try:
        manifest = parse_json_file(manifest_path)
        digest, size = sha256_file(tensors)
        m_digest, m_size = sha256_file(manifest_path)
    except (OSError, ValueError):
        return []  # a checkpoint being rewritten, or half gone: nothing trustworthy to index
    return [
        Artifact("checkpoint", str(tensors), digest, size, nodeid, manifest),
        Artifact("manifest", str(manifest_path), m_digest, m_size, nodeid),
    ]


def relative_to_cwd(path: str | os.PathLike[str]) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)
