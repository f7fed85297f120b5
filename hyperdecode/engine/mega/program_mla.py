"""Compiles one batched decode step of the GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 family (absorbed MLA over a latent
cache, DSA indexer, sigmoid-routed MoE) into the same kind of instruction list as the Llama compiler."""
from __future__ import annotations

from torch import nn

from ...errors import ConfigError
from .isa import Op
from .program import Builder, MlaDims, Program

__all__ = ["unsupported", "compile_program"]

SLICE_EPS = 1e-6  # q_a / kv_a RMSNorms and the indexer's key LayerNorm (as the reference model)


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def unsupported(model: nn.Module) -> str | None:
    """Why the megakernel cannot run `model`, or None."""
    cfg = model.cfg
    sizes = {"kv_lora_rank": cfg.kv_lora_rank, "qk_rope_head_dim": cfg.qk_rope_head_dim}
    if cfg.has_indexer:
        sizes["index_head_dim"] = cfg.index_head_dim
    odd = [f"{k}={v}" for k, v in sizes.items() if not _is_pow2(v)]
    if odd:
        return f"{', '.join(odd)} must be powers of two"
    return "kv_lora_rank must be at least 16" if cfg.kv_lora_rank < 16 else None


def _weights(b: Builder, model: nn.Module) -> None:
    """Every weight in the arena layout: projections [out, in] (the reference stores [in, out])."""
    c = model.cfg
    b.put("embed", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        a, m = layer.self_attn, layer.mlp
        b.put(f"{i}.in_norm", layer.input_layernorm.weight)
        b.put(f"{i}.post_norm", layer.post_attention_layernorm.weight)
        if c.q_lora_rank:
            b.put_matrix(f"{i}.q_a", a.q_a_proj.weight.T)
            b.put(f"{i}.q_a_norm", a.q_a_layernorm.weight)
            b.put_matrix(f"{i}.q_b", a.q_b_proj.weight.T)
        else:
            b.put_matrix(f"{i}.q_b", a.q_proj.weight.T)
        b.put_matrix(f"{i}.kv_a", a.kv_a_proj_with_mqa.weight.T)
        b.put(f"{i}.kv_a_norm", a.kv_a_layernorm.weight)
        # kv_b [kv_lora, h*(nope+v)]: each head's W_UK columns, then its W_UV columns; MLA_UK streams W_UK^T
        # [h, kv_lora, nope], MLA_UV W_UV [h, v, kv_lora] (in the model's dtype, like the LM head)
        per_head = a.kv_b_proj.weight.T.reshape(c.num_attention_heads, c.qk_nope_head_dim + c.v_head_dim, -1)
        b.put_matrix(f"{i}.w_uk", per_head[:, :c.qk_nope_head_dim].transpose(1, 2), quantize=False)
        b.put_matrix(f"{i}.w_uv", per_head[:, c.qk_nope_head_dim:], quantize=False)
        b.put_matrix(f"{i}.o", a.o_proj.weight.T)
        if a.indexer is not None:
            b.put_matrix(f"{i}.wq_b", a.indexer.wq_b.weight.T)
            b.put_matrix(f"{i}.wk", a.indexer.wk.weight.T)
            b.put(f"{i}.k_norm_w", a.indexer.k_norm.weight)
            b.put(f"{i}.k_norm_b", a.indexer.k_norm.bias)
            b.put_matrix(f"{i}.weights_proj", a.indexer.weights_proj.weight.T, fp32=True)
        if hasattr(m, "gate"):  # a MoE layer: router, routed experts, then its shared expert as the dense MLP
            b.put_matrix(f"{i}.router", m.gate.weight.T, fp32=True)
            b.put(f"{i}.router_bias", m.gate.e_score_correction_bias, fp32=True)
            b.put_matrix(f"{i}.w13_experts", m.experts_gate_up.transpose(1, 2))  # [E, 2I, H]
            b.put_matrix(f"{i}.w2_experts", m.experts_down.transpose(1, 2))  # [E, H, I]
            m = m.shared_experts
        b.put_mlp(str(i), m)
    b.put("norm", model.norm.weight)
    b.put_matrix("lm_head", model.lm_head.T, quantize=False)
    b.put("inv_freq", model.inv_freq, fp32=True)


def compile_program(model: nn.Module, batch: int, max_seq: int, tile: int = 64, fp8: bool = False,
                    kv_split: int | None = None, queries: int = 1) -> Program:
    """The decode step for `batch` rows of `max_seq` positions; `fp8`: projections and experts as block-FP8;
    `kv_split` is taken for the family interface (MLA attention runs one instruction per (row, head)); `queries`:
    tokens per row (verification: every token's latent, roped key and indexer key are appended a stage before any
    token's top-k and attention read them, so token j sees the tokens before it)."""
    why = unsupported(model)
    if why:
        raise ConfigError(f"the mega compiler cannot compile this model: {why}")
    c = model.cfg
    hidden, heads, kv_lora, rope = c.hidden_size, c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
    qk, v_head, vocab = c.qk_head_dim, c.v_head_dim, c.vocab_size
    index_dim, index_heads = c.index_head_dim, c.index_n_heads
    experts, top_k, moe_inter = c.n_routed_experts, c.num_experts_per_tok, c.moe_intermediate_size
    q_lora = c.q_lora_rank
    b = Builder(model.embed_tokens.weight.dtype, tile, batch, max_seq, fp8=fp8, queries=queries)
    batch = b.batch  # from here on, rows are the activation rows: one per query token
    _weights(b, model)
    inter_dense = max(c.intermediate_size, moe_inter * c.n_shared_experts)
    b.buffers({"x": hidden, "qa": q_lora or 1, "qlat": q_lora or 1, "q": heads * qk, "kva": kv_lora + rope,
               "lat": kv_lora, "iq": index_heads * index_dim, "ik": index_dim, "iw": index_heads, "sel": max_seq,
               "att": heads * v_head, "q_latent": heads * kv_lora,
               "o_latent": heads * kv_lora, "rlog": experts,
               "route": 2 * top_k, "eact": top_k * moe_inter,
               "mlp": 2 * inter_dense, "logits": vocab})
    buf, woff = b.buf, b.woff

    def rows(op: Op, **args: int) -> list[tuple[Op, dict]]:
        return [(op, dict(args, row=row)) for row in range(batch)]

    def norm_slice(x: str, stride: int, w: str, bias: str | None, out: str, n: int) -> list[tuple[Op, dict]]:
        return [(Op.NORM_SLICE, dict(x=buf[x], x_stride=stride, w=woff[w], bias=woff[bias] if bias else -1,
                                     out=buf[out], n=n))]

    # Independent instructions share a stage: a MoE layer is 12 stages (the indexer's projections ride along with
    # the attention's, the shared expert with the router and the routed experts).
    b.stage([(Op.EMBED, dict(w=woff["embed"], out=buf["x"], n=hidden, best=buf["best"]))])
    for i, layer in enumerate(model.layers):
        indexer = layer.self_attn.indexer is not None
        moe = hasattr(layer.mlp, "gate")
        pre = f"{i}.in_norm"
        c_lat = b.cache_tensor(f"{i}.lat", (kv_lora,))
        c_pe = b.cache_tensor(f"{i}.pe", (rope,))
        c_ik = b.cache_tensor(f"{i}.ik", (index_dim,)) if indexer else -1
        first = b.gemv("x", hidden, f"{i}.kv_a", "kva", kv_lora + rope, norm=pre)
        if q_lora:
            first += b.gemv("x", hidden, f"{i}.q_a", "qa", q_lora, norm=pre)
        else:
            first += b.gemv("x", hidden, f"{i}.q_b", "q", heads * qk, norm=pre)
        if indexer:
            first += b.gemv("x", hidden, f"{i}.wk", "ik", index_dim, norm=pre)
            first += b.gemv("x", hidden, f"{i}.weights_proj", "iw", index_heads, fp32=True, norm=pre)
        b.stage(first)
        slices = norm_slice("kva", kv_lora + rope, f"{i}.kv_a_norm", None, "lat", kv_lora)
        if q_lora:
            slices += norm_slice("qa", q_lora, f"{i}.q_a_norm", None, "qlat", q_lora)
        if indexer:
            slices += norm_slice("ik", index_dim, f"{i}.k_norm_w", f"{i}.k_norm_b", "ik", index_dim)
        b.stage(slices)
        if q_lora:
            queries = b.gemv("qlat", q_lora, f"{i}.q_b", "q", heads * qk)
            if indexer:
                queries += b.gemv("qlat", q_lora, f"{i}.wq_b", "iq", index_heads * index_dim)
            b.stage(queries)
        index_key = rows(Op.INDEX_KEY, ik=buf["ik"], c_ik=c_ik) if indexer else []
        # W_UK's absorbed product needs only q_nope: its tiles, over every worker, ride along with the RoPE stage
        absorb = [(Op.MLA_UK, dict(q=buf["q"], qlat=buf["q_latent"], head=h, c0=c0, c1=min(c0 + tile, kv_lora),
                                   w=woff[f"{i}.w_uk"])) for h in range(heads) for c0 in range(0, kv_lora, tile)]
        b.stage(rows(Op.ROPE_MLA, q=buf["q"], kva=buf["kva"], lat=buf["lat"], c_lat=c_lat, c_pe=c_pe) + index_key
                + absorb)
        if indexer:
            b.stage(rows(Op.INDEX_TOPK, iq=buf["iq"], iw=buf["iw"], sel=buf["sel"], c_ik=c_ik))
        # IndexShare layers (no indexer of their own) reuse the selection the previous indexer left in A[sel]
        sel = buf["sel"] if c.has_indexer else -1
        # one attention instruction per (token, head): a verify row's tokens attend on separate SMs (see NOTES)
        b.stage([(Op.MLA_ATTN, dict(q=buf["q"], qlat=buf["q_latent"], olat=buf["o_latent"], sel=sel, row=row,
                                    head=head, c_lat=c_lat, c_pe=c_pe))
                 for row in range(batch) for head in range(heads)])
        b.stage([(Op.MLA_UV, dict(olat=buf["o_latent"], att=buf["att"], head=h, c0=c0,
                                  c1=min(c0 + tile, v_head), w=woff[f"{i}.w_uv"]))
                 for h in range(heads) for c0 in range(0, v_head, tile)])
        b.stage(b.gemv("att", heads * v_head, f"{i}.o", "x", hidden, accumulate=True))
        post = f"{i}.post_norm"
        inter = moe_inter * c.n_shared_experts if moe else c.intermediate_size
        if not moe:
            b.stage(b.mlp_up(str(i), hidden, inter, norm=post))
            b.stage(b.mlp_down(str(i), hidden, inter))
            continue
        b.stage(b.gemv("x", hidden, f"{i}.router", "rlog", experts, fp32=True, norm=post)
                + b.mlp_up(str(i), hidden, inter, norm=post))
        b.stage(rows(Op.ROUTE, rlog=buf["rlog"], route=buf["route"], bias=woff[f"{i}.router_bias"]))
        routed = [(row, j) for row in range(batch) for j in range(top_k)]  # every chosen expert, in tiles
        b.stage([(Op.EXPERT_UP, dict(x=buf["x"], route=buf["route"], act=buf["eact"], row=row, slot=j,
                                     w13=woff[f"{i}.w13_experts"], c0=c0, c1=min(c0 + tile, moe_inter),
                                     norm=woff[post], scale=b.scale.get(f"{i}.w13_experts", -1)))
                 for row, j in routed for c0 in range(0, moe_inter, tile)])
        b.stage([(Op.EXPERT_DOWN, dict(route=buf["route"], act=buf["eact"], x=buf["x"], row=row, slot=j,
                                       w2=woff[f"{i}.w2_experts"], c0=c0, c1=min(c0 + tile, hidden),
                                       scale=b.scale.get(f"{i}.w2_experts", -1)))
                 for row, j in routed for c0 in range(0, hidden, tile)] + b.mlp_down(str(i), hidden, inter))
    b.head(hidden, vocab)
    dims = MlaDims(hidden=hidden, n_head=heads, kv_lora=kv_lora, rope=rope, nope=c.qk_nope_head_dim, v_head=v_head,
                   vocab=vocab, index_dim=index_dim, index_heads=index_heads, index_topk=c.index_topk,
                   experts=experts, top_k=top_k, moe_inter=moe_inter, n_group=c.n_group, topk_group=c.topk_group,
                   layers=c.num_hidden_layers, inv_freq=woff["inv_freq"], rope_interleave=c.rope_interleave,
                   index_interleave=c.indexer_rope_interleave, norm_topk=c.norm_topk_prob, tile=tile)
    scales = dict(softmax=c.softmax_scale, rope_factor=model.rope_factor, routed=c.routed_scaling_factor,
                  slice_eps=SLICE_EPS)
    return b.program(c.rms_norm_eps, dims, scales)
