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


@dataclass
class Instr:
    op: Op
    args: dict[str, int]
    waits: list[tuple[int, int]] = field(default_factory=list)  # (counter, target)
    signal: int = -1  # counter this instruction adds 1 to
