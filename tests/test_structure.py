"""The house's seams, read from the code itself: engine/ and model/ import nothing of parallel/ (a plan plugs in
through engine/backends.py's registry), and serve/ reaches into the engine core's scheduler through no attribute
chain (it talks to the engine through methods)."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hyperdecode"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def test_engine_and_model_import_no_parallel_plan():
    offenders = []
    for folder in ("engine", "model"):
        for path in (PACKAGE / folder).rglob("*.py"):
            bad = sorted(m for m in imported(path) if m == "hyperdecode.parallel" or
                         m.startswith("hyperdecode.parallel."))
            offenders += [f"{path.relative_to(PACKAGE)}: {m}" for m in bad]
    assert offenders == []


def test_the_checker_sees_relative_imports(tmp_path):
    probe = PACKAGE / "engine" / "llm.py"
    assert "hyperdecode.engine.core.EngineCore" in imported(probe)
    assert "hyperdecode.model.loader" in imported(probe)


def test_serve_reaches_no_scheduler_through_the_core():
    chains = []
    for path in (PACKAGE / "serve").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "scheduler":
                chains.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr == "core" and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "llm":
                chains.append(f"{path.name}:{node.lineno} (llm.core)")
    assert chains == []
