"""`repro-check env`: exit codes (0 agree, 1 differ, 2 bad input or internal error), relevant
differences by default and all with --strict, snapshots read out of baselines and report folders,
and hostile files: a one-line error or escaped text, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from env_helpers import drop_controlled, full_snapshot, mutate, run_cli

from repro_check import cli
from repro_check import environment as env
from repro_check.core.atomic import StoredFileError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    drop_controlled(monkeypatch)


def _main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def _baseline(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": "repro-check/baseline",
        "schema_version": 1,
        "environment": env.for_baseline(snapshot),
        "steps": [],
    }


# ------------------------------------------------------------------------------ real processes


def test_cli_env_in_real_processes(tmp_path: Path) -> None:
    """One end-to-end run: two captures under other settings differ relevantly; a check on the
    same machine passes although the process and the capture time differ."""
    assert run_cli(["env", "-o", "a.json"], tmp_path).returncode == 0
    second = run_cli(
        ["env", "-o", "b.json"], tmp_path, ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1"
    )
    assert second.returncode == 0, second.stderr

    result = run_cli(["env", "diff", "a.json", "b.json"], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "env_vars.ATEN_CPU_CAPABILITY: (unset) -> default" in out
    assert "env_vars.OMP_NUM_THREADS: (unset) -> 1" in out
    a = env.load(tmp_path / "a.json")
    capability = a["cpu"]["capability"]
    if capability != "DEFAULT":  # e.g. "cpu.capability: AVX2 -> DEFAULT"
        assert f"cpu.capability: {capability} -> DEFAULT" in out
    threads = a["threads"]["torch_num_threads"]
    if threads > 1:
        assert f"threads.torch_num_threads: {threads} -> 1" in out
    assert "relevant differences" in out.splitlines()[1]

    same = run_cli(["env", "check", "a.json"], tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    changed = run_cli(["env", "check", "a.json"], tmp_path, PYTHONHASHSEED="123")
    assert changed.returncode == 1
    assert "env_vars.PYTHONHASHSEED: (unset) -> 123" in changed.stdout


def test_cli_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text('{"schema": "repro-check/environment", "schema_')
    (tmp_path / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    result = run_cli(["env", "diff", "broken.json", "broken.json"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("repro-check: error: broken.json: not valid JSON")
    deep = run_cli(["env", "diff", "deep.json", "broken.json"], tmp_path)
    assert deep.returncode == 2, deep.stderr
    assert deep.stderr.startswith("repro-check: error: deep.json: JSON nested too deeply")
    for text in (result.stderr, deep.stderr):
        assert "Traceback" not in text and len(text.splitlines()) == 1


# ------------------------------------------------------------------ relevant by default, strict


def test_check_passes_when_only_informational_fields_differ(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = env.capture(include_packages=False)
    saved = mutate(saved, "host.hostname", "ci-runner-7")
    saved = mutate(saved, "git", {"status": "ok", "commit": "f" * 40, "dirty": True})
    saved = mutate(saved, "gpus", {"status": "nvml-python-missing", "hint": "pip install x"})
    path = tmp_path / "saved.json"
    env.save(saved, path)

    code, out, _ = _main(["env", "check", str(path)], capsys)
    assert code == 0, out
    assert "no relevant differences (" in out and "--strict lists them" in out
    assert _main(["env", "check", str(path), "--relevant-only"], capsys)[0] == 0
    code, out, _ = _main(["env", "check", str(path), "--json"], capsys)
    assert (code, json.loads(out)) == (0, [])

    code, out, _ = _main(["env", "check", str(path), "--strict"], capsys)
    assert code == 1
    assert "host.hostname: ci-runner-7 -> " in out and "gpus.status: nvml-python-missing" in out
    code, out, _ = _main(["env", "check", str(path), "--strict", "--json"], capsys)
    assert code == 1 and {"host.hostname", "git.commit"} <= {row["path"] for row in json.loads(out)}


def test_check_fails_on_a_relevant_difference_and_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = mutate(env.capture(include_packages=False), "torch.version", "2.0.0")
    saved = mutate(saved, "host.hostname", "elsewhere")
    env.save(saved, tmp_path / "saved.json")
    code, out, _ = _main(["env", "check", str(tmp_path / "saved.json")], capsys)
    assert code == 1
    assert "1 relevant, 1 informational difference(s) (not shown; --strict lists them)" in out
    assert "torch.version: 2.0.0 -> " in out and "hostname" not in out.split("\n", 1)[1]


def test_diff_of_a_file_with_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env.save(full_snapshot(), tmp_path / "a.json")
    a = str(tmp_path / "a.json")
    assert _main(["env", "diff", a, a, "--strict"], capsys)[1].endswith(": no differences\n")


# --------------------------------------------------------- baselines and report folders as input


def test_a_baseline_file_or_a_report_folder_stands_for_a_snapshot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = full_snapshot()
    plain = tmp_path / "env.json"
    env.save(snap, plain)
    baseline = _write(tmp_path / "test_x.json", _baseline(snap))
    report = tmp_path / "repro-report"
    report.mkdir()
    env.save(snap, report / "environment.json")
    _write(report / "report.json", {"schema": "repro-check/report", "schema_version": 1})

    for source in (baseline, report, report / "report.json"):
        assert not [d for d in env.diff(env.load_any(source), snap) if d.relevant]
        code, out, err = _main(["env", "diff", str(plain), str(source)], capsys)
        assert code == 0, out + err
    assert _main(["env", "diff", str(baseline), str(plain), "--strict"], capsys)[0] == 1
    code, out, _ = _main(["env", "diff", str(baseline), str(report)], capsys)
    assert code == 0 and "no relevant differences" in out
    shifted = _write(
        tmp_path / "shifted.json", _baseline(mutate(snap, "cpu.capability", "DEFAULT"))
    )
    code, out, _ = _main(["env", "diff", str(shifted), str(report)], capsys)
    assert code == 1 and "cpu.capability: DEFAULT -> " in out


def _not_a_source(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    bare = _write(tmp_path / "bare_baseline.json", {"schema": "repro-check/baseline", "steps": []})
    lost = _write(tmp_path / "report.json", {"schema": "repro-check/report"})
    other = _write(tmp_path / "other.json", {"schema": "repro-check/checkpoint"})
    listing = _write(tmp_path / "list.json", [1, 2, 3])
    return {
        "empty folder": (empty_dir, "no environment.json in this folder; expected"),
        "bare baseline": (bare, "this baseline carries no environment snapshot"),
        "lost report": (lost, "the report's snapshot"),
        "other kind": (other, "expected an environment snapshot, a baseline file or a report"),
        "a list": (listing, "found 'list'"),
    }


@pytest.mark.parametrize(
    "kind", ["empty folder", "bare baseline", "lost report", "other kind", "a list"]
)
def test_anything_else_is_a_clear_error(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    env.save(full_snapshot(), good)
    bad, message = _not_a_source(tmp_path)[kind]
    for argv in (["env", "diff", str(good), str(bad)], ["env", "check", str(bad)]):
        code, _, err = _main(argv, capsys)
        assert code == 2
        assert err.startswith("repro-check: error: ") and message in err, err
    with pytest.raises(StoredFileError, match=message[:20].replace("(", r"\(")):
        env.load_any(bad)


# --------------------------------------------------------------------------- hostile files


def _bad_files(tmp_path: Path, good: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    text = json.dumps(good)
    deep_inside = mutate(good, "env_vars.OMP_X", json.loads("[" * 300 + "]" * 300))
    return {
        "truncated": (tmp_path / "truncated.json", text[: len(text) // 2]),
        "garbage": (tmp_path / "garbage.json", b"\x00\xff\x13 not json"),
        "newer": (tmp_path / "newer.json", {**good, "schema_version": env.SCHEMA_VERSION + 1}),
        "bool version": (tmp_path / "boolv.json", {**good, "schema_version": True}),
        "too deep to parse": (tmp_path / "deep.json", "{" + '"a":{' * 100_000),
        "deep inside": (tmp_path / "deep2.json", deep_inside),
        "missing": (tmp_path / "missing.json", None),
    }


BAD_MESSAGES = {
    "truncated": "corrupt or truncated",
    "garbage": "corrupt or truncated",
    "newer": "newer than this repro-check understands",
    "bool version": "missing or invalid 'schema_version'",
    "too deep to parse": "nested too deeply",
    "deep inside": "nested deeper than 32 levels",
    "missing": "no such file",
}


@pytest.mark.parametrize("kind", list(BAD_MESSAGES))
def test_bad_input_exits_2_with_one_line(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.json"
    env.save(full_snapshot(), good)
    bad, content = _bad_files(tmp_path, full_snapshot())[kind]
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif isinstance(content, str):
        bad.write_text(content)
    elif content is not None:
        _write(bad, content)
    for argv in (
        ["env", "diff", str(good), str(bad)],
        ["env", "check", str(bad)],
        ["env", "requirements", str(bad)],
    ):
        code, _, err = _main(argv, capsys)
        assert code == 2
        assert err.startswith("repro-check: error: ") and BAD_MESSAGES[kind] in err, err
        assert "Traceback" not in err and len(err.splitlines()) == 1
    with pytest.raises(StoredFileError):
        env.load(bad)


def test_odd_but_well_formed_values_are_compared_not_crashed_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = full_snapshot()
    odd = good
    for path, value in [
        ("torch", []),
        ("env_vars", "not a mapping"),
        ("packages", 5),
        ("cpu", None),
        ("threads.torch_num_threads", float("nan")),
        ("gpus.devices", [1, {"name": None}]),
        ("blas.numpy.version", 10**400),
    ]:
        odd = mutate(odd, path, value)
    env.save(good, tmp_path / "good.json")
    (tmp_path / "odd.json").write_text(json.dumps(odd))
    code, out, err = _main(
        ["env", "diff", str(tmp_path / "good.json"), str(tmp_path / "odd.json")], capsys
    )
    assert code == 1 and not err
    assert "torch: " in out and "cpu: " in out
    # A NaN in a file equals itself: a file diffs empty against itself.
    assert (
        _main(
            ["env", "diff", str(tmp_path / "odd.json")] * 1 + [str(tmp_path / "odd.json")], capsys
        )[0]
        == 0
    )


def test_control_characters_in_values_are_escaped_when_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = full_snapshot()
    hostile = mutate(good, "env_vars.OMP_EVIL", "\x1b[2J\x1b[31mred\nforged: line\r\u202eevil")
    hostile = mutate(hostile, "env_vars.OMP_\x1b]0;title\x07", "1")
    hostile = mutate(hostile, "torch.version", "2.0\n  torch.version: fake -> fake")
    env.save(good, tmp_path / "good.json")
    env.save(hostile, tmp_path / "hostile.json")
    code, out, _ = _main(
        ["env", "diff", str(tmp_path / "good.json"), str(tmp_path / "hostile.json")], capsys
    )
    assert code == 1
    assert not any(ch in out for ch in "\x1b\r\x07\u202e")
    assert "\\x1b[2J" in out and "\\u202e" in out and "OMP_\\x1b]0;title\\x07" in out
    assert not [
        line
        for line in out.splitlines()
        if line.lstrip().startswith(("forged", "torch.version: fake"))
    ]
    # The text rendering of a snapshot escapes them too.
    rendered = env.render_text(hostile)
    assert "\x1b" not in rendered and "OMP_EVIL=\\x1b[2J" in rendered


def test_an_internal_error_is_exit_2_not_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    env.save(full_snapshot(), tmp_path / "a.json")

    def broken(*_: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(env, "diff", broken)
    code, _, err = _main(
        ["env", "diff", str(tmp_path / "a.json"), str(tmp_path / "a.json")], capsys
    )
    assert code == 2
    assert err == "repro-check: error: internal error: KeyError: 'surprise'; please report it\n"
