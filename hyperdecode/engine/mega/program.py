"""Compiles one batched decode step of a Llama-family model into a static instruction list over flat arenas.

Stages run in a chain (each waits for every instruction of the previous stage); inside a stage, instructions are
independent tiles that any worker may take. Weights are copied once into the `W` arena in the layouts the
reference uses (fused q/k/v and gate/up), in the model's dtype; projections are stored [out, in], so a GEMV
tile is a few output rows read contiguously along k.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...errors import ConfigError
from ...model.llama import Transformer
from .isa import ACCUMULATE, FP32_WEIGHTS, NORM_INPUT, SWIGLU_INPUT, Instr, Op

__all__ = ["Program", "Builder", "compile_llama", "check_program"]


@dataclass
class Program:
    instrs: list[Instr]
    W: Tensor  # flat weights, the model's dtype
    W32: Tensor  # flat fp32 weights (RoPE frequencies, router)
    a_size: int  # activation arena elements
    c_size: int  # cache arena elements
    buf: dict[str, int]  # activation buffer offsets by name (x, qkv, ..., logits, next)
    batch: int
    max_seq: int
    num_counters: int
    eps: float
    dims: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)  # named cache arena offsets ("{layer}.k", "{layer}.lat", ...)
    scales: dict[str, float] = field(default_factory=dict)  # MLA family: softmax, rope factor, routed scaling

    @property
    def family(self) -> str:
        return "mla" if "kv_lora" in self.dims else "llama"

    def cache_views(self, C: Tensor) -> dict[str, Tensor]:
        """Views of the cache arena by name: K/V [batch, kv_heads, max_seq, head_dim] per layer ("{i}.k", "{i}.v"),
        or latent / roped key / indexer key [batch, max_seq, width] ("{i}.lat", "{i}.pe", "{i}.ik")."""
        views, B, T, d = {}, self.batch, self.max_seq, self.dims
        for name, off in self.cache.items():
            kind = name.split(".")[1]
            shape = (B, d["n_kv"], T, d["head_dim"]) if kind in ("k", "v") else \
                (B, T, {"lat": d.get("kv_lora"), "pe": d.get("rope"), "ik": d.get("index_dim")}[kind])
            views[name] = C[off:off + math.prod(shape)].view(shape)
        return views


class Builder:
    """Collects the weights into arenas and the instructions into a chain of stages."""

    def __init__(self, dtype: torch.dtype, tile: int):
        self.dtype, self.tile = dtype, tile
        self.pieces: dict[bool, list[Tensor]] = {False: [], True: []}
        self.woff: dict[str, int] = {}
        self.instrs: list[Instr] = []
        self.counters, self.prev = 0, (-1, 0)
        self.buf: dict[str, int] = {}
        self.a_size = 0

    def put(self, name: str, t: Tensor, fp32: bool = False) -> int:
        """Appends a weight to W (or W32) and returns its offset."""
        self.woff[name] = sum(p.numel() for p in self.pieces[fp32])
        self.pieces[fp32].append(t.detach().reshape(-1).to(torch.float32 if fp32 else self.dtype))
        return self.woff[name]

    def arenas(self) -> tuple[Tensor, Tensor]:
        return tuple(torch.cat(self.pieces[f]) if self.pieces[f] else torch.zeros(1) for f in (False, True))

    def buffers(self, batch: int, widths: dict[str, int]) -> None:
        for name, width in widths.items():
            self.buf[name] = self.a_size
            self.a_size += batch * width

    def stage(self, items: list[tuple[Op, dict]]) -> None:
        """A stage: instructions that all wait for the whole previous stage and signal one new counter."""
        counter, waits = self.counters, [self.prev] if self.prev[0] >= 0 else []
        self.counters += 1
        self.instrs.extend(Instr(op, args, list(waits), counter) for op, args in items)
        self.prev = (counter, len(items))

    def gemv(self, x: str, k: int, w: str, out: str, n: int, accumulate: bool = False, fp32: bool = False,
             norm: str | None = None, swiglu: bool = False) -> list[tuple[Op, dict]]:
        """The tiles of one GEMV (a stage of its own, or part of one: see `stage`). `norm`: RMSNorm the input with
        that weight first; `swiglu`: the input is silu(x[:, :k]) * x[:, k:]."""
        flags = (ACCUMULATE if accumulate else 0) | (FP32_WEIGHTS if fp32 else 0) | (NORM_INPUT if norm else 0) | \
            (SWIGLU_INPUT if swiglu else 0)
        return [(Op.GEMV, dict(x=self.buf[x], k=k, w=self.woff[w], out=self.buf[out], n=n, c0=c0,
                               c1=min(c0 + self.tile, n), flags=flags, norm=self.woff[norm] if norm else -1))
                for c0 in range(0, n, self.tile)]

    def head(self, hidden: int, vocab: int) -> None:
        """Final norm fused into the LM head, then on-device greedy argmax."""
        self.stage(self.gemv("x", hidden, "lm_head", "logits", vocab, norm="norm"))
        self.stage([(Op.ARGMAX, dict(x=self.buf["logits"], out=self.buf["next"], n=vocab))])


def compile_llama(model: Transformer, batch: int, max_seq: int, tile: int = 64) -> Program:
    cfg = model.cfg
    if cfg.attention_bias or cfg.mlp_bias:
        raise ConfigError("the mega compiler does not handle attention/MLP biases yet")
    H, hd, nh, nkv = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    inter, V, L = cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    b = Builder(model.embed_tokens.weight.dtype, tile)
    b.put("embed", model.embed_tokens.weight)
    for i, layer in enumerate(model.layers):
        b.put(f"{i}.in_norm", layer.input_layernorm.weight)
        b.put(f"{i}.wqkv", layer.self_attn.wqkv.T)
        b.put(f"{i}.wo", layer.self_attn.wo.T)
        b.put(f"{i}.post_norm", layer.post_attention_layernorm.weight)
        b.put(f"{i}.w13", layer.mlp.w13.T)
        b.put(f"{i}.w2", layer.mlp.w2.T)
    b.put("norm", model.norm.weight)
    b.put("lm_head", model.lm_head.T)
    b.put("inv_freq", model.inv_freq, fp32=True)

    q_width = (nh + 2 * nkv) * hd
    b.buffers(batch, {"x": H, "qkv": q_width, "att": nh * hd, "mlp": 2 * inter, "logits": V, "next": 1})
    b.stage([(Op.EMBED, dict(w=b.woff["embed"], out=b.buf["x"], n=H))])
    for i in range(L):
        b.stage(b.gemv("x", H, f"{i}.wqkv", "qkv", q_width, norm=f"{i}.in_norm"))
        b.stage([(Op.ATTN, dict(qkv=b.buf["qkv"], out=b.buf["att"], row=r, kv_head=g, layer=i))
                 for r in range(batch) for g in range(nkv)])
        b.stage(b.gemv("att", nh * hd, f"{i}.wo", "x", H, accumulate=True))
        b.stage(b.gemv("x", H, f"{i}.w13", "mlp", 2 * inter, norm=f"{i}.post_norm"))
        b.stage(b.gemv("mlp", inter, f"{i}.w2", "x", H, accumulate=True, swiglu=True))
    b.head(H, V)
    layer_size = batch * nkv * max_seq * hd
    cache = {f"{i}.{kv}": (2 * i + j) * layer_size for i in range(L) for j, kv in enumerate("kv")}
    W, W32 = b.arenas()
    return Program(b.instrs, W, W32, b.a_size, 2 * L * layer_size, b.buf, batch, max_seq, b.counters,
                   cfg.rms_norm_eps, dict(hidden=H, head_dim=hd, n_head=nh, n_kv=nkv, inter=inter, vocab=V, layers=L,
                                          q_width=q_width, inv_freq=b.woff["inv_freq"], tile=tile), cache)


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
