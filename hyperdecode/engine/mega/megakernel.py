"""The persistent megakernel itself (see `kernel` for the launcher): the worker loop, bounded waits, dispatch to the
opcode bodies in `ops` and `ops_mla`, and the release signal. Imported only when the kernel is first launched, so
Triton is needed only by the `mega` backend and sees TRITON_INTERPRET first.
"""
import triton
import triton.language as tl

from . import ops, ops_mla


@triton.jit
def megakernel(table, n_instr, n_rounds, n_workers, W, W32, A, C, tok, pos, counters, err, inv_freq, eps,
               slice_eps, rope_factor, softmax_scale, routed_scale,
               B: tl.constexpr, MAX_SEQ: tl.constexpr, BLOCK: tl.constexpr, TILE: tl.constexpr,
               MAX_SPIN: tl.constexpr, MLA: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr,
               NOPE: tl.constexpr, R: tl.constexpr, L: tl.constexpr, VH: tl.constexpr, D: tl.constexpr,
               HI: tl.constexpr, HI_P: tl.constexpr, TOPK: tl.constexpr, E: tl.constexpr, E_P: tl.constexpr,
               K: tl.constexpr, K_P: tl.constexpr, I_MOE: tl.constexpr, G: tl.constexpr, G_P: tl.constexpr,
               TG: tl.constexpr, NORM_TOPK: tl.constexpr, RI: tl.constexpr, II: tl.constexpr, LB: tl.constexpr,
               PB: tl.constexpr, HID: tl.constexpr, B_P: tl.constexpr, KB: tl.constexpr,
               WIDTH: tl.constexpr, PREFETCH: tl.constexpr, LINE: tl.constexpr):
    pid = tl.program_id(0)
    KV_LAYER: tl.constexpr = B * NKV * MAX_SEQ * HD
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
                    if (op == 1) & ((a7 & 2) == 0):
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
            if tl.load(err) == 0:  # opcodes as in isa.Op
                if op == 0:
                    ops.embed(W, A, tok, a0, a1, a2, B, BLOCK)
                elif op == 1:
                    if (a7 & 2) != 0:
                        ops.gemv(W32, W, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, eps, B, B_P, KB, TILE)
                    else:
                        ops.gemv(W, W, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, eps, B, B_P, KB, TILE)
                elif op == 3:
                    ops.argmax(A, a0, a1, a2, B, 1024)  # one program scans the vocabulary: wide loads
                if MLA:
                    if op == 4:
                        ops.norm_rows(W, A, a0, a1, a2, a3, a4, a5, slice_eps, B, BLOCK)
                    elif op == 5:
                        ops_mla.rope_mla(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, a3, a4, a5, NH, NOPE,
                                         R, L, MAX_SEQ, RI, BLOCK)
                    elif op == 6:
                        ops_mla.index_key(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, D, R, MAX_SEQ, II)
                    elif op == 7:
                        ops_mla.index_topk(W32, A, C, pos, inv_freq, rope_factor, a0, a1, a2, a3, a4, HI, HI_P,
                                           D, R, TOPK, MAX_SEQ, II, PB, BLOCK)
                    elif op == 8:
                        ops_mla.mla_attn(W, A, C, pos, softmax_scale, a0, a1, a2, a3, a4, a5, a6, a7, NH, NOPE,
                                         R, L, VH, MAX_SEQ, LB)
                    elif op == 9:
                        ops_mla.route(W32, A, a0, a1, a2, a3, routed_scale, E, E_P, K, K_P, G, G_P, TG,
                                      NORM_TOPK)
                    elif op == 10:
                        ops_mla.expert_up(W, A, a0, a1, a2, a3, a4, a5, a6, a7, a8, eps, HID, I_MOE, K, KB, TILE)
                    elif op == 11:
                        ops_mla.expert_down(W, A, a0, a1, a2, a3, a4, a5, a6, a7, HID, I_MOE, K, KB, TILE)
                elif op == 2:
                    ops.attn(W32, A, C, pos, inv_freq, a0, a1, a2, a3, 2 * a4 * KV_LAYER, (2 * a4 + 1) * KV_LAYER,
                             NH, NKV, HD, MAX_SEQ, BLOCK)
            tl.debug_barrier()
            tl.atomic_add(counters + tl.load(row_ptr + 1), 1, sem="release")
