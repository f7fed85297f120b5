"""The persistent Triton megakernel: every program walks its share of the instruction table (instruction i goes to
worker i mod workers), spins (bounded) until the instruction's dependency counter reaches its target with acquire
loads, runs the opcode, and signals its own counter with a release atomic. A spin that runs out sets the error word
to the instruction's index + 1 and the program stops doing work, so the host raises instead of hanging.

Under `TRITON_INTERPRET=1` (no GPU) programs run one after another in pid order, so only one worker is used there.
Llama-family opcodes only (the GLM-family ones run in the VM so far), fp32 arenas; an early version, checked
against the VM, not yet tuned for a GPU.
"""
from __future__ import annotations

import os

import torch

from .isa import Op
from .program import Program

__all__ = ["run_megakernel", "encode", "ARGS", "MegakernelTimeout"]

if not torch.cuda.is_available():
    # Without a GPU the kernel can only run in Triton's interpreter, which must be chosen before Triton is first
    # imported (torch imports it lazily, e.g. when a model is built), so it is chosen when hyperdecode is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

ARGS = {
    Op.EMBED: ("w", "out", "n"),
    Op.RMSNORM: ("x", "w", "out", "n"),
    Op.GEMV: ("x", "k", "w", "out", "n", "c0", "c1", "accumulate"),
    Op.ROPE_APPEND: ("qkv", "row", "layer"),
    Op.ATTN: ("qkv", "out", "row", "kv_head", "layer"),
    Op.SWIGLU: ("x", "out", "n"),
    Op.ARGMAX: ("x", "out", "n"),
}
WIDTH = 12  # op, signal, wait counter, wait target, 8 arguments


class MegakernelTimeout(RuntimeError):
    """A dependency wait ran out of spins: the program (or a planted dependency) can never make progress."""


def encode(prog: Program) -> torch.Tensor:
    rows = []
    for ins in prog.instrs:
        if len(ins.waits) > 1:
            raise ValueError("the megakernel takes at most one wait per instruction")
        wc, wt = ins.waits[0] if ins.waits else (-1, 0)
        if ins.op not in ARGS:
            raise ValueError(f"the megakernel does not implement {ins.op.name} yet (the VM does)")
        args = [ins.args[name] for name in ARGS[ins.op]]
        rows.append([int(ins.op), ins.signal, wc, wt] + args + [0] * (WIDTH - 4 - len(args)))
    return torch.tensor(rows, dtype=torch.int32)


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def megakernel(table, n_instr, n_rounds, n_workers, W, A, C, tok, pos, counters, err, inv_freq, eps,
                   B: tl.constexpr, NH: tl.constexpr, NKV: tl.constexpr, HD: tl.constexpr, MAX_SEQ: tl.constexpr,
                   BLOCK: tl.constexpr, TILE: tl.constexpr, MAX_SPIN: tl.constexpr):
        pid = tl.program_id(0)
        QW: tl.constexpr = (NH + 2 * NKV) * HD
        GROUP: tl.constexpr = NH // NKV
        LAYER: tl.constexpr = B * NKV * MAX_SEQ * HD
        d = tl.arange(0, HD)
        half = tl.arange(0, HD // 2)
        for t in range(0, n_rounds):
            i = pid + t * n_workers
            if i < n_instr:
                row_ptr = table + i * 12
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
                if wc >= 0:
                    seen = tl.atomic_add(counters + wc, 0, sem="acquire")
                    spins = 0
                    while (seen < wt) & (spins < MAX_SPIN):
                        seen = tl.atomic_add(counters + wc, 0, sem="acquire")
                        spins += 1
                    if seen < wt:
                        tl.atomic_max(err, i + 1)
                if tl.load(err) == 0:
                    if op == 0:  # EMBED w, out, n
                        for b in tl.static_range(B):
                            tk = tl.load(tok + b)
                            for k0 in range(0, a2, BLOCK):
                                o = k0 + tl.arange(0, BLOCK)
                                m = o < a2
                                tl.store(A + a1 + b * a2 + o, tl.load(W + a0 + tk * a2 + o, mask=m), mask=m)
                    elif op == 1:  # RMSNORM x, w, out, n
                        for b in tl.static_range(B):
                            ss = 0.0
                            for k0 in range(0, a3, BLOCK):
                                o = k0 + tl.arange(0, BLOCK)
                                v = tl.load(A + a0 + b * a3 + o, mask=o < a3, other=0.0)
                                ss += tl.sum(v * v, axis=0)
                            inv = 1.0 / tl.sqrt(ss / a3 + eps)
                            for k0 in range(0, a3, BLOCK):
                                o = k0 + tl.arange(0, BLOCK)
                                m = o < a3
                                v = tl.load(A + a0 + b * a3 + o, mask=m, other=0.0)
                                g = tl.load(W + a1 + o, mask=m, other=0.0)
                                tl.store(A + a2 + b * a3 + o, v * inv * g, mask=m)
                    elif op == 2:  # GEMV x, k, w, out, n, c0, c1, accumulate
                        cols = a5 + tl.arange(0, TILE)
                        cm = cols < a6
                        for b in tl.static_range(B):
                            acc = tl.zeros((TILE,), dtype=tl.float32)
                            for k0 in range(0, a1, BLOCK):
                                ks = k0 + tl.arange(0, BLOCK)
                                km = ks < a1
                                xv = tl.load(A + a0 + b * a1 + ks, mask=km, other=0.0)
                                wv = tl.load(W + a2 + ks[:, None] * a4 + cols[None, :],
                                             mask=km[:, None] & cm[None, :], other=0.0)
                                acc += tl.sum(xv[:, None] * wv, axis=0)
                            if a7 != 0:
                                acc += tl.load(A + a3 + b * a4 + cols, mask=cm, other=0.0)
                            tl.store(A + a3 + b * a4 + cols, acc, mask=cm)
                    elif op == 3:  # ROPE_APPEND qkv, row, layer
                        p = tl.load(pos + a1)
                        ang = p.to(tl.float32) * tl.load(W + inv_freq + half)
                        c = tl.cos(ang)
                        s = tl.sin(ang)
                        base = A + a0 + a1 * QW
                        for h in tl.static_range(NH + NKV):
                            x1 = tl.load(base + h * HD + half)
                            x2 = tl.load(base + h * HD + HD // 2 + half)
                            tl.store(base + h * HD + half, x1 * c - x2 * s)
                            tl.store(base + h * HD + HD // 2 + half, x2 * c + x1 * s)
                        for g in tl.static_range(NKV):
                            slot = ((a1 * NKV + g) * MAX_SEQ + p) * HD
                            tl.store(C + 2 * a2 * LAYER + slot + d, tl.load(base + (NH + g) * HD + d))
                            tl.store(C + (2 * a2 + 1) * LAYER + slot + d, tl.load(base + (NH + NKV + g) * HD + d))
                    elif op == 4:  # ATTN qkv, out, row, kv_head, layer
                        n = tl.load(pos + a2) + 1
                        kbase = C + 2 * a4 * LAYER + (a2 * NKV + a3) * MAX_SEQ * HD
                        vbase = kbase + LAYER
                        for j in tl.static_range(GROUP):
                            h = a3 * GROUP + j
                            q = tl.load(A + a0 + a2 * QW + h * HD + d) / tl.sqrt(HD * 1.0)
                            m_i = float("-inf")
                            l_i = 0.0
                            acc = tl.zeros((HD,), dtype=tl.float32)
                            for p0 in range(0, n, BLOCK):
                                ps = p0 + tl.arange(0, BLOCK)
                                pm = ps < n
                                k = tl.load(kbase + ps[:, None] * HD + d[None, :], mask=pm[:, None], other=0.0)
                                sc = tl.where(pm, tl.sum(k * q[None, :], axis=1), float("-inf"))
                                m_new = tl.maximum(m_i, tl.max(sc, axis=0))
                                alpha = tl.exp(m_i - m_new)
                                e = tl.exp(sc - m_new)
                                v = tl.load(vbase + ps[:, None] * HD + d[None, :], mask=pm[:, None], other=0.0)
                                l_i = l_i * alpha + tl.sum(e, axis=0)
                                acc = acc * alpha + tl.sum(e[:, None] * v, axis=0)
                                m_i = m_new
                            tl.store(A + a1 + a2 * NH * HD + h * HD + d, acc / l_i)
                    elif op == 5:  # SWIGLU x, out, n
                        for b in tl.static_range(B):
                            for k0 in range(0, a2, BLOCK):
                                o = k0 + tl.arange(0, BLOCK)
                                m = o < a2
                                gv = tl.load(A + a0 + b * 2 * a2 + o, mask=m, other=0.0)
                                uv = tl.load(A + a0 + b * 2 * a2 + a2 + o, mask=m, other=0.0)
                                tl.store(A + a1 + b * a2 + o, gv / (1.0 + tl.exp(-gv)) * uv, mask=m)
                    elif op == 6:  # ARGMAX x, out, n
                        for b in tl.static_range(B):
                            best = float("-inf")
                            idx = 0
                            for k0 in range(0, a2, BLOCK):
                                o = k0 + tl.arange(0, BLOCK)
                                v = tl.load(A + a0 + b * a2 + o, mask=o < a2, other=float("-inf"))
                                bm = tl.max(v, axis=0)
                                if bm > best:
                                    best = bm
                                    idx = k0 + tl.argmax(v, axis=0)
                            tl.store(A + a1 + b, idx.to(tl.float32))
                tl.atomic_add(counters + tl.load(row_ptr + 1), 1, sem="release")

    return megakernel


_KERNEL = None


def run_megakernel(prog: Program, A: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
                   workers: int | None = None, max_spin: int = 1_000_000, block: int = 64) -> None:
    """Runs one decode step of `prog` over the arenas in place. Under TRITON_INTERPRET=1 one worker is used."""
    global _KERNEL
    if A.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the megakernel on the CPU needs TRITON_INTERPRET=1 set before Triton is imported")
    if _KERNEL is None:
        _KERNEL = _kernel()
    if os.environ.get("TRITON_INTERPRET") == "1":
        workers = 1
    elif workers is None:
        workers = torch.cuda.get_device_properties(A.device).multi_processor_count
    d = prog.dims
    tiles = {ins.args["c1"] - ins.args["c0"] for ins in prog.instrs if ins.op == Op.GEMV}
    tile = 1 << (max(tiles) - 1).bit_length()
    table = encode(prog).to(A.device)
    counters = torch.zeros(prog.num_counters, dtype=torch.int32, device=A.device)
    err = torch.zeros(1, dtype=torch.int32, device=A.device)
    n = len(prog.instrs)
    _KERNEL[(workers,)](table, n, -(-n // workers), workers, prog.W.to(A.device), A, C, tokens.to(torch.int32),
                        pos.to(torch.int32), counters, err, d["inv_freq"], prog.eps, B=prog.batch, NH=d["n_head"],
                        NKV=d["n_kv"], HD=d["head_dim"], MAX_SEQ=prog.max_seq, BLOCK=block, TILE=tile,
                        MAX_SPIN=max_spin)
    if int(err.item()):
        i = int(err.item()) - 1
        ins = prog.instrs[i]
        raise MegakernelTimeout(f"megakernel: instruction {i} ({ins.op.name}) waited {max_spin} spins for counter "
                                f"{ins.waits[0][0]} to reach {ins.waits[0][1]}; stopped instead of hanging")
