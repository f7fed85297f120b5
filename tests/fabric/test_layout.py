"""The fabric package's shape, read from its source: it imports nothing of the serving stack (serve/, engine/,
disagg/), its modules form no import cycle (deferred imports inside functions count too), and each module says
what it exports."""
import ast
from pathlib import Path

import hyperdecode.fabric as fabric

ROOT = Path(fabric.__file__).parent
PREFIX = "hyperdecode.fabric"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    parts = parts[:-1] if parts[-1] == "__init__" else parts
    return ".".join((PREFIX, *parts))


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, relative imports resolved (with `from X import y`, both X
    and X.y: y may be a module)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def test_fabric_imports_nothing_of_the_serving_stack():
    banned = ("hyperdecode.serve", "hyperdecode.engine", "hyperdecode.disagg")
    bad = sorted(f"{m}: {i}" for m, found in MODULES.items() for i in found
                 if any(i == b or i.startswith(b + ".") for b in banned))
    assert bad == []


def test_no_import_cycle_inside_fabric():
    graph = {m: {i for i in found if i in MODULES and i != m and not m.startswith(i + ".")}
             for m, found in MODULES.items()}
    state, cycles = {}, []

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycles.append(path[path.index(n):] + [n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_module_declares_all():
    assert sorted(module_name(p) for p in ROOT.rglob("*.py") if "__all__" not in p.read_text()) == []
