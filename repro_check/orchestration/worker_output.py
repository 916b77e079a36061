"""What a worker's output says when it fails: the last lines, or where a fatal error or a
timeout stopped it, and how the process ended."""

from __future__ import annotations

import os
import signal

STDERR_TAIL_LINES = 30


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
