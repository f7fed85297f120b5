"""Checkpoint readers (HF safetensors, single or sharded; GGUF) and the one place that checks tensors against a model."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..errors import WeightsError

__all__ = ["read_safetensors", "read_gguf", "gguf_metadata", "check_hf_tensors", "load_state_dict",
           "random_state_dict"]

LARGE_CHECKPOINT_BYTES = 200 * 2**20
IGNORED_HF_KEYS = re.compile(r".*rotary_emb\.inv_freq$")


def progress(items: Iterable, total: int, desc: str, large: bool) -> Iterator:
    """A tqdm bar on stderr for large checkpoints (auto-disabled when stderr is not a terminal)."""
    if not large:
        return iter(items)
    from tqdm import tqdm
    return iter(tqdm(items, total=total, desc=desc, unit="tensor", disable=None, leave=False))


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory or file: `model.safetensors`, or shards listed in the index."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if path.is_file():
        shards = {path.name: path}
        files = [path]
    elif index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index}: not a valid safetensors index ({e})") from None
        files = sorted({path / f for f in weight_map.values()})
        shards = {f.name: f for f in files}
    elif (path / "model.safetensors").exists():
        files = [path / "model.safetensors"]
        shards = {"model.safetensors": files[0]}
    else:
        raise WeightsError(f"{path}: no model.safetensors or model.safetensors.index.json")
    for f in files:
        if not f.exists():
            raise WeightsError(f"{f}: shard listed in {index.name} is missing")
    total_bytes = sum(f.stat().st_size for f in files)
    out: dict[str, Tensor] = {}
    for f in shards.values():
        try:
            with safe_open(str(f), framework="pt") as sf:
                keys = list(sf.keys())
                for k in progress(keys, len(keys), f"loading {f.name}", total_bytes > LARGE_CHECKPOINT_BYTES):
                    out[k] = sf.get_tensor(k)
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"{f}: cannot read safetensors file ({e})") from None
    return {k.removeprefix("model."): v for k, v in out.items() if not IGNORED_HF_KEYS.match(k)}


GGUF_NAMES = {
    "token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head",
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


def gguf_name(name: str, path: Path) -> str:
    m = re.fullmatch(r"(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)", name)
    if not m or m.group(2) not in GGUF_NAMES:
        raise WeightsError(f"{path}: unexpected tensor '{name}' (not a Llama-family GGUF tensor)")
    layer, base, kind = m.groups()
    return (f"layers.{layer}." if layer is not None else "") + f"{GGUF_NAMES[base]}.{kind}"


def open_gguf(path: str | Path):
    import gguf
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: GGUF file not found")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError, struct.error, IndexError... on corrupt files
        raise WeightsError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


def gguf_metadata(reader: Any) -> dict[str, Any]:
    """Scalar and array key/values of a GGUF file as Python values."""
    meta = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        value = f.contents()
        meta[key] = value
    return meta


def unpermute_rope(w: Tensor, n_head: int) -> Tensor:
    """GGUF stores q/k rows in pairwise-RoPE order; put them back in the HF half-split order."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def read_gguf(path: str | Path, cfg: Any, reader: Any = None) -> dict[str, Tensor]:
    """Dequantizes every tensor with gguf's own dequantizer and names it like the HF checkpoint."""
    import gguf
    path = Path(path)
    reader = reader or open_gguf(path)
    out: dict[str, Tensor] = {}
    large = path.stat().st_size > LARGE_CHECKPOINT_BYTES // 4
    for t in progress(reader.tensors, len(reader.tensors), f"dequantizing {path.name}", large):
        name = gguf_name(t.name, path)
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise WeightsError(f"{path}: tensor '{t.name}' has type {t.tensor_type.name}, "
                               "which the gguf package cannot dequantize") from None
        w = torch.from_numpy(np.array(arr, dtype=np.float32)).reshape(
            tuple(int(d) for d in reversed(t.shape)))
        if name.endswith("q_proj.weight") or name.endswith("q_proj.bias"):
            w = unpermute_rope(w, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight") or name.endswith("k_proj.bias"):
            w = unpermute_rope(w, cfg.num_key_value_heads)
        out[name] = w
    return out


def check_hf_tensors(sd: dict[str, Tensor], expected: dict[str, tuple[int, ...]], tie_word_embeddings: bool,
                      source: str) -> dict[str, Tensor]:
    """Checks HF-named tensors against the expected shapes: every one present, none extra, every shape right."""
    if tie_word_embeddings:
        sd = {k: v for k, v in sd.items() if k != "lm_head.weight"}  # some tied checkpoints still carry it
    for k, shape in expected.items():
        if k not in sd:
            raise WeightsError(f"{source}: missing tensor '{hf_key(k)}' (expected shape {list(shape)})")
        if tuple(sd[k].shape) != shape:
            raise WeightsError(f"{source}: tensor '{hf_key(k)}' has shape {list(sd[k].shape)}, "
                               f"expected {list(shape)} from the config")
    extra = sorted(set(sd) - set(expected))
    if extra:
        raise WeightsError(f"{source}: unexpected tensor '{hf_key(extra[0])}'"
                           + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
    return sd


def load_state_dict(model: torch.nn.Module, sd: dict[str, Tensor], shapes: dict[str, tuple[int, ...]], source: str,
                    device: torch.device) -> None:
    """Checks HF-named tensors against `shapes`, converts them to the model's layout and dtypes, and assigns them as
    its parameters on `device` (the model may live on the meta device until then: the weights are allocated once)."""
    sd = model.from_hf(check_hf_tensors(sd, shapes, model.cfg.tie_word_embeddings, source))
    expected = model.state_dict()
    model.load_state_dict({k: v.to(device=device, dtype=expected[k].dtype).contiguous() for k, v in sd.items()},
                          strict=True, assign=True)


def hf_key(k: str) -> str:
    return k if k.startswith("lm_head") else f"model.{k}"


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int, std: float = 0.02) -> dict[str, Tensor]:
    """Deterministic random HF-named weights (drawn on the CPU, so every device gets the same model for a seed)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("norm.weight"):
            sd[k] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[k] = std * torch.randn(shape, generator=g)
    return sd
