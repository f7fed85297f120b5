"""Compiles one batched decode step of the GLM-5 / DeepSeek-V3.2 / DeepSeek-V3 family (absorbed MLA over a latent
cache, DSA indexer, sigmoid-routed MoE) into the same kind of instruction list as the Llama compiler."""
from __future__ import annotations

import torch
from torch import Tensor

from ...model.deepseek import DeepseekTransformer
from .isa import Instr, Op
from .program import Program

__all__ = ["compile_deepseek"]


def compile_deepseek(model: DeepseekTransformer, batch: int, max_seq: int, tile: int = 64) -> Program:
    c = model.cfg
    H, h, L, r = c.hidden_size, c.num_attention_heads, c.kv_lora_rank, c.qk_rope_head_dim
    qk, v, V, D, Hi = c.qk_head_dim, c.v_head_dim, c.vocab_size, c.index_head_dim, c.index_n_heads
    E, k_top, I_moe = c.n_routed_experts, c.num_experts_per_tok, c.moe_intermediate_size
    pieces, woff = [], {}

    def put(name: str, t: Tensor) -> int:
        woff[name] = sum(p.numel() for p in pieces)
        pieces.append(t.detach().reshape(-1).float())
        return woff[name]

    put("embed", model.embed_tokens.weight)
    put("eps6", torch.tensor([1e-6]))
    for i, layer in enumerate(model.layers):
        a = layer.self_attn
        put(f"{i}.in_norm", layer.input_layernorm.weight)
        put(f"{i}.post_norm", layer.post_attention_layernorm.weight)
        if c.q_lora_rank:
            put(f"{i}.q_a", a.q_a_proj.weight.T)
            put(f"{i}.q_a_norm", a.q_a_layernorm.weight)
            put(f"{i}.q_b", a.q_b_proj.weight.T)
        else:
            put(f"{i}.q_b", a.q_proj.weight.T)
        put(f"{i}.kv_a", a.kv_a_proj_with_mqa.weight.T)
        put(f"{i}.kv_a_norm", a.kv_a_layernorm.weight)
        put(f"{i}.kv_b", a.kv_b_proj.weight)  # [h*(nope+v), L]: W_UK and W_UV rows
        put(f"{i}.o", a.o_proj.weight.T)
        if a.indexer is not None:
            put(f"{i}.wq_b", a.indexer.wq_b.weight.T)
            put(f"{i}.wk", a.indexer.wk.weight.T)
            put(f"{i}.k_norm_w", a.indexer.k_norm.weight)
            put(f"{i}.k_norm_b", a.indexer.k_norm.bias)
            put(f"{i}.weights_proj", a.indexer.weights_proj.weight.T)
        m = layer.mlp
        if hasattr(m, "gate"):
            put(f"{i}.router", m.gate.weight.T)
            put(f"{i}.router_bias", m.gate.e_score_correction_bias)
            put(f"{i}.w1", m.w1)  # [E, I, H]
            put(f"{i}.w3", m.w3)
            put(f"{i}.w2", m.w2)  # [E, H, I]
            sh = m.shared_experts
        else:
            sh = m
        put(f"{i}.w13", torch.cat([sh.gate_proj.weight, sh.up_proj.weight]).T)
        put(f"{i}.w2_dense", sh.down_proj.weight.T)
    put("norm", model.norm.weight)
    put("lm_head", (model.embed_tokens if model.lm_head is None else model.lm_head).weight.T)
    put("inv_freq", model.inv_freq * 1.0)
    W = torch.cat(pieces)

    inter_dense = max(c.intermediate_size, I_moe * c.n_shared_experts)
    sizes = {"x": H, "h": H, "qa": c.q_lora_rank or 1, "qlat": c.q_lora_rank or 1, "q": h * qk, "kva": L + r,
             "lat": L, "iq": Hi * D, "ik": D, "iw": Hi, "sel": max_seq, "att": h * v, "rlog": E,
             "route": 2 * k_top, "mlp": 2 * inter_dense, "act": inter_dense, "logits": V, "next": 1}
    buf, a_size = {}, 0
    for name, width in sizes.items():
        buf[name] = a_size
        a_size += batch * width
    cache, c_size = {}, 0
    for i in range(c.num_hidden_layers):
        for name, width in (("lat", L), ("pe", r), ("ik", D)):
            cache[f"{i}.{name}"] = c_size
            c_size += batch * max_seq * width
    prog = Program([], W, a_size, c_size, buf, batch, max_seq, 0, c.rms_norm_eps,
                   dict(hidden=H, n_head=h, kv_lora=L, rope=r, nope=c.qk_nope_head_dim, v_head=v, vocab=V,
                        index_dim=D, index_heads=Hi, index_topk=c.index_topk, experts=E, top_k=k_top,
                        moe_inter=I_moe, n_group=c.n_group, topk_group=c.topk_group, layers=c.num_hidden_layers,
                        inv_freq=woff["inv_freq"], rope_interleave=int(c.rope_interleave),
                        index_interleave=int(c.indexer_rope_interleave), norm_topk=int(c.norm_topk_prob)))
    prog.cache.update(cache)
    prog.scales.update(softmax=c.softmax_scale, rope_factor=model.rope_factor, routed=c.routed_scaling_factor)
    prev = {"counter": -1, "count": 0}

    def stage(items: list[tuple[Op, dict]]) -> None:
        cnt = prog.num_counters
        prog.num_counters += 1
        waits = [(prev["counter"], prev["count"])] if prev["counter"] >= 0 else []
        prog.instrs.extend(Instr(op, args, list(waits), cnt) for op, args in items)
        prev["counter"], prev["count"] = cnt, len(items)

    def gemv(x: str, k: int, w: str, out: str, n: int, accumulate: bool = False) -> None:
        stage([(Op.GEMV, dict(x=buf[x], k=k, w=woff[w], out=buf[out], n=n, c0=c0, c1=min(c0 + tile, n),
                               accumulate=int(accumulate))) for c0 in range(0, n, tile)])

    def rows(op: Op, **args: int) -> None:
        stage([(op, dict(args, row=b)) for b in range(batch)])

    stage([(Op.EMBED, dict(w=woff["embed"], out=buf["x"], n=H))])
    for i, layer in enumerate(model.layers):
        stage([(Op.RMSNORM, dict(x=buf["x"], w=woff[f"{i}.in_norm"], out=buf["h"], n=H))])
        if c.q_lora_rank:
            gemv("h", H, f"{i}.q_a", "qa", c.q_lora_rank)
            stage([(Op.NORM_SLICE, dict(x=buf["qa"], x_stride=c.q_lora_rank, w=woff[f"{i}.q_a_norm"], bias=-1,
                                        out=buf["qlat"], n=c.q_lora_rank, eps=woff["eps6"]))])
            gemv("qlat", c.q_lora_rank, f"{i}.q_b", "q", h * qk)
        else:
            gemv("h", H, f"{i}.q_b", "q", h * qk)
        gemv("h", H, f"{i}.kv_a", "kva", L + r)
        stage([(Op.NORM_SLICE, dict(x=buf["kva"], x_stride=L + r, w=woff[f"{i}.kv_a_norm"], bias=-1,
                                    out=buf["lat"], n=L, eps=woff["eps6"]))])
        rows(Op.ROPE_MLA, layer=i)
        if layer.self_attn.indexer is not None:
            gemv("qlat", c.q_lora_rank, f"{i}.wq_b", "iq", Hi * D)
            gemv("h", H, f"{i}.wk", "ik", D)
            gemv("h", H, f"{i}.weights_proj", "iw", Hi)
            stage([(Op.NORM_SLICE, dict(x=buf["ik"], x_stride=D, w=woff[f"{i}.k_norm_w"], bias=woff[f"{i}.k_norm_b"],
                                        out=buf["ik"], n=D, eps=woff["eps6"]))])
            rows(Op.INDEX_KEY, layer=i)
            rows(Op.INDEX_TOPK, layer=i)
        stage([(Op.MLA_ATTN, dict(row=b, head=hh, layer=i, w=woff[f"{i}.kv_b"], masked=int(c.has_indexer)))
               for b in range(batch) for hh in range(h)])
        gemv("att", h * v, f"{i}.o", "x", H, accumulate=True)
        stage([(Op.RMSNORM, dict(x=buf["x"], w=woff[f"{i}.post_norm"], out=buf["h"], n=H))])
        inter = I_moe * c.n_shared_experts if hasattr(layer.mlp, "gate") else c.intermediate_size
        if hasattr(layer.mlp, "gate"):
            gemv("h", H, f"{i}.router", "rlog", E)
            rows(Op.ROUTE, bias=woff[f"{i}.router_bias"])
            stage([(Op.EXPERT, dict(row=b, slot=j, w1=woff[f"{i}.w1"], w3=woff[f"{i}.w3"], w2=woff[f"{i}.w2"]))
                   for b in range(batch) for j in range(k_top)])
        gemv("h", H, f"{i}.w13", "mlp", 2 * inter)
        stage([(Op.SWIGLU, dict(x=buf["mlp"], out=buf["act"], n=inter))])
        gemv("act", inter, f"{i}.w2_dense", "x", H, accumulate=True)
    stage([(Op.RMSNORM, dict(x=buf["x"], w=woff["norm"], out=buf["h"], n=H))])
    gemv("h", H, "lm_head", "logits", V)
    stage([(Op.ARGMAX, dict(x=buf["logits"], out=buf["next"], n=V))])
    return prog
