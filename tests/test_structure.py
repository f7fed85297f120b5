"""The house's seams, read from the code itself: each layer imports only the layers below it (engine/ and model/
nothing of parallel/, serve/, disagg/ or fabric/: a plan or a connector plugs in through a seam), and serve/ reaches into the engine core's scheduler through no attribute
chain (it talks to the engine through methods)."""
import ast
from pathlib import Path

import pytest

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


# folder -> the packages it must not import: a plan, a server or a connector plugs into the engine through a seam
# (engine/backends.py's registry, engine/kv_connector.py); the fabric reads the model's sizes and the latency model
LAYERS = {"engine": ("parallel", "serve", "disagg", "fabric"), "model": ("parallel", "serve", "disagg", "engine"),
          "disagg": ("serve", "parallel", "fabric"), "fabric": ("engine", "serve", "disagg")}


@pytest.mark.parametrize("folder", sorted(LAYERS))
def test_layers_import_only_downward(folder):
    offenders = []
    for path in (PACKAGE / folder).rglob("*.py"):
        bad = sorted(m for m in imported(path) for below in LAYERS[folder]
                     if m == f"hyperdecode.{below}" or m.startswith(f"hyperdecode.{below}."))
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
