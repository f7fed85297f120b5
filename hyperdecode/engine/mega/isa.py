"""The instruction set: one opcode per line, with what it reads and writes, and its operands in encoding order.

Operands are element offsets into the flat arenas — weights `W` (the model's dtype), FP8 weights `W8` (float8_e4m3fn,
block scales in `W32`), fp32 weights `W32` (RoPE frequencies, router), activations `A` (fp32) and the cache `C` —
plus small integers (rows, heads, sizes). Every weight starts at a multiple of ROW_ALIGN elements and every matrix
row of width k is stored `row_stride(k)` elements apart (zero padded), so the kernel may use 16-byte loads. Shapes
that are the same for every instruction of a program (head counts and widths) are the program's `dims`.
"Row" is a batch row; activations are [batch, width] blocks of `A`.

Every instruction waits until one dependency counter reaches a target and then adds 1 to its own counter, so any
worker may run any instruction whose wait holds; the VM runs them in list order. RMSNorm, SwiGLU and RoPE are
fused into the instructions that consume them (each GEMV tile re-normalises its input vector, each attention
instruction ropes its own heads), which saves a dependency stage each.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

__all__ = ["Op", "Instr", "ARGS", "ACCUMULATE", "FP32_WEIGHTS", "NORM_INPUT", "SWIGLU_INPUT", "FP8_WEIGHTS",
           "ROW_ALIGN", "FP8_BLOCK", "row_stride", "ARGMAX_SLICE", "BEST_EMPTY", "pack_best", "best_token"]

ROW_ALIGN = 16  # elements: 16 B of FP8, 32 B of bf16, 64 B of fp32
FP8_BLOCK = 128  # FP8 weights carry one fp32 scale per 128 x 128 block (DeepSeek-V3 / GLM-5-FP8 checkpoints)


def row_stride(k: int) -> int:
    """How far apart rows of width k are stored in a weight arena (a multiple of ROW_ALIGN)."""
    return -(-k // ROW_ALIGN) * ROW_ALIGN


class Op(IntEnum):
    EMBED = 0  # A[out] = rows tok[b] of the [vocab, n] table at W[w]; resets every row's A[best] for ARGMAX
    GEMV = 1  # A[out][:, c0:c1] (+)= f(A[x]) @ W[w][c0:c1].T, W stored [n, k]; f per flags: identity, RMSNorm with
    #           weight W[norm] (NORM_INPUT), silu(x[:, :k]) * x[:, k:] (SWIGLU_INPUT); ACCUMULATE, FP32_WEIGHTS, or
    #           FP8_WEIGHTS (W8[w] with block scales W32[scale], [ceil(n/128), ceil(row_stride(k)/128)])
    ATTN = 2  # one (row, kv head, KV split): RMSNorm its q heads and k by W[q_norm], W[k_norm] (when >= 0, Qwen3),
    #           rope them at pos; the split holding pos appends k, v to the cache tensors C[c_k], C[c_v] ([batch,
    #           max_seq, kv_heads, head_dim]); attend over the split's positions <= pos: into A[out] when part < 0
    #           (one split), else the unnormalised partial (acc, max, sum) into A[part] for ATTN_MERGE
    ARGMAX = 3  # one (row, vocab slice c0:c1): A[best][row] (an int64 over two fp32 slots) = the max of itself and
    #             the slice's (order key of the largest logit, lowest index among equals), packed: every slice of
    #             the LM head's output reduces at once, atomically (`best_token` unpacks)
    NORM_SLICE = 4  # A[out] = norm(A[x][:, :n]) with rows x_stride apart; RMSNorm, or LayerNorm when bias >= 0
    ROPE_MLA = 5  # rope every head's q_pe in A[q] and k_pe of A[kva]; append latent A[lat] and k_pe to the cache
    INDEX_KEY = 6  # rope the indexer key A[ik] (first `rope` dims, its family's style), append it to C[c_ik]
    INDEX_TOPK = 7  # one row: rope the indexer queries, score its cache prefix, A[sel] = top-k mask (lower wins ties)
    MLA_ATTN = 8  # one (row, head): absorbed MLA of A[qlat] and its q_pe over the latent cache, masked by A[sel]
    #               unless sel < 0 -> the head's latent mix A[olat]
    ROUTE = 9  # one row's MoE routing: sigmoid + W32[bias], group-limited top-k; A[route] = ids, scaled weights
    EXPERT_UP = 10  # (row, slot, rows c0:c1 of the expert read at run time): h = rmsnorm(A[x]) * W[norm];
    #                 A[act] = silu(gate(h)) * up(h)
    EXPERT_DOWN = 11  # (row, slot, rows c0:c1 of hidden): A[x] += weight * down(A[act]), atomically
    ATTN_MERGE = 12  # one row: A[out] = the softmax-weighted merge of every KV split's partial in A[part]
    MLA_UK = 13  # (head, latent rows c0:c1), every row: A[qlat][:, head, c0:c1] = W_UK^T[head][c0:c1] @ q_nope
    MLA_UV = 14  # (head, value rows c0:c1), every row: A[att][:, head, c0:c1] = W_UV[head][c0:c1] @ A[olat][:, head]
    # Multi-GPU (VM only so far; the kernel needs peer pointers into symmetric memory and a flag array per rank):
    PEER_WRITE = 15  # copy A[src:src+n] into rank `peer`'s A[dst:dst+n], then add 1 to that rank's flag F[flag]
    #                  (a one-sided NVLink store, then a release atomic on the peer's flag)
    PEER_WAIT = 16  # wait (bounded) until this rank's F[flag] reaches `value` (acquire): the peers' writes are in
    REDUCE = 17  # A[dst][:n] += the sum of `slots` blocks A[src + s * n][:n] (an all-reduce's received partials)
# Expert weights are FP8 (block scales at W32[scale], [experts, row blocks, k blocks]) when scale >= 0.
# Every add into the residual stream A[x] (GEMV with ACCUMULATE, EXPERT_DOWN) is atomic, so such instructions may
# share a stage.


ARGS: dict[Op, tuple[str, ...]] = {
    Op.EMBED: ("w", "out", "n", "best"),
    Op.GEMV: ("x", "k", "w", "out", "n", "c0", "c1", "flags", "norm", "scale"),
    Op.ATTN: ("qkv", "out", "row", "kv_head", "c_k", "c_v", "q_norm", "k_norm", "split", "part"),
    Op.ARGMAX: ("x", "best", "n", "row", "c0", "c1"),
    Op.NORM_SLICE: ("x", "x_stride", "w", "bias", "out", "n"),
    Op.ROPE_MLA: ("q", "kva", "lat", "row", "c_lat", "c_pe"),
    Op.INDEX_KEY: ("ik", "row", "c_ik"),
    Op.INDEX_TOPK: ("iq", "iw", "sel", "row", "c_ik"),
    Op.MLA_ATTN: ("q", "qlat", "olat", "sel", "row", "head", "c_lat", "c_pe"),
    Op.ROUTE: ("rlog", "route", "row", "bias"),
    Op.EXPERT_UP: ("x", "route", "act", "row", "slot", "w13", "c0", "c1", "norm", "scale"),  # w13 [E, 2 inter, hidden]
    Op.EXPERT_DOWN: ("route", "act", "x", "row", "slot", "w2", "c0", "c1", "scale"),  # w2: [experts, hidden, inter]
    Op.ATTN_MERGE: ("part", "out", "row"),
    Op.MLA_UK: ("q", "qlat", "head", "c0", "c1", "w"),  # w: W_UK^T stacked [heads, kv_lora, nope]
    Op.MLA_UV: ("olat", "att", "head", "c0", "c1", "w"),  # w: W_UV stacked [heads, v_head, kv_lora]
    Op.PEER_WRITE: ("src", "dst", "n", "peer", "flag"),
    Op.PEER_WAIT: ("flag", "value"),
    Op.REDUCE: ("src", "dst", "n", "slots"),
}
ACCUMULATE, FP32_WEIGHTS, NORM_INPUT, SWIGLU_INPUT, FP8_WEIGHTS = 1, 2, 4, 8, 16  # GEMV flags
ARGMAX_SLICE = 4096  # logits per ARGMAX instruction
BEST_EMPTY = -(2 ** 63)  # A[best] before any slice: below every packed key


def pack_best(key: int, index: int) -> int:
    """An ARGMAX slice's candidate as one int64: the logit's order key (int32, orders like the float) above, the
    complement of its index below, so that the max over packs is the largest logit at the lowest index."""
    return (key << 32) | (0xFFFFFFFF - index)


def best_token(packed: int) -> int:
    """The token index of a packed ARGMAX result."""
    return 0xFFFFFFFF - (packed & 0xFFFFFFFF)


@dataclass
class Instr:
    op: Op
    args: dict[str, int]
    waits: list[tuple[int, int]] = field(default_factory=list)  # (counter, target)
    signal: int = -1  # counter this instruction adds 1 to

    def __post_init__(self) -> None:
        if set(self.args) != set(ARGS[self.op]):
            raise ValueError(f"{self.op.name} takes operands {ARGS[self.op]}, got {tuple(self.args)}")
