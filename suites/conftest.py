"""Reference suites. suites/nondeterministic/ holds planted failures: it is collected only when
named on the command line (``pytest --repro suites/nondeterministic/test_set_iteration.py``)."""

from pathlib import Path

PLANTED = Path(__file__).parent / "nondeterministic"


def pytest_ignore_collect(collection_path, config):
    if collection_path != PLANTED:
        return None
    named = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    if any(path == PLANTED or PLANTED in path.parents for path in named):
        return None
    return True
