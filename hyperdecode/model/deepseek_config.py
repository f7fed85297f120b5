"""Config of the GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 family (MLA, DSA indexer, MoE, MTP), HF field names."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from .config import hf_eos, hf_rope, known_fields, require_fields, require_positive

__all__ = ["DeepseekConfig", "MODEL_TYPES"]

MODEL_TYPES = ("glm_moe_dsa", "deepseek_v32", "deepseek_v3")
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
            "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "n_routed_experts", "num_experts_per_tok")


@dataclass
class DeepseekConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    n_routed_experts: int
    num_experts_per_tok: int
    q_lora_rank: int | None = None
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 3
    mlp_layer_types: list[str] | None = None
    index_n_heads: int = 0
    index_head_dim: int = 128
    index_topk: int = 2048
    indexer_types: list[str] | None = None
    rope_interleave: bool = True
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    num_nextn_predict_layers: int = 0
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    fp8_block: tuple[int, int] | None = None
    source: str = "config"

    def __post_init__(self) -> None:
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"{self.source}: model_type '{self.model_type}' is not one of {MODEL_TYPES}")
        require_positive(self, REQUIRED + ("max_position_embeddings",))
        if self.n_routed_experts % self.n_group or self.topk_group > self.n_group:
            raise ConfigError(f"{self.source}: 'n_routed_experts' ({self.n_routed_experts}) must split into "
                              f"'n_group' ({self.n_group}) groups with 'topk_group' ({self.topk_group}) <= n_group")
        if self.num_experts_per_tok > self.n_routed_experts // self.n_group * self.topk_group:
            raise ConfigError(f"{self.source}: 'num_experts_per_tok' exceeds the experts of the kept groups")
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"{self.source}: 'qk_rope_head_dim' must be even")
        n = self.num_hidden_layers
        if self.mlp_layer_types is None:
            dense = min(self.first_k_dense_replace, n)
            self.mlp_layer_types = ["dense"] * dense + ["sparse"] * (n - dense)
        if self.has_indexer:
            if self.index_n_heads <= 0 or self.index_head_dim < self.qk_rope_head_dim:
                raise ConfigError(f"{self.source}: the DSA indexer needs 'index_n_heads' > 0 and "
                                  f"'index_head_dim' >= 'qk_rope_head_dim'")
            self.indexer_types = self.layer_indexers
            if self.indexer_types[0] != "full":
                raise ConfigError(f"{self.source}: 'indexer_types' must start with 'full'")
        for name, values, allowed in (("mlp_layer_types", self.mlp_layer_types, {"dense", "sparse"}),
                                      ("indexer_types", self.layer_indexers, {"full", "shared"})):
            if len(values) != n or not set(values) <= allowed:
                raise ConfigError(f"{self.source}: '{name}' must list {n} values from {sorted(allowed)}")
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ("default", "yarn"):
            raise ConfigError(f"{self.source}: rope type '{kind}' is not supported for {self.model_type} "
                              "(supported: default, yarn)")

    @property
    def has_indexer(self) -> bool:
        return self.model_type != "deepseek_v3"

    @property
    def layer_indexers(self) -> list[str]:
        """Per layer: "full" (an indexer of its own) or "shared" (reuses the previous one's selection)."""
        return self.indexer_types or ["full"] * self.num_hidden_layers

    @property
    def indexer_rope_interleave(self) -> bool:
        """GLM's indexer ropes interleaved pairs; DeepSeek-V3.2's indexer ropes half-split."""
        return self.model_type == "glm_moe_dsa"

    @property
    def mtp_copies_embeddings(self) -> bool:
        """DeepSeek checkpoints store the MTP layer's own embed_tokens and shared_head.head; GLM's share them."""
        return self.model_type != "glm_moe_dsa"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def rope_inv_freq(self) -> tuple[torch.Tensor, float]:
        """Inverse frequencies for the rope dims and the cos/sin factor (YaRN as in HF's implementation)."""
        dim, base = self.qk_rope_head_dim, self.rope_theta
        pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
        rs = self.rope_scaling or {}
        if rs.get("rope_type", "default") == "default":
            return 1.0 / pos_freqs, 1.0
        factor, old = rs["factor"], rs["original_max_position_embeddings"]
        mscale, mscale_all = rs.get("mscale"), rs.get("mscale_all_dim")
        attention_factor = rs.get("attention_factor")
        if attention_factor is None:
            attention_factor = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all)
                                if mscale and mscale_all else yarn_mscale(factor))

        def correction_dim(rotations: float) -> float:
            return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(rs.get("beta_fast") or 32)), 0)
        high = min(math.ceil(correction_dim(rs.get("beta_slow") or 1)), dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(0, 1)
        extrapolate = 1 - ramp
        inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
        return inv, float(attention_factor)

    @property
    def softmax_scale(self) -> float:
        scale = self.qk_head_dim ** -0.5
        rs = self.rope_scaling or {}
        if rs.get("rope_type", "default") != "default" and rs.get("mscale_all_dim"):
            scale *= yarn_mscale(rs["factor"], rs["mscale_all_dim"]) ** 2
        return scale

    def cache_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """What one token caches in `layer` (`num_hidden_layers`: the MTP layer): the normed latent ("lat"), the
        roped key ("pe") and, in a layer with an indexer of its own, the indexer key ("ik"). The model allocates
        these and every byte count below is read from them."""
        shapes = {"lat": (self.kv_lora_rank,), "pe": (self.qk_rope_head_dim,)}
        own_indexer = layer >= self.num_hidden_layers or self.layer_indexers[layer] == "full"
        if self.has_indexer and own_indexer:
            shapes["ik"] = (self.index_head_dim,)
        return shapes

    def kv_bytes_per_token(self, dtype_bytes: int = 2, fp8: bool = False) -> int:
        """Latent cache bytes per token over all layers: (kv_lora + rope) values, or the 656 B/layer FP8 layout."""
        shapes = self.cache_shapes(0)
        values = shapes["lat"][0] + shapes["pe"][0]
        per_layer = 656 if fp8 and self.kv_lora_rank == 512 and self.qk_rope_head_dim == 64 else \
            values * (1 if fp8 else dtype_bytes)
        return self.num_hidden_layers * per_layer

    def index_key_bytes_per_token(self) -> int:
        """Indexer key cache per token over the layers with an indexer of their own: FP8 values plus one fp32 scale
        each (0 without an indexer)."""
        keys = [self.cache_shapes(i).get("ik") for i in range(self.num_hidden_layers)]
        return sum(shape[0] + 4 for shape in keys if shape)

    def cache_bytes_read(self, context: int, value_bytes: int = 2) -> int:
        """Cache bytes one decoded token reads at `context` tokens: the latents DSA keeps (at most index_topk per
        layer) plus every past indexer key of the layers with an indexer of their own."""
        per_layer = self.kv_bytes_per_token(value_bytes, fp8=value_bytes == 1) // self.num_hidden_layers
        attended = min(context, self.index_topk) if self.has_indexer else context
        full_indexers = self.layer_indexers.count("full") if self.has_indexer else 0
        return self.num_hidden_layers * attended * per_layer + full_indexers * context * (self.index_head_dim + 4)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "DeepseekConfig":
        """Builds a config from HF config.json fields (`rope_scaling` or transformers 5 `rope_parameters`)."""
        require_fields(d, REQUIRED, source)
        if d.get("hidden_act", "silu") != "silu" or d.get("scoring_func", "sigmoid") != "sigmoid":
            raise ConfigError(f"{source}: only silu experts with sigmoid routing are supported")
        if d.get("num_key_value_heads", d["num_attention_heads"]) != d["num_attention_heads"]:
            raise ConfigError(f"{source}: MLA needs 'num_key_value_heads' == 'num_attention_heads'")
        theta, scaling = hf_rope(d)
        indexer_types = d.get("indexer_types")
        if indexer_types is None and d.get("model_type") == "glm_moe_dsa" and "index_topk_freq" in d:
            freq, offset = max(d["index_topk_freq"], 1), d.get("index_skip_topk_offset", 2)
            indexer_types = ["full" if max(i - offset + 1, 0) % freq == 0 else "shared"
                             for i in range(d["num_hidden_layers"])]
        q = d.get("quantization_config") or {}
        if q and q.get("quant_method") != "fp8":
            raise ConfigError(f"{source}: quantization_config.quant_method '{q.get('quant_method')}' "
                              "is not supported (only fp8)")
        kwargs = known_fields(cls, d, {"eos_token_ids", "rope_scaling", "rope_theta", "source", "indexer_types",
                                       "fp8_block"})
        kwargs.setdefault("model_type", "deepseek_v3")
        return cls(**kwargs, rope_theta=theta, indexer_types=indexer_types, rope_scaling=scaling,
                   eos_token_ids=hf_eos(d), fp8_block=tuple(q.get("weight_block_size", (128, 128))) if q else None,
                   source=source)

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json fields that transformers' classes for this model_type read back."""
        d = dataclasses.asdict(self)
        for k in ("source", "eos_token_ids", "rope_scaling", "rope_theta", "fp8_block"):
            d.pop(k)
        if not self.has_indexer:
            for k in ("index_n_heads", "index_head_dim", "index_topk", "indexer_types"):
                d.pop(k)
        d["num_key_value_heads"] = self.num_attention_heads
        d["rope_parameters"] = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        d["eos_token_id"] = self.eos_token_ids or None
        d["architectures"] = [{"glm_moe_dsa": "GlmMoeDsaForCausalLM", "deepseek_v32": "DeepseekV32ForCausalLM",
                               "deepseek_v3": "DeepseekV3ForCausalLM"}[self.model_type]]
        if self.fp8_block:
            d["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                        "weight_block_size": list(self.fp8_block)}
        return d


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
