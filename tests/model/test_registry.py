"""The family registry is the one place that knows the families: nothing else dispatches on a model or config
class, and every family is reached through it."""
import ast
from pathlib import Path

import pytest

import hyperdecode as hd
from hyperdecode.model import registry
from hyperdecode.model.loader import preset_config
from hyperdecode.model.presets import PRESETS

PACKAGE = Path(hd.__file__).parent


def family_class_names() -> set[str]:
    names = {"Transformer", "DeepseekTransformer"}  # the old names, too
    for family in registry.FAMILIES:
        for cls in (family.config, family.model):
            names |= {c.__name__ for c in cls.__mro__ if c.__module__.startswith("hyperdecode.model")}
    return names


def names_in(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def family_dispatches(path: Path, families: set[str], root: Path = PACKAGE) -> list[str]:
    """isinstance / issubclass against a family class, or comparisons of type(x) or its name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass"):
            if len(node.args) == 2 and names_in(node.args[1]) & families:
                found.append(f"{path.relative_to(root)}:{node.lineno}")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            typed = any(isinstance(s, ast.Call) and getattr(s.func, "id", None) == "type" for s in ast.walk(node))
            named = any(isinstance(s, ast.Constant) and s.value in families for s in sides)
            if typed and (named or any(names_in(s) & families for s in sides)):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_no_module_outside_the_registry_dispatches_on_a_family():
    families = family_class_names()
    assert {"LlamaConfig", "Qwen3Config", "DeepseekConfig", "LlamaForCausalLM", "DeepseekForCausalLM"} <= families
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "model" / "registry.py":
            found += family_dispatches(path, families)
    assert found == []


def test_the_checker_finds_a_planted_dispatch(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("def f(cfg):\n    return isinstance(cfg, (int, DeepseekConfig))\n\n\n"
                       "def g(m):\n    return type(m).__name__ == 'LlamaForCausalLM'\n")
    assert family_dispatches(planted, family_class_names(), root=tmp_path) == ["planted.py:2", "planted.py:6"]


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if not p.embedded])
def test_every_preset_is_reached_through_the_registry(name):
    cfg = preset_config(name)
    family = registry.family_of(cfg)
    assert cfg.model_type in family.model_types and isinstance(cfg, family.config)
    shapes = family.shapes(cfg, False)
    assert "embed_tokens.weight" in shapes


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(hd.ConfigError, match="model_type 'gpt2' is not supported \\(supported: llama, .*qwen3"):
        registry.config_from_dict({"model_type": "gpt2"}, "config.json")
