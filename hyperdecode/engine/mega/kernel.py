"""The persistent Triton megakernel: every program walks its share of the instruction table (instruction i goes to
worker i mod workers), spins (bounded) until the instruction's dependency counter reaches its target with acquire
loads, runs the opcode, and signals its own counter with a release atomic. A spin that runs out sets the error word
to the instruction's index + 1 and the program stops doing work, so the host raises instead of hanging.

The opcode bodies are device functions in `ops` (every family) and `ops_mla` (GLM-5 / DeepSeek); the family is a
constexpr, so a Llama program does not compile the MLA bodies. Under `TRITON_INTERPRET=1` (no GPU) programs run
one after another in pid order, so only one worker is used there.
"""
from __future__ import annotations

import os

import torch

from .isa import ARGS
from .program import Program

__all__ = ["run_megakernel", "encode", "interpreted", "load_kernel", "MegakernelTimeout", "WIDTH"]

if not torch.cuda.is_available():
    # Without a GPU the kernel can only run in Triton's interpreter, which must be chosen before Triton decorates
    # the kernel's functions, so it is chosen when this module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

WIDTH = 13  # op, signal, wait counter, wait target, up to 9 operands


class MegakernelTimeout(RuntimeError):
    """A dependency wait ran out of spins: the program (or a planted dependency) can never make progress."""


def encode(prog: Program) -> torch.Tensor:
    """The instruction table: one int64 row per instruction (offsets into big arenas pass 2**31)."""
    rows = []
    for ins in prog.instrs:
        if len(ins.waits) > 1:
            raise ValueError("the megakernel takes at most one wait per instruction")
        wc, wt = ins.waits[0] if ins.waits else (-1, 0)
        args = [ins.args[name] for name in ARGS[ins.op]]
        rows.append([int(ins.op), ins.signal, wc, wt] + args + [0] * (WIDTH - 4 - len(args)))
    return torch.tensor(rows, dtype=torch.int64)


_KERNEL = None


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _pow2(n: int, at_least: int = 1) -> int:
    return max(at_least, 1 << max(0, n - 1).bit_length())


def constexprs(prog: Program, block: int) -> dict[str, int]:
    """The kernel's compile-time sizes for a program (those its family does not use are 1)."""
    d = prog.dims
    out = dict(B=prog.batch, B_P=_pow2(prog.batch, 16), MAX_SEQ=prog.max_seq, BLOCK=block, MLA=prog.family == "mla",
               N_HEAD=d.n_head, HIDDEN=d.hidden)
    unused = dict.fromkeys(("N_KV", "HEAD_DIM", "NOPE", "ROPE", "KV_LORA", "V_HEAD", "INDEX_DIM", "INDEX_HEADS",
                            "INDEX_HEADS_P", "INDEX_TOPK", "EXPERTS", "EXPERTS_P", "TOP_K", "TOP_K_P", "MOE_INTER",
                            "N_GROUP", "N_GROUP_P", "TOPK_GROUP", "NORM_TOPK", "ROPE_INTERLEAVE", "INDEX_INTERLEAVE",
                            "LATENT_BLOCK", "POS_BLOCK"), 1)
    out.update(unused)
    if prog.family == "llama":
        out.update(N_KV=d.n_kv, HEAD_DIM=d.head_dim)
    else:
        out.update(NOPE=d.nope, ROPE=d.rope, KV_LORA=d.kv_lora, V_HEAD=d.v_head, INDEX_DIM=d.index_dim,
                   INDEX_HEADS=d.index_heads, INDEX_HEADS_P=_pow2(d.index_heads, 16), INDEX_TOPK=d.index_topk,
                   EXPERTS=d.experts, EXPERTS_P=_pow2(d.experts), TOP_K=d.top_k, TOP_K_P=_pow2(d.top_k),
                   MOE_INTER=d.moe_inter, N_GROUP=d.n_group, N_GROUP_P=_pow2(d.n_group), TOPK_GROUP=d.topk_group,
                   NORM_TOPK=int(d.norm_topk), ROPE_INTERLEAVE=int(d.rope_interleave),
                   INDEX_INTERLEAVE=int(d.index_interleave), LATENT_BLOCK=max(2, min(32, 4096 // d.kv_lora)),
                   POS_BLOCK=16)
    return out


def load_kernel():
    """The megakernel (imported on first use), after checking its opcode constants against isa.py."""
    global _KERNEL
    if _KERNEL is None:
        from . import constants
        wrong = constants.mismatches()
        if wrong:
            raise RuntimeError("megakernel constants do not match isa.py: " + "; ".join(wrong))
        from .megakernel import megakernel
        _KERNEL = megakernel
    return _KERNEL


def run_megakernel(prog: Program, A: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
                   workers: int | None = None, max_spin: int = 1_000_000, block: int | None = None,
                   k_block: int | None = None, num_warps: int = 4, prefetch: bool = False,
                   table: torch.Tensor | None = None) -> None:
    """Runs one decode step of `prog` over the arenas in place (`prog.W`/`W32` must be on A's device). Under
    TRITON_INTERPRET=1 one worker is used (and wide blocks: the interpreter pays per block, not per element);
    on a GPU the default is one worker per SM, `block` the width of vector ops, `k_block` the k-chunk of GEMV tiles,
    and `prefetch` has workers ask L2 for their next GEMV tile's weights before they wait (inline PTX: GPU only).
    Raises MegakernelTimeout if a wait ran out of spins."""
    if A.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the megakernel on the CPU needs TRITON_INTERPRET=1 set before Triton is imported")
    kernel = load_kernel()
    if interpreted():
        workers, block, k_block, prefetch = 1, block or 256, k_block or 256, False
    elif workers is None:
        workers = torch.cuda.get_device_properties(A.device).multi_processor_count
    table = encode(prog).to(A.device) if table is None else table
    counters = torch.zeros(prog.num_counters, dtype=torch.int32, device=A.device)
    err = torch.zeros(1, dtype=torch.int32, device=A.device)
    n = len(prog.instrs)
    s = prog.scales
    block, k_block = block or 64, k_block or 256
    # all workers must be resident at once (they wait on each other): ask the driver for a cooperative launch
    launch = {} if interpreted() else dict(launch_cooperative_grid=True, num_warps=num_warps)
    kernel[(workers,)](table, n, -(-n // workers), workers, prog.W, prog.W32, A, C, tokens.to(torch.int32),
                       pos.to(torch.int32), counters, err, prog.dims.inv_freq, prog.eps, s.get("slice_eps", 0.0),
                       s.get("rope_factor", 1.0), s.get("softmax", 1.0), s.get("routed", 1.0),
                       TILE=_pow2(prog.dims.tile, 16), K_BLOCK=k_block, WIDTH=WIDTH, MAX_SPIN=max_spin,
                       PREFETCH=prefetch, LINE=128 // prog.W.element_size(),
                       **constexprs(prog, block),
                       **launch)
    if int(err.item()):
        i = int(err.item()) - 1
        ins = prog.instrs[i]
        raise MegakernelTimeout(f"megakernel: instruction {i} ({ins.op.name}) waited {max_spin} spins for counter "
                                f"{ins.waits[0][0]} to reach {ins.waits[0][1]}; stopped instead of hanging")
