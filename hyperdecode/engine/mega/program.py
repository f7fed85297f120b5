"""Compiles one batched decode step of a Llama-family model into a static instruction list over flat arenas.

Stages run in a chain (each waits for every instruction of the previous stage); inside a stage, instructions are
independent tiles that any worker may take. Weights are copied once into the `W` arena in the layouts the
reference already uses ([in, out] for projections, fused q/k/v and gate/up).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import ConfigError
from ...model.llama import Transformer
from .isa import Instr, Op

__all__ = ["Program", "compile_llama", "check_program"]


@dataclass
class Program:
    instrs: list[Instr]
    W: Tensor  # flat weights
    a_size: int  # activation arena elements
    c_size: int  # KV cache arena elements
    buf: dict[str, int]  # activation buffer offsets (x, h, qkv, att, mlp, act, logits, next)
    batch: int
    max_seq: int
    num_counters: int
    eps: float
    dims: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)  # MLA family: named cache arena offsets
    scales: dict[str, float] = field(default_factory=dict)  # MLA family: softmax, rope factor, routed scaling

    def kv_offset(self, layer: int, which: int) -> int:
        """Cache offset of layer `layer`'s K (which=0) or V (which=1): [batch, kv_heads, max_seq, head_dim]."""
        d = self.dims
        size = self.batch * d["n_kv"] * self.max_seq * d["head_dim"]
        return (2 * layer + which) * size


def compile_llama(model: Transformer, batch: int, max_seq: int, tile: int = 64) -> Program:
    cfg = model.cfg
    if cfg.attention_bias or cfg.mlp_bias:
        raise ConfigError("the mega compiler does not handle attention/MLP biases yet")
    H, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    inter, V, L = cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    pieces, woff = [], {}

    def put(name: str, t: Tensor) -> None:
        woff[name] = sum(p.numel() for p in pieces)
        pieces.append(t.detach().reshape(-1).float())

    put("embed", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        put(f"{i}.in_norm", layer.input_layernorm.weight)
        put(f"{i}.wqkv", layer.self_attn.wqkv)
        put(f"{i}.wo", layer.self_attn.wo)
        put(f"{i}.post_norm", layer.post_attention_layernorm.weight)
        put(f"{i}.w13", layer.mlp.w13)
        put(f"{i}.w2", layer.mlp.w2)
    put("norm", model.norm.weight)
    put("lm_head", model.lm_head)
    put("inv_freq", model.inv_freq)
    W = torch.cat(pieces)

    q_width = (nh + 2 * nkv) * hd
    sizes = {"x": H, "h": H, "qkv": q_width, "att": nh * hd, "mlp": 2 * inter, "act": inter, "logits": V, "next": 1}
    buf, a_size = {}, 0
    for name, width in sizes.items():
        buf[name] = a_size
        a_size += batch * width
    prog = Program([], W, a_size, 2 * L * batch * nkv * max_seq * hd, buf, batch, max_seq, 0, cfg.rms_norm_eps,
                   dict(hidden=H, head_dim=hd, n_head=nh, n_kv=nkv, inter=inter, vocab=V, layers=L, q_width=q_width,
                        inv_freq=woff["inv_freq"]))
    prev = {"counter": -1, "count": 0}

    def stage(items: list[tuple[Op, dict]]) -> None:
        c = prog.num_counters
        prog.num_counters += 1
        waits = [(prev["counter"], prev["count"])] if prev["counter"] >= 0 else []
        for op, args in items:
            prog.instrs.append(Instr(op, args, list(waits), c))
        prev["counter"], prev["count"] = c, len(items)

    def gemv(x: str, k: int, w: str, out: str, n: int, accumulate: bool) -> None:
        stage([(Op.GEMV, dict(x=buf[x], k=k, w=woff[w], out=buf[out], n=n, c0=c0, c1=min(c0 + tile, n),
                               accumulate=int(accumulate))) for c0 in range(0, n, tile)])

    def norm(w: str) -> None:
        stage([(Op.RMSNORM, dict(x=buf["x"], w=woff[w], out=buf["h"], n=H))])

    stage([(Op.EMBED, dict(w=woff["embed"], out=buf["x"], n=H))])
    for i in range(L):
        norm(f"{i}.in_norm")
        gemv("h", H, f"{i}.wqkv", "qkv", q_width, accumulate=False)
        stage([(Op.ROPE_APPEND, dict(qkv=buf["qkv"], row=b, layer=i)) for b in range(batch)])
        stage([(Op.ATTN, dict(qkv=buf["qkv"], out=buf["att"], row=b, kv_head=g, layer=i))
               for b in range(batch) for g in range(nkv)])
        gemv("att", nh * hd, f"{i}.wo", "x", H, accumulate=True)
        norm(f"{i}.post_norm")
        gemv("h", H, f"{i}.w13", "mlp", 2 * inter, accumulate=False)
        stage([(Op.SWIGLU, dict(x=buf["mlp"], out=buf["act"], n=inter))])
        gemv("act", inter, f"{i}.w2", "x", H, accumulate=True)
    norm("norm")
    gemv("h", H, "lm_head", "logits", V, accumulate=False)
    stage([(Op.ARGMAX, dict(x=buf["logits"], out=buf["next"], n=V))])
    return prog


def check_program(prog: Program, workers: int) -> list[list[int]]:
    """Verifies the dependency graph: every wait names a counter that only earlier instructions signal and whose
    target those can reach (so the graph is acyclic and satisfiable in list order); returns the workers' queues
    (round-robin in list order, so every queue respects the dependencies). Raises ValueError otherwise."""
    signalers: dict[int, int] = {}
    for i, ins in enumerate(prog.instrs):
        for c, target in ins.waits:
            have = signalers.get(c, 0)
            if target > have:
                raise ValueError(f"instruction {i} ({ins.op.name}) waits for counter {c} to reach {target}, but "
                                 f"only {have} earlier instructions signal it")
        signalers[ins.signal] = signalers.get(ins.signal, 0) + 1
    queues = [list(range(w, len(prog.instrs), workers)) for w in range(workers)]
    assert all(q == sorted(q) for q in queues)
    return queues
