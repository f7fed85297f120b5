"""Reference forward of the GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 family.

MLA runs in its absorbed form everywhere: the cache holds the normed `kv_lora_rank` latent and the roped
`qk_rope_head_dim` key per token, W_UK is folded into q and W_UV into the output. The DSA indexer scores every past
token, keeps the top `index_topk` (ties: the lower position wins) and masks MLA to them. MoE routes with sigmoid
scores plus `e_score_correction_bias`, group-limited. The MTP layer (HF layer index `num_hidden_layers`) is `mtp`.
Parameter names are the HF ones without "model.", except fused gate/up projections (`gate_up_proj`), routed
experts (stacked: `experts_gate_up` [E, hidden, 2 inter], `experts_down` [E, inter, hidden]) and the MTP layer
(`mtp.`); every projection is stored [in, out] (layers.py).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .deepseek_config import DeepseekConfig
from .layers import (MLP, CausalLM, LayerCache, Linear, RMSNorm, embedding, fuse, rope, rope_tables,
                     to_in_out)
from .static import is_static
from .step import Step

__all__ = ["DeepseekForCausalLM", "hf_shapes", "topk_mask"]


class Indexer(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        self.n_heads = cfg.index_n_heads
        self.dim = cfg.index_head_dim
        self.rope_dim = cfg.qk_rope_head_dim
        self.topk = cfg.index_topk
        self.interleaved = cfg.indexer_rope_interleave
        self.wq_b = Linear(cfg.q_lora_rank, self.n_heads * self.dim)
        self.wk = Linear(cfg.hidden_size, self.dim)
        self.k_norm = nn.LayerNorm(self.dim, eps=1e-6)
        self.weights_proj = Linear(cfg.hidden_size, self.n_heads)  # kept in fp32

    def _rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        rot, rest = x.split([self.rope_dim, self.dim - self.rope_dim], dim=-1)
        return torch.cat((rope(rot, cos, sin, self.interleaved), rest), dim=-1)

    def key(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self._rope(self.k_norm(self.wk(x)), cos, sin)

    def top(self, x: Tensor, q_lat: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, causal: Tensor) -> Tensor | None:
        """Positions [B, S, index_topk] of each query's top keys, best first (ties: the lower position wins); None
        while T <= index_topk (every key is kept)."""
        B, S, _ = x.shape
        if self.topk >= keys.shape[1]:
            return None
        q = self._rope(self.wq_b(q_lat).view(B, S, self.n_heads, self.dim), cos[:, :, None], sin[:, :, None])
        scores = F.relu(torch.einsum("bshd,btd->bsht", q.float(), keys.float()) * self.dim ** -0.5)
        w = self.weights_proj(x.to(self.weights_proj.weight.dtype)).float() * self.n_heads ** -0.5
        index = torch.einsum("bsh,bsht->bst", w, scores).masked_fill(~causal, float("-inf"))
        return torch.sort(index, dim=-1, descending=True, stable=True).indices[..., :self.topk]

    def select(self, x: Tensor, q_lat: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, causal: Tensor) -> Tensor:
        """Boolean [B, S, T]: the top-k keys of each query (all of them while T <= index_topk)."""
        return topk_mask(self.top(x, q_lat, cos, sin, keys, causal), causal)


def topk_mask(top: Tensor | None, causal: Tensor) -> Tensor:
    """Boolean [B, S, T] of the positions `top` [B, S, k] names (every position when None)."""
    if top is None:
        return torch.ones_like(causal)
    return torch.zeros_like(causal).scatter_(-1, top, True)


class MLA(nn.Module):
    """Absorbed multi-head latent attention; the cache holds the latent ("lat"), the roped key ("pe") and, with
    an indexer of its own, the indexer key ("ik"), each [rows, max_seq, width]."""

    def __init__(self, cfg: DeepseekConfig, full_indexer: bool):
        super().__init__()
        self.cfg = cfg
        H, h = cfg.hidden_size, cfg.num_attention_heads
        bias = cfg.attention_bias
        if cfg.q_lora_rank:
            self.q_a_proj = Linear(H, cfg.q_lora_rank, bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, 1e-6)
            self.q_b_proj = Linear(cfg.q_lora_rank, h * cfg.qk_head_dim)
        else:
            self.q_proj = Linear(H, h * cfg.qk_head_dim)
        self.kv_a_proj_with_mqa = Linear(H, cfg.kv_lora_rank + cfg.qk_rope_head_dim, bias)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, 1e-6)
        self.kv_b_proj = Linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim))
        self.o_proj = Linear(h * cfg.v_head_dim, H, bias)
        self.indexer = Indexer(cfg) if cfg.has_indexer and full_indexer else None
        self.cache = None

    @property
    def cached(self) -> tuple[str, ...]:
        """The config's cache tensors this layer writes: the latent, the roped key and, with an indexer of its own
        here, its key."""
        return ("lat", "pe", "ik") if isinstance(self.indexer, Indexer) else ("lat", "pe")

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: Step, causal: list[Tensor],
                prev_topk: list[Tensor | None]) -> tuple[Tensor, list[Tensor | None]]:
        """x: the step's tokens, flat [N, hidden]; projections run on all of them, attention per row group. Returns
        the output and, per group, the DSA selection (for the IndexShare layers after it)."""
        c = self.cfg
        n = x.shape[0]
        nope, r, lora, h = c.qk_nope_head_dim, c.qk_rope_head_dim, c.kv_lora_rank, c.num_attention_heads
        q_lat = self.q_a_layernorm(self.q_a_proj(x)) if c.q_lora_rank else None
        q = (self.q_b_proj(q_lat) if c.q_lora_rank else self.q_proj(x)).view(n, h, c.qk_head_dim)
        q_nope, q_pe = q.split([nope, r], dim=-1)
        q_pe = rope(q_pe, cos[:, None], sin[:, None], c.rope_interleave)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([lora, r], dim=-1)
        cached = [self.kv_a_layernorm(latent), rope(k_pe, cos, sin, c.rope_interleave)]
        if isinstance(self.indexer, Indexer):
            cached.append(self.indexer.key(x, cos, sin))
        w = self.kv_b_proj.weight.view(lora, h, nope + c.v_head_dim)
        q_abs = torch.einsum("nhd,lhd->nhl", q_nope, w[..., :nope])  # W_UK folded into q
        outs, topks = [], []
        for group, causal_g, prev in zip(step.groups, causal, prev_topk):
            values = [group.take(t) for t in cached]
            if group.cache is not None:
                values = self.cache.update(group.pos, values, group.cache)
            latent_g, pe_g = values[:2]
            if self.indexer is None:
                topk = prev  # IndexShare: the previous indexer's selection
            else:  # its own indexer's selection (an indexer that keeps no keys here gets None and selects its way)
                keys = values[2] if len(values) > 2 else None
                topk = self.indexer.select(group.take(x), group.take(q_lat), group.take(cos), group.take(sin), keys,
                                           causal_g)
            mask = causal_g if topk is None else causal_g & topk
            scores = (torch.einsum("bshl,btl->bsht", group.take(q_abs), latent_g)
                      + torch.einsum("bshr,btr->bsht", group.take(q_pe), pe_g)) * c.softmax_scale
            scores = scores.float().masked_fill(~mask[:, :, None, :], float("-inf"))
            p = torch.softmax(scores, dim=-1).to(x.dtype)
            o = torch.einsum("bshl,lhv->bshv", torch.einsum("bsht,btl->bshl", p, latent_g), w[..., nope:])  # W_UV
            outs.append(o.reshape(-1, h * c.v_head_dim))
            topks.append(topk)
        return self.o_proj(step.join(outs)), topks


class Router(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.hidden_size, cfg.n_routed_experts))  # [in, out], kept in fp32
        self.e_score_correction_bias = nn.Parameter(torch.empty(cfg.n_routed_experts))  # kept in fp32

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, hidden] -> (weights [N, k] fp32, expert ids [N, k])."""
        c = self.cfg
        scores = (x.float() @ self.weight.float()).sigmoid()
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
        experts, hidden, inter = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = Router(cfg)
        self.experts_gate_up = nn.Parameter(torch.empty(experts, hidden, 2 * inter))  # gate and up, [in, out]
        self.experts_down = nn.Parameter(torch.empty(experts, inter, hidden))
        self.shared_experts = MLP(hidden, inter * cfg.n_shared_experts)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, ids = self.gate(flat)
        if is_static():  # gather each row's chosen experts: no host sync, fixed shapes
            gate, up = torch.einsum("nkhi,nh->nki", self.experts_gate_up[ids], flat).chunk(2, dim=-1)
            y = torch.einsum("nkih,nki->nkh", self.experts_down[ids], F.silu(gate) * up)
            return (y * weights[..., None].to(y.dtype)).sum(1).view_as(x) + self.shared_experts(x)
        out = torch.zeros_like(flat)
        for e in ids.unique().tolist():  # only the chosen experts' weights are read
            tok, slot = (ids == e).nonzero(as_tuple=True)
            gate, up = (flat[tok] @ self.experts_gate_up[e]).chunk(2, dim=-1)
            y = (F.silu(gate) * up) @ self.experts_down[e]
            out.index_add_(0, tok, (y * weights[tok, slot, None]).to(out.dtype))
        return out.view_as(x) + self.shared_experts(x)


class DeepseekBlock(nn.Module):
    def __init__(self, cfg: DeepseekConfig, sparse: bool, full_indexer: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg, full_indexer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if sparse else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, step: Step, causal: list[Tensor],
                prev_topk: list[Tensor | None]) -> tuple[Tensor, list[Tensor | None]]:
        h, topk = self.self_attn(self.input_layernorm(x), cos, sin, step, causal, prev_topk)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), topk


class MTPHead(nn.Module):
    def __init__(self, cfg: DeepseekConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.head = Linear(cfg.hidden_size, cfg.vocab_size) if cfg.mtp_copies_embeddings else None


class MTP(DeepseekBlock):
    """The multi-token-prediction layer: a decoder block fed eh_proj([enorm(embed(next)), hnorm(hidden)])."""

    def __init__(self, cfg: DeepseekConfig):
        super().__init__(cfg, sparse="sparse" in cfg.mlp_layer_types, full_indexer=True)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = Linear(2 * cfg.hidden_size, cfg.hidden_size)
        self.shared_head = MTPHead(cfg)
        self.embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size) if cfg.mtp_copies_embeddings else None


class DeepseekForCausalLM(CausalLM):
    FP32_PARAMS = re.compile(r".*(indexer\.weights_proj\.weight|mlp\.gate\.(weight|e_score_correction_bias))$")

    def __init__(self, cfg: DeepseekConfig, mtp: bool = False):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DeepseekBlock(cfg, kind == "sparse", indexer == "full")
                                    for kind, indexer in zip(cfg.mlp_layer_types, cfg.layer_indexers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Parameter(torch.empty(cfg.hidden_size, cfg.vocab_size))  # [in, out]; a copy when tied
        self.mtp = MTP(cfg) if mtp else None
        self.register_buffer("inv_freq", torch.zeros(cfg.qk_rope_head_dim // 2), persistent=False)
        self.rope_factor = 1.0
        self.init_buffers()

    def init_buffers(self) -> None:
        """Fills the non-persistent buffers (RoPE frequencies), e.g. after `to_empty`."""
        inv_freq, self.rope_factor = self.cfg.rope_inv_freq()
        if self.inv_freq.device.type != "meta":
            self.inv_freq.copy_(inv_freq)

    def cache_shapes(self, layer: int) -> dict[str, tuple[int, ...]]:
        """The config's shapes for `layer` (`num_hidden_layers`: the MTP layer) that its attention writes (a
        parallel role may hold part of them)."""
        attention = self.layers[layer].self_attn if layer < len(self.layers) else self.mtp.self_attn
        return {name: shape for name, shape in self.cfg.cache_shapes(layer).items() if name in attention.cached}

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None = None, use_cache: bool = True) -> Tensor:
        """tokens, pos: [B, S] -> final-norm hidden states [B, S, hidden] (as the Llama family's)."""
        step = Step(self, tokens, pos, slots, use_cache)
        x = self.embed_tokens(step.tokens)
        cos, sin = rope_tables(step.pos, self.inv_freq, x.dtype, self.rope_factor)
        causal = [group.causal() for group in step.groups]
        topk = [None] * len(step.groups)
        for layer in self.layers:
            x, topk = layer(x, cos, sin, step, causal, topk)
        return step.unpack(self.norm(x))

    def logits(self, hidden: Tensor) -> Tensor:
        return (hidden @ self.lm_head).float()

    def setup_caches(self, max_batch: int, max_seq: int) -> None:
        """The main layers' caches and, with an MTP layer, its own (latent, roped key, indexer key; kept out of
        `cache_tensors`, which are the main model's)."""
        super().setup_caches(max_batch, max_seq)
        m = self.mtp
        if m is not None and (m.self_attn.cache is None or m.self_attn.cache.lat.shape[:2] != (self.max_batch,
                                                                                               self.max_seq)):
            old = m.self_attn.cache
            shapes = self.cache_shapes(self.cfg.num_hidden_layers)
            m.self_attn.cache = LayerCache(self.max_batch, self.max_seq, shapes, self.embed_tokens.weight.dtype,
                                           self.device)
            m.self_attn.cache.take(old)

    def row_caches(self) -> list[Tensor]:
        """The main layers' caches and the MTP layer's (kept out of `cache_tensors`, which are the main model's)."""
        mtp = self.mtp.self_attn.cache.tensors() if self.mtp is not None and self.mtp.self_attn.cache is not None \
            else []
        return super().row_caches() + mtp

    def mtp_forward(self, hidden: Tensor, next_tokens: Tensor, pos: Tensor, slots: Tensor | None = None,
                    use_cache: bool = False) -> Tensor:
        """The MTP layer over [B, S] positions (padded with pos = -1 like `forward`): hidden [B, S, hidden] is the
        main model's final-norm hidden state at `pos` (or, chained, the MTP layer's own output), next_tokens the
        token after each position. Returns the layer's output [B, S, hidden] before `shared_head.norm`; with
        `use_cache` it reads and writes the MTP layer's own cache rows `slots`."""
        m = self.mtp
        if m is None:
            raise ValueError("this checkpoint has no MTP layer weights")
        step = Step(self, next_tokens, pos, slots, use_cache)
        flat_hidden = hidden.reshape(-1, hidden.shape[-1])
        if step.order is not None:
            flat_hidden = flat_hidden[step.order]
        emb = (m.embed_tokens or self.embed_tokens)(step.tokens).masked_fill((step.pos == 0)[..., None], 0.0)
        x = m.eh_proj(torch.cat((m.enorm(emb), m.hnorm(flat_hidden.to(emb.dtype))), dim=-1))
        cos, sin = rope_tables(step.pos, self.inv_freq, x.dtype, self.rope_factor)
        x, _ = m(x, cos, sin, step, [group.causal() for group in step.groups], [None] * len(step.groups))
        return step.unpack(x)

    def mtp_head(self, x: Tensor) -> Tensor:
        """Draft logits (float32) of MTP-layer outputs x [..., hidden]."""
        m = self.mtp
        h = m.shared_head.norm(x)
        return self.logits(h) if m.shared_head.head is None else m.shared_head.head(h).float()

    def mtp_logits(self, hidden: Tensor, next_tokens: Tensor, pos: Tensor) -> Tensor:
        """Draft logits [B, S, vocab] of the MTP layer over a whole sequence (no cache).

        hidden: the main model's final-norm hidden states at `pos`; next_tokens: the token after each position.
        """
        return self.mtp_head(self.mtp_forward(hidden, next_tokens, pos))

    def from_hf(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """HF-named tensors (checked against `hf_shapes`) -> this module's state dict."""
        mtp_prefix = f"layers.{self.cfg.num_hidden_layers}."
        out, experts = {}, {}
        for k, v in to_in_out(sd).items():
            if k.startswith(mtp_prefix):
                k = "mtp." + k[len(mtp_prefix):]
            m = re.fullmatch(r"(.*mlp)\.experts\.(\d+)\.(gate|up|down)_proj\.weight", k)
            if m:
                experts[m.group(1), m.group(3), int(m.group(2))] = v
            else:
                out[k] = v
        head = out.pop("lm_head.weight", None)
        out["lm_head"] = sd["embed_tokens.weight"].t() if self.cfg.tie_word_embeddings else head
        for prefix in sorted({p for p, _, _ in experts}):
            stacked = {name: torch.stack([experts[prefix, name, e] for e in range(self.cfg.n_routed_experts)])
                       for name in ("gate", "up", "down")}
            out[f"{prefix}.experts_gate_up"] = torch.cat([stacked["gate"], stacked["up"]], dim=-1)
            out[f"{prefix}.experts_down"] = stacked["down"]
        for name in [k for k in out if k.endswith(".gate_proj.weight")]:
            fuse(out, name.removesuffix("gate_proj.weight"), ("gate_proj", "up_proj"), "gate_up_proj")
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

    for i, (kind, indexer) in enumerate(zip(cfg.mlp_layer_types, cfg.layer_indexers)):
        layer(f"layers.{i}.", kind == "sparse", indexer == "full")
    if mtp:
        p = f"layers.{cfg.num_hidden_layers}."
        layer(p, "sparse" in cfg.mlp_layer_types, True)
        shapes.update({p + "enorm.weight": (H,), p + "hnorm.weight": (H,), p + "eh_proj.weight": (H, 2 * H),
                       p + "shared_head.norm.weight": (H,)})
        if cfg.mtp_copies_embeddings:
            shapes.update({p + "embed_tokens.weight": (V, H), p + "shared_head.head.weight": (V, H)})
    return shapes
