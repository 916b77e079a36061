"""A pinned requirements file from a snapshot: validated ``name==version`` lines and comments.

A snapshot is data from another machine, possibly hand-edited: nothing in it may become a pip
option (``--index-url``, ``--extra-index-url``, ``-f``, ``-e``, ``-r``, ...) or a URL that pip
would fetch. Every line written is either a comment (snapshot text escaped so it cannot break
the line) or ``name==version`` with a PEP 508 name and a PEP 440 version. Packages that did not
come from an index (VCS, URL, local folder, editable) are named in comments, not pinned: pinning
them by version would fetch whatever an index serves under that name.
"""

from __future__ import annotations

import re
from typing import Any

from repro_check.core.atomic import StoredFileError
from repro_check.environment._common import get, printable

_FREEZE_SKIP = frozenset({"pip", "setuptools", "wheel", "distribute"})
_TORCH_INDEX = "https://download.pytorch.org/whl"
_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,198}[A-Za-z0-9])?")
_COMMIT_RE = re.compile(r"[0-9a-fA-F]{7,64}")
_VCS = frozenset({"git", "hg", "svn", "bzr"})
_COMMENT_MAX = 100


def torch_index_url(torch_version: str | None) -> str | None:
    """PyTorch wheel index for a local version suffix: ``2.13.0+cu121`` -> ``.../whl/cu121``."""
    if not isinstance(torch_version, str) or "+" not in torch_version:
        return None
    local = torch_version.split("+", 1)[1].lower()
    if re.fullmatch(r"cpu|cu\d+|rocm\d+(\.\d+)*|xpu", local):
        return f"{_TORCH_INDEX}/{local}"
    return None


def pin(name: Any, version: Any) -> str | None:
    """``name==version`` when ``name`` is a PEP 508 name and ``version`` a PEP 440 version."""
    from packaging.version import InvalidVersion, Version  # noqa: PLC0415 - pytest ships it

    if not (isinstance(name, str) and isinstance(version, str) and _NAME_RE.fullmatch(name)):
        return None
    if not version or len(version) > 100 or any(c.isspace() for c in version):
        return None
    try:
        Version(version)
    except InvalidVersion:
        return None
    return f"{name}=={version}"


def _text(value: Any) -> str:
    """Snapshot text made safe for a comment: one line, ASCII, control characters escaped."""
    text = printable(str(value)).encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= _COMMENT_MAX else text[: _COMMENT_MAX - 3] + "..."


def _line(key: str, entry: Any) -> str | None:
    """The requirement line for one package entry, or a comment saying why it is not pinned."""
    if not isinstance(entry, dict) or "version" not in entry:
        return f"# skipped {_text(key)}: its metadata could not be read"
    name = entry.get("name") or key
    version = entry["version"]
    requirement = pin(name, version)
    label = requirement or f"{_text(name)} {_text(version)}"
    if entry.get("editable"):
        return f"# not pinned: {label} is an editable install (pip install -e its source folder)"
    if entry.get("vcs") or entry.get("local_directory") or entry.get("url"):
        vcs = entry.get("vcs") if entry.get("vcs") in _VCS else None
        commit = entry.get("commit_id")
        where = f"{vcs} commit {commit}" if vcs and _COMMIT_RE.fullmatch(str(commit)) else None
        where = where or (f"a {vcs} repository" if vcs else "a URL or a local path")
        return f"# not pinned: {label} was installed from {where}, not from an index"
    if requirement is None:
        return f"# skipped {_text(key)}: {label} is not a valid name==version"
    return requirement


def requirements(snapshot: dict[str, Any]) -> str:
    """A pinned requirements file that reinstalls the snapshot's index-installed packages.

    :class:`StoredFileError` when the snapshot has no package list.
    """
    packages = snapshot.get("packages")
    if not isinstance(packages, dict) or "status" in packages or "error" in packages:
        raise StoredFileError(
            "the snapshot has no package list (captured with include_packages=False); "
            "capture one with: repro-check env -o FILE"
        )
    torch_entry = packages.get("torch") if isinstance(packages.get("torch"), dict) else {}
    torch_version = torch_entry.get("version") or get(snapshot, "torch.version")
    lines = [
        "# Pinned by repro-check from an environment snapshot",
        f"# captured {_text(snapshot.get('captured_at'))} on "
        f"{_text(get(snapshot, 'platform.platform'))}, python {_text(get(snapshot, 'python.version'))}",
        "# install with: pip install -r THIS_FILE",
    ]
    index = torch_index_url(torch_version)
    if index:
        lines += [
            f"# torch {_text(torch_version)} is on the PyTorch wheel index, not on PyPI; install with:",
            f"#   pip install -r THIS_FILE --extra-index-url {index}",
        ]
    for key, entry in sorted(packages.items()):
        if str(key).lower() in _FREEZE_SKIP:
            continue
        line = _line(str(key), entry)
        if line:
            lines.append(line)
    return "\n".join(lines) + "\n"
