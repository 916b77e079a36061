"""Seed-sensitivity reports: per-source spread, CIs, variance shares, expected max, P(A > B).

Reporting layer over :mod:`repro_check.core.stats` (every number comes from there; nothing is
re-implemented here). Modules: ``model`` (the runs table and the result), ``analysis``
(``analyze``), ``compare``, and the writers ``terminal``, ``markdown``, ``latex``, ``plots`` and
``files`` (``write_report``). pandas and matplotlib are imported inside the functions that need
them; plots are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas, never
pyplot, so the user's backend and global figure state are left alone.

Input contract
--------------

``runs`` is a :class:`pandas.DataFrame` with **one row per run** of the sweep and the columns

============== ======= ====================================================================
column         type    meaning
============== ======= ====================================================================
``test``       str     pytest nodeid of the training test
``source``     str     the randomness source whose seed varied (``init``, ``data``,
                       ``augment``, ``dropout``, ..., ``bitflip``); ``all`` = every source
                       varied at once (the reference of the variance shares)
``k``          int     run index within the source; the same ``k`` across sources (and
                       across tests) is a *paired seed*
``status``     str     ``"ok"`` | ``"failed"`` (the run raised) | ``"nan"`` (a metric came out
                       NaN/inf)
``root_seed``  int     the test's root seed for that run
``perturbation`` int   the perturbation index / seed applied to ``source``
``command``    str     the exact command that reproduces that run
``error``      str     the error of a failed run (may be empty)
``metric.<m>`` float   the value of metric ``<m>`` the test recorded at its last step (NaN when
                       the run did not record it)
============== ======= ====================================================================

``test``, ``source``, ``k`` and ``status`` are required; the other run columns are filled with
empty values when absent. Metric names are used *without* the ``metric.`` prefix everywhere in
the analysis (``"loss"``, ``"accuracy"``).

Optional extras:

* ``accuracy_examples: {test: {metric: n_examples}}`` (to :func:`analyze`) -- the size of the
  evaluation set of an accuracy-like metric, for the binomial noise floor sqrt(p(1-p)/n).
* ``sources_unused: {test: [source, ...]}`` (to :func:`analyze`) -- sources the sweep varied
  but the test never asked for (``repro.seed_for(name)`` never called): warned about.
* ``disagreement: {test: {source: {"mean_disagreement": float, "mean_correlation": float,
  "pairs": int}}}`` (to :func:`write_report`) -- prediction disagreement between runs of one
  source.
* ``session: dict`` (to :func:`write_report`) -- ``command``, ``base_seed``, ``K``, ``sources``,
  ``environment`` (a summary dict), ``environment_file``; other scalar keys are shown as given.

Rules
-----

* A metric's values are taken from runs whose status is not ``"failed"`` and whose value is
  finite. Failed runs are counted in ``n_failed``; runs that did not fail but have a non-finite
  value for the metric in ``n_nan``. Nothing is dropped silently: every exclusion is counted in
  the tables and raises a warning naming the runs' commands.
* Values enter the bootstrap in ``k`` order, so the report does not depend on the order in
  which runs finished.
* ``var_share`` = Var(source) / Var(all) (:func:`repro_check.core.stats.variance_shares`).
* ``recommended_runs``: runs needed so that the ``confidence`` CI of the mean has half-width
  ``target_half_width`` (Student t, :func:`repro_check.core.stats.recommended_runs`), from each
  source's std. The default target is **half the std of the** ``all`` **sweep** of that test and
  metric -- "pin the mean down to +-sigma/2 of the seed-to-seed spread" -- which is about 18 runs
  at 95 % for the ``all`` row itself; pass a number (every metric) or ``{metric: half_width}``
  for an absolute precision.
* Direction: metric names that look like losses or errors (``loss``, ``error``, ``err``,
  ``nll``, ``perplexity``/``ppl``, ``mse``, ``mae``, ``rmse``, ``wer``, ``cer``, ``bpd``) are
  lower-is-better (the expected-max curve is then the expected *minimum*); override with
  ``higher_is_better={metric: bool}``.
"""

from repro_check.reporting.sensitivity.analysis import analyze
from repro_check.reporting.sensitivity.compare import compare, compare_revisions
from repro_check.reporting.sensitivity.files import json_document, write_report
from repro_check.reporting.sensitivity.latex import latex_tables, tex_escape
from repro_check.reporting.sensitivity.markdown import markdown_report
from repro_check.reporting.sensitivity.model import (
    REFERENCE_SOURCE,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    SensitivityAnalysis,
    SensitivityWarning,
)
from repro_check.reporting.sensitivity.terminal import terminal_table

__all__ = [
    "REFERENCE_SOURCE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SUMMARY_COLUMNS",
    "SensitivityAnalysis",
    "SensitivityWarning",
    "analyze",
    "compare",
    "compare_revisions",
    "json_document",
    "latex_tables",
    "markdown_report",
    "terminal_table",
    "tex_escape",
    "write_report",
]
