"""The persistent megakernel itself (see `kernel` for the launcher): the worker loop, bounded waits, dispatch to the
opcode bodies in `ops` and `ops_mla`, and the release signal. Opcodes and flags are named by the constants isa.py
generates (constants.py). Imported only when the kernel is first launched, so Triton is needed only by the `mega`
backend and sees TRITON_INTERPRET first.

Synchronisation, per instruction: the worker asks L1 for its next table row while it runs this one (inline PTX, so
not under the interpreter); it waits only when
the counter it needs is not already known to be done (its previous wait often covered it); a wait polls the
counter with plain volatile loads, every thread on its own (no barrier per poll), then takes one acquire atomic,
which Triton broadcasts to the program through shared memory (one bar.sync per wait), so the decision is the same
in every thread and later reads see the producers' writes. The instruction's writes are ordered before its release
signal by a barrier. A wait that runs out of spins sets the error word to the instruction's index + 1, and the
worker skips its remaining bodies but still signals, so the others finish instead of each waiting out their spins;
nothing reads the error word per instruction.
"""
import triton
import triton.language as tl

from . import ops, ops_mla
from .constants import (FLAG_FP8_WEIGHTS, FLAG_FP32_WEIGHTS, OP_ARGMAX, OP_ATTN, OP_ATTN_MERGE, OP_EMBED,
                        OP_EXPERT_DOWN, OP_EXPERT_UP, OP_GEMV, OP_INDEX_KEY, OP_INDEX_TOPK, OP_MLA_ATTN, OP_MLA_UK,
                        OP_MLA_UV, OP_NORM_SLICE, OP_ROPE_MLA, OP_ROUTE, ROW_ALIGN)


@triton.jit
def field(table, i, j, n_instr, WIDTH: tl.constexpr):
    return tl.load(table + i * WIDTH + j, mask=i < n_instr, other=0)


@triton.jit
def megakernel(table, n_instr, n_rounds, n_workers, W, W32, W8, A, C, tok, pos, counters, err, inv_freq, eps,
               slice_eps, rope_factor, softmax_scale, routed_scale,
               B: tl.constexpr, ROWS: tl.constexpr, MAX_SEQ: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr,
               GEMV_K: tl.constexpr, GEMV_K8: tl.constexpr, GEMV_K32: tl.constexpr, EXPERT_K: tl.constexpr,
               EXPERT_K8: tl.constexpr, STAGES: tl.constexpr, MAX_SPIN: tl.constexpr, MLA: tl.constexpr,
               HIDDEN: tl.constexpr, N_HEAD: tl.constexpr, N_KV: tl.constexpr, HEAD_DIM: tl.constexpr,
               KV_SPLIT: tl.constexpr, SPLITS: tl.constexpr, SPLITS_P: tl.constexpr, NOPE: tl.constexpr,
               ROPE: tl.constexpr, KV_LORA: tl.constexpr, V_HEAD: tl.constexpr, INDEX_DIM: tl.constexpr,
               INDEX_HEADS: tl.constexpr, INDEX_HEADS_P: tl.constexpr, INDEX_TOPK: tl.constexpr,
               EXPERTS: tl.constexpr, EXPERTS_P: tl.constexpr, TOP_K: tl.constexpr, TOP_K_P: tl.constexpr,
               MOE_INTER: tl.constexpr, N_GROUP: tl.constexpr, N_GROUP_P: tl.constexpr, TOPK_GROUP: tl.constexpr,
               NORM_TOPK: tl.constexpr, ROPE_INTERLEAVE: tl.constexpr, INDEX_INTERLEAVE: tl.constexpr,
               LATENT_BLOCK: tl.constexpr, POS_BLOCK: tl.constexpr, WIDTH: tl.constexpr, PREFETCH: tl.constexpr,
               LINE: tl.constexpr, ASM: tl.constexpr, QUERIES: tl.constexpr):
    pid = tl.program_id(0)
    ready_c = tl.full((), -1, tl.int64)  # the last counter this worker saw reach ready_t
    ready_t = tl.full((), 0, tl.int64)
    failed = tl.full((), 0, tl.int32)
    for t in range(0, n_rounds):
        i = pid + t * n_workers
        if ASM:  # the next row's two cache lines into L1 while this one runs (the row is 112 bytes)
            nxt = table + tl.minimum(i + n_workers, n_instr - 1) * WIDTH
            ops.prefetch_l1(nxt)
            ops.prefetch_l1(nxt + WIDTH - 1)
        op = field(table, i, 0, n_instr, WIDTH)
        sig = field(table, i, 1, n_instr, WIDTH)
        wc = field(table, i, 2, n_instr, WIDTH)
        wt = field(table, i, 3, n_instr, WIDTH)
        a0 = field(table, i, 4, n_instr, WIDTH)
        a1 = field(table, i, 5, n_instr, WIDTH)
        a2 = field(table, i, 6, n_instr, WIDTH)
        a3 = field(table, i, 7, n_instr, WIDTH)
        a4 = field(table, i, 8, n_instr, WIDTH)
        a5 = field(table, i, 9, n_instr, WIDTH)
        a6 = field(table, i, 10, n_instr, WIDTH)
        a7 = field(table, i, 11, n_instr, WIDTH)
        a8 = field(table, i, 12, n_instr, WIDTH)
        a9 = field(table, i, 13, n_instr, WIDTH)
        if PREFETCH:  # the next GEMV tile's weights into L2 now: they never depend on what this one computes
            nxt = i + n_workers
            n_op = field(table, nxt, 0, n_instr, WIDTH)
            n_flags = field(table, nxt, 11, n_instr, WIDTH)
            if (nxt < n_instr) & (n_op == OP_GEMV) & ((n_flags & FLAG_FP32_WEIGHTS) == 0):
                n_k = field(table, nxt, 5, n_instr, WIDTH)
                n_w = field(table, nxt, 6, n_instr, WIDTH)
                n_c0 = field(table, nxt, 9, n_instr, WIDTH)
                n_c1 = field(table, nxt, 10, n_instr, WIDTH)
                if (n_flags & FLAG_FP8_WEIGHTS) != 0:
                    ops.prefetch_rows(W8, n_w, n_k, n_c0, n_c1, TILE, 128)
                else:
                    ops.prefetch_rows(W, n_w, n_k, n_c0, n_c1, TILE, LINE)
        if i < n_instr:
            if (wc >= 0) & ((wc != ready_c) | (wt > ready_t)):
                seen = tl.load(counters + wc, volatile=True).to(tl.int64)
                spins = 0
                while (seen < wt) & (spins < MAX_SPIN):
                    seen = tl.load(counters + wc, volatile=True).to(tl.int64)
                    spins += 1
                seen = tl.atomic_add(counters + wc, 0, sem="acquire").to(tl.int64)
                if seen < wt:
                    tl.atomic_max(err, (i + 1).to(tl.int32))
                    failed = 1
                    ready_c = tl.full((), -1, tl.int64)
                else:
                    ready_c = wc
                    ready_t = seen
            if failed == 0:  # operands a0..a9 in isa.ARGS order
                if op == OP_EMBED:
                    ops.embed(W, A, tok, a0, a1, a2, a3, B, BLOCK)
                elif (op == OP_GEMV) | (op == OP_MLA_UK) | (op == OP_MLA_UV):
                    # MLA's absorbed products are GEMVs over one head of a [batch, heads, width] buffer: one call site
                    x, k, w, out, n, flags, norm, scale, x_stride, out_stride = \
                        a0, a1, a2, a3, a4, a7, a8, a9, a0 * 0, a0 * 0
                    if op == OP_MLA_UK:  # q_nope of head a2 times W_UK^T[a2] -> q_lat
                        LD_NOPE: tl.constexpr = (NOPE + ROW_ALIGN - 1) // ROW_ALIGN * ROW_ALIGN
                        x, k, w, out, n = a0 + a2 * (NOPE + ROPE), a0 * 0 + NOPE, a5 + a2 * KV_LORA * LD_NOPE, \
                            a1 + a2 * KV_LORA, a0 * 0 + KV_LORA
                        flags, norm, scale = a0 * 0, a0 * 0 - 1, a0 * 0 - 1
                        x_stride, out_stride = a0 * 0 + N_HEAD * (NOPE + ROPE), a0 * 0 + N_HEAD * KV_LORA
                    elif op == OP_MLA_UV:  # the latent mix of head a2 times W_UV[a2] -> its attention output
                        x, k, w, out, n = a0 + a2 * KV_LORA, a0 * 0 + KV_LORA, a5 + a2 * V_HEAD * KV_LORA, \
                            a1 + a2 * V_HEAD, a0 * 0 + V_HEAD
                        flags, norm, scale = a0 * 0, a0 * 0 - 1, a0 * 0 - 1
                        x_stride, out_stride = a0 * 0 + N_HEAD * KV_LORA, a0 * 0 + N_HEAD * V_HEAD
                    c0, c1 = tl.where(op == OP_GEMV, a5, a3), tl.where(op == OP_GEMV, a6, a4)
                    if (flags & FLAG_FP32_WEIGHTS) != 0:
                        ops.gemv(W32, W, W32, A, x, k, w, out, n, c0, c1, flags, norm, scale, eps, x_stride,
                                 out_stride, B, ROWS, GEMV_K32, TILE, STAGES)
                    elif (flags & FLAG_FP8_WEIGHTS) != 0:
                        ops.gemv(W8, W, W32, A, x, k, w, out, n, c0, c1, flags, norm, scale, eps, x_stride,
                                 out_stride, B, ROWS, GEMV_K8, TILE, STAGES)
                    else:
                        ops.gemv(W, W, W32, A, x, k, w, out, n, c0, c1, flags, norm, scale, eps, x_stride,
                                 out_stride, B, ROWS, GEMV_K, TILE, STAGES)
                elif op == OP_ARGMAX:
                    ops.argmax(A, a0, a1, a2, a3, a4, a5, 1024)
                if MLA:
                    if op == OP_NORM_SLICE:
                        ops.norm_rows(W, A, a0, a1, a2, a3, a4, a5, slice_eps, B, BLOCK)
                    elif op == OP_ROPE_MLA:
                        ops_mla.rope_mla(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, a3, a4, a5, N_HEAD, NOPE,
                                         ROPE, KV_LORA, MAX_SEQ, ROPE_INTERLEAVE, BLOCK, QUERIES)
                    elif op == OP_INDEX_KEY:
                        ops_mla.index_key(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, INDEX_DIM, ROPE,
                                          MAX_SEQ, INDEX_INTERLEAVE, QUERIES)
                    elif op == OP_INDEX_TOPK:
                        ops_mla.index_topk(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, a3, a4, INDEX_HEADS,
                                           INDEX_HEADS_P, INDEX_DIM, ROPE, INDEX_TOPK, MAX_SEQ, INDEX_INTERLEAVE,
                                           POS_BLOCK, BLOCK, QUERIES)
                    elif op == OP_MLA_ATTN:
                        ops_mla.mla_attn(A, C, pos, softmax_scale, a0, a1, a2, a3, a4, a5, a6, a7, N_HEAD, NOPE,
                                         ROPE, KV_LORA, MAX_SEQ, LATENT_BLOCK, QUERIES)
                    elif op == OP_ROUTE:
                        ops_mla.route(W32, A, a0, a1, a2, a3, routed_scale, EXPERTS, EXPERTS_P, TOP_K, TOP_K_P,
                                      N_GROUP, N_GROUP_P, TOPK_GROUP, NORM_TOPK)
                    elif op == OP_EXPERT_UP:
                        if a9 >= 0:
                            ops_mla.expert_up(W8, W, W32, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, eps, HIDDEN,
                                              MOE_INTER, TOP_K, EXPERT_K8, TILE, STAGES)
                        else:
                            ops_mla.expert_up(W, W, W32, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, eps, HIDDEN,
                                              MOE_INTER, TOP_K, EXPERT_K, TILE, STAGES)
                    elif op == OP_EXPERT_DOWN:
                        if a8 >= 0:
                            ops_mla.expert_down(W8, W32, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, HIDDEN, MOE_INTER,
                                                TOP_K, EXPERT_K8, TILE, STAGES)
                        else:
                            ops_mla.expert_down(W, W32, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, HIDDEN, MOE_INTER,
                                                TOP_K, EXPERT_K, TILE, STAGES)
                else:
                    if op == OP_ATTN:
                        ops.attn(W, W32, A, C, pos, inv_freq, eps, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, N_HEAD,
                                 N_KV, HEAD_DIM, MAX_SEQ, KV_SPLIT, SPLITS, BLOCK, QUERIES)
                    elif op == OP_ATTN_MERGE:
                        ops.attn_merge(A, a0, a1, a2, N_HEAD, HEAD_DIM, SPLITS, SPLITS_P)
            tl.debug_barrier()  # every thread's writes are done before the release
            tl.atomic_add(counters + sig, 1, sem="release")
