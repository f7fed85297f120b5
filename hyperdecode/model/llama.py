"""Reference Llama-family forward: RMSNorm, RoPE, GQA attention, SwiGLU MLP, static KV cache.

Checkpoints are read in HF layout and converted once by `from_hf` (q/k/v and gate/up fused, weights [in, out]).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig, rope_inv_freq
from .static import is_static

__all__ = ["Transformer", "KVCache", "CacheView", "cache_view", "hf_shapes", "from_hf"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


@dataclass
class CacheView:
    """Where one forward reads and writes the cache: rows `slots` (default 0..B-1), positions below `length`."""
    length: int
    slots: Tensor | None = None

    def rows(self, batch: int, device: torch.device) -> Tensor:
        return self.slots if self.slots is not None else torch.arange(batch, device=device)

    def read(self, buf: Tensor, batch: int) -> Tensor:
        return buf[:batch, :, :self.length] if self.slots is None else buf[self.slots, :, :self.length]


class KVCache(nn.Module):
    """Preallocated [batch, kv_heads, max_seq, head_dim] keys and values, written at each sequence's positions."""

    def __init__(self, batch: int, kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: Tensor, k: Tensor, v: Tensor, view: CacheView) -> tuple[Tensor, Tensor]:
        # pos: [B, S]; k, v: [B, kv_heads, S, head_dim]
        B = pos.shape[0]
        rows = view.rows(B, pos.device)[:, None]
        self.k[rows, :, pos] = k.transpose(1, 2)
        self.v[rows, :, pos] = v.transpose(1, 2)
        return view.read(self.k, B), view.read(self.v, B)


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def proj(d_in: int, d_out: int, bias: bool) -> tuple[nn.Parameter, nn.Parameter | None]:
    """Weights stored [in, out] so that decode's GEMV is `x @ w` (faster on CPU BLAS than x @ W.T)."""
    return nn.Parameter(torch.empty(d_in, d_out)), nn.Parameter(torch.empty(d_out)) if bias else None


def linear(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return x @ w if b is None else torch.addmm(b, x.flatten(0, -2), w).view(*x.shape[:-1], -1)


class Attention(nn.Module):
    """q, k and v share one [hidden, (heads + 2 kv_heads) * head_dim] projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.wqkv, self.bqkv = proj(cfg.hidden_size, (self.n_head + 2 * self.n_kv) * self.head_dim,
                                    cfg.attention_bias)
        self.wo, self.bo = proj(self.n_head * self.head_dim, cfg.hidden_size, cfg.attention_bias)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor | None,
                cache: CacheView | None) -> Tensor:
        B, S, _ = x.shape
        qkv = linear(x, self.wqkv, self.bqkv).view(B, S, self.n_head + 2 * self.n_kv, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.n_head, self.n_kv, self.n_kv], dim=1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is not None:
            k, v = self.cache.update(pos, k, v, cache)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_head)
        return linear(y.transpose(1, 2).reshape(B, S, -1), self.wo, self.bo)


class MLP(nn.Module):
    """SwiGLU; gate and up share one [hidden, 2 * intermediate] projection."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w13, self.b13 = proj(cfg.hidden_size, 2 * cfg.intermediate_size, cfg.mlp_bias)
        self.w2, self.b2 = proj(cfg.intermediate_size, cfg.hidden_size, cfg.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = linear(x, self.w13, self.b13).chunk(2, dim=-1)
        return linear(F.silu(gate) * up, self.w2, self.b2)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor | None,
                cache: CacheView | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, pos, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    FP32_PARAMS = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Parameter(torch.empty(cfg.hidden_size, cfg.vocab_size))  # [in, out]; a copy when tied
        self.register_buffer("inv_freq", torch.tensor(rope_inv_freq(cfg), dtype=torch.float32), persistent=False)
        self.max_batch = self.max_seq = 0

    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        """Allocates static KV caches; keeps the current ones when they are already large enough."""
        if max_batch <= self.max_batch and max_seq <= self.max_seq:
            return
        self.max_batch, self.max_seq = max(max_batch, self.max_batch), max(max_seq, self.max_seq)
        p = self.embed_tokens.weight
        for layer in self.layers:
            layer.self_attn.cache = KVCache(self.max_batch, self.cfg.num_key_value_heads, self.max_seq,
                                            self.cfg.head_dim, p.dtype, p.device)

    def forward(self, tokens: Tensor, pos: Tensor, use_cache: bool = True, slots: Tensor | None = None) -> Tensor:
        """tokens, pos: [B, S] -> final-norm hidden states [B, S, hidden]. Each row has its own positions and,
        with `slots`, its own cache row (continuous batching); without the cache it is one causal forward."""
        B, S = tokens.shape
        x = self.embed_tokens(tokens)
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        cache, key_pos = cache_view(self, tokens, pos, use_cache, slots)
        if cache is not None and B == 1 and S == 1 and not is_static():
            key_pos = None  # one query at the newest position attends to the whole prefix
        mask = None if key_pos is None else (key_pos[:, None, :] <= pos[:, :, None])[:, None]
        for layer in self.layers:
            x = layer(x, cos, sin, pos, mask, cache)
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        return (h @ self.lm_head).float()

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        return hf_shapes(self.cfg)

    def from_hf(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        return from_hf(sd, self.cfg)


def cache_view(model: nn.Module, tokens: Tensor, pos: Tensor, use_cache: bool,
               slots: Tensor | None) -> tuple[CacheView | None, Tensor]:
    """The cache view of a forward and the positions of its keys ([B, T]): cache rows, or the input itself."""
    if not use_cache:
        return None, pos
    if is_static():  # the caller checked the bounds; every cache position is read, masked by position
        return CacheView(model.max_seq, slots), torch.arange(model.max_seq, device=pos.device).expand(pos.shape[0], -1)
    rows = tokens.shape[0] if slots is None else int(slots.max()) + 1
    if rows > model.max_batch or int(pos.max()) >= model.max_seq:
        raise ValueError(f"the cache holds {model.max_batch}x{model.max_seq}; call setup_caches first")
    length = int(pos.max()) + 1
    return CacheView(length, slots), torch.arange(length, device=pos.device).expand(tokens.shape[0], -1)


def hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
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
        shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (H,)
        for group, table, bias in (("self_attn", attn, cfg.attention_bias), ("mlp", mlp, cfg.mlp_bias)):
            for name, shape in table.items():
                shapes[f"{p}{group}.{name}.weight"] = shape
                if bias:
                    shapes[f"{p}{group}.{name}.bias"] = shape[:1]
    return shapes


def from_hf(sd: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """HF-named tensors (already checked against `hf_shapes`) -> this module's state dict."""
    out = {"embed_tokens.weight": sd["embed_tokens.weight"], "norm.weight": sd["norm.weight"],
           "lm_head": sd["embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"].t()}
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        a, m = p + "self_attn.", p + "mlp."
        out[p + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
        out[p + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"]
        out[a + "wqkv"] = torch.cat([sd[a + f"{n}_proj.weight"] for n in "qkv"]).t()
        out[a + "wo"] = sd[a + "o_proj.weight"].t()
        out[m + "w13"] = torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]]).t()
        out[m + "w2"] = sd[m + "down_proj.weight"].t()
        if cfg.attention_bias:
            out[a + "bqkv"] = torch.cat([sd[a + f"{n}_proj.bias"] for n in "qkv"])
            out[a + "bo"] = sd[a + "o_proj.bias"]
        if cfg.mlp_bias:
            out[m + "b13"] = torch.cat([sd[m + "gate_proj.bias"], sd[m + "up_proj.bias"]])
            out[m + "b2"] = sd[m + "down_proj.bias"]
    return out
