"""Reference forward of the GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 family.

MLA runs in its absorbed form everywhere: the cache holds the normed `kv_lora_rank` latent and the roped
`qk_rope_head_dim` key per token, W_UK is folded into q and W_UV into the output. The DSA indexer scores every past
token, keeps the top `index_topk` (ties: the lower position wins) and masks MLA to them. MoE routes with sigmoid
scores plus `e_score_correction_bias`, group-limited. The MTP layer (HF layer index `num_hidden_layers`) is `mtp`.
Parameter names are the HF ones without "model.", except routed experts (stacked) and the MTP layer (`mtp.`).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deepseek_config import DeepseekConfig
from .llama import CacheView, RMSNorm, cache_view
from .static import is_static

__all__ = ["DeepseekTransformer"]


def rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """Rotates pairs (x[2i], x[2i+1]) if interleaved, else (x[i], x[i+d/2]); output halves hold the two parts."""
    x1, x2 = (x[..., 0::2], x[..., 1::2]) if interleaved else x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class LatentCache(nn.Module):
    """Per layer: normed latent [B, T, kv_lora], roped key [B, T, rope] and indexer key [B, T, index_dim]."""

    def __init__(self, batch: int, max_seq: int, widths: tuple[int, ...], dtype: torch.dtype, device):
        super().__init__()
        self.tensors = [torch.zeros(batch, max_seq, w, dtype=dtype, device=device) for w in widths]

    def update(self, pos: Tensor, values: list[Tensor], view: CacheView) -> list[Tensor]:
        B = pos.shape[0]
        rows = view.rows(B, pos.device)[:, None]
        out = []
        for buf, v in zip(self.tensors, values):
            buf[rows, pos] = v
            out.append(buf[:B, :view.length] if view.slots is None else buf[view.slots, :view.length])
        return out


class Indexer(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        self.n_heads, self.dim, self.rope_dim = cfg.index_n_heads, cfg.index_head_dim, cfg.qk_rope_head_dim
        self.topk, self.interleaved = cfg.index_topk, cfg.indexer_rope_interleave
        self.wq_b = nn.Linear(cfg.q_lora_rank, self.n_heads * self.dim, bias=False)
        self.wk = nn.Linear(cfg.hidden_size, self.dim, bias=False)
        self.k_norm = nn.LayerNorm(self.dim, eps=1e-6)
        self.weights_proj = nn.Linear(cfg.hidden_size, self.n_heads, bias=False)  # kept in fp32

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot, rest = x.split([self.rope_dim, self.dim - self.rope_dim], dim=-1)
        return torch.cat((rope(rot, cos, sin, self.interleaved), rest), dim=-1)

    def key(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self._rope(self.k_norm(self.wk(x)), cos, sin)

    def select(self, x: Tensor, q_lat: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, causal: Tensor) -> Tensor:
        """Boolean [B, S, T]: the top-k keys of each query (all of them while T <= index_topk)."""
        B, S, _ = x.shape
        q = self._rope(self.wq_b(q_lat).view(B, S, self.n_heads, self.dim), cos[:, :, None], sin[:, :, None])
        scores = F.relu(torch.einsum("bshd,btd->bsht", q.float(), keys.float()) * self.dim ** -0.5)
        w = self.weights_proj(x.to(self.weights_proj.weight.dtype)).float() * self.n_heads ** -0.5
        index = torch.einsum("bsh,bsht->bst", w, scores).masked_fill(~causal, float("-inf"))
        k = min(self.topk, index.shape[-1])
        if k == index.shape[-1]:
            return torch.ones_like(causal)
        order = torch.sort(index, dim=-1, descending=True, stable=True).indices[..., :k]  # ties: lower position
        return torch.zeros_like(causal).scatter_(-1, order, True)


class MLA(nn.Module):
    def __init__(self, cfg: DeepseekConfig, full_indexer: bool):
        super().__init__()
        self.cfg = cfg
        H, h = cfg.hidden_size, cfg.num_attention_heads
        b = cfg.attention_bias
        if cfg.q_lora_rank:
            self.q_a_proj = nn.Linear(H, cfg.q_lora_rank, bias=b)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, 1e-6)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, h * cfg.qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(H, h * cfg.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias=b)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, 1e-6)
        self.kv_b_proj = nn.Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim), bias=False)
        self.o_proj = nn.Linear(h * cfg.v_head_dim, H, bias=b)
        self.indexer = Indexer(cfg) if cfg.has_indexer and full_indexer else None
        self.cache: LatentCache | None = None

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, causal: Tensor, cache: CacheView | None,
                prev_topk: Tensor | None) -> tuple[Tensor, Tensor | None]:
        c = self.cfg
        B, S, _ = x.shape
        nope, r, L, h = c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank, c.num_attention_heads
        q_lat = self.q_a_layernorm(self.q_a_proj(x)) if c.q_lora_rank else None
        q = (self.q_b_proj(q_lat) if c.q_lora_rank else self.q_proj(x)).view(B, S, h, c.qk_head_dim)
        q_nope, q_pe = q.split([nope, r], dim=-1)
        q_pe = rope(q_pe, cos[:, :, None], sin[:, :, None], c.rope_interleave)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([L, r], dim=-1)
        cached = [self.kv_a_layernorm(latent), rope(k_pe, cos, sin, c.rope_interleave)]
        if self.indexer is not None:
            cached.append(self.indexer.key(x, cos, sin))
        if cache is not None:
            cached = self.cache.update(pos, cached, cache)
        latent, k_pe = cached[:2]
        topk = prev_topk if self.indexer is None else self.indexer.select(x, q_lat, cos, sin, cached[2], causal)
        mask = causal if topk is None else causal & topk

        w = self.kv_b_proj.weight.view(h, nope + c.v_head_dim, L)
        q_abs = torch.einsum("bshd,hdl->bshl", q_nope, w[:, :nope])  # W_UK folded into q
        scores = (torch.einsum("bshl,btl->bsht", q_abs, latent)
                  + torch.einsum("bshr,btr->bsht", q_pe, k_pe)) * c.softmax_scale
        scores = scores.float().masked_fill(~mask[:, :, None, :], float("-inf"))
        p = torch.softmax(scores, dim=-1).to(x.dtype)
        o = torch.einsum("bshl,hvl->bshv", torch.einsum("bsht,btl->bshl", p, latent), w[:, nope:])  # W_UV
        return self.o_proj(o.reshape(B, S, h * c.v_head_dim)), topk


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))  # kept in fp32
        self.e_score_correction_bias = nn.Parameter(torch.empty(cfg.n_routed_experts))  # kept in fp32

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, hidden] -> (weights [N, k] fp32, expert ids [N, k])."""
        c = self.cfg
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias  # the bias steers selection only
        if c.n_group > 1:
            per_group = c.n_routed_experts // c.n_group
            group_score = choice.view(-1, c.n_group, per_group).topk(min(2, per_group), dim=-1).values.sum(-1)
            kept = torch.zeros_like(group_score, dtype=torch.bool)
            kept.scatter_(1, group_score.topk(c.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~kept.repeat_interleave(per_group, dim=1), float("-inf"))
        ids = choice.topk(c.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, ids)
        if c.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * c.routed_scaling_factor, ids


class MoE(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        E, H, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = Router(cfg)
        self.w1 = nn.Parameter(torch.empty(E, I, H))  # experts' gate_proj, stacked
        self.w3 = nn.Parameter(torch.empty(E, I, H))  # up_proj
        self.w2 = nn.Parameter(torch.empty(E, H, I))  # down_proj
        self.shared_experts = MLP(H, I * cfg.n_shared_experts)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, ids = self.gate(flat)
        if is_static():  # gather each row's chosen experts: no host sync, fixed shapes
            gate = torch.einsum("nkih,nh->nki", self.w1[ids], flat)
            up = torch.einsum("nkih,nh->nki", self.w3[ids], flat)
            y = torch.einsum("nkhi,nki->nkh", self.w2[ids], F.silu(gate) * up)
            return (y * weights[..., None].to(y.dtype)).sum(1).view_as(x) + self.shared_experts(x)
        out = torch.zeros_like(flat)
        for e in ids.unique().tolist():  # only the chosen experts' weights are read
            tok, slot = (ids == e).nonzero(as_tuple=True)
            h = flat[tok]
            y = F.linear(F.silu(F.linear(h, self.w1[e])) * F.linear(h, self.w3[e]), self.w2[e])
            out.index_add_(0, tok, (y * weights[tok, slot, None]).to(out.dtype))
        return out.view_as(x) + self.shared_experts(x)


class Block(nn.Module):
    def __init__(self, cfg: DeepseekConfig, sparse: bool, full_indexer: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, full_indexer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if sparse else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, pos: Tensor, causal: Tensor, cache: CacheView | None,
                prev_topk: Tensor | None) -> tuple[Tensor, Tensor | None]:
        h, topk = self.self_attn(self.input_layernorm(x), cos, sin, pos, causal, cache, prev_topk)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), topk


class MTPHead(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False) if cfg.mtp_copies_embeddings else None


class MTP(Block):
    """The multi-token-prediction layer: a decoder block fed eh_proj([enorm(embed(next)), hnorm(hidden)])."""

    def __init__(self, cfg: DeepseekConfig):
        super().__init__(cfg, sparse="sparse" in cfg.mlp_layer_types, full_indexer=True)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.shared_head = MTPHead(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size) if cfg.mtp_copies_embeddings else None


class DeepseekTransformer(nn.Module):
    FP32_PARAMS = re.compile(r".*(indexer\.weights_proj\.weight|mlp\.gate\.(weight|e_score_correction_bias))$")

    def __init__(self, cfg: DeepseekConfig, mtp: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, kind == "sparse", idx == "full") for kind, idx in
                                    zip(cfg.mlp_layer_types, cfg.indexer_types or ["full"] * cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = None if cfg.tie_word_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.mtp = MTP(cfg) if mtp else None
        inv_freq, self.rope_factor = cfg.rope_inv_freq()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.max_batch = self.max_seq = 0

    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        if max_batch <= self.max_batch and max_seq <= self.max_seq:
            return
        self.max_batch, self.max_seq = max(max_batch, self.max_batch), max(max_seq, self.max_seq)
        c, p = self.cfg, self.embed_tokens.weight
        for layer in self.layers:
            widths = (c.kv_lora_rank, c.qk_rope_head_dim) + ((c.index_head_dim,) if layer.self_attn.indexer else ())
            layer.self_attn.cache = LatentCache(self.max_batch, self.max_seq, widths, p.dtype, p.device)

    def _rope_tables(self, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = pos[..., None].float() * self.inv_freq
        return (freqs.cos() * self.rope_factor).to(dtype), (freqs.sin() * self.rope_factor).to(dtype)

    def forward(self, tokens: Tensor, pos: Tensor, use_cache: bool = True, slots: Tensor | None = None) -> Tensor:
        """tokens, pos: [B, S] -> final-norm hidden states [B, S, hidden] (as the Llama Transformer)."""
        x = self.embed_tokens(tokens)
        cos, sin = self._rope_tables(pos, x.dtype)
        cache, key_pos = cache_view(self, tokens, pos, use_cache, slots)
        causal = key_pos[:, None, :] <= pos[:, :, None]  # [B, S, T]
        topk = None
        for layer in self.layers:
            x, topk = layer(x, cos, sin, pos, causal, cache, topk)
        return self.norm(x)

    def logits(self, h: Tensor) -> Tensor:
        return F.linear(h, (self.embed_tokens if self.lm_head is None else self.lm_head).weight).float()

    def mtp_logits(self, hidden: Tensor, next_tokens: Tensor, pos: Tensor) -> Tensor:
        """Draft logits [B, S, vocab] of the MTP layer over a whole sequence (no cache).

        hidden: the main model's final-norm hidden states at `pos`; next_tokens: the token after each position.
        """
        m = self.mtp
        if m is None:
            raise ValueError("this checkpoint has no MTP layer weights")
        emb = (m.embed_tokens or self.embed_tokens)(next_tokens).masked_fill((pos == 0)[..., None], 0.0)
        x = m.eh_proj(torch.cat((m.enorm(emb), m.hnorm(hidden)), dim=-1))
        cos, sin = self._rope_tables(pos, x.dtype)
        x, _ = m(x, cos, sin, pos, pos[:, None, :] <= pos[:, :, None], None, None)
        h = m.shared_head.norm(x)
        return self.logits(h) if m.shared_head.head is None else m.shared_head.head(h).float()

    def hf_shapes(self) -> dict[str, tuple[int, ...]]:
        return hf_shapes(self.cfg, self.mtp is not None)

    def from_hf(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """HF-named tensors (checked against `hf_shapes`) -> this module's state dict."""
        out, experts = {}, {}
        mtp_prefix = f"layers.{self.cfg.num_hidden_layers}."
        for k, v in sd.items():
            if k.startswith(mtp_prefix):
                k = "mtp." + k[len(mtp_prefix):]
            m = re.fullmatch(r"(.*mlp)\.experts\.(\d+)\.(gate|up|down)_proj\.weight", k)
            if m:
                experts[m.group(1), m.group(3), int(m.group(2))] = v
            else:
                out[k] = v
        for prefix in sorted({p for p, _, _ in experts}):
            for name, w in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                out[f"{prefix}.{w}"] = torch.stack([experts[prefix, name, e]
                                                    for e in range(self.cfg.n_routed_experts)])
        return out


def hf_shapes(cfg: DeepseekConfig, mtp: bool) -> dict[str, tuple[int, ...]]:
    """Names (HF, without "model.") and shapes of every tensor a checkpoint must hold."""
    H, h, V = cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size
    L, r, qk = cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.qk_head_dim
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (V, H), "norm.weight": (H,)}
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (V, H)

    def mlp(p: str, inter: int) -> None:
        shapes.update({f"{p}gate_proj.weight": (inter, H), f"{p}up_proj.weight": (inter, H),
                       f"{p}down_proj.weight": (H, inter)})

    def layer(p: str, sparse: bool, full_indexer: bool) -> None:
        a = p + "self_attn."
        shapes.update({p + "input_layernorm.weight": (H,), p + "post_attention_layernorm.weight": (H,)})
        if cfg.q_lora_rank:
            shapes.update({a + "q_a_proj.weight": (cfg.q_lora_rank, H), a + "q_a_layernorm.weight": (cfg.q_lora_rank,),
                           a + "q_b_proj.weight": (h * qk, cfg.q_lora_rank)})
        else:
            shapes[a + "q_proj.weight"] = (h * qk, H)
        shapes.update({a + "kv_a_proj_with_mqa.weight": (L + r, H), a + "kv_a_layernorm.weight": (L,),
                       a + "kv_b_proj.weight": (h * (cfg.qk_nope_head_dim + cfg.v_head_dim), L),
                       a + "o_proj.weight": (H, h * cfg.v_head_dim)})
        if cfg.attention_bias:
            shapes.update({a + "q_a_proj.bias": (cfg.q_lora_rank,), a + "kv_a_proj_with_mqa.bias": (L + r,),
                           a + "o_proj.bias": (H,)})
        if cfg.has_indexer and full_indexer:
            i, D, n = a + "indexer.", cfg.index_head_dim, cfg.index_n_heads
            shapes.update({i + "wq_b.weight": (n * D, cfg.q_lora_rank), i + "wk.weight": (D, H),
                           i + "k_norm.weight": (D,), i + "k_norm.bias": (D,), i + "weights_proj.weight": (n, H)})
        if sparse:
            E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
            shapes.update({p + "mlp.gate.weight": (E, H), p + "mlp.gate.e_score_correction_bias": (E,)})
            for e in range(E):
                mlp(f"{p}mlp.experts.{e}.", I)
            mlp(p + "mlp.shared_experts.", I * cfg.n_shared_experts)
        else:
            mlp(p + "mlp.", cfg.intermediate_size)

    for i, (kind, idx) in enumerate(zip(cfg.mlp_layer_types, cfg.indexer_types or ["full"] * cfg.num_hidden_layers)):
        layer(f"layers.{i}.", kind == "sparse", idx == "full")
    if mtp:
        p = f"layers.{cfg.num_hidden_layers}."
        layer(p, "sparse" in cfg.mlp_layer_types, True)
        shapes.update({p + "enorm.weight": (H,), p + "hnorm.weight": (H,), p + "eh_proj.weight": (H, 2 * H),
                       p + "shared_head.norm.weight": (H,)})
        if cfg.mtp_copies_embeddings:
            shapes.update({p + "embed_tokens.weight": (V, H), p + "shared_head.head.weight": (V, H)})
    return shapes
