"""The shape of the library, read from its source with ``ast``: no import circles inside ``detector/``, and
Ray imported by one package only. Every import counts, also those inside functions and ``TYPE_CHECKING``
blocks: a circle hidden in a function is still a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "detector"
RAY_PACKAGE = "detector.job.tune"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> list[str]:
    """Every module name an ``import`` or ``from ... import`` in the file asks for (relative ones resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            out.append(base)
            out += [f"{base}.{alias.name}" for alias in node.names]  # `from pkg import module`
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        graph[name] = {target for target in imported_names(path, name) if target in known and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_inside_the_library():
    assert cycles(import_graph()) == []


def imports_ray(path: Path, name: str) -> bool:
    return any(t == "ray" or t.startswith("ray.") for t in imported_names(path, name))


def in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_ray_is_imported_inside_one_package_only():
    importers = {name for name, path in modules().items() if imports_ray(path, name)}
    assert importers, "no module imports Ray: is RAY_PACKAGE still where the job talks to Ray?"
    assert sorted(n for n in importers if not in_package(n, RAY_PACKAGE)) == []


@pytest.mark.parametrize("name, inside", [
    ("detector.job.tune", True), ("detector.job.tune.searchers", True),
    ("detector.job.tuner", False), ("detector.job", False), ("detector.job.pipeline", False),
])
def test_the_package_rule_admits_the_package_and_nothing_beside_it(name, inside):
    assert in_package(name, RAY_PACKAGE) is inside


def test_an_import_of_ray_is_seen_wherever_it_stands(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from ray.tune import Tuner\n")
    assert imports_ray(source, "detector.job.m")
    source.write_text("import rayleigh\nfrom detector import ray_free\n")
    assert not imports_ray(source, "detector.job.m")


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


@pytest.mark.parametrize("folder", ["data", "prune", "evaluate", "report", "job", "commands"])
def test_the_stages_have_their_own_folders(folder):
    assert (PACKAGE / folder / "__init__.py").is_file()


# --- rooms stay small: what one person holds in their head at once ---------------------------------------
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
MAX_PARAMETERS = 10


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Every parameter a caller may pass, ``*args`` and ``**kwargs`` included; a method's self/cls is not."""
    a = node.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    if names and names[0].arg in ("self", "cls"):
        count -= 1
    return count


def oversized(path: Path, root: Path = ROOT) -> list[str]:
    """What in one file breaks the limits, as ``file:line name (what)`` lines, the file named from root."""
    source = path.read_text()
    where = path.relative_to(root)
    found = []
    if len(source.splitlines()) > MAX_MODULE_LINES:
        found.append(f"{where} ({len(source.splitlines())} lines)")
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name} ({lines} lines)")
            if parameter_count(node) > MAX_PARAMETERS:
                found.append(f"{where}:{node.lineno} {node.name} ({parameter_count(node)} parameters)")
    return found


def test_no_module_function_or_signature_outgrows_its_room():
    assert [line for path in modules().values() for line in oversized(path)] == []


def test_the_size_check_finds_a_long_function_and_a_long_signature(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    params = ", ".join(f"p{i}" for i in range(MAX_PARAMETERS))
    source = f"def long():\n{body}\n\n\ndef wide(self, {params}, *rest):\n    pass\n"
    path = tmp_path / "example.py"
    path.write_text(source)
    assert oversized(path, tmp_path) == [f"example.py:1 long ({MAX_FUNCTION_LINES + 1} lines)",
                                         f"example.py:{MAX_FUNCTION_LINES + 4} wide ({MAX_PARAMETERS + 1} parameters)"]
