"""A compiled decode step: the instruction list over flat arenas, its typed dimensions, and the builder both
family compilers use (program_llama.py, program_mla.py).

Stages run in a chain (each waits for every instruction of the previous stage); inside a stage, instructions are
independent tiles that any worker may take. Weights are copied once into the `W` arena in the model's dtype;
projections are stored there [out, in] (transposed from the reference's [in, out]), so a GEMV tile is a few output
rows read contiguously along k. Cache tensors have the reference's layout and names ("{layer}.k", "{layer}.lat",
...; [batch, max_seq, ...]), so a row's positions copy between the two caches as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .isa import ACCUMULATE, FP32_WEIGHTS, NORM_INPUT, SWIGLU_INPUT, Instr, Op

__all__ = ["Program", "LlamaDims", "MlaDims", "Builder", "check_program"]


@dataclass(frozen=True)
class LlamaDims:
    """Sizes of a Llama-family program (Llama, Qwen3)."""
    family = "llama"
    hidden: int
    head_dim: int
    n_head: int
    n_kv: int
    inter: int
    vocab: int
    layers: int
    inv_freq: int  # W32 offset of the RoPE inverse frequencies
    tile: int


@dataclass(frozen=True)
class MlaDims:
    """Sizes of a GLM-5 / DeepSeek-family program."""
    family = "mla"
    hidden: int
    n_head: int
    kv_lora: int
    rope: int
    nope: int
    v_head: int
    vocab: int
    index_dim: int
    index_heads: int
    index_topk: int
    experts: int
    top_k: int
    moe_inter: int
    n_group: int
    topk_group: int
    layers: int
    inv_freq: int
    rope_interleave: bool
    index_interleave: bool
    norm_topk: bool
    tile: int


@dataclass
class Program:
    instrs: list[Instr]
    W: Tensor  # flat weights, the model's dtype
    W32: Tensor  # flat fp32 weights (RoPE frequencies, router, indexer weights)
    a_size: int  # activation arena elements
    c_size: int  # cache arena elements
    buf: dict[str, int]  # activation buffer offsets by name (x, qkv, ..., logits, next)
    batch: int
    max_seq: int
    num_counters: int
    eps: float
    dims: LlamaDims | MlaDims
    cache: dict[str, tuple[int, tuple[int, ...]]]  # cache tensors by name: (arena offset, shape)
    scales: dict[str, float] = field(default_factory=dict)  # MLA family: softmax, rope factor, routed scaling

    @property
    def family(self) -> str:
        return self.dims.family

    def cache_views(self, C: Tensor) -> dict[str, Tensor]:
        """Views of the cache arena by name, each [batch, max_seq, ...] like the reference model's cache."""
        return {name: C[off:off + math.prod(shape)].view(shape) for name, (off, shape) in self.cache.items()}

    def logits(self, A: Tensor) -> Tensor:
        """The logits buffer of the activation arena, [batch, vocab]."""
        start = self.buf["logits"]
        return A[start:start + self.batch * self.dims.vocab].view(self.batch, self.dims.vocab)


class Builder:
    """Collects the weights into arenas, the cache layout, and the instructions into a chain of stages."""

    def __init__(self, dtype: torch.dtype, tile: int, batch: int, max_seq: int):
        self.dtype = dtype
        self.tile = tile
        self.batch = batch
        self.max_seq = max_seq
        self.pieces: dict[bool, list[Tensor]] = {False: [], True: []}
        self.woff: dict[str, int] = {}
        self.instrs: list[Instr] = []
        self.counters = 0
        self.prev = (-1, 0)
        self.buf: dict[str, int] = {}
        self.a_size = 0
        self.cache: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.c_size = 0

    def put(self, name: str, t: Tensor, fp32: bool = False) -> int:
        """Appends a weight to W (or W32) and returns its offset."""
        self.woff[name] = sum(p.numel() for p in self.pieces[fp32])
        self.pieces[fp32].append(t.detach().reshape(-1).to(torch.float32 if fp32 else self.dtype))
        return self.woff[name]

    def arenas(self) -> tuple[Tensor, Tensor]:
        return tuple(torch.cat(self.pieces[f]) if self.pieces[f] else torch.zeros(1) for f in (False, True))

    def buffers(self, widths: dict[str, int]) -> None:
        for name, width in widths.items():
            self.buf[name] = self.a_size
            self.a_size += self.batch * width

    def cache_tensor(self, name: str, shape: tuple[int, ...]) -> int:
        """Places a [batch, max_seq, *shape] cache tensor in the cache arena; returns its offset."""
        full = (self.batch, self.max_seq, *shape)
        self.cache[name] = (self.c_size, full)
        self.c_size += math.prod(full)
        return self.cache[name][0]

    def stage(self, items: list[tuple[Op, dict]]) -> None:
        """A stage: instructions that all wait for the whole previous stage and signal one new counter."""
        counter = self.counters
        waits = [self.prev] if self.prev[0] >= 0 else []
        self.counters += 1
        self.instrs.extend(Instr(op, args, list(waits), counter) for op, args in items)
        self.prev = (counter, len(items))

    def gemv(self, x: str, k: int, w: str, out: str, n: int, accumulate: bool = False, fp32: bool = False,
             norm: str | None = None, swiglu: bool = False) -> list[tuple[Op, dict]]:
        """The tiles of one GEMV (a stage of its own, or part of one: see `stage`). `norm`: RMSNorm the input with
        that weight first; `swiglu`: the input is silu(x[:, :k]) * x[:, k:]."""
        flags = 0
        if accumulate:
            flags |= ACCUMULATE
        if fp32:
            flags |= FP32_WEIGHTS
        if norm:
            flags |= NORM_INPUT
        if swiglu:
            flags |= SWIGLU_INPUT
        return [(Op.GEMV, dict(x=self.buf[x], k=k, w=self.woff[w], out=self.buf[out], n=n, c0=c0,
                               c1=min(c0 + self.tile, n), flags=flags, norm=self.woff[norm] if norm else -1))
                for c0 in range(0, n, self.tile)]

    def put_mlp(self, prefix: str, mlp: torch.nn.Module) -> None:
        """A SwiGLU MLP's weights ("{prefix}.w13" [2 inter, hidden], "{prefix}.w2" [hidden, inter])."""
        self.put(f"{prefix}.w13", mlp.gate_up_proj.weight.T)
        self.put(f"{prefix}.w2", mlp.down_proj.weight.T)

    def mlp_up(self, prefix: str, hidden: int, inter: int, norm: str) -> list[tuple[Op, dict]]:
        """gate and up of a dense MLP from the normalised residual stream, into "mlp"."""
        return self.gemv("x", hidden, f"{prefix}.w13", "mlp", 2 * inter, norm=norm)

    def mlp_down(self, prefix: str, hidden: int, inter: int) -> list[tuple[Op, dict]]:
        """down(silu(gate) * up), added to the residual stream."""
        return self.gemv("mlp", inter, f"{prefix}.w2", "x", hidden, accumulate=True, swiglu=True)

    def head(self, hidden: int, vocab: int) -> None:
        """Final norm fused into the LM head, then on-device greedy argmax."""
        self.stage(self.gemv("x", hidden, "lm_head", "logits", vocab, norm="norm"))
        self.stage([(Op.ARGMAX, dict(x=self.buf["logits"], out=self.buf["next"], n=vocab))])

    def program(self, eps: float, dims: LlamaDims | MlaDims, scales: dict[str, float] | None = None) -> Program:
        W, W32 = self.arenas()
        return Program(instrs=self.instrs, W=W, W32=W32, a_size=self.a_size, c_size=self.c_size, buf=self.buf,
                       batch=self.batch, max_seq=self.max_seq, num_counters=self.counters, eps=eps, dims=dims,
                       cache=self.cache, scales=scales or {})


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
