"""CUDA nondeterminism audit of CPU traces, and the table's agreement with installed torch."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro_check.core import gpu_risk
from repro_check.core.gpu_risk import (
    alerts_under_deterministic_mode,
    audit,
    docstring_items,
    format_findings,
    load_table,
    version_in_range,
)
from repro_check.core.optrace import OpTracer

THIS_FILE = "test_gpu_risk.py"


def marker_line(tag: str) -> int:
    lines = open(__file__).read().splitlines()
    return next(i + 1 for i, s in enumerate(lines) if s.endswith(f"# {tag}"))


# --------------------------------------------------------------------------------------------
# the acceptance example: bilinear upsampling, scatter_add_, adaptive average pooling, backward


class Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.head = nn.Linear(4 * 3 * 3 + 8, 2)

    def forward(self, x, labels):
        h = self.conv(x)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)  # UPSAMPLE
        pooled = self.pool(h).flatten(1)  # POOL
        counts = torch.zeros(x.shape[0], 8)
        counts = counts.scatter_add_(1, labels, h.flatten(1)[:, : labels.shape[1]])  # SCATTER
        return self.head(torch.cat([pooled, counts], 1))


def train_step():
    torch.manual_seed(0)
    model = Segmenter()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 8, 8)
    labels = torch.randint(0, 8, (2, 16))
    with OpTracer(model) as tr:
        loss = model(x, labels).square().mean()
        opt.zero_grad()
        loss.backward()  # BACKWARD
        opt.step()
    return tr


def test_acceptance_bilinear_scatter_add_adaptive_pool_are_named_with_their_lines():
    tr = train_step()
    findings = audit(tr.events)
    by_op = {f.op: f for f in findings}
    expected = {
        "aten::upsample_bilinear2d_backward": ("interpolate-backward", "UPSAMPLE"),
        "aten::_adaptive_avg_pool2d_backward": ("adaptive-avg-pool-backward", "POOL"),
        "aten::scatter_add_": ("scatter-add", "SCATTER"),
    }
    for op, (entry_id, tag) in expected.items():
        assert op in by_op, format_findings(findings)
        f = by_op[op]
        assert f.entry_id == entry_id and f.certainty == "seen" and f.count == 1
        (site,) = f.call_sites
        assert site.source.split(":")[0].endswith(THIS_FILE)
        assert site.source.split(":")[1].split()[0] == str(marker_line(tag)), site
        assert site.source.endswith("in forward")
    up = by_op["aten::upsample_bilinear2d_backward"]
    assert up.behaviour == "raises-in-deterministic-mode"
    assert up.call_sites[0].via == "backward"
    assert up.call_sites[0].backward_source.split(":")[1].split()[0] == str(marker_line("BACKWARD"))
    assert by_op["aten::_adaptive_avg_pool2d_backward"].call_sites[0].module_path == "pool"
    assert by_op["aten::scatter_add_"].behaviour == "deterministic-alternative-used"
    text = format_findings(findings)
    assert "aten::upsample_bilinear2d_backward" in text and "alternative:" in text
    # the convolution (cuDNN) is listed too; on CPU none of these are risky
    assert "aten::convolution_backward" in by_op
    assert audit(tr.events, device="cpu") == []


def test_unlinked_backward_ops_fall_back_to_forward_ops_of_the_same_kind():
    tr = train_step()
    events = [dataclasses.replace(e, forward_index=-1) for e in tr.events]
    by_op = {f.op: f for f in audit(events)}
    (site,) = by_op["aten::upsample_bilinear2d_backward"].call_sites
    assert site.via == "backward, linked by op name"
    assert site.source.split(":")[1].split()[0] == str(marker_line("UPSAMPLE"))


def test_forward_with_grad_but_no_backward_is_reported_as_if_differentiated():
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    with OpTracer() as tr:
        F.interpolate(x, scale_factor=2, mode="bicubic")
    (f,) = audit(tr)
    assert f.op == "aten::upsample_bicubic2d" and f.certainty == "if-differentiated"
    assert f.call_sites[0].via == "if differentiated"
    with torch.no_grad(), OpTracer() as tr:
        F.interpolate(x, scale_factor=2, mode="bicubic")
    assert audit(tr) == []


def test_conditions_on_arguments():
    with OpTracer() as tr:
        torch.bincount(torch.tensor([1, 1, 2]))  # no weights: fine on CUDA
        torch.bincount(torch.tensor([1, 1, 2]), weights=torch.tensor([1.0, 2.0, 3.0]))
        F.nll_loss(
            torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), reduction="none"
        )
        F.nll_loss(torch.randn(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long))
        torch.cumsum(torch.arange(5), 0)  # integer: fine
        torch.cumsum(torch.randn(5), 0)
        torch.zeros(5).index_put_((torch.tensor([1, 1]),), torch.tensor([1.0, 2.0]))
    by_op = {f.op: f for f in audit(tr)}
    assert by_op["aten::bincount"].count == 1
    assert by_op["aten::nll_loss2d_forward"].count == 1
    assert by_op["aten::cumsum"].count == 1
    assert by_op["aten::index_put_"].entry_id == "index-put-no-accumulate"


def test_cpu_audit_names_index_put_accumulate():
    with OpTracer() as tr:
        torch.zeros(4).index_put_((torch.tensor([1, 1]),), torch.ones(2), accumulate=True)
    assert [f.entry_id for f in audit(tr, device="cpu")] == ["index-put-accumulate-cpu"]
    assert audit(tr, device="cuda") == []


def test_out_of_range_torch_version_adds_a_note():
    with OpTracer() as tr:
        torch.histc(torch.randn(10))
    (f,) = audit(tr, torch_version="2.9.1")
    assert any("may differ" in n for n in f.notes)
    (f,) = audit(tr)
    assert not any("may differ" in n for n in f.notes)


# --------------------------------------------------------------------------------------------
# the table against the installed torch


def test_every_op_in_the_torch_docstring_is_covered_by_the_table():
    """Fails loudly when a torch upgrade changes the list in use_deterministic_algorithms."""
    doc = docstring_items()
    assert len(doc["deterministic-alternative-used"]) > 10
    assert len(doc["raises-in-deterministic-mode"]) > 10
    table = load_table()
    covered = {(e["behaviour"], d) for e in table["entries"] for d in e["doc_items"]}
    in_docs = {(section, item) for section, items in doc.items() for item in items}
    missing = in_docs - covered
    stale = covered - in_docs
    assert not missing, (
        f"torch {torch.__version__} documents ops that cuda_nondeterminism.json does not cover: "
        f"{sorted(missing)}"
    )
    assert not stale, f"cuda_nondeterminism.json lists items torch no longer documents: {stale}"
    assert version_in_range(torch.__version__, table["valid_for"]), (
        f"the table was checked for torch {table['valid_for']}; the docstring of torch "
        f"{torch.__version__} matches it: extend valid_for in cuda_nondeterminism.json"
    )


def test_table_is_well_formed_and_names_real_aten_ops():
    table = load_table()
    assert table["schema"] == gpu_risk.TABLE_SCHEMA and table["schema_version"] == 1
    ids = [e["id"] for e in table["entries"]]
    assert len(ids) == len(set(ids))
    for e in table["entries"]:
        assert e["behaviour"] in gpu_risk.BEHAVIOURS
        assert set(e["devices"]) <= {"cpu", "cuda"} and e["devices"]
        assert e["phase"] in ("forward", "backward", "forward+backward")
        assert e["alternative"] and e["doc_items"] and e["valid_for"]
        assert set(e.get("condition", {})) <= gpu_risk.CONDITION_KEYS, e["id"]
        for qual in e["aten_ops"] + e["forward_ops"]:
            ns, _, name = qual.partition("::")
            name, _, overload = name.partition(".")
            packet = getattr(getattr(torch.ops, ns), name)  # raises if torch renamed the op
            if overload:
                assert overload in packet.overloads(), qual


# --------------------------------------------------------------------------------------------
# asking PyTorch itself


def test_alerts_under_deterministic_mode_on_cpu_and_flags_restored():
    prev = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(False)

    def work():
        out, idx = F.max_pool2d(torch.randn(1, 1, 8, 8), 2, return_indices=True)
        F.max_unpool2d(out, idx, 2)  # UNPOOL
        torch.zeros(5).put_(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]))
        torch.zeros(5).index_put_((torch.tensor([1, 1]),), torch.ones(2), accumulate=True)

    alerts = alerts_under_deterministic_mode(work)
    kernels = [a.kernel for a in alerts]
    assert kernels == ["max_unpooling2d_forward_out", "put_"]
    assert alerts[0].source.split(":")[1].split()[0] == str(marker_line("UNPOOL"))
    assert not torch.are_deterministic_algorithms_enabled()

    # previous settings come back, also when fn raises; other warnings still reach the user
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:

        def boom():
            warnings.warn("unrelated", UserWarning, stacklevel=1)
            raise ValueError("x")

        with pytest.raises(ValueError), pytest.warns(UserWarning, match="unrelated"):
            alerts_under_deterministic_mode(boom)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(prev[0], warn_only=prev[1])


def test_version_ranges():
    assert version_in_range("2.13.0+cpu", ">=2.13,<2.14")
    assert version_in_range("2.13.2", ">=2.13,<2.14")
    assert not version_in_range("2.14.0", ">=2.13,<2.14")
    assert not version_in_range("2.9.1", ">=2.13,<2.14")
    with pytest.raises(ValueError):
        version_in_range("2.13.0", "~=2.13")
