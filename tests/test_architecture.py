"""The package's shape (docs/architecture.md): small modules, no private names crossing
modules, no import circle at module level."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "bayes_pfl"
MAX_LINES = 800


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "models" in path.relative_to(PACKAGE).parts[:1]:
            continue  # a link to ../models in some checkouts
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, ast.parse(path.read_text(), str(path))


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_module_over_800_lines():
    long = {
        str(path.relative_to(PACKAGE)): n
        for _, path, _ in _modules()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_private_name_imported_from_another_module():
    """A helper two modules need is public in the module that owns it."""
    found = []
    for name, path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _resolve(name, node, path.name == "__init__.py")
                if not source.startswith("bayes_pfl") or source == name:
                    continue
                # a package may import its own private modules (bayes_pfl.data._preprocess)
                own_private = source.rsplit(".", 1)[-1].startswith("_")
                for alias in node.names:
                    if alias.name.startswith("_") and not own_private:
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {alias.name}")
    assert not found, "private names imported across modules: " + ", ".join(found)


def test_no_import_circle_at_module_level():
    """Module-level imports form no cycle (imports inside functions are lazy by design)."""
    graph: dict[str, set[str]] = {}
    names = {name for name, _, _ in _modules()}
    for name, path, tree in _modules():
        deps = graph.setdefault(name, set())
        for node in tree.body:
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, node, path.name == "__init__.py")
                targets = [source] + [f"{source}.{a.name}" for a in node.names]
            for t in targets:
                if t in names and t != name:
                    deps.add(t)
    # a package's __init__ importing its submodules is not a cycle with them
    for name in graph:
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
