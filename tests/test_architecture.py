"""The layout keeps its promises (docs/architecture.md): no import cycles, layers that import
only downwards, pytest only in the front end, torch imported lazily, modules of a readable size.

Imports are read from the source (every ``import``, including those inside functions: a lazy
import in a cycle is still a cycle for the reader), so these checks cost milliseconds.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "repro_check"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 300
#: Modules allowed to be longer, and why (keep this list short and honest).
LONG_MODULES: dict[str, str] = {
    "repro_check.trace.tracer": "OpTracer is one TorchDispatchMode whose per-op hot path "
    "reads its fingerprint caches directly; moving them behind another object costs an "
    "attribute hop per tensor per op, in the tracer whose overhead issue 12 measures",
}
#: Layers, top to bottom: a module may import its own layer and the layers below it.
LAYERS = ["pytest_plugin", "commands", "cli", "reporting", "catalog", "orchestration", "core"]
#: Modules outside any layer above, with the layer they sit in.
PLACED = {
    "repro_check": "core",
    "strategies": "core",
    "data": "core",
    "fallback": "pytest_plugin",  # the opt-in conftest plugin for -p no:repro
    # The core's two packages (DESIGN.md): below orchestration, no pytest, no cycles with core.
    "trace": "core",
    "environment": "core",
}
#: Modules that may import torch at load time, and why: they are only imported when tracing.
TORCH_AT_IMPORT = {
    "repro_check.trace.tracer": "subclasses torch's TorchDispatchMode; loaded only to trace",
    "repro_check.trace.replay": "replays one traced op; loaded only by localisation",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports(name: str) -> set[str]:
    """The project modules ``name`` imports (resolved to modules, not package attributes)."""
    path = modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules():
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    # "from repro_check.x import y" where y is a module imports y, not the package x: drop the
    # package when one of its modules was named in the same statement.
    return {t for t in found if not any(o.startswith(t + ".") for o in found) or t.count(".") == 0}


def layer_of(name: str) -> str:
    parts = name.split(".")
    top = parts[1] if len(parts) > 1 else parts[0]
    return PLACED.get(top, top)


def test_every_module_is_in_a_layer():
    unknown = sorted(n for n in modules() if layer_of(n) not in LAYERS)
    assert not unknown, f"place these modules in a layer (LAYERS / PLACED): {unknown}"


def test_no_import_cycles():
    graph = {name: imports(name) for name in modules()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not cycles, f"import cycles: {cycles}"


def test_layers_import_only_downwards():
    rank = {layer: position for position, layer in enumerate(LAYERS)}
    upward = [
        f"{name} ({layer_of(name)}) imports {target} ({layer_of(target)})"
        for name in modules()
        for target in imports(name)
        if rank[layer_of(target)] < rank[layer_of(name)]
    ]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("layer", ["core", "orchestration", "reporting", "catalog"])
def test_only_the_front_end_imports_pytest(layer):
    offenders = [
        name
        for name, path in modules().items()
        if layer_of(name) == layer
        and name != "repro_check.strategies"
        and any(
            isinstance(node, (ast.Import, ast.ImportFrom))
            and any(
                (getattr(node, "module", None) or alias.name).split(".")[0] == "pytest"
                for alias in node.names
            )
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert not offenders, f"{layer} must not import pytest: {offenders}"


def test_torch_is_imported_lazily_outside_the_front_end():
    """Module-level ``import torch`` would make ``pytest`` without --repro and ``repro-check
    --help`` pay for torch; only function bodies (and TYPE_CHECKING blocks) may import it."""
    offenders = []
    for name, path in modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                names += [alias.name for alias in node.names]
                if any(n.split(".")[0] == "torch" for n in names) and name not in TORCH_AT_IMPORT:
                    offenders.append(name)
    assert not offenders, f"import torch inside functions instead: {offenders}"


def test_modules_and_classes_stay_readable():
    too_long = []
    for name, path in modules().items():
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES and name not in LONG_MODULES:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_CLASS_LINES and name not in LONG_MODULES:
                    too_long.append(f"{name}.{node.name}: class of {length} lines")
    assert not too_long, "split these (or list them in LONG_MODULES with a reason):\n" + "\n".join(
        too_long
    )
