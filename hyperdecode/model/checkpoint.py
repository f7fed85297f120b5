"""The official block-FP8 weight format and a writer of HF-format checkpoints (random, converted, or FP8).

FP8 format (DeepSeek-V3 / GLM-5-FP8): a quantized Linear stores `weight` as float8_e4m3fn [out, in] and
`weight_scale_inv` float32 [ceil(out/128), ceil(in/128)]; W ≈ weight · weight_scale_inv, per 128×128 block.
Embeddings, LM heads, routers, the indexer's weights_proj, norms and biases stay in high precision.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import WeightsError
from .weights import hf_key

__all__ = ["FP8", "quantize_fp8", "dequantize_fp8", "dequantize_state_dict", "quantize_state_dict",
           "write_checkpoint"]

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
KEEP_HIGH_PRECISION = re.compile(r"(embed_tokens|lm_head|mlp\.gate\.|indexer\.weights_proj|shared_head\.head)")


def _blocks(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    return math.ceil(shape[0] / block[0]), math.ceil(shape[1] / block[1])


def quantize_fp8(w: Tensor, block: tuple[int, int] = (128, 128)) -> tuple[Tensor, Tensor]:
    """[out, in] float -> (float8_e4m3fn [out, in], float32 scale_inv [ceil(out/bo), ceil(in/bi)])."""
    (bo, bi), (no, ni) = block, _blocks(tuple(w.shape), block)
    padded = torch.zeros(no * bo, ni * bi, dtype=torch.float32, device=w.device)
    padded[:w.shape[0], :w.shape[1]] = w.float()
    tiles = padded.view(no, bo, ni, bi)
    scale = (tiles.abs().amax(dim=(1, 3)) / FP8_MAX).clamp(min=1e-12)
    q = (tiles / scale[:, None, :, None]).view_as(padded)[:w.shape[0], :w.shape[1]].to(FP8)
    return q, scale


def dequantize_fp8(q: Tensor, scale_inv: Tensor, block: tuple[int, int] = (128, 128)) -> Tensor:
    """The block-wise formula: W[i, j] = q[i, j] · scale_inv[i // bo, j // bi] (float32)."""
    bo, bi = block
    s = scale_inv.float().repeat_interleave(bo, 0)[:q.shape[0]].repeat_interleave(bi, 1)[:, :q.shape[1]]
    return q.float() * s


def dequantize_state_dict(sd: dict[str, Tensor], block: tuple[int, int], source: str
                          ) -> tuple[dict[str, Tensor], dict[str, tuple[Tensor, Tensor]]]:
    """Dequantizes every FP8 weight with its `weight_scale_inv`; also returns the raw (fp8, scale_inv) pairs."""
    out, raw = {}, {}
    for k, v in sd.items():
        if k.endswith("_scale_inv"):
            if k.removesuffix("_scale_inv") not in sd:
                raise WeightsError(f"{source}: '{hf_key(k)}' has no FP8 weight '{hf_key(k.removesuffix('_scale_inv'))}'")
            continue
        if v.dtype != FP8:
            out[k] = v
            continue
        scale = sd.get(k + "_scale_inv")
        if scale is None:
            raise WeightsError(f"{source}: FP8 tensor '{hf_key(k)}' has no '{hf_key(k)}_scale_inv'")
        if v.ndim != 2 or tuple(scale.shape) != _blocks(tuple(v.shape), block):
            raise WeightsError(f"{source}: '{hf_key(k)}_scale_inv' has shape {list(scale.shape)}, expected "
                               f"{list(_blocks(tuple(v.shape), block)) if v.ndim == 2 else '2-D weight'}")
        out[k] = dequantize_fp8(v, scale, block)
        raw[k] = (v, scale)
    return out, raw


def quantize_state_dict(sd: dict[str, Tensor], block: tuple[int, int] = (128, 128)) -> dict[str, Tensor]:
    """Quantizes the 2-D Linear weights the official FP8 checkpoints quantize; the rest is left as it is."""
    out = {}
    for k, v in sd.items():
        if v.ndim == 2 and k.endswith(".weight") and not KEEP_HIGH_PRECISION.search(k):
            out[k], out[k + "_scale_inv"] = quantize_fp8(v, block)
        else:
            out[k] = v
    return out


def write_checkpoint(sd: dict[str, Tensor], config: dict[str, Any], out_dir: str | Path, fp8: bool = False,
                     block: tuple[int, int] = (128, 128), dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes config.json + model.safetensors with HF names ("model." prefix) from HF-named tensors."""
    from safetensors.torch import save_file
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.to(torch.float32 if "e_score_correction_bias" in k or "mlp.gate." in k else dtype)
          for k, v in sd.items()}
    if fp8:
        sd = quantize_state_dict(sd, block)
        config = {**config, "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                                                     "quant_method": "fp8", "weight_block_size": list(block)}}
    named = {(k if k.startswith("lm_head") else f"model.{k}"): v.contiguous() for k, v in sd.items()}
    save_file(named, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir
