"""Which user line called an op: the innermost frame outside torch, repro_check and the stdlib.

Shared by the tracer (every event's ``source``) and the audit (where a determinism alert
fired). Whether a code object is internal is cached per code object and each formatted line
per (code, line), so a walk costs a few dictionary lookups per frame. torch's location is found
without importing it.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
import sysconfig
from types import FrameType

__all__ = ["SourceLocator", "caller_depth", "display_path", "is_internal_file", "user_source"]

UNKNOWN = "<unknown>"


@functools.lru_cache(maxsize=1)
def _internal_dirs() -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """(torch and repro_check folders, the stdlib folder, site-packages folders)."""
    own = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep]
    spec = importlib.util.find_spec("torch")
    if spec is not None and spec.origin:
        own.append(os.path.dirname(os.path.abspath(spec.origin)) + os.sep)
    paths = sysconfig.get_paths()
    stdlib = os.path.normpath(paths["stdlib"]) + os.sep
    sites = tuple({os.path.normpath(paths[k]) + os.sep for k in ("purelib", "platlib")})
    return tuple(own), stdlib, sites


def is_internal_file(filename: str) -> bool:
    """Is ``filename`` part of torch, repro_check or the standard library (not user code)?"""
    if filename.startswith("<frozen"):
        return True
    own, stdlib, sites = _internal_dirs()
    f = os.path.normpath(filename)
    if f.startswith(own):
        return True
    return f.startswith(stdlib) and not f.startswith(sites)


def display_path(filename: str) -> str:
    """``filename`` relative to the working directory when it lies below it."""
    try:
        rel = os.path.relpath(filename)
    except ValueError:  # another drive (Windows)
        return filename
    return filename if rel.startswith("..") else rel


_internal_code: dict[object, bool] = {}  # code object -> is internal


_RESUMABLE = inspect.CO_GENERATOR | inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR


class SourceLocator:
    """``locate(frame)`` -> ``"path/file.py:42 in func"`` of the first user frame from ``frame``
    outwards (``"<unknown>"`` when there is none, e.g. in the autograd engine's threads).

    Consecutive ops mostly run under the same internal frames (one ``F.linear``, one
    ``backward()``, one optimizer step), so the locator holds the internal frames of the stack
    it last walked: while one of them is still on the stack, the user frame above it is
    suspended at the same line, and the walk stops there. A frame that returned is held (with
    its locals) until the next op; generator frames are never held (a resumed generator can
    have another caller).
    """

    __slots__ = ("_lines", "_held", "held_set", "held_text")

    def __init__(self) -> None:
        self._lines: dict[tuple[object, int], str] = {}
        self._held: list[FrameType] = []  # innermost first
        #: the held frames, and the user line above them: ``locate(f)`` is ``held_text`` when
        #: ``f in held_set`` (the tracer checks that inline, saving a call on most ops)
        self.held_set: set[FrameType] = set()
        self.held_text = UNKNOWN

    def locate(self, frame: FrameType | None) -> str:
        internal = _internal_code
        held = self.held_set
        walked: list[FrameType] = []
        f = frame
        while f is not None:
            if f in held:  # still on the stack: the user frame above it has not moved
                if walked:  # hold the current chain (frames popped since are let go)
                    self._hold(walked + self._held[self._held.index(f) :], self.held_text)
                return self.held_text
            code = f.f_code
            inside = internal.get(code)
            if inside is None:
                inside = internal[code] = is_internal_file(code.co_filename)
            if not inside:
                text = self._line(f, code)
                if walked:
                    self._hold(walked, text)
                return text
            walked.append(f)
            f = f.f_back
        return UNKNOWN

    def _line(self, f: FrameType, code: object) -> str:
        key = (code, f.f_lasti)  # f_lasti is cheap; f_lineno decodes the line table
        text = self._lines.get(key)
        if text is None:
            co = f.f_code
            text = sys.intern(f"{display_path(co.co_filename)}:{f.f_lineno} in {co.co_name}")
            self._lines[key] = text
        return text

    def _hold(self, frames: list[FrameType], text: str) -> None:
        self._held = [w for w in frames if not w.f_code.co_flags & _RESUMABLE]
        self.held_set = set(self._held)
        self.held_text = text

    def release(self) -> None:
        """Drop the held frames (the tracer calls this when it exits)."""
        self._hold([], UNKNOWN)


def user_source(skip: int = 1) -> str:
    """The user line that called the caller's caller (``skip`` frames above the caller)."""
    return SourceLocator().locate(sys._getframe(skip + 1))


_WRAPPERS = (("_dynamo", "eval_frame.py", "_fn"), ("torch", "_compile.py", "inner"))


def caller_depth(frame: FrameType | None) -> int:
    """How many frames above a dispatch mode's hook its op's caller is, given the frame that
    called the hook: torch may wrap the hook (Dynamo's disable, the fallback of
    :func:`repro_check.trace.opinfo.keep_dynamo_out`) in frames that are new on every call;
    the source locator starts above them, where consecutive ops share frames."""
    depth = 1
    while frame is not None:
        code = frame.f_code
        parts = code.co_filename.replace("\\", "/").split("/")[-2:]
        if (*parts, code.co_name) not in _WRAPPERS:
            break
        depth += 1
        frame = frame.f_back
    return depth
