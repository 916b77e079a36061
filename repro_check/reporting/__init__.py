"""Reporting: turns verdicts and sweeps into text and files (terminal, Markdown, LaTeX, JSON, plots).

Nothing here decides anything; it renders what the orchestration layer and ``core.stats``
computed. ``reporting.sensitivity`` is the seed-sensitivity analysis and its writers.
"""
