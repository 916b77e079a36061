"""Checkpoints and atomic files: round trips, every kind of damaged file, no pickle, Ctrl-C."""

import json
import os
import subprocess
import sys

import pytest
import torch

from repro_check.core.atomic import StoredFileError, atomic_writer, read_json, write_json
from repro_check.core.checkpoint import diff_tensors, load_checkpoint, load_tensors, save_checkpoint


def tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "model.fc.weight": torch.randn(4, 3, generator=g),
        "model.fc.bias": torch.randn(4, generator=g),
        "optimizer.state.0.step": torch.tensor(3.0),
        "mask": torch.tensor([True, False]),
        "ids": torch.arange(5, dtype=torch.int64),
    }


def test_round_trip_keeps_every_tensor_bitwise_and_the_provenance(tmp_path):
    manifest = save_checkpoint(tmp_path / "step-3", tensors(), {"test_id": "t::x", "seed": 7})
    loaded, meta = load_checkpoint(tmp_path / "step-3.safetensors")
    assert manifest == tmp_path / "step-3.json"
    assert set(loaded) == set(tensors())
    for key, tensor in tensors().items():
        assert torch.equal(loaded[key], tensor) and loaded[key].dtype == tensor.dtype
    assert meta["test_id"] == "t::x" and meta["seed"] == 7
    assert meta["schema"] == "repro-check/checkpoint" and meta["schema_version"] == 1


def test_truncated_checkpoint_is_refused_with_the_reason(tmp_path):
    save_checkpoint(tmp_path / "c", tensors(), {})
    path = tmp_path / "c.safetensors"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(StoredFileError, match="truncated or was modified"):
        load_checkpoint(path)


def test_flipped_byte_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", tensors(), {})
    path = tmp_path / "c.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(StoredFileError, match="does not match its manifest"):
        load_checkpoint(path)


def test_manifest_from_a_newer_repro_check_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", tensors(), {})
    manifest = tmp_path / "c.json"
    document = json.loads(manifest.read_text())
    document["schema_version"] = 99
    manifest.write_text(json.dumps(document))
    with pytest.raises(StoredFileError, match="newer than this repro-check understands"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_corrupt_manifest_is_refused(tmp_path):
    save_checkpoint(tmp_path / "c", tensors(), {})
    (tmp_path / "c.json").write_text('{"schema": "repro-check/checkpoint", "schema_ver')
    with pytest.raises(StoredFileError, match="not valid JSON"):
        load_checkpoint(tmp_path / "c.safetensors")


def test_torch_save_file_with_code_is_never_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": torch.ones(2), "payload": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(StoredFileError, match="weights_only=True"):
        load_tensors(tmp_path / "evil.pt")
    assert not marker.exists()


def test_torch_save_state_dict_loads_flattened(tmp_path):
    torch.save({"model": {"w": torch.ones(2)}, "step": torch.tensor(1)}, tmp_path / "ok.pt")
    loaded = load_tensors(tmp_path / "ok.pt")
    assert set(loaded) == {"model.w", "step"}


def test_diff_tensors_reports_presence_dtype_shape_and_elements():
    a = tensors()
    b = dict(a)
    b["model.fc.weight"] = a["model.fc.weight"].clone()
    b["model.fc.weight"][2, 1] += 0.5
    b["ids"] = a["ids"].to(torch.int32)
    b["mask"] = torch.tensor([True, False, True])
    del b["model.fc.bias"]
    b["extra"] = torch.zeros(1)
    status = {d.key: d for d in diff_tensors(a, b)}
    assert status["model.fc.weight"].status == "differs"
    assert status["model.fc.weight"].detail.mismatched == 1
    assert status["model.fc.weight"].detail.max_abs_index == (2, 1)
    assert status["ids"].status == "dtype"
    assert status["mask"].status == "shape"
    assert status["model.fc.bias"].status == "only-in-a"
    assert status["extra"].status == "only-in-b"
    assert status["optimizer.state.0.step"].status == "equal"


def cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "repro_check.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_checkpoint_cli_verify_and_diff_exit_codes(tmp_path):
    save_checkpoint(tmp_path / "a", tensors(), {"test_id": "t::x", "step": 3})
    changed = tensors()
    changed["model.fc.bias"][0] += 1.0
    save_checkpoint(tmp_path / "b", changed, {})
    verify = cli("checkpoint", "verify", "a.safetensors", cwd=tmp_path)
    assert verify.returncode == 0 and "5 tensors match" in verify.stdout
    same = cli("checkpoint", "diff", "a.safetensors", "a.safetensors", cwd=tmp_path)
    assert same.returncode == 0 and "bitwise identical" in same.stdout
    differ = cli("checkpoint", "diff", "a.safetensors", "b.safetensors", cwd=tmp_path)
    assert differ.returncode == 1
    assert "model.fc.bias" in differ.stdout and "1/4" in differ.stdout
    (tmp_path / "b.safetensors").write_bytes(b"garbage")
    broken = cli("checkpoint", "verify", "b.safetensors", cwd=tmp_path)
    assert broken.returncode == 2
    assert "repro-check: error:" in broken.stderr and "Traceback" not in broken.stderr


def test_interrupted_write_leaves_the_old_file_and_no_temp_files(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"schema": "x", "schema_version": 1, "value": "old"})
    with pytest.raises(KeyboardInterrupt), atomic_writer(target) as handle:
        handle.write(b'{"half": ')
        raise KeyboardInterrupt  # Ctrl-C in the middle of a write
    assert read_json(target, schema="x", max_version=1)["value"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
