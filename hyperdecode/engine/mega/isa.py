"""The instruction set: one opcode per line, with what it reads and writes. Operands are element offsets into
three flat arenas — weights `W`, activations `A` (float) and the KV cache `C` — plus small integers (sizes).

Every instruction waits until some dependency counters reach targets and then adds 1 to its own counter, so any
worker may run any instruction whose waits hold; the VM runs them in list order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["Op", "Instr"]


class Op(IntEnum):
    EMBED = 0  # A[x + b*H : +H] = W[embed + tok[b]*H : +H] for every row b
    RMSNORM = 1  # A[out] = rmsnorm(A[x]) * W[w], rows of width n
    GEMV = 2  # A[out][:, c0:c1] (+)= A[x] @ W[w][:, c0:c1]; W stored [k, n]; `accumulate` adds to A[out]
    ROPE_APPEND = 3  # rope q and k in A[qkv] at each row's position; append k, v to layer l of the cache
    ATTN = 4  # one (row, kv head): softmax(q·K/sqrt(d)) V over cache positions <= pos, for its query heads
    SWIGLU = 5  # A[out] = silu(A[x][:, :n]) * A[x][:, n:2n]
    ARGMAX = 6  # A[out][b] = argmax A[x][b, :n]
    NORM_SLICE = 7  # A[out] = norm(A[x][:, :n]) (rows `x_stride` apart), RMS or LayerNorm (bias), eps W[eps]
    ROPE_MLA = 8  # rope the q_pe of every head and k_pe; append normed latent and k_pe to the latent cache
    INDEX_KEY = 9  # rope the indexer key (first rope dims, its family's style) and append it to the index cache
    INDEX_TOPK = 10  # indexer scores of one row over its cache prefix -> selection mask (top-k, lower position wins)
    MLA_ATTN = 11  # absorbed MLA for one (row, head): q·W_UK over latents + rope part, masked softmax, ·W_UV
    ROUTE = 12  # MoE routing of one row: sigmoid + bias, group-limited top-k, normalised scaled weights
    EXPERT = 13  # one routed expert of one row, id read at run time: A[x] += w · down(silu(gate(h)) · up(h))


@dataclass
class Instr:
    op: Op
    args: dict[str, int]
    waits: list[tuple[int, int]] = field(default_factory=list)  # (counter, target)
    signal: int = -1  # counter this instruction adds 1 to
