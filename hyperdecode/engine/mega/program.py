"""A compiled decode step: the instruction list over flat arenas, its typed dimensions, and the builder both
family compilers use (program_llama.py, program_mla.py).

Stages run in a chain (each waits for every instruction of the previous stage); inside a stage, instructions are
independent tiles that any worker may take. Weights are copied once into the `W` arena in the model's dtype (or,
with `fp8=True`, the projections and experts into `W8` as float8_e4m3fn with 128 x 128 block scales in `W32`, the
checkpoints' format); projections are stored [out, in] (transposed from the reference's [in, out]), rows padded to
`row_stride(k)` and every weight aligned to ROW_ALIGN elements, so a GEMV tile is a few output rows read
contiguously along k with 16-byte loads. Cache tensors have the reference's layout and names ("{layer}.k",
"{layer}.lat",
...; [batch, max_seq, ...]), so a row's positions copy between the two caches as they are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...model.checkpoint import quantize_fp8
from .isa import ACCUMULATE, ARGMAX_SLICE, FP8_BLOCK, FP8_WEIGHTS, FP32_WEIGHTS, NORM_INPUT, SWIGLU_INPUT, Instr, Op, \
    best_token, row_stride

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
    kv_split: int  # positions per attention instruction (flash-decoding splits; one split when >= max_seq)
    splits: int


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
    W32: Tensor  # flat fp32 weights (RoPE frequencies, router, indexer weights, FP8 block scales)
    W8: Tensor  # flat float8_e4m3fn weights (FP8 programs; one unused element otherwise)
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
    queries: int = 1  # query tokens per cache row: 1 for decode, 1 + k to verify k draft tokens (`batch` rows =
    #                   cache rows x queries; activation row r is token r % queries of cache row r // queries)

    @property
    def cache_rows(self) -> int:
        return self.batch // self.queries

    @property
    def family(self) -> str:
        return self.dims.family

    def cache_views(self, C: Tensor) -> dict[str, Tensor]:
        """Views of the cache arena by name, each [batch, max_seq, ...] like the reference model's cache."""
        return {name: C[off:off + math.prod(shape)].view(shape) for name, (off, shape) in self.cache.items()}

    def next_tokens(self, A: Tensor) -> Tensor:
        """The greedy next token of every row, unpacked from the ARGMAX result A[best] ([batch] int64)."""
        start = self.buf["best"]
        packed = A[start:start + 2 * self.batch].view(torch.int64)
        return torch.tensor([best_token(int(p)) for p in packed.tolist()], dtype=torch.long)

    def logits(self, A: Tensor) -> Tensor:
        """The logits buffer of the activation arena, [batch, vocab]."""
        start = self.buf["logits"]
        return A[start:start + self.batch * self.dims.vocab].view(self.batch, self.dims.vocab)


class Builder:
    """Collects the weights into arenas, the cache layout, and the instructions into a chain of stages."""

    def __init__(self, dtype: torch.dtype, tile: int, batch: int, max_seq: int, fp8: bool = False,
                 queries: int = 1):
        """batch: cache rows (sequences); queries: tokens each feeds per step (activation rows: batch x queries)."""
        self.dtype = dtype
        self.tile = tile
        self.queries = queries
        self.cache_rows = batch
        self.batch = batch * queries
        self.max_seq = max_seq
        self.fp8 = fp8
        self.pieces: dict[str, list[Tensor]] = {"W": [], "W32": [], "W8": []}
        self.size = dict.fromkeys(self.pieces, 0)
        self.woff: dict[str, int] = {}
        self.scale: dict[str, int] = {}  # W32 offsets of FP8 weights' block scales
        self.instrs: list[Instr] = []
        self.counters = 0
        self.prev = (-1, 0)
        self.buf: dict[str, int] = {}
        self.a_size = 0
        self.cache: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.c_size = 0

    def _append(self, arena: str, flat: Tensor) -> int:
        """Appends flat values to an arena at the next ROW_ALIGN boundary; returns their offset."""
        start = row_stride(self.size[arena])
        if start > self.size[arena]:
            self.pieces[arena].append(torch.zeros(start - self.size[arena], dtype=flat.dtype, device=flat.device))
        self.pieces[arena].append(flat)
        self.size[arena] = start + flat.numel()
        return start

    def put(self, name: str, t: Tensor, fp32: bool = False) -> int:
        """Appends a vector or table to W (or W32) as it is and returns its offset."""
        arena, dtype = ("W32", torch.float32) if fp32 else ("W", self.dtype)
        self.woff[name] = self._append(arena, t.detach().reshape(-1).to(dtype))
        return self.woff[name]

    def put_matrix(self, name: str, t: Tensor, fp32: bool = False, quantize: bool = True) -> int:
        """Appends a matrix [n, k] (or a stack [..., n, k]) with rows `row_stride(k)` apart: to W8 with block scales
        in W32 when the program is FP8 (unless `quantize` is False, as checkpoints keep the LM head), else to W (or
        W32 when `fp32`). Returns its offset."""
        t = t.detach()
        k = t.shape[-1]
        padded = torch.zeros(*t.shape[:-1], row_stride(k), dtype=torch.float32, device=t.device)
        padded[..., :k] = t.float()
        if fp32 or not self.fp8 or not quantize:
            return self.put(name, padded, fp32)
        stack = padded.reshape(-1, *padded.shape[-2:])
        pairs = [quantize_fp8(m, (FP8_BLOCK, FP8_BLOCK)) for m in stack]
        self.woff[name] = self._append("W8", torch.cat([q.reshape(-1).view(torch.uint8) for q, _ in pairs]))
        self.scale[name] = self._append("W32", torch.cat([s.reshape(-1) for _, s in pairs]))
        return self.woff[name]

    def arenas(self) -> tuple[Tensor, Tensor, Tensor]:
        for arena, pieces in self.pieces.items():  # a zero tail: vectors may be read up to row_stride(length)
            if pieces:
                self._append(arena, torch.zeros(0, dtype=pieces[-1].dtype, device=pieces[-1].device))
        W, W32, W8 = (torch.cat(self.pieces[a]) if self.pieces[a] else torch.zeros(1) for a in ("W", "W32", "W8"))
        return W, W32, W8.to(torch.uint8).view(torch.float8_e4m3fn)

    def buffers(self, widths: dict[str, int]) -> None:
        """Activation buffers [batch, width] by name, each starting at a multiple of ROW_ALIGN elements; every
        program also gets "best" (one int64 per row, for ARGMAX)."""
        for name, width in {**widths, "best": 2}.items():
            self.buf[name] = row_stride(self.a_size)
            self.a_size = self.buf[name] + self.batch * width

    def cache_tensor(self, name: str, shape: tuple[int, ...]) -> int:
        """Places a [cache rows, max_seq, *shape] cache tensor in the cache arena; returns its offset."""
        full = (self.cache_rows, self.max_seq, *shape)
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

    def stage_in_groups(self, groups: list[list[tuple[Op, dict]]]) -> list[tuple[int, int]]:
        """A stage whose instructions all wait for the previous stage but signal one counter per group, so that a
        consumer needing one group waits for that group only (see `stage_waiting`). Returns each group's wait."""
        waits = [self.prev] if self.prev[0] >= 0 else []
        out = []
        for items in groups:
            self.instrs.extend(Instr(op, args, list(waits), self.counters) for op, args in items)
            out.append((self.counters, len(items)))
            self.counters += 1
        return out

    def stage_waiting(self, items: list[tuple[Op, dict, tuple[int, int]]]) -> None:
        """A stage whose instructions each wait for their own (counter, target) — a group of `stage_in_groups` —
        and together signal one new counter, which the next stage waits for whole."""
        counter = self.counters
        self.counters += 1
        self.instrs.extend(Instr(op, args, [wait], counter) for op, args, wait in items)
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
        if w in self.scale:
            flags |= FP8_WEIGHTS
        return [(Op.GEMV, dict(x=self.buf[x], k=k, w=self.woff[w], out=self.buf[out], n=n, c0=c0,
                               c1=min(c0 + self.tile, n), flags=flags, norm=self.woff[norm] if norm else -1,
                               scale=self.scale.get(w, -1)))
                for c0 in range(0, n, self.tile)]

    def put_mlp(self, prefix: str, mlp: torch.nn.Module) -> None:
        """A SwiGLU MLP's weights ("{prefix}.w13" [2 inter, hidden], "{prefix}.w2" [hidden, inter])."""
        self.put_matrix(f"{prefix}.w13", mlp.gate_up_proj.weight.T)
        self.put_matrix(f"{prefix}.w2", mlp.down_proj.weight.T)

    def mlp_up(self, prefix: str, hidden: int, inter: int, norm: str) -> list[tuple[Op, dict]]:
        """gate and up of a dense MLP from the normalised residual stream, into "mlp"."""
        return self.gemv("x", hidden, f"{prefix}.w13", "mlp", 2 * inter, norm=norm)

    def mlp_down(self, prefix: str, hidden: int, inter: int) -> list[tuple[Op, dict]]:
        """down(silu(gate) * up), added to the residual stream."""
        return self.gemv("mlp", inter, f"{prefix}.w2", "x", hidden, accumulate=True, swiglu=True)

    def head(self, hidden: int, vocab: int) -> None:
        """Final norm fused into the LM head, then on-device greedy argmax in slices over every worker."""
        self.stage(self.gemv("x", hidden, "lm_head", "logits", vocab, norm="norm"))
        self.stage([(Op.ARGMAX, dict(x=self.buf["logits"], best=self.buf["best"], n=vocab, row=row, c0=c0,
                                     c1=min(c0 + ARGMAX_SLICE, vocab)))
                    for row in range(self.batch) for c0 in range(0, vocab, ARGMAX_SLICE)])

    def program(self, eps: float, dims: LlamaDims | MlaDims, scales: dict[str, float] | None = None) -> Program:
        W, W32, W8 = self.arenas()
        return Program(instrs=self.instrs, W=W, W32=W32, W8=W8, a_size=self.a_size, c_size=self.c_size, buf=self.buf,
                       batch=self.batch, max_seq=self.max_seq, num_counters=self.counters, eps=eps, dims=dims,
                       cache=self.cache, scales=scales or {}, queries=self.queries)


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
