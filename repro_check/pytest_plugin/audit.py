"""``pytest --repro-audit``: which ops of each marked test are nondeterministic on CUDA.

CPU-only CI cannot see CUDA nondeterminism, but it can see which ops a model runs. Each marked
test runs once under the op tracer; the trace is matched against the CUDA nondeterminism table
for the installed torch version (repro_check/data/op_knowledge.json), and the findings
name the user's lines that call each risky op. PyTorch's own alerts
(``use_deterministic_algorithms(True, warn_only=True)``) are collected during the same run.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pytest

from repro_check.core.atomic import atomic_write_text, write_json
from repro_check.pytest_plugin.items import is_repro_item, replica_key

AUDIT_SCHEMA = "repro-check/gpu-audit"


class AuditPlugin:
    """Traces replica 0 of each marked test once and keeps its CUDA-risk findings."""

    def __init__(self, config: pytest.Config, report_dir: Path | None) -> None:
        self.config = config
        self.report_dir = report_dir
        self.findings: dict[str, list[Any]] = {}
        self.alerts: dict[str, list[str]] = {}

    def _replica_zero(self, item: pytest.Item) -> bool:
        return item.stash.get(replica_key, 0) == 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_pyfunc_call(self, pyfuncitem: pytest.Function) -> bool | None:
        if not is_repro_item(pyfuncitem) or not self._replica_zero(pyfuncitem):
            return None
        import torch

        from repro_check.trace.audit import audit
        from repro_check.trace.ops import nondeterminism_alert
        from repro_check.trace.tracer import OpTracer

        funcargs = pyfuncitem.funcargs
        arguments = {name: funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
        previous = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not previous[0]:
                torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                with OpTracer() as tracer:
                    pyfuncitem.obj(**arguments)
            finally:
                torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        self.findings[pyfuncitem.nodeid] = audit(tracer)
        self.alerts[pyfuncitem.nodeid] = sorted(
            {str(w.message).splitlines()[0] for w in caught if nondeterminism_alert(str(w.message))}
        )
        # Replicas judged in other processes still need this process to judge them.
        session = self.config.pluginmanager.get_plugin("repro-session")
        return None if session is not None and session.subprocess else True

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.findings:
            return
        from repro_check.trace.audit import format_findings

        terminalreporter.section("repro GPU-risk audit")
        for nodeid, findings in self.findings.items():
            terminalreporter.write_line(f"{nodeid}: {len(findings)} op(s) nondeterministic on CUDA")
            terminalreporter.write_line(_indent(format_findings(findings), "  "))
            for alert in self.alerts.get(nodeid, []):
                terminalreporter.write_line(f"  torch alert (CPU): {alert}")
        if self.report_dir is not None:
            terminalreporter.write_line(f"audit: {self.report_dir / 'gpu_audit.md'}")

    def pytest_sessionfinish(self) -> None:
        if not self.findings or self.report_dir is None:
            return
        import torch

        from repro_check.trace.audit import format_findings

        document = {
            "schema": AUDIT_SCHEMA,
            "schema_version": 1,
            "torch": torch.__version__,
            "tests": {
                nodeid: {
                    "findings": [_plain(f) for f in findings],
                    "torch_alerts": self.alerts.get(nodeid, []),
                }
                for nodeid, findings in self.findings.items()
            },
        }
        try:
            write_json(self.report_dir / "gpu_audit.json", document)
            lines = [
                "# GPU-risk audit",
                "",
                f"Ops nondeterministic on CUDA under torch {torch.__version__}, from a CPU "
                f"trace of each test.",
                "",
            ]
            for nodeid, findings in self.findings.items():
                lines += [f"## {nodeid}", "", "```", format_findings(findings), "```", ""]
            atomic_write_text(self.report_dir / "gpu_audit.md", "\n".join(lines))
        except OSError:
            pass  # the terminal section has everything; the report folder error is shown there


def _plain(finding: Any) -> dict[str, Any]:
    return (
        dataclasses.asdict(finding) if dataclasses.is_dataclass(finding) else {"text": str(finding)}
    )


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())
