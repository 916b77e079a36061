"""Retention (``runs gc --keep N``) and the artifact check (``runs check``).

gc keeps the N newest runs, every run still in progress, and every run a kept run points at
(``verifies``); it deletes the others' rows, the snapshots nobody uses any more, their archive
folders, and the files they alone referenced -- only inside the catalog's folder or that run's
own report folder, never elsewhere. Rows go first (one transaction), files after: a crash in
between leaves unreferenced files, never a run pointing at a deleted one.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from repro_check.catalog.lineage import sha256_file
from repro_check.catalog.model import RUNNING
from repro_check.catalog.session import ARCHIVE
from repro_check.catalog.store import Catalog


@dataclass
class GcPlan:
    keep: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # artifacts only deleted runs referenced
    folders: list[Path] = field(default_factory=list)  # archive folders of deleted runs
    errors: list[str] = field(default_factory=list)  # what could not be removed, and why


def plan_gc(catalog: Catalog, keep: int) -> GcPlan:
    if keep < 0:
        raise ValueError(f"--keep {keep}: keep at least 0 runs")
    runs = catalog.runs()
    kept = {run.id for run in runs[:keep]}
    kept |= {run.id for run in runs if run.status == RUNNING and run.state == RUNNING}
    by_id = {run.id: run for run in runs}
    frontier = list(kept)
    while frontier:  # a kept run's `verifies` target stays (no dangling reference)
        target = by_id[frontier.pop()].verifies
        if target in by_id and target not in kept:
            kept.add(target)
            frontier.append(target)
    plan = GcPlan(keep=[r.id for r in runs if r.id in kept])
    plan.delete = [r.id for r in runs if r.id not in kept]
    still = catalog.referenced_paths(excluding=plan.delete)
    home = catalog.path.parent.resolve()
    for run_id in plan.delete:
        run = catalog.get(run_id)
        roots = [home] + ([Path(run.report_dir).resolve()] if run.report_dir else [])
        for artifact in run.artifacts:
            path = Path(artifact.path)
            if artifact.path in still or not path.exists():
                continue
            if any(root == path.resolve() or root in path.resolve().parents for root in roots):
                plan.files.append(path)
        folder = catalog.path.parent / ARCHIVE / run_id
        if folder.is_dir():
            plan.folders.append(folder)
    return plan


def apply_gc(catalog: Catalog, plan: GcPlan) -> GcPlan:
    catalog.delete_runs(plan.delete)
    for path in plan.files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            plan.errors.append(f"{path}: {exc.strerror}")
    for folder in plan.folders:
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            plan.errors.append(f"{folder}: {exc.strerror or exc}")
    return plan


@dataclass(frozen=True)
class ArtifactProblem:
    run_id: str
    kind: str
    path: str
    problem: str  # "missing" | "changed" | "unreadable"
    detail: str = ""


def check_artifacts(catalog: Catalog, refs: Sequence[str] = ()) -> list[ArtifactProblem]:
    """Every artifact of the given runs (default: all) that is missing or whose sha256 is not
    the one recorded when the run ended."""
    ids = [catalog.resolve(r) for r in refs] if refs else [r.id for r in catalog.runs()]
    problems = []
    for run_id in ids:
        run = catalog.get(run_id)
        for artifact in run.artifacts:
            path = Path(artifact.path)
            if not path.exists():
                problems.append(ArtifactProblem(run_id, artifact.kind, artifact.path, "missing"))
                continue
            try:
                digest, size = sha256_file(path)
            except OSError as exc:
                problems.append(
                    ArtifactProblem(run_id, artifact.kind, artifact.path, "unreadable", str(exc))
                )
                continue
            if digest != artifact.sha256:
                detail = f"sha256 {digest[:12]} now, {artifact.sha256[:12]} when recorded"
                if size != artifact.bytes:
                    detail += f"; {size} bytes, was {artifact.bytes}"
                problems.append(
                    ArtifactProblem(run_id, artifact.kind, artifact.path, "changed", detail)
                )
    return problems
