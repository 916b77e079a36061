"""The run catalog: every ``pytest --repro`` session, sweep and comparison, with its lineage.

An SQLite file (``REPORT_DIR/catalog.sqlite`` by default; ``--repro-catalog=PATH`` to share one)
indexes the runs; their JSON report files, archived beside it, stay the source of truth.
``repro-check runs list | show | diff | verify | gc | check`` reads it. See docs/catalog.md.

Modules: ``schema`` (tables and migrations), ``store`` (the :class:`Catalog`: transactions,
writes, reads), ``model`` (typed rows), ``lineage`` (run ids, git facts, record digests),
``session`` (a session's verdicts and files as rows), ``diff`` (two runs side by side),
``maintenance`` (gc and the artifact check).
"""

from __future__ import annotations

from repro_check.catalog.model import (
    Artifact,
    DataVersion,
    RunEnd,
    RunRow,
    RunStart,
    TestEntry,
)
from repro_check.catalog.schema import SCHEMA_VERSION, CatalogError
from repro_check.catalog.store import Catalog, open_catalog

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "Catalog",
    "CatalogError",
    "DataVersion",
    "RunEnd",
    "RunRow",
    "RunStart",
    "TestEntry",
    "open_catalog",
]
