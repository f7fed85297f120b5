"""Turns a model name (preset, HF checkpoint directory or .gguf file) into a config, a module and a tokenizer."""
from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelNotFoundError
from .checkpoint import FP8, dequantize_state_dict, write_checkpoint
from .embedded import smollm2_path
from .presets import PRESETS, get_preset
from .registry import ModelConfig, config_from_dict, family_for_gguf, family_of
from .tokenizer import Tokenizer
from .weights import gguf_metadata, load_state_dict, open_gguf, random_state_dict, read_gguf, read_safetensors

__all__ = ["LoadedModel", "load_model", "read_config", "export_model", "preset_config", "expected_shapes", "build",
           "resolve_device", "resolve_dtype"]

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


@dataclass
class LoadedModel:
    name: str
    cfg: ModelConfig
    model: nn.Module
    tokenizer: Tokenizer | None
    fp8_weights: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)  # raw (fp8, scale_inv) by name


def resolve_device(device: str | torch.device, name: str = "device") -> torch.device:
    """auto (CUDA when there is a GPU), cpu, cuda or cuda:N (a GPU torch sees); `name` is what messages call it.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not DEVICE.fullmatch(text):
        raise ConfigError(f"{name} '{text}' is not supported (use auto, cpu, cuda or cuda:N)")
    dev = torch.device(text)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name} '{text}' requested but torch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"{name} '{text}': torch sees {torch.cuda.device_count()} CUDA GPU(s) "
                          f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype '{dtype}' is not supported (use float32 or bfloat16)")
    return DTYPES[dtype]


def preset_config(name: str) -> ModelConfig:
    preset = get_preset(name)
    if preset.embedded:
        return gguf_config(open_gguf(smollm2_path()), name)[0]
    return config_from_dict(preset.hf_config, source=f"preset '{name}'")


def expected_shapes(cfg: ModelConfig, mtp: bool) -> dict[str, tuple[int, ...]]:
    """HF names (without "model.") and shapes of every tensor a checkpoint for `cfg` holds."""
    return family_of(cfg).shapes(cfg, mtp)


def build(cfg: ModelConfig, sd: dict[str, Tensor], source: str, device: torch.device, dtype: torch.dtype,
          adapt: Callable[[nn.Module], None] | None = None) -> nn.Module:
    """The family's module for `cfg` with the HF-named tensors `sd` loaded (checked, converted, cast). `adapt`
    reshapes the module while it is still on the meta device (a parallel plan's roles); `sd` then holds just the
    tensors the adapted module keeps, each checked against the family's shape for its name."""
    family = family_of(cfg)
    mtp = family.has_mtp(cfg, sd)
    with torch.device("meta"):  # shapes and dtypes only: the weights are allocated once, by the load
        model = family.model(cfg, mtp).to(dtype)
        if adapt is not None:
            adapt(model)
    for name, p in model.named_parameters():
        if model.FP32_PARAMS and model.FP32_PARAMS.match(name):
            p.data = p.data.float()
    shapes = family.shapes(cfg, mtp)
    if adapt is not None:
        shapes = {name: shape for name, shape in shapes.items() if name in sd}
    load_state_dict(model, sd, shapes, source, device)
    model.inv_freq = torch.zeros(model.inv_freq.shape, dtype=torch.float32, device=device)
    model.init_buffers()
    return model.eval()


def read_config(model: str) -> ModelConfig:
    """The config of a preset, a checkpoint directory or a .gguf file, without loading weights."""
    path = Path(model)
    if model in PRESETS:
        return preset_config(model)
    if path.is_dir():
        return config_from_dict(read_json(path / "config.json"), str(path / "config.json"))
    if path.suffix == ".gguf":
        return gguf_config(open_gguf(path), str(path))[0]
    raise ModelNotFoundError(f"model '{model}' is neither a preset ({', '.join(PRESETS)}) nor an existing path")


def read_json(path: Path) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return d


def read_checkpoint_dir(path: Path) -> tuple[ModelConfig, dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Config and HF-named tensors of a safetensors checkpoint, FP8 weights dequantized (raw pairs kept)."""
    cfg = config_from_dict(read_json(path / "config.json"), str(path / "config.json"))
    sd, raw = read_safetensors(path), {}
    if any(v.dtype == FP8 for v in sd.values()):
        sd, raw = dequantize_state_dict(sd, getattr(cfg, "fp8_block", None) or (128, 128), str(path))
    return cfg, sd, raw


def random_preset(name: str, seed: int) -> tuple[ModelConfig, dict[str, Tensor], Tokenizer]:
    """A random-weight preset's config, HF-named tensors (MTP layer included when the config has one) and its
    byte-level tokenizer (whose end tokens the config takes)."""
    preset = get_preset(name)
    if preset.sizing_only:
        raise ConfigError(f"preset '{name}' is for sizing only (try `hyperdecode inspect {name}`); "
                          "its weights are not built")
    cfg = preset_config(name)
    tok = Tokenizer.byte_level()
    cfg.eos_token_ids = tok.eos_token_ids
    return cfg, random_state_dict(expected_shapes(cfg, mtp=cfg.num_nextn_predict_layers > 0), seed), tok


def check_export_dir(out_dir: Path) -> None:
    """An export goes to a new or empty directory, or one without a checkpoint: it never overwrites one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: exists and is not a directory (export writes a checkpoint directory)")
    if (out_dir / "config.json").exists():
        raise ConfigError(f"{out_dir}: already holds a checkpoint (config.json); export into a new directory")


def export_model(model: str, out_dir: str | Path, fp8: bool = False, seed: int = 0,
                 dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes a HF-format checkpoint: a preset's random weights (MTP layer included) with its byte-level
    tokenizer, or a converted checkpoint with its tokenizer files copied."""
    out_dir = Path(out_dir)
    if model in PRESETS and not PRESETS[model].embedded:
        check_export_dir(out_dir)
        cfg, sd, tok = random_preset(model, seed)
        source = None
    elif Path(model).is_dir():
        check_export_dir(out_dir)
        source = Path(model)
        cfg, sd, _ = read_checkpoint_dir(source)
    else:
        raise ModelNotFoundError(f"model '{model}': export takes a random-weight preset or a checkpoint directory")
    config = cfg.to_hf_dict()
    config.pop("quantization_config", None)
    out = write_checkpoint(sd, config, out_dir, fp8=fp8, dtype=dtype)
    if source is None:
        tok.save(out)
        return out
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    return out


QUANTIZE = ("auto", "none", "int8", "int4")


def load_model(model: str, device: str | torch.device = "auto", dtype: str | torch.dtype = "float32",
               seed: int = 0, quantize: str = "none") -> LoadedModel:
    """`quantize`: "auto" keeps a GGUF's Q4_0 / Q4_1 / Q8_0 blocks quantized on the CPU (model/quant.py), "none"
    dequantizes every weight, "int8" / "int4" quantize an unquantized Llama-family checkpoint's projections and
    LM head into 32-value blocks (Q8_0 / Q4_1) on the CPU."""
    dev, dt = resolve_device(device), resolve_dtype(dtype)
    if quantize not in QUANTIZE:
        raise ConfigError(f"quantize '{quantize}' is not one of {', '.join(QUANTIZE)}")
    if quantize in ("int8", "int4") and dev.type != "cpu":
        raise ConfigError(f"quantize '{quantize}' runs on the CPU (device is '{dev}')")
    keep = quantize == "auto" and dev.type == "cpu"
    path = Path(model)
    if quantize in ("int8", "int4") and (path.suffix == ".gguf" or (model in PRESETS and PRESETS[model].embedded)):
        raise ConfigError(f"quantize '{quantize}': '{model}' is a GGUF, which keeps its own blocks (quantize "
                          "'auto') or is dequantized ('none')")
    if model in PRESETS:
        if PRESETS[model].embedded:
            return load_gguf(smollm2_path(), dev, dt, name=model, keep_quantized=keep)
        cfg, sd, tok = random_preset(model, seed)
        return LoadedModel(model, cfg, weight_only(build(cfg, sd, model, dev, dt), quantize), tok)
    if path.is_dir():
        cfg, sd, raw = read_checkpoint_dir(path)
        tok = Tokenizer.from_hf_dir(path, cfg.eos_token_ids, cfg.bos_token_id)
        return LoadedModel(str(path), cfg, weight_only(build(cfg, sd, str(path), dev, dt), quantize), tok, raw)
    if path.suffix == ".gguf":
        return load_gguf(path, dev, dt, name=str(path), keep_quantized=keep)
    if path.exists():
        raise ModelNotFoundError(f"model '{model}': expected a checkpoint directory or a .gguf file")
    raise ModelNotFoundError(f"model '{model}' is neither a preset ({', '.join(PRESETS)}) nor an existing path")


def weight_only(model: nn.Module, quantize: str) -> nn.Module:
    """The model with its projections quantized for "int8" / "int4" (quant.py); as it was otherwise."""
    if quantize in ("int8", "int4"):
        from .quant import kernel_library, quantize_weights
        kernel_library()  # no C compiler: the error says so before any weight is touched
        quantize_weights(model, quantize)
    return model


def gguf_config(reader: Any, source: str) -> tuple[ModelConfig, Tokenizer]:
    """Config and tokenizer from GGUF metadata; embeddings are tied when the file has no output.weight."""
    meta = gguf_metadata(reader)
    family = family_for_gguf(meta.get("general.architecture"), source)
    cfg = family.config.from_gguf_metadata(meta, source=source)
    cfg.tie_word_embeddings = not any(t.name == "output.weight" for t in reader.tensors)
    tok = Tokenizer.from_gguf_metadata(meta, source=source)
    cfg.eos_token_ids = tok.eos_token_ids
    return cfg, tok


def load_gguf(path: Path, device: torch.device, dtype: torch.dtype, name: str,
              keep_quantized: bool = False) -> LoadedModel:
    """With `keep_quantized`, the model's quantized blocks stay as stored (quant.py) and the result is converted
    once into the cache (converted.py): later loads read that instead of the GGUF."""
    from .converted import converted_dir, load_converted, save_converted
    from .quant import kernel_library, quantize_gguf
    if keep_quantized:
        try:
            kernel_library()
        except ConfigError as e:  # no C compiler here: the dequantized weights still answer, more slowly
            warnings.warn(f"{e}; {path.name}'s weights stay dequantized", stacklevel=2)
            keep_quantized = False
    folder = converted_dir(path, dtype) if keep_quantized and path.is_file() else None
    if folder is not None and folder.is_dir():
        try:
            cfg, model, tok = load_converted(folder, device)
            return LoadedModel(name, cfg, model, tok)
        except Exception as e:  # a damaged conversion is made again from the GGUF
            warnings.warn(f"{folder}: unreadable conversion of {path.name} ({type(e).__name__}: {e}); converting "
                          "again", stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
    reader = open_gguf(path)
    cfg, tok = gguf_config(reader, str(path))
    sd = read_gguf(path, cfg, reader)
    model = build(cfg, sd, str(path), device, dtype)
    if keep_quantized:
        quantize_gguf(model, reader, cfg)
    if folder is not None:
        try:
            save_converted(folder, model, cfg, tok)
        except OSError as e:  # a read-only cache: every load converts again
            warnings.warn(f"could not keep the converted {path.name} in {folder.parent} ({e})", stacklevel=2)
    return LoadedModel(name, cfg, model, tok)
