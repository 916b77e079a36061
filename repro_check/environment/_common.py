"""Helpers shared by the probes and the readers: guards, JSON-safe values, safe printing."""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Callable
from typing import Any

SCHEMA = "repro-check/environment"
SCHEMA_VERSION = 1

#: Top-level keys that change on every capture; excluded from the hash and the diff.
VOLATILE_KEYS = frozenset({"captured_at", "capture_seconds"})

_URL_USERINFO_RE = re.compile(r"(://)[^/@\s]+@")


def error_of(exc: BaseException) -> dict[str, str]:
    """``{"error": "Type: first line of the message"}``."""
    text = str(exc).strip().splitlines()
    return {"error": f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")}


def guard(fn: Callable[[], Any]) -> Any:
    """Run one field's probe; an exception becomes ``{"error": ...}`` for that field only."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - a probe must never break the capture
        return error_of(exc)


def decode_bytes(raw: bytes) -> str:
    """UTF-8 text; bytes that are not UTF-8 are backslash-escaped (``ab\\xffcd``)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace")


def decode(value: Any) -> Any:
    return decode_bytes(value) if isinstance(value, bytes) else value


def scrub_credentials(text: str) -> str:
    """Mask the user-info part of URLs: ``https://user:token@host`` -> ``https://***@host``."""
    return _URL_USERINFO_RE.sub(r"\1***@", text)


def jsonable(value: Any) -> Any:
    """Make a value survive a JSON round trip unchanged (tuples -> lists, NaN -> text, ...)."""
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str) and any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes):
        return decode_bytes(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [jsonable(v) for v in value]
        return sorted(items, key=str) if isinstance(value, (set, frozenset)) else items
    return str(value)


def read_text(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def get(snapshot: Any, path: str, default: Any = None) -> Any:
    """The value at a dotted path (``"torch.version"``), or ``default`` when absent."""
    node: Any = snapshot
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def torch_module() -> Any:
    import torch  # noqa: PLC0415 - lazy on purpose: importing the package stays cheap

    return torch


# Control characters, format characters (bidi overrides, zero-width), line/paragraph separators
# and lone surrogates: anything that can move the cursor, recolour a terminal or reorder text.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def printable(text: str) -> str:
    """``text`` with every control or format character escaped (``\\x1b``, ``\\n``, ``\\u202e``),
    so a hostile snapshot value cannot rewrite the terminal or forge output lines."""
    if text.isprintable():
        return text
    return "".join(
        ch.encode("unicode_escape", "backslashreplace").decode("ascii")
        if unicodedata.category(ch) in _UNSAFE_CATEGORIES
        else ch
        for ch in text
    )
