"""repro_check.reporting.sensitivity: numbers against core.stats and scipy, warnings, files."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from repro_check.core import stats
from repro_check.core.atomic import read_json
from repro_check.core.paths import id_to_name
from repro_check.reporting import sensitivity as sr
from repro_check.reporting.sensitivity.latex import PREAMBLE as LATEX_PREAMBLE

MLP = "tests/test_train.py::test_mlp[adam_lr=1e-3]"
CNN = "tests/test_train.py::test_cnn"
K = 8
STDS = {"init": 0.01, "data": 0.02, "dropout": 0.0, "all": 0.022}
N_EXAMPLES = 10_000


def make_runs(seed: int = 123) -> pd.DataFrame:
    """A sweep with known structure: init std 0.01, data 0.02, dropout constant (the test never
    uses it), all ~0.022; K=8; loss and accuracy; one failed run, one NaN run; CNN with K=1."""
    rng = np.random.default_rng(seed)
    rows = []
    for src, sd in STDS.items():
        for k in range(K):
            rows.append(
                {
                    "test": MLP,
                    "source": src,
                    "k": k,
                    "status": "ok",
                    "root_seed": 8844375314188477290,
                    "perturbation": 1000 + k,
                    "command": f"pytest --repro-sweep --repro-source={src} --repro-k={k} '{MLP}'",
                    "error": "",
                    "metric.loss": 0.5 + sd * rng.standard_normal(),
                    "metric.accuracy": 0.9 + 0.4 * sd * rng.standard_normal(),
                }
            )
    df = pd.DataFrame(rows)
    failed = (df["source"] == "data") & (df["k"] == 3)
    df.loc[failed, ["status", "error"]] = ["failed", "Traceback ...\nRuntimeError: boom"]
    df.loc[failed, ["metric.loss", "metric.accuracy"]] = np.nan
    nan_run = (df["source"] == "init") & (df["k"] == 5)
    df.loc[nan_run, "status"] = "nan"
    df.loc[nan_run, "metric.loss"] = np.nan  # accuracy stays finite: it is still used
    cnn = pd.DataFrame(
        [
            {
                "test": CNN,
                "source": src,
                "k": 0,
                "status": "ok",
                "root_seed": 7,
                "perturbation": 0,
                "command": f"pytest --repro-sweep --repro-source={src} '{CNN}'",
                "error": "",
                "metric.loss": 1.25,
                "metric.accuracy": np.nan,
            }
            for src in ("init", "all")
        ]
    )
    return pd.concat([df, cnn], ignore_index=True)


def expected_values(runs: pd.DataFrame, test: str, source: str, metric: str) -> np.ndarray:
    sel = runs[(runs.test == test) & (runs.source == source) & (runs.status != "failed")]
    vals = sel.sort_values("k")[f"metric.{metric}"].to_numpy(dtype=float)
    return vals[np.isfinite(vals)]


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return make_runs()


@pytest.fixture(scope="module")
def analysis(runs: pd.DataFrame) -> sr.SensitivityAnalysis:
    return sr.analyze(
        runs,
        accuracy_examples={MLP: {"accuracy": N_EXAMPLES}},
        sources_unused={CNN: ["augment"]},
    )


SESSION = {
    "command": "pytest --repro-sweep --repro-seed=0 tests/test_train.py",
    "base_seed": 0,
    "K": K,
    "sources": ["init", "data", "dropout", "all"],
    "environment": {"torch": "2.13.0+cpu", "cpu": {"capability": "AVX2"}, "threads": 2},
    "environment_file": "environment.json",
}
DISAGREEMENT = {MLP: {"init": {"mean_disagreement": 0.031, "mean_correlation": 0.97, "pairs": 28}}}


@pytest.fixture(scope="module")
def report_dir(analysis, tmp_path_factory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("sens") / "report"
    paths = sr.write_report(analysis, out, session=SESSION, disagreement=DISAGREEMENT)
    return out, paths


# ------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("metric", ["loss", "accuracy"])
@pytest.mark.parametrize("source", ["init", "data", "all"])
def test_summary_equals_stats_and_scipy(analysis, runs, metric, source):
    vals = expected_values(runs, MLP, source, metric)
    row = analysis.row(MLP, metric, source)
    d = stats.describe(vals)
    for key in ("mean", "std", "min", "max", "q25", "median", "q75", "iqm"):
        assert row[key] == getattr(d, key), key
    assert row["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
    assert row["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-12)
    assert row["iqm"] == pytest.approx(scipy.stats.trim_mean(vals, 0.25), rel=1e-12)
    low, high = scipy.stats.t.interval(
        0.95, vals.size - 1, loc=vals.mean(), scale=scipy.stats.sem(vals)
    )
    assert (row["ci_low"], row["ci_high"], row["ci_method"]) == (
        pytest.approx(low, rel=1e-12),
        pytest.approx(high, rel=1e-12),
        "t",
    )
    sd = stats.std_ci(vals)
    assert (row["std_low"], row["std_high"]) == (sd.low, sd.high)
    trimmed = stats.iqm_ci(vals)
    assert (row["iqm_low"], row["iqm_high"]) == (trimmed.low, trimmed.high)
    all_vals = expected_values(runs, MLP, "all", metric)
    share = np.var(vals, ddof=1) / np.var(all_vals, ddof=1)
    assert row["var_share"] == pytest.approx(share, rel=1e-12)
    f = stats.variance_ratio_ci(vals, all_vals)
    if source == "all":
        assert row["share_low"] == row["share_high"] == 1.0
    else:
        assert (row["share_low"], row["share_high"]) == (f.low, f.high)
    hw = 0.5 * np.std(all_vals, ddof=1)
    assert row["target_half_width"] == pytest.approx(hw)
    assert row["recommended_runs"] == stats.recommended_runs(row["std"], hw, method="t")


def test_known_structure_shows_up(analysis):
    # data's spread is about twice init's; all is the largest-or-comparable reference.
    loss = analysis.rows(MLP, "loss").set_index("source")
    assert loss.loc["all", "var_share"] == 1.0
    assert loss.loc["data", "std"] > loss.loc["init", "std"]
    assert list(loss.index) == ["init", "data", "dropout", "all"]  # `all` last


def test_failed_and_nan_runs_are_counted_not_dropped(analysis, runs):
    assert len(analysis.runs) == len(runs)
    init_loss = analysis.row(MLP, "loss", "init")
    assert (init_loss["n_runs"], init_loss["n"], init_loss["n_failed"], init_loss["n_nan"]) == (
        8,
        7,
        0,
        1,
    )
    # the NaN run's accuracy is finite, so it is used
    init_acc = analysis.row(MLP, "accuracy", "init")
    assert (init_acc["n"], init_acc["n_nan"]) == (8, 0)
    for metric in ("loss", "accuracy"):
        data = analysis.row(MLP, metric, "data")
        assert (data["n_runs"], data["n"], data["n_failed"], data["n_nan"]) == (8, 7, 1, 0)
    kinds = {(w.kind, w.source) for w in analysis.warnings if w.test == MLP}
    assert ("failed-runs", "data") in kinds
    assert ("nan-runs", "init") in kinds
    failed = next(w for w in analysis.warnings if w.kind == "failed-runs")
    assert "RuntimeError: boom" in failed.message
    assert "--repro-source=data --repro-k=3" in failed.message


def test_constant_source_no_ci_explosion(analysis):
    row = analysis.row(MLP, "loss", "dropout")
    assert row["std"] == 0.0
    assert row["ci_low"] == row["ci_high"] == row["mean"] == 0.5
    assert row["ci_method"] == "constant-data"
    assert row["var_share"] == 0.0
    assert row["recommended_runs"] == 2
    messages = [w.message for w in analysis.warnings if w.kind == "constant-source"]
    assert len(messages) == 1
    assert "this sweep measures nothing: the test never asked for source 'dropout'" in messages[0]


def test_no_spread_and_unused_source_warnings(analysis):
    no_spread = {w.source for w in analysis.warnings if w.kind == "no-spread" and w.test == CNN}
    assert no_spread == {"init", "all"}
    assert all("no spread" in w.message for w in analysis.warnings if w.kind == "no-spread")
    unused = [w for w in analysis.warnings if w.kind == "unused-source"]
    assert [(w.test, w.source) for w in unused] == [(CNN, "augment")]
    assert "the test never asked for source augment" in unused[0].message
    row = analysis.row(CNN, "loss", "all")
    assert row["n"] == 1 and math.isnan(row["std"]) and math.isnan(row["ci_low"])
    assert row["ci_method"] == "insufficient-data"
    assert pd.isna(row["recommended_runs"])
    assert analysis.metrics(CNN) == ["loss"]  # accuracy never recorded by the CNN


def test_constant_all_sweep_warns_without_runtime_warnings():
    runs = make_runs()
    runs = runs[runs.test == MLP].copy()
    runs["metric.loss"] = 0.25
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = sr.analyze(runs)
    row = a.row(MLP, "loss", "all")
    assert row["std"] == 0.0 and row["ci_low"] == row["ci_high"] == 0.25
    assert math.isnan(row["var_share"])
    assert any(w.kind == "constant-metric" and w.metric == "loss" for w in a.warnings)
    # loss constant everywhere must not mark sources as unused while accuracy varies
    assert not any(w.kind == "constant-source" and w.source == "init" for w in a.warnings)


def test_noise_floor(analysis):
    acc = analysis.row(MLP, "accuracy", "all")
    assert acc["noise_floor"] == pytest.approx(
        stats.binomial_noise_floor(acc["mean"], N_EXAMPLES), rel=1e-12
    )
    assert math.isnan(analysis.row(MLP, "loss", "all")["noise_floor"])
    small = sr.analyze(make_runs(), accuracy_examples={MLP: {"metric.accuracy": 100}})
    kinds = [(w.kind, w.metric) for w in small.warnings]
    assert ("below-noise-floor", "accuracy") in kinds


def test_target_half_width_options(runs):
    fixed = sr.analyze(runs, target_half_width=0.001)
    row = fixed.row(MLP, "loss", "data")
    assert row["recommended_runs"] == stats.recommended_runs(row["std"], 0.001, method="t")
    per_metric = sr.analyze(runs, target_half_width={"accuracy": 0.002})
    assert per_metric.row(MLP, "accuracy", "all")["target_half_width"] == 0.002
    loss_all = per_metric.row(MLP, "loss", "all")
    assert loss_all["target_half_width"] == pytest.approx(0.5 * loss_all["std"])


def test_expected_max_curve(analysis, runs):
    for metric, hib in (("loss", False), ("accuracy", True)):
        assert analysis.higher_is_better[metric] is hib
        vals = expected_values(runs, MLP, "all", metric)
        curve = analysis.curve(MLP, metric)
        budgets = np.arange(1, vals.size + 1)
        assert curve["budget"].tolist() == budgets.tolist()
        np.testing.assert_allclose(
            curve["expected"], stats.expected_max(vals, budgets, higher_is_better=hib)
        )
        low, high = stats.expected_max_band(
            vals, budgets, n_resamples=2000, seed=0, higher_is_better=hib
        )
        np.testing.assert_allclose(curve["low"], low)
        np.testing.assert_allclose(curve["high"], high)
        assert curve["expected"].iloc[0] == pytest.approx(np.mean(vals))


def test_direction_override(runs):
    a = sr.analyze(runs, higher_is_better={"loss": True})
    assert a.higher_is_better == {"loss": True, "accuracy": True}
    curve = a.curve(MLP, "loss")
    assert curve["expected"].is_monotonic_increasing


def test_row_order_does_not_matter(runs, analysis):
    shuffled = runs.sample(frac=1.0, random_state=3).reset_index(drop=True)
    again = sr.analyze(
        shuffled,
        accuracy_examples={MLP: {"accuracy": N_EXAMPLES}},
        sources_unused={CNN: ["augment"]},
    )
    # presentation order follows first appearance; the numbers do not depend on row order
    for got, want, keys in (
        (again.summary, analysis.summary, ["test", "metric", "source"]),
        (again.curves, analysis.curves, ["test", "metric", "budget"]),
    ):
        pd.testing.assert_frame_equal(
            got.sort_values(keys).reset_index(drop=True),
            want.sort_values(keys).reset_index(drop=True),
        )


def test_input_validation(runs):
    with pytest.raises(KeyError, match="status"):
        sr.analyze(runs.drop(columns=["status"]))
    bad = runs.copy()
    bad.loc[0, "status"] = "crashed"
    with pytest.raises(ValueError, match="crashed"):
        sr.analyze(bad)
    with pytest.raises(ValueError, match="duplicate"):
        sr.analyze(pd.concat([runs, runs.iloc[:1]]))
    minimal = runs[["test", "source", "k", "status", "metric.loss"]]
    a = sr.analyze(minimal)  # optional run columns are filled in
    assert (a.runs["command"] == "").all()


# ------------------------------------------------------------------------------------ compare


def _pair_runs(a_mean: float, b_mean: float, n: int = 20, sd: float = 0.01) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    shared = rng.normal(0.0, sd, n)  # paired seeds share part of the noise
    rows = []
    for test, mean in (("A", a_mean), ("B", b_mean)):
        noise = rng.normal(0.0, sd / 4, n)
        for k in range(n):
            value = mean + shared[k] + noise[k]
            rows.append(
                {"test": test, "source": "all", "k": k, "status": "ok", "metric.acc": value}
            )
    return pd.DataFrame(rows)


def test_compare_decisions():
    better = sr.compare(_pair_runs(0.92, 0.90, n=40), "A", "B", "acc").comparison.paired
    assert better.improvement.decision == "A better" and better.improvement.p == 1.0
    assert better.mean_difference.low > 0
    worse = sr.compare(_pair_runs(0.90, 0.92, n=40), "A", "B", "metric.acc")
    assert worse.comparison.decision == "B better" and worse.comparison.primary.improvement.p == 0
    same = sr.compare(_pair_runs(0.90, 0.90, n=40), "A", "B", "acc")
    assert same.comparison.decision == "inconclusive"
    # lower is better: A's smaller values win; the mean difference stays in the metric's units
    loss = sr.compare(_pair_runs(0.10, 0.12, n=40), "A", "B", "acc", higher_is_better=False)
    assert loss.comparison.decision == "A better"
    assert loss.comparison.primary.mean_difference.point < 0


def test_compare_never_names_a_winner_from_few_runs():
    for n in (2, 3, 4, 20):
        result = sr.compare(_pair_runs(0.95, 0.80, n=n), "A", "B", "acc")
        imp = result.comparison.primary.improvement
        assert imp.decision == "too few runs", n
        assert f"run {29 - n} more" in imp.reason


def test_compare_pairs_by_k_and_counts_exclusions():
    runs = _pair_runs(0.92, 0.90)
    a = runs[runs.test == "A"].sort_values("k")["metric.acc"].to_numpy()
    b = runs[runs.test == "B"].sort_values("k")["metric.acc"].to_numpy()
    expected = stats.compare_samples(a, b)
    shuffled = runs.sample(frac=1.0, random_state=1)
    got = sr.compare(shuffled, "A", "B", "acc")
    assert got.comparison == expected and got.paired_seeds
    runs.loc[(runs.test == "A") & (runs.k == 0), "status"] = "failed"
    runs = runs[~((runs.test == "B") & (runs.k == 1))]  # k=1 only on A's side
    partial = sr.compare(runs, "A", "B", "acc").comparison.paired.improvement
    assert partial.n_excluded == 2 and partial.n_a == partial.n_b == 18
    with pytest.raises(KeyError, match="source"):
        sr.compare(runs, "A", "B", "acc", source="init")


# ------------------------------------------------------------------------------------ files


def test_files_written(report_dir):
    out, paths = report_dir
    names = {p.name for p in paths}
    assert {"sensitivity.md", "sensitivity.tex", "runs.csv", "sensitivity.json"} <= names
    assert all(p.exists() and p.parent == out for p in paths)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files
    # file names follow the project's one id-to-path rule (core/paths.id_to_name)
    slug = id_to_name("tests/test_train.py::test_mlp[adam_lr=1e-3]", 80)
    for metric in ("loss", "accuracy"):
        assert f"{slug}__{metric}__sources.png" in names
        assert f"{slug}__{metric}__expected_max.png" in names
    # the single-run CNN gets a strip plot, no expected-max curve (one budget only)
    cnn = id_to_name("tests/test_train.py::test_cnn", 80)
    assert f"{cnn}__loss__sources.png" in names
    assert f"{cnn}__loss__expected_max.png" not in names


def test_markdown(report_dir, analysis):
    text = (report_dir[0] / "sensitivity.md").read_text()
    assert "| source " in text and "| mean ± std " in text and "95% CI of mean" in text
    data = analysis.row(MLP, "loss", "data")
    assert "| 7 of 8 (1 failed) |" in text
    assert "7 of 8 (1 NaN)" in text
    assert "| **all**" in text
    assert f"{data['std']:.2g}"[:4] in text
    assert "this sweep measures nothing" in text
    assert "RuntimeError: boom" in text
    assert SESSION["command"] in text and "cpu.capability: AVX2" in text
    assert "environment.json" in text
    assert "runs.csv" in text and "--repro-source=data --repro-k=3" in text
    assert "expected min" in text and "expected max" in text
    assert "mean disagreement" in text and "0.0310" in text
    assert "{gamma}" not in text
    for png in report_dir[0].glob("*.png"):
        assert f"]({png.name})" in text


def _check_latex_structure(tex: str) -> None:
    """Balanced braces, math and environments; escaped text; every row as wide as its
    tabular's column spec."""
    body = "\n".join(line for line in tex.splitlines() if not line.lstrip().startswith("%"))
    unescaped = re.sub(r"\\[\\{}$&%#_]", "", body)  # drop escaped specials
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "unbalanced braces"
    assert depth == 0, "unbalanced braces"
    for line in unescaped.splitlines():
        assert line.count("$") % 2 == 0, f"unbalanced math in: {line}"
        assert "#" not in line and "%" not in line
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} does not match"
    assert not stack
    outside_math = re.sub(r"\$[^$]*\$", "", unescaped)
    assert "_" not in outside_math, "unescaped underscore in text mode"
    for spec, table in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", body, re.S):
        for row in re.findall(r"^\s*(.*)\\\\\s*$", table, flags=re.M):
            assert row.count("&") - row.count(r"\&") == len(spec) - 1, row


def test_latex(report_dir):
    tex = (report_dir[0] / "sensitivity.tex").read_text()
    assert tex.count(r"\begin{table}") == 3  # MLP loss, MLP accuracy, CNN loss
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"test\_train.py::test\_mlp[adam\_lr=1e-3]" in tex
    assert r"95\% CI" in tex and r"\emph{all}" in tex
    assert "test_mlp" not in tex.replace(r"test\_mlp", "").replace("test-mlp", "")
    _check_latex_structure(tex)


def test_latex_escape():
    assert sr.tex_escape("a_b&c%d$e#f{g}h~i^j\\k") == (
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )


def test_latex_header_names_every_package_it_uses(report_dir):
    tex = (report_dir[0] / "sensitivity.tex").read_text()
    assert f"% Preamble: {LATEX_PREAMBLE}" in tex
    assert "amsmath" in LATEX_PREAMBLE and "booktabs" in LATEX_PREAMBLE  # \\text, \\toprule


def test_latex_compiles(report_dir, tmp_path):  # pragma: no cover - needs a TeX installation
    """Compiles the generated tables with the preamble their header names. Without pdflatex
    it skips -- unless REPRO_CHECK_REQUIRE_LATEX=1 (CI installs TeX and sets it)."""
    if shutil.which("pdflatex") is None:
        if os.environ.get("REPRO_CHECK_REQUIRE_LATEX") == "1":
            pytest.fail("REPRO_CHECK_REQUIRE_LATEX=1 but pdflatex is not installed")
        pytest.skip("pdflatex not installed")
    (tmp_path / "sensitivity.tex").write_text((report_dir[0] / "sensitivity.tex").read_text())
    _compile(tmp_path / "sensitivity.tex", tmp_path)


def test_csv_round_trips(report_dir, analysis):
    back = pd.read_csv(report_dir[0] / "runs.csv", keep_default_na=False, na_values=[""])
    expected = analysis.runs.copy()
    for col in ("command", "error"):
        back[col] = back[col].fillna("")
    assert list(back.columns) == list(expected.columns)
    assert len(back) == len(expected) == 34
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["root_seed"].iloc[0] == 8844375314188477290


def _no_constants(name: str):
    raise ValueError(f"bare {name} in JSON")


def test_json(report_dir, analysis):
    path = report_dir[0] / "sensitivity.json"
    doc = json.loads(path.read_text(), parse_constant=_no_constants)
    assert doc["schema"] == "repro-check/sensitivity" and doc["schema_version"] == 2
    read_json(path, schema=sr.SCHEMA, max_version=sr.SCHEMA_VERSION)
    assert [t["nodeid"] for t in doc["tests"]] == [MLP, CNN]
    mlp = doc["tests"][0]
    assert mlp["sources"] == ["init", "data", "dropout", "all"]
    loss = next(m for m in mlp["metrics"] if m["name"] == "loss")
    init = next(r for r in loss["sources"] if r["source"] == "init")
    assert init["mean"] == pytest.approx(analysis.row(MLP, "loss", "init")["mean"])
    assert init["noise_floor"] == "nan"  # the project's JSON policy for non-finite floats
    assert loss["higher_is_better"] is False
    assert len(loss["expected_max"]["budgets"]) == 8
    assert mlp["disagreement"]["init"]["pairs"] == 28
    cnn_all = doc["tests"][1]["metrics"][0]["sources"][-1]
    assert cnn_all["std"] == "nan" and cnn_all["recommended_runs"] is None  # not computed
    assert len(doc["runs"]) == 34 and doc["runs_file"] == "runs.csv"
    assert {w["kind"] for w in doc["warnings"]} >= {"no-spread", "unused-source", "failed-runs"}
    assert doc["session"]["environment_file"] == "environment.json"
    assert "{gamma}" not in doc["settings"]["decision_rule"]
    assert set(doc["files"]) == {p.name for p in report_dir[1]}


def test_pngs_are_valid(report_dir):
    import matplotlib.image

    pngs = sorted(report_dir[0].glob("*.png"))
    assert len(pngs) == 5
    for png in pngs:
        raw = png.read_bytes()
        assert raw[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(raw) > 10_000, png.name
        img = matplotlib.image.imread(png)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
        assert img[..., :3].std() > 0.05  # not a blank canvas


def test_no_plots_and_dollar_names(tmp_path):
    runs = make_runs()
    runs["test"] = runs["test"].str.replace("test_cnn", "test_$cost")
    runs = runs.rename(columns={"metric.loss": "metric.loss_$"})
    a = sr.analyze(runs)
    paths = sr.write_report(a, tmp_path / "noplots", plots=False)
    assert not any(p.suffix == ".png" for p in paths)
    paths = sr.write_report(a, tmp_path / "dollars")  # '$' must not break mathtext
    assert any("cost" in p.name and p.suffix == ".png" for p in paths)
    _check_latex_structure((tmp_path / "dollars" / "sensitivity.tex").read_text())


def test_terminal_table(analysis):
    text = sr.terminal_table(analysis)
    first = text.splitlines()[0]
    for header in ("test", "metric", "source", "n", "mean", "std", "95% CI", "share"):
        assert header in first
    assert MLP in text and "7/8" in text and "dropout" in text
    assert text.count(MLP) >= 1
    assert "warning: " in text
    assert "warning" not in sr.terminal_table(analysis, show_warnings=False)


# ------------------------------------------------------------------------------------ variants

VARIANT_A, VARIANT_B = "t.py::test_m[a]", "t.py::test_m[b]"


def _variant_runs(n: int = 6, shift_b: float = 0.0, same_seeds: bool = True) -> pd.DataFrame:
    """Two parametrized variants of one test; with ``same_seeds`` run k of both used the same
    seeds, and identical code gives identical values run by run."""
    rng = np.random.default_rng(11)
    base = 0.8 + 0.02 * rng.standard_normal(n)
    rows = []
    for test, shift in ((VARIANT_A, 0.0), (VARIANT_B, shift_b)):
        for k in range(n):
            seed = 1000 + k if same_seeds or test == VARIANT_A else 5000 + k
            rows.append(
                {
                    "test": test,
                    "source": "all",
                    "k": k,
                    "status": "ok",
                    "root_seed": 42,
                    "metric.accuracy": base[k] + shift,
                    "seed.init": seed,
                    "seed.data": seed + 1,
                }
            )
    return pd.DataFrame(rows)


def test_identical_variants_are_paired_and_equal():
    a = sr.analyze(_variant_runs())
    (c,) = a.comparisons
    assert (c.test_a, c.test_b, c.paired_seeds) == (VARIANT_A, VARIANT_B, True)
    paired = c.comparison.paired
    assert paired.improvement.p == 0.5
    assert paired.improvement.ci_low < 0.5 < paired.improvement.ci_high
    assert paired.mean_difference.contains(0.0)
    assert c.comparison.unpaired.mean_difference.contains(0.0)
    assert paired.improvement.decision == "too few runs"
    seeds = a.runs.set_index(["test", "k"])["seed.init"]
    assert (seeds[VARIANT_A] == seeds[VARIANT_B]).all()


def test_variants_with_different_seeds_are_compared_unpaired_and_say_why():
    a = sr.analyze(_variant_runs(same_seeds=False))
    (c,) = a.comparisons
    assert not c.paired_seeds and c.comparison.paired is None
    assert "seed.init differs at k=0" in c.note
    assert any(w.kind == "unpaired-variants" for w in a.warnings)


def test_two_runs_make_no_decision_and_say_how_many_are_needed(tmp_path):
    a = sr.analyze(_variant_runs(n=2, shift_b=-0.1))
    (c,) = a.comparisons
    assert c.comparison.paired.improvement.p == 1.0
    assert c.comparison.decision == "too few runs"
    terminal = sr.terminal_table(a)
    assert f"{VARIANT_A} vs {VARIANT_B}, accuracy (paired)" in terminal
    assert "decision: none: 2 pairs; the rule needs 29" in terminal
    sr.write_report(a, tmp_path, plots=False)
    md = (tmp_path / "sensitivity.md").read_text()
    assert "## A vs B" in md and "the rule needs 29" in md and "run 27 more" in md
    assert "A better" not in md.split("## A vs B")[1].split("##")[0]
    tex = (tmp_path / "sensitivity.tex").read_text()
    assert "none ($2 < 29$ runs)" in tex
    _check_latex_structure(tex)


def test_report_with_every_section_compiles_and_plots(tmp_path):
    runs = pd.concat(
        [
            _variant_runs(shift_b=-0.01),
            _variant_runs(shift_b=-0.02).assign(
                test=lambda d: d["test"].str.replace("test_m", "test_n"), root_seed=43
            ),
            _crossed_runs(),
        ],
        ignore_index=True,
    )
    a = sr.analyze(runs, outcomes={VARIANT_A: {"accuracy": {"higher_is_better": True}}})
    paths = sr.write_report(a, tmp_path)
    names = {p.name for p in paths}
    assert "across_tests__accuracy.png" in names
    assert any("__vs__" in n for n in names)
    md = (tmp_path / "sensitivity.md").read_text()
    for section in ("## A vs B", "## Across tests (rliable)", "## Crossed design"):
        assert section in md
    doc = json.loads((tmp_path / "sensitivity.json").read_text())
    assert doc["comparisons"] and doc["across_tests"] and doc["crossed"]
    if shutil.which("pdflatex"):
        _compile(tmp_path / "sensitivity.tex", tmp_path)


def _compile(tex_file: Path, folder: Path) -> None:
    (folder / "doc.tex").write_text(
        f"\\documentclass{{article}}{LATEX_PREAMBLE}"
        f"\\begin{{document}}\\input{{{tex_file.name}}}\\end{{document}}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


# ------------------------------------------------------------------------------------ outcomes


def test_declared_outcomes_give_direction_noise_floor_and_wilson():
    runs = _variant_runs().assign(**{"metric.error_rate": 0.1})
    outcomes = {
        VARIANT_A: {"accuracy": {"higher_is_better": True, "n_examples": 1000}},
        VARIANT_B: {"accuracy": {"higher_is_better": True, "n_examples": 1000}},
    }
    a = sr.analyze(runs, outcomes=outcomes, higher_is_better={"error_rate": True})
    row = a.row(VARIANT_A, "accuracy", "all")
    assert row["noise_floor"] == pytest.approx(stats.binomial_noise_floor(row["mean"], 1000))
    wilson = stats.wilson_interval(row["mean"] * 1000, 1000)
    assert (row["wilson_low"], row["wilson_high"]) == (wilson.low, wilson.high)
    assert a.higher_is_better["error_rate"] is True  # an explicit override wins
    undeclared = sr.analyze(runs, outcomes={VARIANT_A: outcomes[VARIANT_A]})
    kinds = [(w.kind, w.test) for w in undeclared.warnings]
    assert ("undeclared-outcomes", VARIANT_B) in kinds
    assert ("undeclared-outcomes", VARIANT_A) not in kinds
    lower = sr.analyze(runs, outcomes={VARIANT_A: {"accuracy": {"higher_is_better": False}}})
    assert lower.higher_is_better["accuracy"] is False


def test_resume_notes_become_warnings():
    a = sr.analyze(_variant_runs(), notes=["t.py::test_m[a]: 3 stored runs will be redone: x"])
    assert [w.kind for w in a.warnings][:1] == ["resume"]


# ------------------------------------------------------------------------------------ crossed


def _crossed_runs(ka: int = 4, kb: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(2)
    rows_, cols = rng.normal(0, 0.02, ka), rng.normal(0, 0.01, kb)
    return pd.DataFrame(
        [
            {
                "test": "t.py::test_x",
                "source": "init+data",
                "k": i * kb + j,
                "k_a": i,
                "k_b": j,
                "status": "ok",
                "root_seed": 9,
                "metric.accuracy": 0.8 + rows_[i] + cols[j],
            }
            for i in range(ka)
            for j in range(kb)
        ]
    )


def test_crossed_design_is_split_two_way_not_tabled_per_source():
    a = sr.analyze(_crossed_runs())
    (result,) = a.crossed
    d = result.decomposition
    assert (d.source_a, d.source_b, d.k_a, d.k_b) == ("init", "data", 4, 3)
    assert d.shares["init x data"] == pytest.approx(0.0, abs=1e-9)
    assert sum(d.shares.values()) == pytest.approx(1.0)
    assert a.summary.empty  # the crossed runs are not a one-at-a-time source
    broken = _crossed_runs()
    broken.loc[0, "status"] = "failed"
    b = sr.analyze(broken)
    assert not b.crossed
    assert any(w.kind == "crossed-incomplete" and "(0, 0)" in w.message for w in b.warnings)


# ------------------------------------------------------------------------------------ revisions


def test_compare_revisions_pairs_by_test_source_and_k():
    before = _variant_runs(n=5)
    after = before.assign(**{"metric.accuracy": before["metric.accuracy"] + 0.01})
    results = sr.compare_revisions(before, after)
    assert {(r.test_a, r.source) for r in results} == {(VARIANT_A, "all"), (VARIANT_B, "all")}
    for r in results:
        assert r.paired_seeds and r.comparison.paired.mean_difference.point == pytest.approx(-0.01)
        assert r.comparison.paired.improvement.p == 0.0
    moved = after.assign(**{"seed.init": after["seed.init"] + 1})
    (unpaired, _) = sr.compare_revisions(before, moved)
    assert not unpaired.paired_seeds and unpaired.comparison.paired is None
    with pytest.raises(ValueError, match="share no test"):
        sr.compare_revisions(before, after.assign(test=after["test"] + "_renamed"))
