"""repro-check: determinism verification and test harness for PyTorch training."""

__version__ = "0.1.0"
