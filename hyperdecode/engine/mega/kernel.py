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

__all__ = ["run_megakernel", "encode", "interpreted", "MegakernelTimeout", "WIDTH"]

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
    """The kernel's compile-time sizes for a program (unused ones are 1)."""
    d = prog.dims
    out = dict(B=prog.batch, B_P=_pow2(prog.batch, 16), MAX_SEQ=prog.max_seq, BLOCK=block, MLA=prog.family == "mla",
               NH=d["n_head"], HID=d["hidden"], NKV=d.get("n_kv", 1), HD=d.get("head_dim", 1))
    if prog.family == "mla":
        L = d["kv_lora"]
        out.update(NOPE=d["nope"], R=d["rope"], L=L, VH=d["v_head"], D=d["index_dim"], HI=d["index_heads"],
                   HI_P=_pow2(d["index_heads"], 16), TOPK=d["index_topk"], E=d["experts"], E_P=_pow2(d["experts"]),
                   K=d["top_k"], K_P=_pow2(d["top_k"]), I_MOE=d["moe_inter"], G=d["n_group"],
                   G_P=_pow2(d["n_group"]), TG=d["topk_group"], NORM_TOPK=d["norm_topk"], RI=d["rope_interleave"],
                   II=d["index_interleave"], LB=max(2, min(32, 4096 // L)), PB=16)
    else:
        out.update({k: 1 for k in ("NOPE", "R", "L", "VH", "D", "HI", "HI_P", "TOPK", "E", "E_P", "K", "K_P", "I_MOE",
                                   "G", "G_P", "TG", "NORM_TOPK", "RI", "II", "LB", "PB")})
    return out


def run_megakernel(prog: Program, A: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
                   workers: int | None = None, max_spin: int = 1_000_000, block: int | None = None,
                   k_block: int | None = None, num_warps: int = 4, prefetch: bool = False,
                   table: torch.Tensor | None = None) -> None:
    """Runs one decode step of `prog` over the arenas in place (`prog.W`/`W32` must be on A's device). Under
    TRITON_INTERPRET=1 one worker is used (and wide blocks: the interpreter pays per block, not per element);
    on a GPU the default is one worker per SM, `block` the width of vector ops, `k_block` the k-chunk of GEMV tiles,
    and `prefetch` has workers ask L2 for their next GEMV tile's weights before they wait (inline PTX: GPU only).
    Raises MegakernelTimeout if a wait ran out of spins."""
    global _KERNEL
    if A.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the megakernel on the CPU needs TRITON_INTERPRET=1 set before Triton is imported")
    if _KERNEL is None:
        from .megakernel import megakernel
        _KERNEL = megakernel
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
    _KERNEL[(workers,)](table, n, -(-n // workers), workers, prog.W, prog.W32, A, C, tokens.to(torch.int32),
                        pos.to(torch.int32), counters, err, prog.dims["inv_freq"], prog.eps, s.get("slice_eps", 0.0),
                        s.get("rope_factor", 1.0), s.get("softmax", 1.0), s.get("routed", 1.0),
                        TILE=_pow2(prog.dims["tile"], 16), KB=k_block, WIDTH=WIDTH, MAX_SPIN=max_spin,
                        PREFETCH=prefetch, LINE=128 // prog.W.element_size(),
                        **constexprs(prog, block),
                        **launch)
    if int(err.item()):
        i = int(err.item()) - 1
        ins = prog.instrs[i]
        raise MegakernelTimeout(f"megakernel: instruction {i} ({ins.op.name}) waited {max_spin} spins for counter "
                                f"{ins.waits[0][0]} to reach {ins.waits[0][1]}; stopped instead of hanging")
