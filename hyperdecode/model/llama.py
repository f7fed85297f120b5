"""The Llama family: its config (HF config.json, GGUF metadata or a preset) and its reference forward — RMSNorm,
RoPE (default, linear, Llama-3 scaling), GQA attention, SwiGLU MLP, static KV cache.

Checkpoints are read in HF layout and converted once by `from_hf` (q/k/v and gate/up fused, weights [in, out]).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .config import hf_eos, hf_rope, known_fields, require_fields, require_positive
from .layers import MLP, CausalLM, Linear, RMSNorm, embedding, fuse, rope, rope_tables, to_in_out
from .static import is_static
from .step import RowGroup, Step

__all__ = ["LlamaConfig", "LlamaForCausalLM", "hf_shapes"]

ROPE_TYPES = ("default", "linear", "llama3")
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclass
class LlamaConfig:
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

    num_nextn_predict_layers = 0  # no MTP layer in this family

    def __post_init__(self) -> None:
        require_positive(self, REQUIRED + ("max_position_embeddings",))
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

    def cache_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """What one token caches in `layer`: its key and value heads (the model allocates these)."""
        kv = (self.num_key_value_heads, self.head_dim)
        return {"k": kv, "v": kv}

    def kv_bytes_per_token(self, dtype_bytes: int = 2, fp8: bool = False) -> int:
        """K and V of every layer for one token (`fp8`: one byte per value)."""
        value_bytes = 1 if fp8 else dtype_bytes
        values = sum(math.prod(shape) for shape in self.cache_shapes(0).values())
        return self.num_hidden_layers * values * value_bytes

    def index_key_bytes_per_token(self) -> int:
        return 0

    def cache_bytes_read(self, context: int, value_bytes: int = 2) -> int:
        """Cache bytes one decoded token reads at `context` tokens: every past K and V."""
        return context * self.kv_bytes_per_token(value_bytes)

    def rope_inv_freq(self) -> tuple[Tensor, float]:
        """Per-pair RoPE inverse frequencies (linear or Llama-3 scaling applied) and the cos/sin factor (1)."""
        dim = self.head_dim
        inv = [self.rope_theta ** (-2 * i / dim) for i in range(dim // 2)]
        rs = self.rope_scaling or {}
        kind = rs.get("rope_type", "default")
        if kind == "linear":
            inv = [f / rs["factor"] for f in inv]
        elif kind == "llama3":
            inv = [llama3_scaled(f, rs) for f in inv]
        return torch.tensor(inv, dtype=torch.float32), 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config") -> "LlamaConfig":
        """Builds a config from HF config.json fields (transformers 4 `rope_scaling` or 5 `rope_parameters`)."""
        if d.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: field 'hidden_act' must be 'silu', got {d.get('hidden_act')!r}")
        require_fields(d, REQUIRED, source)
        theta, scaling = hf_rope(d)
        kwargs = known_fields(cls, d, {"eos_token_ids", "rope_scaling", "rope_theta", "source"})
        return cls(**kwargs, rope_theta=theta, rope_scaling=scaling, eos_token_ids=hf_eos(d), source=source)

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], source: str = "gguf") -> "LlamaConfig":
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
        scaling = None
        if get("rope.scaling.type", "none") == "linear":
            scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        eos = meta.get("tokenizer.ggml.eos_token_id")
        return cls(vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(get("feed_forward_length")),
                   num_hidden_layers=int(get("block_count")), num_attention_heads=heads,
                   num_key_value_heads=int(get("attention.head_count_kv", heads)),
                   head_dim=int(get("attention.key_length", hidden // heads)),
                   rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
                   rope_theta=float(get("rope.freq_base", 10000.0)), rope_scaling=scaling,
                   max_position_embeddings=int(get("context_length", 2048)),
                   bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
                   eos_token_ids=[] if eos is None else [int(eos)], source=source)

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json fields that transformers' config class for this model_type reads back."""
        d = dataclasses.asdict(self)
        for k in ("source", "eos_token_ids", "rope_scaling", "rope_theta"):
            d.pop(k)
        architecture = {"qwen3": "Qwen3ForCausalLM"}.get(self.model_type, "LlamaForCausalLM")
        d.update(architectures=[architecture], hidden_act="silu", eos_token_id=self.eos_token_ids or None,
                 rope_parameters={"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta})
        return d


def llama3_scaled(f: float, rs: dict[str, Any]) -> float:
    """One inverse frequency under Llama-3's scaling: low frequencies divided by `factor`, high ones kept."""
    factor = rs["factor"]
    lo = rs.get("low_freq_factor", 1.0)
    hi = rs.get("high_freq_factor", 4.0)
    old_len = rs["original_max_position_embeddings"]
    wavelen = 2 * math.pi / f
    if wavelen < old_len / hi:
        return f
    if wavelen > old_len / lo:
        return f / factor
    smooth = (old_len / wavelen - lo) / (hi - lo)
    return (1 - smooth) * f / factor + smooth * f


class LlamaAttention(nn.Module):
    """q, k and v share one [hidden, (heads + 2 kv_heads) * head_dim] projection; the cache holds k and v
    [rows, max_seq, kv_heads, head_dim]."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = Linear(cfg.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim, cfg.attention_bias)
        self.o_proj = Linear(self.n_head * self.head_dim, cfg.hidden_size, cfg.attention_bias)
        self.cache = None

    def normalize(self, qk: Tensor) -> Tensor:
        """Per-head normalisation of the query and key heads [N, heads + kv_heads, head_dim] before RoPE: none in
        Llama (Qwen3 overrides it)."""
        return qk

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: Step, masks: list[Tensor | None]) -> Tensor:
        """x: the step's tokens, flat [N, hidden]; attention runs per row group (step.py)."""
        n = x.shape[0]
        qkv = self.qkv_proj(x).view(n, self.n_head + 2 * self.n_kv, self.head_dim)
        qk = rope(self.normalize(qkv[:, :self.n_head + self.n_kv]), cos[:, None], sin[:, None])  # q and k heads
        q, k = qk.split([self.n_head, self.n_kv], dim=1)
        v = qkv[:, self.n_head + self.n_kv:]
        outs = []
        for group, mask in zip(step.groups, masks):
            q_g, k_g, v_g = group.take(q), group.take(k), group.take(v)  # [batch, length, heads, head_dim]
            if group.cache is not None:
                k_g, v_g = self.cache.update(group.pos, [k_g, v_g], group.cache)
            y = F.scaled_dot_product_attention(q_g.transpose(1, 2), k_g.transpose(1, 2), v_g.transpose(1, 2),
                                               attn_mask=mask, enable_gqa=self.n_kv != self.n_head)
            outs.append(y.transpose(1, 2).reshape(-1, self.n_head * self.head_dim))
        return self.o_proj(step.join(outs))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig, attention: type[LlamaAttention]):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: Step, masks: list[Tensor | None]) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, step, masks)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(CausalLM):
    attention = LlamaAttention  # a variant family swaps its attention here (qwen3.py)

    def __init__(self, cfg: LlamaConfig, mtp: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaBlock(cfg, self.attention) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Parameter(torch.empty(cfg.hidden_size, cfg.vocab_size))  # [in, out]; a copy when tied
        self.register_buffer("inv_freq", torch.zeros(cfg.head_dim // 2), persistent=False)
        self.init_buffers()

    def init_buffers(self) -> None:
        """Fills the non-persistent buffers (RoPE frequencies), e.g. after `to_empty`."""
        if self.inv_freq.device.type != "meta":
            self.inv_freq.copy_(self.cfg.rope_inv_freq()[0])

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None = None, use_cache: bool = True) -> Tensor:
        """tokens, pos: [B, S] -> final-norm hidden states [B, S, hidden]. Each row has its own positions (pos = -1
        pads a row) and, with `slots`, its own cache row (continuous batching); without the cache it is one causal
        forward."""
        step = Step(self, tokens, pos, slots, use_cache)
        x = self.embed_tokens(step.tokens)
        cos, sin = rope_tables(step.pos, self.inv_freq, x.dtype)
        masks = [attention_mask(group) for group in step.groups]
        for layer in self.layers:
            x = layer(x, cos, sin, step, masks)
        return step.unpack(self.norm(x))

    def logits(self, hidden: Tensor) -> Tensor:
        if isinstance(self.lm_head, nn.Module):  # a head kept quantized (quant.py)
            return self.lm_head(hidden).float()
        return (hidden @ self.lm_head).float()

    def from_hf(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """HF-named tensors (already checked against `hf_shapes`) -> this module's state dict."""
        out = to_in_out(sd)
        head = out.pop("lm_head.weight", None)
        out["lm_head"] = sd["embed_tokens.weight"].t() if self.cfg.tie_word_embeddings else head
        for i in range(self.cfg.num_hidden_layers):
            fuse(out, f"layers.{i}.self_attn.", ("q_proj", "k_proj", "v_proj"), "qkv_proj")
            fuse(out, f"layers.{i}.mlp.", ("gate_proj", "up_proj"), "gate_up_proj")
        return out


def attention_mask(group: RowGroup) -> Tensor | None:
    """[batch, 1, length, T] for SDPA; None for one query at the newest position (it attends to the whole prefix)."""
    if group.cache is not None and group.batch == 1 and group.length == 1 and not is_static():
        return None
    return group.causal()[:, None]


def hf_shapes(cfg: LlamaConfig, mtp: bool = False) -> dict[str, tuple[int, ...]]:
    """Names (HF, without "model.") and shapes of every tensor a checkpoint for `cfg` must hold."""
    H, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    shapes = {"embed_tokens.weight": (cfg.vocab_size, H), "norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, H)
    attn = {"q_proj": (cfg.num_attention_heads * hd, H), "k_proj": (cfg.num_key_value_heads * hd, H),
            "v_proj": (cfg.num_key_value_heads * hd, H), "o_proj": (H, cfg.num_attention_heads * hd)}
    mlp = {"gate_proj": (I, H), "up_proj": (I, H), "down_proj": (H, I)}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        shapes[p + "input_layernorm.weight"] = (H,)
        shapes[p + "post_attention_layernorm.weight"] = (H,)
        for group, table, bias in (("self_attn", attn, cfg.attention_bias), ("mlp", mlp, cfg.mlp_bias)):
            for name, shape in table.items():
                shapes[f"{p}{group}.{name}.weight"] = shape
                if bias:
                    shapes[f"{p}{group}.{name}.bias"] = shape[:1]
    return shapes
