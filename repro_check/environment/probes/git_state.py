"""The git state of the code: commit, branch, and hashes of the uncommitted diff and untracked
files (so two runs of "the same commit" with different local edits are told apart)."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from typing import Any

from repro_check.environment._common import decode_bytes, error_of

_GIT_TIMEOUT_S = 10.0
_UNTRACKED_MAX_FILES = 10_000
_UNTRACKED_MAX_FILE_BYTES = 16 * 2**20
_UNTRACKED_MAX_TOTAL_BYTES = 64 * 2**20


def _git(args: list[str], cwd: str) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.update({"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"})
    return subprocess.run(
        ["git", "-c", "core.quotePath=true", "--no-pager", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=_GIT_TIMEOUT_S,
        check=False,
    )


def _hash_untracked(top: str, paths: list[bytes]) -> dict[str, Any]:
    digest = hashlib.sha256()
    budget = _UNTRACKED_MAX_TOTAL_BYTES
    complete = True
    top_b = os.fsencode(top)
    for rel in sorted(paths)[:_UNTRACKED_MAX_FILES]:
        digest.update(rel + b"\0")
        full = os.path.join(top_b, rel)
        try:
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                digest.update(b"L" + os.readlink(full))
            elif st.st_size > _UNTRACKED_MAX_FILE_BYTES or st.st_size > budget:
                complete = False
                digest.update(b"S%d:%d" % (st.st_size, st.st_mtime_ns))
            else:
                budget -= st.st_size
                digest.update(b"F")
                with open(full, "rb") as handle:
                    for block in iter(lambda h=handle: h.read(1 << 20), b""):
                        digest.update(block)
        except OSError as exc:
            digest.update(b"E" + str(exc.errno).encode())
        digest.update(b"\0")
    if len(paths) > _UNTRACKED_MAX_FILES:
        complete = False
    return {"sha256": digest.hexdigest(), "complete": complete}


def git_info(repo_dir: str | None) -> dict[str, Any]:
    if shutil.which("git") is None:
        return {"status": "git-missing"}
    where = os.path.abspath(repo_dir or os.getcwd())
    if not os.path.isdir(where):
        return {"status": "not-a-repository", "path": where}
    try:
        top_run = _git(["rev-parse", "--show-toplevel"], where)
        if top_run.returncode != 0:
            message = decode_bytes(top_run.stderr).strip()
            if "not a git repository" in message.lower():
                return {"status": "not-a-repository", "path": where}
            out: dict[str, Any] = {"status": "error", "error": message or "git rev-parse failed"}
            if "dubious ownership" in message:
                out["hint"] = f"git config --global --add safe.directory {where}"
            return out
        top = os.fsdecode(top_run.stdout.rstrip(b"\r\n"))
        status_run = _git(
            ["status", "--porcelain=v2", "--branch", "-z", "--untracked-files=all"], top
        )
        if status_run.returncode != 0:
            return {"status": "error", "error": decode_bytes(status_run.stderr).strip()}
        commit = branch = None
        changed = 0
        untracked: list[bytes] = []
        records = iter(status_run.stdout.split(b"\0"))
        for rec in records:
            if rec.startswith(b"# branch.oid "):
                oid = rec[len(b"# branch.oid ") :].decode("ascii", "replace")
                commit = None if oid == "(initial)" else oid
            elif rec.startswith(b"# branch.head "):
                head = decode_bytes(rec[len(b"# branch.head ") :])
                branch = None if head == "(detached)" else head
            elif rec[:2] in (b"1 ", b"u "):
                changed += 1
            elif rec[:2] == b"2 ":
                changed += 1
                next(records, None)  # the original path of a rename/copy
            elif rec[:2] == b"? ":
                untracked.append(rec[2:])
        info: dict[str, Any] = {
            "status": "ok",
            "toplevel": top,
            "commit": commit,
            "branch": branch,
            "dirty": changed > 0,
            "changed_files": changed,
            "untracked_files": len(untracked),
        }
        if commit is not None:
            diff_run = _git(
                [
                    "-c",
                    "diff.noprefix=false",
                    "diff",
                    "--binary",
                    "--no-color",
                    "--no-ext-diff",
                    "--no-textconv",
                    "--no-renames",
                    "--full-index",
                    "HEAD",
                    "--",
                ],
                top,
            )
            info["diff_sha256"] = (
                hashlib.sha256(diff_run.stdout).hexdigest()
                if diff_run.returncode == 0
                else {"error": decode_bytes(diff_run.stderr).strip()}
            )
        else:
            info["diff_sha256"] = None
        hashed = _hash_untracked(top, untracked)
        info["untracked_sha256"] = hashed["sha256"]
        info["untracked_hash_complete"] = hashed["complete"]
        return info
    except subprocess.TimeoutExpired as exc:
        return {"status": "error", "error": f"git timed out after {exc.timeout:.0f} s"}
    except OSError as exc:
        return {"status": "error", **error_of(exc)}
