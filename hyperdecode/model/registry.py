"""The family registry: the one place that knows which model families exist. Everything else asks it (by a
config's `model_type`) for the config class, the model class, the expected checkpoint shapes, the megakernel
compiler and whether the CPU's compiled decode step covers it, so adding a family is one entry here plus its own module.

>>> family_for("qwen3").name
'qwen3'
>>> sorted(f.name for f in FAMILIES)
['deepseek', 'llama', 'qwen3']
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

from ..errors import ConfigError
from . import deepseek, deepseek_config, llama, qwen3

__all__ = ["Family", "FAMILIES", "family_for", "family_of", "family_for_gguf", "config_from_dict", "ModelConfig"]

ModelConfig = llama.LlamaConfig | qwen3.Qwen3Config | deepseek_config.DeepseekConfig


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # the HF config.json `model_type`s this family reads
    config: type  # from_dict, to_hf_dict and the sizing methods (config.py)
    model: type  # (cfg, mtp) -> a module with the model protocol (layers.py)
    shapes: Callable[[Any, bool], dict[str, tuple[int, ...]]]  # (cfg, mtp) -> HF tensor names and shapes
    mega: str  # the module compiling its decode step for the megakernel: `unsupported(model)`, `compile(...)`
    gguf_architectures: tuple[str, ...] = ()
    native: bool = False  # the CPU's compiled decode step (model/csrc/decode_step.c) computes this family's layers
    mla: bool = False  # its attention is MLA over a latent cache (no kv heads: tensor parallel splits q heads)

    def mega_compiler(self) -> ModuleType:
        """The megakernel compiler module (imported on first use: the engine depends on the model, not back)."""
        return importlib.import_module(self.mega)

    def has_mtp(self, cfg: Any, tensor_names: Any) -> bool:
        """HF's save_pretrained drops the MTP layer; it is built only when its tensors are in the checkpoint."""
        if cfg.num_nextn_predict_layers < 1:
            return False
        prefix = f"layers.{cfg.num_hidden_layers}."
        return any(name.startswith(prefix) for name in tensor_names)


FAMILIES = (
    Family("llama", ("llama", "mistral", "smollm", "smollm3", "qwen2"), llama.LlamaConfig, llama.LlamaForCausalLM,
           llama.hf_shapes, "hyperdecode.engine.mega.program_llama", gguf_architectures=("llama",), native=True),
    Family("qwen3", ("qwen3",), qwen3.Qwen3Config, qwen3.Qwen3ForCausalLM, qwen3.hf_shapes,
           "hyperdecode.engine.mega.program_llama", native=True),
    Family("deepseek", deepseek_config.MODEL_TYPES, deepseek_config.DeepseekConfig, deepseek.DeepseekForCausalLM,
           deepseek.hf_shapes, "hyperdecode.engine.mega.program_mla", mla=True),
)


def family_for(model_type: str, source: str = "config") -> Family:
    """The family that reads HF `model_type`."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES for t in f.model_types)
    raise ConfigError(f"{source}: model_type '{model_type}' is not supported (supported: {known})")


def family_of(cfg: Any) -> Family:
    """The family of a config object."""
    return family_for(cfg.model_type, cfg.source)


def config_from_dict(d: dict[str, Any], source: str) -> ModelConfig:
    """A config from HF config.json fields; `model_type` picks the family (Llama when absent)."""
    return family_for(d.get("model_type", "llama"), source).config.from_dict(d, source)


def family_for_gguf(architecture: str, source: str) -> Family:
    for family in FAMILIES:
        if architecture in family.gguf_architectures:
            return family
    raise ConfigError(f"{source}: general.architecture '{architecture}' is not supported (expected 'llama')")
