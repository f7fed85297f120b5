"""The launcher of the persistent Triton megakernel: every program walks its share of the instruction table
(instruction i goes to worker i mod workers), waits (bounded) until the instruction's dependency counter reaches its
target, runs the opcode, and signals its own counter with a release atomic (megakernel.py says how). A wait that
runs out sets the error word to the instruction's index + 1 and the program stops doing work, so the host raises
instead of hanging; `Launch.check` reads the word, and a runner may read it after the step's logits reach the host
instead of syncing for it.

The opcode bodies are device functions in `ops` (every family) and `ops_mla` (GLM-5 / DeepSeek); the family is a
constexpr, so a Llama program does not compile the MLA bodies. Under `TRITON_INTERPRET=1` (no GPU) programs run
one after another in pid order, so only one worker is used there.
"""
from __future__ import annotations

import os

import torch

from .isa import ARGS
from .program import Program

__all__ = ["run_megakernel", "Launch", "encode", "interpreted", "load_kernel", "MegakernelTimeout", "WIDTH",
           "constexprs"]

if not torch.cuda.is_available():
    # Without a GPU the kernel can only run in Triton's interpreter, which must be chosen before Triton decorates
    # the kernel's functions, so it is chosen when this module is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

WIDTH = 14  # op, signal, wait counter, wait target, up to 10 operands
REGISTER_BUDGET = 8192  # fp32 accumulator elements a small-batch GEMV or expert tile may keep per program


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


def _floor_pow2(n: int) -> int:
    return 1 << max(0, n.bit_length() - 1)


def constexprs(prog: Program, block: int = 64, tile: int | None = None, k_block: int = 256,
               budget: int = REGISTER_BUDGET, stages: int = 4, max_spin: int = 1_000_000, prefetch: bool = False,
               asm: bool = True) -> dict[str, int]:
    """Every compile-time constant of the kernel for a program (sizes its family does not use are 1), as the
    launcher and `aot` pass them. GEMV tiles of small batches (<= 4 rows) keep a [rows, TILE, GEMV_K] fp32
    accumulator, expert tiles two [TILE, EXPERT_K]: `budget` bounds them (registers); FP8 chunks stay inside one
    128-column scale block; `asm`: inline PTX allowed (not under the interpreter)."""
    d = prog.dims
    tile = _pow2(tile or d.tile, 16)
    rows = _pow2(prog.batch) if prog.batch <= 4 else _pow2(prog.batch, 16)
    # a tensor-core tile (rows > 4) keeps [rows, K] activations and [TILE, K] weights: 64 columns compile without
    # spills inside the whole kernel (with 8 warps: see `default_warps`)
    elementwise_k = min(k_block, max(16, _floor_pow2(budget // (rows * tile))))  # fp32 weights always go this way
    gemv_k = min(k_block, 64) if rows > 4 else elementwise_k
    expert_k = min(k_block, max(16, _floor_pow2(budget // (2 * tile))))
    out = dict(B=prog.batch, ROWS=rows, MAX_SEQ=prog.max_seq, BLOCK=block, TILE=tile, GEMV_K=gemv_k,
               GEMV_K8=min(gemv_k, 128), GEMV_K32=elementwise_k, EXPERT_K=expert_k, EXPERT_K8=min(expert_k, 128),
               MLA=prog.family == "mla", N_HEAD=d.n_head, HIDDEN=d.hidden, STAGES=stages, WIDTH=WIDTH,
               MAX_SPIN=max_spin, PREFETCH=prefetch, LINE=128 // prog.W.element_size(), ASM=asm,
               QUERIES=prog.queries)
    unused = dict.fromkeys(("N_KV", "HEAD_DIM", "KV_SPLIT", "SPLITS", "SPLITS_P", "NOPE", "ROPE", "KV_LORA", "V_HEAD",
                            "INDEX_DIM", "INDEX_HEADS", "INDEX_HEADS_P", "INDEX_TOPK", "EXPERTS", "EXPERTS_P", "TOP_K",
                            "TOP_K_P", "MOE_INTER", "N_GROUP", "N_GROUP_P", "TOPK_GROUP", "NORM_TOPK",
                            "ROPE_INTERLEAVE", "INDEX_INTERLEAVE", "LATENT_BLOCK", "POS_BLOCK"), 1)
    out.update(unused)
    if prog.family == "llama":
        out.update(N_KV=d.n_kv, HEAD_DIM=d.head_dim, KV_SPLIT=d.kv_split, SPLITS=d.splits, SPLITS_P=_pow2(d.splits))
    else:
        out.update(NOPE=d.nope, ROPE=d.rope, KV_LORA=d.kv_lora, V_HEAD=d.v_head, INDEX_DIM=d.index_dim,
                   INDEX_HEADS=d.index_heads, INDEX_HEADS_P=_pow2(d.index_heads, 16), INDEX_TOPK=d.index_topk,
                   EXPERTS=d.experts, EXPERTS_P=_pow2(d.experts), TOP_K=d.top_k, TOP_K_P=_pow2(d.top_k),
                   MOE_INTER=d.moe_inter, N_GROUP=d.n_group, N_GROUP_P=_pow2(d.n_group), TOPK_GROUP=d.topk_group,
                   NORM_TOPK=int(d.norm_topk), ROPE_INTERLEAVE=int(d.rope_interleave),
                   INDEX_INTERLEAVE=int(d.index_interleave), LATENT_BLOCK=max(2, min(32, 4096 // d.kv_lora)),
                   POS_BLOCK=16)
    return out


def default_warps(batch: int, queries: int = 1) -> int:
    """Warps per program: 4, or 8 for batches that take the tensor-core GEMV and for verify programs (queries > 1:
    the attention's loop over a row's tokens); with 4 the compiled kernel spills (aot: 128–880 B at 2–4 tokens)."""
    return 8 if batch > 4 or queries > 1 else 4


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


class Launch:
    """A prepared launch of one program on one device: its table, dependency counters and error word (kept across
    steps: a step allocates nothing), and its launch sizes. Under TRITON_INTERPRET=1 one worker is used (and wide
    blocks: the interpreter pays per block, not per element); on a GPU the default is one worker per SM, `block` the
    width of vector ops, `k_block` the k-chunk of GEMV tiles, `stages` how many chunks are in flight, and `prefetch`
    has each worker ask L2 for its next GEMV tile's weights as it starts the current one (inline PTX: GPU only)."""

    def __init__(self, prog: Program, device: torch.device | str, workers: int | None = None,
                 max_spin: int = 1_000_000, block: int | None = None, k_block: int | None = None,
                 num_warps: int | None = None,
                 prefetch: bool = False, stages: int | None = None):
        device = torch.device(device)
        if device.type == "cpu" and not interpreted():
            raise RuntimeError("the megakernel on the CPU needs TRITON_INTERPRET=1 set before Triton is imported")
        self.prog = prog
        self.kernel = load_kernel()
        if interpreted():
            workers, block, k_block, prefetch, budget = 1, block or 256, k_block or 256, False, 1 << 16
        else:
            workers = workers or torch.cuda.get_device_properties(device).multi_processor_count
            budget = REGISTER_BUDGET
        self.workers = workers
        self.max_spin = max_spin
        self.table = encode(prog).to(device)
        self.counters = torch.zeros(prog.num_counters, dtype=torch.int32, device=device)
        self.err = torch.zeros(1, dtype=torch.int32, device=device)
        n = len(prog.instrs)
        s = prog.scales
        self.args = (self.table, n, -(-n // workers), workers)
        self.scalars = (prog.dims.inv_freq, prog.eps, s.get("slice_eps", 0.0), s.get("rope_factor", 1.0),
                        s.get("softmax", 1.0), s.get("routed", 1.0))
        self.consts = constexprs(prog, block or 64, k_block=k_block or 256, budget=budget,
                                 stages=stages or (1 if interpreted() else 4), max_spin=max_spin, prefetch=prefetch,
                                 asm=not interpreted())
        # all workers must be resident at once (they wait on each other): ask the driver for a cooperative launch
        self.options = {} if interpreted() else dict(launch_cooperative_grid=True,
                                                     num_warps=num_warps or default_warps(prog.batch, prog.queries))

    def run(self, A: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor) -> None:
        """Launches one decode step over the arenas in place; returns without waiting for the device (see
        `check`)."""
        self.counters.zero_()
        p = self.prog
        self.compiled = self.kernel[(self.workers,)](*self.args, p.W, p.W32, p.W8, A, C, tokens.to(torch.int32),
                                                     pos.to(torch.int32), self.counters, self.err, *self.scalars,
                                                     **self.consts, **self.options)

    def compile(self, A: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor):
        """The kernel compiled for these arguments without launching it (GPU only), so that its registers and spills
        (`n_regs`, `n_spills`) are known before a step runs."""
        if interpreted():
            raise RuntimeError("Triton's interpreter compiles nothing: registers and spills exist on a GPU only")
        p = self.prog
        return self.kernel.warmup(*self.args, p.W, p.W32, p.W8, A, C, tokens.to(torch.int32), pos.to(torch.int32),
                                  self.counters, self.err, *self.scalars, grid=(self.workers,), **self.consts,
                                  **self.options)

    def failure(self, err: int) -> MegakernelTimeout | None:
        """The error an error-word value stands for (None for 0)."""
        if not err:
            return None
        i = err - 1
        ins = self.prog.instrs[i]
        return MegakernelTimeout(f"megakernel: instruction {i} ({ins.op.name}) waited {self.max_spin} spins for "
                                 f"counter {ins.waits[0][0]} to reach {ins.waits[0][1]}; stopped instead of hanging")

    def check(self) -> None:
        """Raises MegakernelTimeout if the last step's error word is set (a host sync), and clears it."""
        error = self.failure(int(self.err.item()))
        if error is not None:
            self.err.zero_()
            raise error


def run_megakernel(prog: Program, A: torch.Tensor, C: torch.Tensor, tokens: torch.Tensor, pos: torch.Tensor,
                   **launch) -> None:
    """Runs one decode step of `prog` over the arenas in place (`prog.W`/`W8`/`W32` must be on A's device) and
    waits for it; `launch`: see `Launch`. Raises MegakernelTimeout if a wait ran out of spins."""
    step = Launch(prog, A.device, **launch)
    step.run(A, C, tokens, pos)
    step.check()
