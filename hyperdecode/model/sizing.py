"""Sizing from a config alone: parameters, active parameters, bytes read per decoded token, HBM roofline."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..hardware import machine
from .registry import ModelConfig, family_of

__all__ = ["Sizing", "size_model"]


@dataclass
class Sizing:
    total_params: int  # everything a full checkpoint stores, MTP layer included
    main_params: int  # without the MTP layer
    mtp_params: int
    active_params: int  # read per decoded token at batch 1: no input-embedding table, top-k experts only, no MTP
    kv_bytes_per_token: int  # cache written per token (latent + rope key, or K and V), at the weight dtype
    index_key_bytes_per_token: int  # DSA indexer key cache per token (FP8 values + fp32 scale)
    context: int
    weight_bytes_per_token: int
    cache_bytes_per_token: int  # cache read per decoded token at `context`
    hbm_tbps: float

    @property
    def bytes_per_token(self) -> int:
        return self.weight_bytes_per_token + self.cache_bytes_per_token

    @property
    def roofline_tok_s(self) -> float:
        return self.hbm_tbps * 1e12 / self.bytes_per_token

    def as_dict(self) -> dict:
        return {**asdict(self), "bytes_per_token": self.bytes_per_token, "roofline_tok_s": self.roofline_tok_s}


def size_model(cfg: ModelConfig, context: int = 4096, weight_bytes: float = 2.0, hbm_tbps: float | None = None,
               kv_bytes: int = 2) -> Sizing:
    """Batch-1 decode sizing at `context` tokens, weights of `weight_bytes` each (2 = bf16, 1 = FP8) and a cache
    of `kv_bytes` per value (1 = FP8: for MLA the packed 656 B/layer layout when the dims are GLM/DeepSeek's); the
    roofline at `hbm_tbps` (default: the hardware table's measured H200 copy bandwidth).

    >>> from hyperdecode.model.loader import preset_config
    >>> size_model(preset_config("glm-5")).total_params
    753864139008
    """
    family = family_of(cfg)
    total = family.shapes(cfg, cfg.num_nextn_predict_layers > 0)
    main = family.shapes(cfg, False)
    count = {k: math.prod(v) for k, v in total.items()}
    n_total = sum(count.values())
    n_main = sum(count[k] for k in main)
    active = 0.0
    for k in main:
        if k == "embed_tokens.weight" and not cfg.tie_word_embeddings:
            continue
        share = cfg.num_experts_per_tok / cfg.n_routed_experts if ".mlp.experts." in k else 1.0
        active += count[k] * share
    kv = cfg.kv_bytes_per_token(kv_bytes, fp8=kv_bytes == 1)
    hbm_tbps = hbm_tbps or machine("h200").copy_tbps
    return Sizing(n_total, n_main, n_total - n_main, int(active), kv, cfg.index_key_bytes_per_token(), context,
                  int(active * weight_bytes), cfg.cache_bytes_read(context, kv_bytes), hbm_tbps)
