"""Turns a model name (preset, HF checkpoint directory or .gguf file) into a config, a module and a tokenizer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, ModelNotFoundError
from .config import PRESETS, ModelConfig, rope_inv_freq
from .embedded import smollm2_path
from .llama import Transformer
from .tokenizer import Tokenizer
from .weights import gguf_metadata, load_state_dict, open_gguf, random_state_dict, read_gguf, read_safetensors

__all__ = ["LoadedModel", "load_model", "resolve_device", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    name: str
    cfg: ModelConfig
    model: Transformer
    tokenizer: Tokenizer | None


def resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device '{device}' is not valid (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{device}' requested but torch sees no CUDA GPU")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not supported (use float32 or bfloat16)")
    return DTYPES[dtype]


def build(cfg: ModelConfig, sd: dict, source: str, device: torch.device, dtype: torch.dtype) -> Transformer:
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device).to(dtype)
    model.inv_freq = torch.tensor(rope_inv_freq(cfg), dtype=torch.float32, device=device)
    load_state_dict(model, sd, source)
    return model.eval()


def load_model(model: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32",
               seed: int = 0) -> LoadedModel:
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    path = Path(model)
    if model in PRESETS:
        spec = PRESETS[model]
        if "embedded" in spec:
            return load_gguf(smollm2_path(), dev, dt, name=model)
        cfg = ModelConfig(**spec["config"], source=f"preset '{model}'")
        tok = Tokenizer.byte_level()
        cfg.eos_token_ids = tok.eos_token_ids
        return LoadedModel(model, cfg, build(cfg, random_state_dict(cfg, seed), model, dev, dt), tok)
    if path.is_dir():
        cfg = ModelConfig.from_json(path / "config.json")
        sd = read_safetensors(path)
        tok = Tokenizer.from_hf_dir(path, cfg.eos_token_ids, cfg.bos_token_id)
        return LoadedModel(str(path), cfg, build(cfg, sd, str(path), dev, dt), tok)
    if path.suffix == ".gguf":
        return load_gguf(path, dev, dt, name=str(path))
    if path.exists():
        raise ModelNotFoundError(f"model '{model}': expected a checkpoint directory or a .gguf file")
    raise ModelNotFoundError(f"model '{model}' is neither a preset ({', '.join(PRESETS)}) nor an existing path")


def load_gguf(path: Path, device: torch.device, dtype: torch.dtype, name: str) -> LoadedModel:
    reader = open_gguf(path)
    meta = gguf_metadata(reader)
    cfg = ModelConfig.from_gguf_metadata(meta, source=str(path))
    cfg.tie_word_embeddings = not any(t.name == "output.weight" for t in reader.tensors)
    tok = Tokenizer.from_gguf_metadata(meta, source=str(path))
    cfg.eos_token_ids = tok.eos_token_ids
    sd = read_gguf(path, cfg, reader)
    return LoadedModel(name, cfg, build(cfg, sd, str(path), device, dtype), tok)
