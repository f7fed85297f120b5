"""Compiles one batched decode step of a Llama-family model (Llama, Qwen3) into the megakernel's instructions: per
layer 5 stages — q/k/v (input RMSNorm fused), attention (per-head q/k norms when the family has them, RoPE, cache
append), o (added to the residual stream), gate/up (post-attention RMSNorm fused), down (SwiGLU fused). The q/k/v
tiles are emitted kv head by kv head and signal one counter per kv head, so an attention instruction waits only
for its own heads' columns (when no tile spans two heads). With KV
splits (flash-decoding: each (row, kv head) split over `kv_split` positions, so long contexts use many SMs) the
attention stage writes partials and one more stage merges them."""
from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from .isa import Op
from .program import Builder, LlamaDims, Program

__all__ = ["unsupported", "compile_program"]


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def unsupported(model: nn.Module) -> str | None:
    """Why the megakernel cannot run `model`, or None."""
    cfg = model.cfg
    if cfg.attention_bias or cfg.mlp_bias:
        return "attention/MLP biases are not compiled"
    if not _is_pow2(cfg.head_dim):
        return f"head_dim {cfg.head_dim} is not a power of two"
    return None


def _by_kv_head(tiles: list[tuple[Op, dict]], n_head: int, n_kv: int, head_dim: int) -> list[list] | None:
    """The q/k/v projection's tiles grouped by the kv head whose columns they write (q heads of the group, its k,
    its v), or None when some tile spans two heads."""
    group = n_head // n_kv
    groups: list[list[tuple[Op, dict]]] = [[] for _ in range(n_kv)]
    for tile in tiles:
        c0, c1 = tile[1]["c0"], tile[1]["c1"]
        head = c0 // head_dim
        if (c1 - 1) // head_dim != head:
            return None
        if head < n_head:
            groups[head // group].append(tile)
        else:
            groups[(head - n_head) % n_kv].append(tile)  # k heads, then v heads
    return groups


def compile_program(model: nn.Module, batch: int, max_seq: int, tile: int = 64, fp8: bool = False,
                    kv_split: int | None = None, queries: int = 1) -> Program:
    """The decode step for `batch` rows of `max_seq` positions; `fp8`: projections as block-FP8 (the LM head stays
    in the model's dtype); `kv_split`: positions per attention instruction (None: the whole context); `queries`:
    tokens per row (verification: each attention instruction appends and attends its row's tokens in order, so
    token j sees the tokens before it)."""
    why = unsupported(model)
    if why:
        raise ConfigError(f"the mega compiler cannot compile this model: {why}")
    cfg = model.cfg
    hidden, head_dim = cfg.hidden_size, cfg.head_dim
    n_head, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    inter, vocab, layers = cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    kv_split = min(kv_split or max_seq, max_seq)
    splits = -(-max_seq // kv_split)
    b = Builder(model.embed_tokens.weight.dtype, tile, batch, max_seq, fp8=fp8, queries=queries)
    b.put("embed", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        attn = layer.self_attn
        b.put(f"{i}.in_norm", layer.input_layernorm.weight)
        b.put_matrix(f"{i}.wqkv", attn.qkv_proj.weight.T)
        b.put_matrix(f"{i}.wo", attn.o_proj.weight.T)
        for name in ("q_norm", "k_norm"):  # Qwen3's per-head norms
            if hasattr(attn, name):
                b.put(f"{i}.{name}", getattr(attn, name).weight)
        b.put(f"{i}.post_norm", layer.post_attention_layernorm.weight)
        b.put_mlp(str(i), layer.mlp)
    b.put("norm", model.norm.weight)
    b.put_matrix("lm_head", model.lm_head.T, quantize=False)
    b.put("inv_freq", model.inv_freq, fp32=True)

    q_width = (n_head + 2 * n_kv) * head_dim
    b.buffers({"x": hidden, "qkv": q_width, "att": n_head * head_dim, "mlp": 2 * inter, "logits": vocab,
               "part": splits * n_head * (head_dim + 2) if splits > 1 else 1})
    part = b.buf["part"] if splits > 1 else -1
    b.stage([(Op.EMBED, dict(w=b.woff["embed"], out=b.buf["x"], n=hidden, best=b.buf["best"]))])
    for i in range(layers):
        c_k = b.cache_tensor(f"{i}.k", (n_kv, head_dim))
        c_v = b.cache_tensor(f"{i}.v", (n_kv, head_dim))
        q_norm = b.woff.get(f"{i}.q_norm", -1)
        k_norm = b.woff.get(f"{i}.k_norm", -1)
        tiles = b.gemv("x", hidden, f"{i}.wqkv", "qkv", q_width, norm=f"{i}.in_norm")
        groups = _by_kv_head(tiles, n_head, n_kv, head_dim)
        if groups is None:  # a tile spans two heads' columns: the attention waits for the whole stage
            b.stage(tiles)
            waits = [b.prev] * n_kv
        else:  # each (row, kv head) waits only for the tiles of its own q, k and v columns
            waits = b.stage_in_groups(groups)
        b.stage_waiting([(Op.ATTN, dict(qkv=b.buf["qkv"], out=b.buf["att"], row=row, kv_head=g, c_k=c_k, c_v=c_v,
                                        q_norm=q_norm, k_norm=k_norm, split=s, part=part), waits[g])
                         for row in range(batch) for g in range(n_kv) for s in range(splits)])
        if splits > 1:
            b.stage([(Op.ATTN_MERGE, dict(part=part, out=b.buf["att"], row=row)) for row in range(b.batch)])
        b.stage(b.gemv("att", n_head * head_dim, f"{i}.wo", "x", hidden, accumulate=True))
        b.stage(b.mlp_up(str(i), hidden, inter, norm=f"{i}.post_norm"))
        b.stage(b.mlp_down(str(i), hidden, inter))
    b.head(hidden, vocab)
    dims = LlamaDims(hidden=hidden, head_dim=head_dim, n_head=n_head, n_kv=n_kv, inter=inter, vocab=vocab,
                     layers=layers, inv_freq=b.woff["inv_freq"], tile=tile, kv_split=kv_split, splits=splits)
    return b.program(cfg.rms_norm_eps, dims)
