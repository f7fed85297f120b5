"""Sizing from a config alone: parameters, active parameters, bytes read per decoded token, HBM roofline."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..hardware import machine
from .registry import ModelConfig, family_of

__all__ = ["Sizing", "size_model", "token_cache_bytes"]


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
    token_cache_bytes: int = 0  # cache one token leaves (KV + indexer keys): a PD transfer's bytes per prompt token

    @property
    def bytes_per_token(self) -> int:
        return self.weight_bytes_per_token + self.cache_bytes_per_token

    @property
    def roofline_tok_s(self) -> float:
        return self.hbm_tbps * 1e12 / self.bytes_per_token

    def as_dict(self) -> dict:
        return {**asdict(self), "bytes_per_token": self.bytes_per_token, "roofline_tok_s": self.roofline_tok_s}


def token_cache_bytes(cfg: ModelConfig, value_bytes: int = 2, index_keys: str = "fp8", mtp: bool = False) -> int:
    """Bytes one token leaves in the cache over every layer (with `mtp`, the MTP layer's too), from the config's
    `cache_shapes`: K and V or latent and roped key at `value_bytes` a value (1: FP8, MLA's packed 656 B/layer
    where the dims are GLM/DeepSeek's), DSA indexer keys as deployed (`index_keys="fp8"`: a byte a value plus a
    fp32 scale) or as this engine keeps them ("values": `value_bytes` a value). The one number `inspect` prints,
    the fabric workload moves per prompt token, and a prefill instance sends per prompt token.

    >>> from hyperdecode.model.loader import preset_config
    >>> token_cache_bytes(preset_config("glm-5"))  # 89,856 B latent + 10,296 B indexer keys
    100152
    """
    if index_keys not in ("fp8", "values"):
        raise ValueError(f"index_keys must be 'fp8' or 'values', got {index_keys!r}")
    per_layer = cfg.kv_bytes_per_token(value_bytes, fp8=value_bytes == 1) // cfg.num_hidden_layers
    total = 0
    for layer in range(cfg.num_hidden_layers + (1 if mtp else 0)):
        total += per_layer
        key = cfg.cache_shapes(layer).get("ik")
        if key is not None:
            total += math.prod(key) + 4 if index_keys == "fp8" else math.prod(key) * value_bytes
    return total


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
                  int(active * weight_bytes), cfg.cache_bytes_read(context, kv_bytes), hbm_tbps,
                  token_cache_bytes(cfg, kv_bytes))
