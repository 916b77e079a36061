"""Shared by the tests that run pytest in fresh processes: a clean environment for the child,
and the failure text of one test, as pytest prints it."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

#: Variables of the outer pytest (or CI) that would change what the inner run does.
DROPPED_ENV = (
    "PYTEST_ADDOPTS",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_CURRENT_TEST",
    "PYTEST_PLUGINS",
    "GITHUB_STEP_SUMMARY",
    "PYTEST_DISABLE_PLUGIN_AUTOLOAD",
)

_SECTION_END = re.compile(r"(_{3,} \S+ _{3,}|={3,} .* ={3,}|-{3,} .* -{3,})")


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may not reap orphans); reads /proc."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(extra)
    return env


def side_by_side_env(**extra: str) -> dict[str, str]:
    """clean_env() with one torch thread per replica, so that a session's two replicas run side
    by side on a 2-core machine (repro-check only runs them together when the cores allow for
    their threads). For tests whose subject is not thread-count drift or a thread race."""
    return clean_env(**{"OMP_NUM_THREADS": "1", **extra})


def linear_sgd_test(name: str, steps: int) -> str:
    """The source of a tiny reproducible training test (Linear + SGD, ``steps`` records), for
    the tests that only need *a* marked test to run."""
    return f"""
import pytest
import torch


@pytest.mark.repro(steps={steps})
def {name}(repro):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(repro.steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        repro.record(step, model=model, loss=loss)
"""


def failure_section(output: str, test: str) -> str:
    """The text of one test's entry in the FAILURES section of ``output``."""
    header = re.compile(r"_{3,} " + re.escape(test) + r" _{3,}")
    lines = output.splitlines()
    start = next((i for i, line in enumerate(lines) if header.fullmatch(line)), None)
    assert start is not None, f"no failure section for {test}:\n{output}"
    end = next(
        (j for j in range(start + 1, len(lines)) if _SECTION_END.fullmatch(lines[j])), len(lines)
    )
    return "\n".join(lines[start + 1 : end])


@dataclass
class Finished:
    """A finished pytest run: exit code, output, and (if written) its repro report."""

    ret: int
    output: str
    report_dir: Path | None = None

    def report(self) -> dict:
        assert self.report_dir is not None
        return json.loads((self.report_dir / "report.json").read_text())

    def tests(self) -> dict[str, dict]:
        return {test["nodeid"]: test for test in self.report()["tests"]}

    def failure(self, test: str) -> str:
        return failure_section(self.output, test)
