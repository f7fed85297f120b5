"""Compiles one batched decode step of the GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 family (absorbed MLA over a latent
cache, DSA indexer, sigmoid-routed MoE) into the same kind of instruction list as the Llama compiler."""
from __future__ import annotations

import torch

from ...model.deepseek import DeepseekTransformer
from .isa import Op
from .program import Builder, Program

__all__ = ["compile_deepseek"]

SLICE_EPS = 1e-6  # q_a / kv_a RMSNorms and the indexer's key LayerNorm (as the reference model)


def _weights(b: Builder, model: DeepseekTransformer) -> None:
    c = model.cfg
    b.put("embed", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        a, m = layer.self_attn, layer.mlp
        b.put(f"{i}.in_norm", layer.input_layernorm.weight)
        b.put(f"{i}.post_norm", layer.post_attention_layernorm.weight)
        if c.q_lora_rank:
            b.put(f"{i}.q_a", a.q_a_proj.weight)
            b.put(f"{i}.q_a_norm", a.q_a_layernorm.weight)
            b.put(f"{i}.q_b", a.q_b_proj.weight)
        else:
            b.put(f"{i}.q_b", a.q_proj.weight)
        b.put(f"{i}.kv_a", a.kv_a_proj_with_mqa.weight)
        b.put(f"{i}.kv_a_norm", a.kv_a_layernorm.weight)
        b.put(f"{i}.kv_b", a.kv_b_proj.weight)  # [h*(nope+v), L]: each head's W_UK rows, then its W_UV rows
        b.put(f"{i}.o", a.o_proj.weight)
        if a.indexer is not None:
            b.put(f"{i}.wq_b", a.indexer.wq_b.weight)
            b.put(f"{i}.wk", a.indexer.wk.weight)
            b.put(f"{i}.k_norm_w", a.indexer.k_norm.weight)
            b.put(f"{i}.k_norm_b", a.indexer.k_norm.bias)
            b.put(f"{i}.weights_proj", a.indexer.weights_proj.weight, fp32=True)
        if hasattr(m, "gate"):
            b.put(f"{i}.router", m.gate.weight, fp32=True)
            b.put(f"{i}.router_bias", m.gate.e_score_correction_bias, fp32=True)
            b.put(f"{i}.w13_experts", torch.cat([m.w1, m.w3], dim=1))  # [E, 2I, H]
            b.put(f"{i}.w2_experts", m.w2)  # [E, H, I]
            m = m.shared_experts
        b.put(f"{i}.w13", torch.cat([m.gate_proj.weight, m.up_proj.weight]))
        b.put(f"{i}.w2", m.down_proj.weight)
    b.put("norm", model.norm.weight)
    b.put("lm_head", (model.embed_tokens if model.lm_head is None else model.lm_head).weight)
    b.put("inv_freq", model.inv_freq, fp32=True)


def compile_deepseek(model: DeepseekTransformer, batch: int, max_seq: int, tile: int = 64) -> Program:
    c = model.cfg
    H, h, L, r = c.hidden_size, c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
    qk, v, V, D, Hi = c.qk_head_dim, c.v_head_dim, c.vocab_size, c.index_head_dim, c.index_n_heads
    E, k_top, I_moe, ql = c.n_routed_experts, c.num_experts_per_tok, c.moe_intermediate_size, c.q_lora_rank
    b = Builder(model.embed_tokens.weight.dtype, tile)
    _weights(b, model)
    inter_dense = max(c.intermediate_size, I_moe * c.n_shared_experts)
    b.buffers(batch, {"x": H, "qa": ql or 1, "qlat": ql or 1, "q": h * qk, "kva": L + r, "lat": L, "iq": Hi * D,
                      "ik": D, "iw": Hi, "sel": max_seq, "att": h * v, "rlog": E, "route": 2 * k_top,
                      "eact": k_top * I_moe, "mlp": 2 * inter_dense, "logits": V, "next": 1})
    cache, c_size = {}, 0
    for i, layer in enumerate(model.layers):
        for name, width in (("lat", L), ("pe", r)) + ((("ik", D),) if layer.self_attn.indexer else ()):
            cache[f"{i}.{name}"] = c_size
            c_size += batch * max_seq * width
    buf, woff = b.buf, b.woff

    def rows(op: Op, **args: int) -> list[tuple[Op, dict]]:
        return [(op, dict(args, row=row)) for row in range(batch)]

    def norm_slice(x: str, stride: int, w: str, bias: str | None, out: str, n: int) -> list[tuple[Op, dict]]:
        return [(Op.NORM_SLICE, dict(x=buf[x], x_stride=stride, w=woff[w], bias=woff[bias] if bias else -1,
                                     out=buf[out], n=n))]

    # Independent instructions share a stage: a MoE layer is 11 stages (the indexer's projections ride along with
    # the attention's, the shared expert with the router and the routed experts).
    b.stage([(Op.EMBED, dict(w=woff["embed"], out=buf["x"], n=H))])
    for i, layer in enumerate(model.layers):
        indexer, moe, pre = layer.self_attn.indexer is not None, hasattr(layer.mlp, "gate"), f"{i}.in_norm"
        first = b.gemv("x", H, f"{i}.kv_a", "kva", L + r, norm=pre)
        first += b.gemv("x", H, f"{i}.q_a", "qa", ql, norm=pre) if ql else b.gemv("x", H, f"{i}.q_b", "q", h * qk,
                                                                                    norm=pre)
        if indexer:
            first += b.gemv("x", H, f"{i}.wk", "ik", D, norm=pre)
            first += b.gemv("x", H, f"{i}.weights_proj", "iw", Hi, fp32=True, norm=pre)
        b.stage(first)
        b.stage(norm_slice("kva", L + r, f"{i}.kv_a_norm", None, "lat", L)
                + (norm_slice("qa", ql, f"{i}.q_a_norm", None, "qlat", ql) if ql else [])
                + (norm_slice("ik", D, f"{i}.k_norm_w", f"{i}.k_norm_b", "ik", D) if indexer else []))
        if ql:
            b.stage(b.gemv("qlat", ql, f"{i}.q_b", "q", h * qk)
                    + (b.gemv("qlat", ql, f"{i}.wq_b", "iq", Hi * D) if indexer else []))
        index_key = rows(Op.INDEX_KEY, ik=buf["ik"], c_ik=cache[f"{i}.ik"]) if indexer else []
        b.stage(rows(Op.ROPE_MLA, q=buf["q"], kva=buf["kva"], lat=buf["lat"], c_lat=cache[f"{i}.lat"],
                     c_pe=cache[f"{i}.pe"]) + index_key)
        if indexer:
            b.stage(rows(Op.INDEX_TOPK, iq=buf["iq"], iw=buf["iw"], sel=buf["sel"], c_ik=cache[f"{i}.ik"]))
        # IndexShare layers (no indexer of their own) reuse the selection the previous indexer left in A[sel]
        b.stage([(Op.MLA_ATTN, dict(q=buf["q"], att=buf["att"], sel=buf["sel"] if c.has_indexer else -1, row=row,
                                    head=hh, c_lat=cache[f"{i}.lat"], c_pe=cache[f"{i}.pe"], w=woff[f"{i}.kv_b"]))
                 for row in range(batch) for hh in range(h)])
        b.stage(b.gemv("att", h * v, f"{i}.o", "x", H, accumulate=True))
        post = f"{i}.post_norm"
        inter = I_moe * c.n_shared_experts if moe else c.intermediate_size
        shared_up = b.gemv("x", H, f"{i}.w13", "mlp", 2 * inter, norm=post)
        shared_down = b.gemv("mlp", inter, f"{i}.w2", "x", H, accumulate=True, swiglu=True)
        if not moe:
            b.stage(shared_up)
            b.stage(shared_down)
            continue
        b.stage(b.gemv("x", H, f"{i}.router", "rlog", E, fp32=True, norm=post) + shared_up)
        b.stage(rows(Op.ROUTE, rlog=buf["rlog"], route=buf["route"], bias=woff[f"{i}.router_bias"]))
        routed = [(row, j) for row in range(batch) for j in range(k_top)]  # every chosen expert, in tiles
        b.stage([(Op.EXPERT_UP, dict(x=buf["x"], route=buf["route"], act=buf["eact"], row=row, slot=j,
                                     w13=woff[f"{i}.w13_experts"], c0=c0, c1=min(c0 + tile, I_moe), norm=woff[post]))
                 for row, j in routed for c0 in range(0, I_moe, tile)])
        b.stage([(Op.EXPERT_DOWN, dict(route=buf["route"], act=buf["eact"], x=buf["x"], row=row, slot=j,
                                       w2=woff[f"{i}.w2_experts"], c0=c0, c1=min(c0 + tile, H)))
                 for row, j in routed for c0 in range(0, H, tile)] + shared_down)
    b.head(H, V)
    W, W32 = b.arenas()
    prog = Program(b.instrs, W, W32, b.a_size, c_size, buf, batch, max_seq, b.counters, c.rms_norm_eps,
                   dict(hidden=H, n_head=h, kv_lora=L, rope=r, nope=c.qk_nope_head_dim, v_head=v, vocab=V,
                        index_dim=D, index_heads=Hi, index_topk=c.index_topk, experts=E, top_k=k_top,
                        moe_inter=I_moe, n_group=c.n_group, topk_group=c.topk_group, layers=c.num_hidden_layers,
                        inv_freq=woff["inv_freq"], rope_interleave=int(c.rope_interleave),
                        index_interleave=int(c.indexer_rope_interleave), norm_topk=int(c.norm_topk_prob), tile=tile),
                   cache)
    prog.scales.update(softmax=c.softmax_scale, rope_factor=model.rope_factor, routed=c.routed_scaling_factor,
                       slice_eps=SLICE_EPS)
    return prog
