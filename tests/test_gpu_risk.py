"""CUDA nondeterminism audit of CPU traces, and the table's agreement with installed torch."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from repro_check.core.atomic import StoredFileError
from repro_check.core.determinism import explain_deterministic_error
from repro_check.trace import ops
from repro_check.trace.audit import (
    alerts_under_deterministic_mode,
    audit,
    docstring_items,
    format_findings,
    version_in_range,
)
from repro_check.trace.diff import diff_traces
from repro_check.trace.ops import load_table, nondeterminism_alert
from repro_check.trace.tracer import OpTracer

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
    covered = {(e.behaviour, d) for e in table.entries for d in e.doc_items}
    in_docs = {(section, item) for section, items in doc.items() for item in items}
    missing = in_docs - covered
    stale = covered - in_docs
    assert not missing, (
        f"torch {torch.__version__} documents ops that op_knowledge.json does not cover: "
        f"{sorted(missing)}"
    )
    assert not stale, f"op_knowledge.json lists items torch no longer documents: {stale}"
    assert version_in_range(torch.__version__, table.valid_for), (
        f"the table was checked for torch {table.valid_for}; the docstring of torch "
        f"{torch.__version__} matches it: extend valid_for in op_knowledge.json"
    )


def test_table_names_real_aten_ops_and_says_where_each_row_comes_from():
    table = load_table()
    for e in table.entries:
        assert e.doc_items or e.alerts, e.id  # the loader refuses a row without either
        for qual in e.aten_ops + e.forward_ops:
            ns, _, name = qual.partition("::")
            name, _, overload = name.partition(".")
            packet = getattr(getattr(torch.ops, ns), name)  # raises if torch renamed the op
            if overload:
                assert overload in packet.overloads(), qual


def test_a_malformed_table_is_refused_with_the_row_and_the_reason(tmp_path):
    raw = json.loads((Path(ops.__file__).parent.parent / "data" / "op_knowledge.json").read_text())
    cases = {
        "behaviour": ("behaviour", "sometimes", "behaviour 'sometimes' not in"),
        "condition": ("condition", {"colour": "red"}, "condition keys ['colour']"),
        "evidence": ("doc_items", [], "neither which docstring items"),
    }
    for name, (key, value, expected) in cases.items():
        broken = json.loads(json.dumps(raw))
        broken["entries"][0][key] = value
        if name == "evidence":
            broken["entries"][0]["alerts"] = []
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(StoredFileError, match=re.escape(expected)) as info:
            load_table(str(path))
        assert "'convolution'" in str(info.value)  # the row is named
    newer = dict(raw, schema_version=ops.TABLE_SCHEMA_VERSION + 1)
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(StoredFileError, match="upgrade repro-check"):
        load_table(str(tmp_path / "newer.json"))


# --------------------------------------------------------------------------------------------
# attention (scaled_dot_product_attention backward)


class TinyAttention(nn.Module):
    """One self-attention block through nn.MultiheadAttention's fast path (SDPA)."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, dropout=dropout, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        h, _ = self.attn(x, x, x, need_weights=False)  # ATTENTION
        return self.head(h.mean(1))


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["cpu-flash-kernel", "math-path"])
def test_attention_backward_is_flagged_from_a_cpu_trace(dropout):
    torch.manual_seed(0)
    model = TinyAttention(dropout)
    x = torch.randn(4, 6, 16)
    with OpTracer(model) as tr:
        F.cross_entropy(model(x), torch.tensor([0, 1, 0, 1])).backward()
    findings = [f for f in audit(tr) if f.entry_id == "sdpa-backward-seen-on-cpu"]
    assert len(findings) == 1, format_findings(audit(tr))
    (f,) = findings
    assert f.certainty == "seen" and f.behaviour == "deterministic-alternative-used"
    assert "sdpa_kernel" in f.alternative and "warn_only=False" in f.alternative
    (site,) = f.call_sites
    assert site.via == "backward" and site.module_path == "attn"
    assert site.source.split(":")[1].split()[0] == str(marker_line("ATTENTION"))
    # a trace taken on CUDA shows the CUDA kernels themselves; its math path is deterministic
    assert not [f for f in audit(tr, traced_on="cuda") if f.entry_id.startswith("sdpa")]
    assert tr.traced_on == "cpu"
    # plain softmax backward (no attention) is not flagged
    with OpTracer() as tr:
        torch.randn(3, 4, requires_grad=True).softmax(-1).sum().backward()
    assert not [f for f in audit(tr) if f.entry_id.startswith("sdpa")]


def test_attention_forward_with_grad_is_reported_until_its_backward_runs():
    model = TinyAttention(0.0)
    with OpTracer(model) as tr:
        model(torch.randn(2, 3, 16))
    (f,) = [f for f in audit(tr) if f.entry_id.startswith("sdpa")]
    assert f.op == "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert f.certainty == "if-differentiated"


def test_cuda_attention_kernels_and_their_warnings_are_in_the_table():
    table = load_table()
    by_op = {op: e for e in table.entries for op in e.aten_ops}
    for op in (
        "aten::_scaled_dot_product_efficient_attention_backward",
        "aten::_efficient_attention_backward",
        "aten::_scaled_dot_product_flash_attention_backward",
        "aten::_flash_attention_backward",
        "aten::_scaled_dot_product_cudnn_attention_backward",
    ):
        assert by_op[op].devices == ("cuda",) and by_op[op].phase == "backward", op
    warning = (
        "Memory Efficient attention defaults to a non-deterministic algorithm. To explicitly "
        "enable determinism call torch.use_deterministic_algorithms(True, warn_only=False)."
    )
    kernel = nondeterminism_alert(warning)
    assert kernel == "Memory Efficient attention"
    # what torch 2.11 said on an H200 for the cuDNN kernel (docs/optrace.md)
    cudnn = nondeterminism_alert("cuDNN Attention defaults to a non-deterministic algorithm.")
    assert [e.id for e in ops.alert_entries(cudnn, table)] == ["sdpa-cudnn-attention-backward"]
    assert [e.id for e in ops.alert_entries(kernel, table)][0] == (
        "sdpa-efficient-attention-backward"
    )


# --------------------------------------------------------------------------------------------
# one table for the audit and the localisation advice


def test_localisation_advice_comes_from_the_same_table_as_the_audit():
    def scatter_run():
        with OpTracer() as tr:
            torch.zeros(8).scatter_add_(0, torch.tensor([1, 1, 2]), torch.ones(3))
        return tr

    tr = scatter_run()
    (event,) = [e for e in tr.events if e.op == "aten::scatter_add_"]
    (finding,) = audit(tr)
    assert load_table().advice_for(event) == finding.alternative
    # several rows for one op (put_ with accumulate on CPU and on CUDA): each says where
    with OpTracer() as tr:
        torch.zeros(4).put_(torch.tensor([1, 1]), torch.ones(2), accumulate=True)
    (event,) = [e for e in tr.events if e.op == "aten::put_"]
    advice = load_table().advice_for(event)
    assert advice.startswith("on CPU: ") and "; on CUDA: " in advice
    # an op the table does not know gets the generic advice
    d = diff_traces(scatter_run(), scatter_run())
    assert d.kind == "identical"
    with OpTracer() as tr:
        torch.ones(2).exp()
    assert load_table().advice_for(tr.events[-1]) == load_table().generic_advice


def test_the_no_deterministic_implementation_wording_is_read_in_one_place():
    error = (
        "Traceback (most recent call last):\n"
        '  File "model.py", line 12, in forward\n'
        "model.py:12: RuntimeError\n"
        "RuntimeError: adaptive_avg_pool2d_backward_cuda does not have a deterministic "
        "implementation, but you set 'torch.use_deterministic_algorithms(True)'."
    )
    assert nondeterminism_alert(error) == "adaptive_avg_pool2d_backward_cuda"
    explained = explain_deterministic_error(error)
    assert explained.startswith("adaptive_avg_pool2d_backward_cuda has no deterministic")
    cublas = (
        "Deterministic behavior was enabled with either `torch.use_deterministic_algorithms(True)` "
        "or `at::Context::setDeterministicAlgorithms(true)`, but this operation is not "
        "deterministic because it uses CuBLAS and you have not set CUBLAS_WORKSPACE_CONFIG"
    )
    assert nondeterminism_alert(cublas) == "CuBLAS"
    assert ops.alert_entries("CUBLAS_WORKSPACE_CONFIG")[0].id == "cublas-workspace"
    assert nondeterminism_alert("some other warning") is None


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
