"""The Qwen3 family (`Qwen3ForCausalLM`): Llama's block with an RMSNorm over each head of q and k before RoPE,
and a `head_dim` that need not be hidden / heads. Everything else is the Llama family's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from .layers import RMSNorm
from .llama import LlamaAttention, LlamaConfig, LlamaForCausalLM, hf_shapes as llama_shapes

__all__ = ["Qwen3Config", "Qwen3ForCausalLM", "hf_shapes"]


@dataclass
class Qwen3Config(LlamaConfig):
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    model_type: str = "qwen3"

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "Qwen3Config":
        sliding = d.get("use_sliding_window") or any(t != "full_attention" for t in d.get("layer_types") or ())
        if sliding:
            raise ConfigError(f"{source}: sliding-window attention ('use_sliding_window' / 'layer_types') is not "
                              "supported")
        return super().from_dict(d, source)


class Qwen3Attention(LlamaAttention):
    def __init__(self, cfg: Qwen3Config):
        super().__init__(cfg)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def normalize(self, qk: Tensor) -> Tensor:
        return torch.cat((self.q_norm(qk[:, :self.n_head]), self.k_norm(qk[:, self.n_head:])), dim=1)


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention = Qwen3Attention


def hf_shapes(cfg: Qwen3Config, mtp: bool = False) -> dict[str, tuple[int, ...]]:
    """Llama's tensors plus each layer's q_norm and k_norm ([head_dim])."""
    shapes = llama_shapes(cfg)
    for i in range(cfg.num_hidden_layers):
        shapes[f"layers.{i}.self_attn.q_norm.weight"] = (cfg.head_dim,)
        shapes[f"layers.{i}.self_attn.k_norm.weight"] = (cfg.head_dim,)
    return shapes
