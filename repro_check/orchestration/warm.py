"""Warm interpreters: replica processes started before the session knows its tests.

Most of a worker's start-up is ``import torch`` (about 1.3 s of 2.2 s on the reference
machine), and none of it depends on which tests the worker will run. So at session start, before
collection, the parent starts one interpreter per replica with the environment that replica's
worker will have; each imports torch and then waits for its pytest command line on stdin. When
the pool starts after collection, a worker whose command, environment and directory match a
waiting interpreter's exactly is handed to it and runs pytest as ``python -m pytest`` would
(the same ``sys.argv``, ``sys.path[0]`` and ``__main__``); any other worker, and any worker whose
interpreter died, starts fresh.

Only torch (and what it imports) is imported early: pytest plugins must be imported by pytest
itself, which rewrites their asserts. That is the one difference a test can see: torch was
loaded before pytest and the conftests, so a conftest that configures torch's libraries before
importing torch (threadpoolctl limits) acts on them here only -- ``--repro-warm-start=off``.
An interpreter that is never handed a command line (no marked test was collected, the
environment changed during collection) reads end of file when the parent closes its stdin or
dies, and exits.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field

from repro_check.orchestration.processes import death_signal

#: What a warm interpreter runs: ``python -c BOOT``. Self-contained on purpose (importing
#: repro_check here would keep pytest from rewriting the plugin's asserts). Where torch fails to
#: import, the worker becomes a plain ``python -m pytest`` (``execv``), which reports it as a
#: fresh worker would; otherwise it runs pytest as ``-m`` does, in ``__main__``.
BOOT = """\
def _boot():
    import json, os, sys
    try:
        import torch  # noqa: F401 -- the bulk of a worker's start-up
    except Exception:
        torch = None
    line = sys.stdin.buffer.readline()
    if not line:
        raise SystemExit(0)  # not needed: the session ended, or started its workers fresh
    argv = json.loads(line)
    if torch is None:
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *argv])
    null = os.open(os.devnull, os.O_RDWR)  # stdin as subprocess.DEVNULL leaves it
    os.dup2(null, 0)
    os.close(null)
    sys.argv = ["-m", *argv]
    if not getattr(sys.flags, "safe_path", False):  # where -m puts the folder, -c put ''
        sys.path[0] = os.getcwd()
_boot()
del _boot
__import__("runpy")._run_module_as_main("pytest")
"""
#: The start of every worker command a warm interpreter can take over.
PYTEST_MODULE = ("-m", "pytest")


@dataclass
class WarmInterpreter:
    """One interpreter waiting (after ``import torch``) for a worker's pytest command line."""

    executable: str
    env: dict[str, str]
    cwd: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> WarmInterpreter:
        self.process = subprocess.Popen(
            [self.executable, "-c", BOOT],
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=death_signal(),  # noqa: PLW1509 - one prctl call, resolved beforehand
        )
        return self

    def fits(self, command: list[str], env: Mapping[str, str], cwd: str) -> bool:
        """Whether ``command`` in ``env`` and ``cwd`` would start exactly this interpreter."""
        return (
            command[:1] == [self.executable]
            and tuple(command[1:3]) == PYTEST_MODULE
            and dict(env) == self.env
            and cwd == self.cwd
        )

    def launch(self, command: list[str]) -> subprocess.Popen[bytes] | None:
        """Hand the interpreter the worker's command line: now it is that worker. None (and
        the interpreter gone) when it died while waiting."""
        process = self.process
        self.process = None
        if process is None or process.poll() is not None or process.stdin is None:
            _discard(process)
            return None
        try:
            process.stdin.write(json.dumps(command[3:]).encode() + b"\n")
            process.stdin.close()
        except OSError:  # it died just now
            _discard(process)
            return None
        process.stdin = None  # as for a worker started with stdin=DEVNULL
        return process

    def discard(self) -> None:
        process, self.process = self.process, None
        _discard(process)


def _discard(process: subprocess.Popen[bytes] | None) -> None:
    if process is None:
        return
    with contextlib.suppress(OSError):
        process.kill()
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        process.wait(timeout=5)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


class WarmStock:
    """The warm interpreters a session started, each reserved by the first worker it fits.
    Used from the main thread only (configure, collection, unconfigure, the SIGTERM handler):
    no lock, which a signal handler could deadlock on."""

    def __init__(self) -> None:
        self._waiting: list[WarmInterpreter] = []

    def add(self, executable: str, env: Mapping[str, str], cwd: str) -> None:
        try:
            self._waiting.append(WarmInterpreter(executable, dict(env), cwd).start())
        except OSError:  # cannot start processes now: the workers will say why, fresh
            pass

    def reserve(
        self, command: list[str], env: Mapping[str, str], cwd: str
    ) -> WarmInterpreter | None:
        """The waiting interpreter that ``command`` in ``env`` and ``cwd`` would start, taken
        out of the stock (the worker launches it on its own thread); None: start it fresh."""
        warm = next((w for w in self._waiting if w.fits(command, env, cwd)), None)
        if warm is not None:
            self._waiting.remove(warm)
        return warm

    def close(self) -> None:
        """Stop the interpreters nobody reserved."""
        waiting, self._waiting = self._waiting, []
        for warm in waiting:
            warm.discard()

    def __len__(self) -> int:
        return len(self._waiting)
