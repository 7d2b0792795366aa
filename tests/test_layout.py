"""The layout shows the architecture: no import circle in vqbench/ or between it and baselines/, every module
named in ARCHITECTURE.md with its job, and no function longer than 60 lines."""

import ast
import os



ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("vqbench", "baselines")
MAX_FUNCTION_LINES = 60


def project_files():
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in sorted(names):
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")


def module_name(path: str) -> str:
    return path[:-3].replace("/", ".").removesuffix(".__init__")


def import_graph() -> dict:
    """{module: project modules it imports}, top-level and function-level imports alike (a package's
    __init__, which only re-exports, is not a target)."""
    modules = {module_name(p): p for p in project_files()}
    graph = {}
    for name, path in modules.items():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                candidates = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            edges.update(c for c in candidates if c in modules and not modules[c].endswith("__init__.py"))
        graph[name] = edges - {name}
    return graph


def circles(graph: dict) -> list:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    graph = import_graph()
    assert graph["vqbench.quality"] and graph["vqbench.compare"]  # the graph was read
    assert circles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_module_is_in_architecture_md():
    with open(os.path.join(ROOT, "ARCHITECTURE.md"), encoding="utf-8") as f:
        text = f.read()
    missing = [p for p in project_files() if not p.endswith("__init__.py") and f"`{p}`" not in text
               and not (p.startswith("baselines/") and "`baselines/*.py`" in text)]
    assert not missing, f"modules ARCHITECTURE.md does not name: {missing}"


def long_functions():
    for path in project_files():
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    yield f"{path}:{node.lineno} {node.name} ({length} lines)"


def test_no_function_is_longer_than_60_lines():
    assert list(long_functions()) == []


def test_imports_go_one_way():
    """The heads build on nothing that measures, trains or reports; the tables and the results format import no
    torch (no module of theirs does, at any level), so rows can be read and tabled anywhere."""
    graph = import_graph()
    upper = ("vqbench.measuring", "vqbench.training", "vqbench.reporting", "vqbench.compare", "vqbench.quality",
             "vqbench.train", "vqbench.report", "vqbench.plot", "vqbench.oracle", "vqbench.profile")
    for module, edges in graph.items():
        if module.startswith(("vqbench.heads", "baselines")):
            assert not [e for e in edges if e.startswith(upper)], module
    for path in project_files():
        if path.startswith("vqbench/reporting/") or path in ("vqbench/results.py", "vqbench/measuring/ops.py"):
            with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
            assert "torch" not in imported, path
