"""Reference Llama-family forward: RMSNorm, RoPE, GQA attention, SwiGLU MLP, static KV cache.

Parameter names are the HF ones without the leading "model." so that safetensors load without a table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig, rope_inv_freq

__all__ = ["Transformer", "KVCache"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class KVCache(nn.Module):
    """Preallocated [batch, kv_heads, max_seq, head_dim] keys and values, written at each sequence's positions."""

    def __init__(self, batch: int, kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device):
        super().__init__()
        shape = (batch, kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: Tensor, k: Tensor, v: Tensor, length: int) -> tuple[Tensor, Tensor]:
        # pos: [B, S]; k, v: [B, kv_heads, S, head_dim]
        B = pos.shape[0]
        if pos.shape[1] == 1:
            rows = torch.arange(B, device=pos.device)
            self.k[rows, :, pos[:, 0]] = k[:, :, 0]
            self.v[rows, :, pos[:, 0]] = v[:, :, 0]
        else:
            rows = torch.arange(B, device=pos.device)[:, None]
            self.k[rows, :, pos] = k.transpose(1, 2)
            self.v[rows, :, pos] = v.transpose(1, 2)
        return self.k[:B, :, :length], self.v[:B, :, :length]


def rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        b = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_head * self.head_dim, bias=b)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=b)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=b)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, cfg.hidden_size, bias=b)
        self.cache: KVCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor | None,
                cache_len: int | None) -> Tensor:
        B, S, _ = x.shape
        q = self.q_proj(x).view(B, S, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache_len is not None:
            k, v = self.cache.update(pos, k, v, cache_len)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.n_kv != self.n_head)
        return self.o_proj(y.transpose(1, 2).reshape(B, S, -1))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        b = cfg.mlp_bias
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=b)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=b)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=b)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, mask: Tensor | None,
                cache_len: int | None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, pos, mask, cache_len)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
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

    def forward(self, tokens: Tensor, pos: Tensor, use_cache: bool = True) -> Tensor:
        """tokens, pos: [B, S] -> final-norm hidden states [B, S, hidden]. Each row has its own positions."""
        B, S = tokens.shape
        x = self.embed_tokens(tokens)
        freqs = pos[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if use_cache:
            if B > self.max_batch or int(pos.max()) >= self.max_seq:
                raise ValueError(f"KV cache holds {self.max_batch}x{self.max_seq}; call setup_caches first")
            cache_len = int(pos.max()) + 1
            key_pos = torch.arange(cache_len, device=pos.device).expand(B, -1)
            if B == 1 and S == 1:
                key_pos = None  # one query at the newest position attends to the whole prefix
        else:
            cache_len, key_pos = None, pos
        mask = None if key_pos is None else (key_pos[:, None, :] <= pos[:, :, None])[:, None]
        for layer in self.layers:
            x = layer(x, cos, sin, pos, mask, cache_len)
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(h, w).float()
