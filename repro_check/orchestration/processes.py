"""Worker processes at the level of the operating system: their environment, dying with the
parent, reading their output as it comes, and what that output says when one fails (the last
lines, or where a fatal error or a timeout stopped it, and how the process ended)."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repro_check.orchestration.replicas import ReplicaSpec

STDERR_TAIL_LINES = 30
PR_SET_PDEATHSIG = 1
#: Variables that would make a worker pytest do something else than its job.
SCRUBBED_ENV = (
    "PYTEST_ADDOPTS",
    "PYTEST_XDIST_WORKER",
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_CURRENT_TEST",
)
#: The worker watches this process id and exits when it is no longer its parent.
PARENT_PID_ENV = "REPRO_CHECK_PARENT_PID"


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def summarize_output(text: str, count: int = STDERR_TAIL_LINES) -> list[str]:
    """The last ``count`` lines of a worker's output -- or, when the interpreter died of a fatal
    error (segfault, abort), what came before it, the error, and the top of the stack where it
    happened (the bottom of that stack is pytest's machinery)."""
    lines = text.splitlines()
    fatal = max((i for i, line in enumerate(lines) if line.startswith("Fatal Python")), default=-1)
    if fatal < 0:
        return lines[-count:]
    before = [line for line in lines[max(0, fatal - 6) : fatal] if line.strip()]
    where = stack_top("\n".join(lines[fatal:]))
    return [*before, lines[fatal], "Where it was (most recent call first):", *where.splitlines()]


def stack_top(report: str, frames: int = 8) -> str:
    """The top of the stack faulthandler dumped for the thread that ran the test: the block
    marked ``Current thread`` (a crash), else the last one (a timeout lists every thread,
    newest first, so the main thread comes last); pytest's own frames further down are cut."""
    lines = report.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith(("Current thread", "Thread"))]
    current = [i for i in heads if lines[i].startswith("Current thread")]
    start = (current or heads or [-1])[-1]
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    own = next((i for i, line in enumerate(block) if any(m in line for m in _MACHINERY)), None)
    shown = block[: min(frames, own or frames)]
    more = f"\n  ... {len(block) - len(shown)} more frames" if len(block) > len(shown) else ""
    return "\n".join(shown) + more


#: Frames of pytest's own machinery: where a test's stack stops being the test's.
_MACHINERY = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")


def read_available(fd: int) -> tuple[bytes, bool]:
    """Everything readable now from a non-blocking pipe, and whether it reached end of file."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return b"".join(chunks), False
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)


@functools.lru_cache(maxsize=1)
def death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with SIGKILL when the thread that started it
    (and so the parent) dies -- Linux only; elsewhere the worker's watchdog does it."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    kill = int(signal.SIGKILL)

    def set_death_signal() -> None:
        prctl(PR_SET_PDEATHSIG, kill, 0, 0, 0)

    return set_death_signal


def process_env(job_env: Mapping[str, str]) -> dict[str, str]:
    """A worker process's environment: its job's, and who its parent is (the watchdog)."""
    return {**job_env, PARENT_PID_ENV: str(os.getpid())}


def worker_env(spec: ReplicaSpec, extra_pythonpath: Sequence[str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env.update(spec.env)
    if spec.num_threads is not None:
        env["OMP_NUM_THREADS"] = str(spec.num_threads)
    paths = [*extra_pythonpath, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    return env
