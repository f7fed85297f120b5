"""The persistent megakernel itself (see `kernel` for the launcher): the worker loop, bounded waits, dispatch to the
opcode bodies in `ops` and `ops_mla`, and the release signal. Opcodes and flags are named by the constants isa.py
generates (constants.py). Imported only when the kernel is first launched, so Triton is needed only by the `mega`
backend and sees TRITON_INTERPRET first.
"""
import triton
import triton.language as tl

from . import ops, ops_mla
from .constants import (FLAG_FP32_WEIGHTS, OP_ARGMAX, OP_ATTN, OP_EMBED, OP_EXPERT_DOWN, OP_EXPERT_UP, OP_GEMV,
                        OP_INDEX_KEY, OP_INDEX_TOPK, OP_MLA_ATTN, OP_NORM_SLICE, OP_ROPE_MLA, OP_ROUTE)


@triton.jit
def megakernel(table, n_instr, n_rounds, n_workers, W, W32, A, C, tok, pos, counters, err, inv_freq, eps,
               slice_eps, rope_factor, softmax_scale, routed_scale,
               B: tl.constexpr, B_P: tl.constexpr, MAX_SEQ: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr,
               K_BLOCK: tl.constexpr, MAX_SPIN: tl.constexpr, MLA: tl.constexpr, HIDDEN: tl.constexpr,
               N_HEAD: tl.constexpr, N_KV: tl.constexpr, HEAD_DIM: tl.constexpr, NOPE: tl.constexpr,
               ROPE: tl.constexpr, KV_LORA: tl.constexpr, V_HEAD: tl.constexpr, INDEX_DIM: tl.constexpr,
               INDEX_HEADS: tl.constexpr, INDEX_HEADS_P: tl.constexpr, INDEX_TOPK: tl.constexpr,
               EXPERTS: tl.constexpr, EXPERTS_P: tl.constexpr, TOP_K: tl.constexpr, TOP_K_P: tl.constexpr,
               MOE_INTER: tl.constexpr, N_GROUP: tl.constexpr, N_GROUP_P: tl.constexpr, TOPK_GROUP: tl.constexpr,
               NORM_TOPK: tl.constexpr, ROPE_INTERLEAVE: tl.constexpr, INDEX_INTERLEAVE: tl.constexpr,
               LATENT_BLOCK: tl.constexpr, POS_BLOCK: tl.constexpr, WIDTH: tl.constexpr, PREFETCH: tl.constexpr,
               LINE: tl.constexpr):
    pid = tl.program_id(0)
    ready_c = tl.full((), -1, tl.int64)  # the last counter this worker saw reach ready_t
    ready_t = tl.full((), 0, tl.int32)
    for t in range(0, n_rounds):
        i = pid + t * n_workers
        if i < n_instr:
            row_ptr = table + i * WIDTH
            op = tl.load(row_ptr)
            wc = tl.load(row_ptr + 2)
            wt = tl.load(row_ptr + 3)
            a0 = tl.load(row_ptr + 4)
            a1 = tl.load(row_ptr + 5)
            a2 = tl.load(row_ptr + 6)
            a3 = tl.load(row_ptr + 7)
            a4 = tl.load(row_ptr + 8)
            a5 = tl.load(row_ptr + 9)
            a6 = tl.load(row_ptr + 10)
            a7 = tl.load(row_ptr + 11)
            a8 = tl.load(row_ptr + 12)
            # a worker's next instructions usually wait for the same stage: skip the round trip once it is known done
            if (wc >= 0) & ((wc != ready_c) | (wt > ready_t)):
                if PREFETCH:
                    if (op == OP_GEMV) & ((a7 & FLAG_FP32_WEIGHTS) == 0):
                        ops.prefetch_rows(W, a2, a1, a5, a6, TILE, LINE)
                seen = tl.atomic_add(counters + wc, 0, sem="acquire")
                spins = 0
                while (seen < wt) & (spins < MAX_SPIN):
                    seen = tl.atomic_add(counters + wc, 0, sem="acquire")
                    spins += 1
                if seen < wt:
                    tl.atomic_max(err, i + 1)
                ready_c = wc
                ready_t = seen
            tl.debug_barrier()
            if tl.load(err) == 0:  # operands a0..a8 in isa.ARGS order
                if op == OP_EMBED:
                    ops.embed(W, A, tok, a0, a1, a2, B, BLOCK)
                elif op == OP_GEMV:
                    if (a7 & FLAG_FP32_WEIGHTS) != 0:
                        ops.gemv(W32, W, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, eps, B, B_P, K_BLOCK, TILE)
                    else:
                        ops.gemv(W, W, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, eps, B, B_P, K_BLOCK, TILE)
                elif op == OP_ARGMAX:
                    ops.argmax(A, a0, a1, a2, B, 1024)  # one program scans the vocabulary: wide loads
                if MLA:
                    if op == OP_NORM_SLICE:
                        ops.norm_rows(W, A, a0, a1, a2, a3, a4, a5, slice_eps, B, BLOCK)
                    elif op == OP_ROPE_MLA:
                        ops_mla.rope_mla(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, a3, a4, a5, N_HEAD, NOPE,
                                         ROPE, KV_LORA, MAX_SEQ, ROPE_INTERLEAVE, BLOCK)
                    elif op == OP_INDEX_KEY:
                        ops_mla.index_key(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, INDEX_DIM, ROPE,
                                          MAX_SEQ, INDEX_INTERLEAVE)
                    elif op == OP_INDEX_TOPK:
                        ops_mla.index_topk(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, a3, a4, INDEX_HEADS,
                                           INDEX_HEADS_P, INDEX_DIM, ROPE, INDEX_TOPK, MAX_SEQ, INDEX_INTERLEAVE,
                                           POS_BLOCK, BLOCK)
                    elif op == OP_MLA_ATTN:
                        ops_mla.mla_attn(W, A, C, pos, softmax_scale, a0, a1, a2, a3, a4, a5, a6, a7, N_HEAD, NOPE,
                                         ROPE, KV_LORA, V_HEAD, MAX_SEQ, LATENT_BLOCK)
                    elif op == OP_ROUTE:
                        ops_mla.route(W32, A, a0, a1, a2, a3, routed_scale, EXPERTS, EXPERTS_P, TOP_K, TOP_K_P,
                                      N_GROUP, N_GROUP_P, TOPK_GROUP, NORM_TOPK)
                    elif op == OP_EXPERT_UP:
                        ops_mla.expert_up(W, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, eps, HIDDEN, MOE_INTER, TOP_K,
                                          K_BLOCK, TILE)
                    elif op == OP_EXPERT_DOWN:
                        ops_mla.expert_down(W, A, a0, a1, a2, a3, a4, a5, a6, a7, HIDDEN, MOE_INTER, TOP_K, K_BLOCK,
                                            TILE)
                elif op == OP_ATTN:
                    ops.attn(W, W32, A, C, pos, inv_freq, eps, a0, a1, a2, a3, a4, a5, a6, a7, N_HEAD, N_KV,
                             HEAD_DIM, MAX_SEQ, BLOCK)
            tl.debug_barrier()
            tl.atomic_add(counters + tl.load(row_ptr + 1), 1, sem="release")
