"""Reference suites. suites/nondeterministic/ holds planted failures: it is collected only when
named on the command line (``pytest --repro suites/nondeterministic/test_set_iteration.py``)."""

from pathlib import Path

PLANTED = Path(__file__).parent / "nondeterministic"


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path)
    if path != PLANTED and PLANTED not in path.parents:
        return None
    named = [Path(str(arg).split("::")[0]).resolve() for arg in config.args]
    # Collect a planted path only if it was named, lies inside a named folder, or holds a
    # named file.
    inside = [n for n in named if n == PLANTED or PLANTED in n.parents]
    if any(n == path or n in path.parents or path in n.parents for n in inside):
        return None
    return True
