"""isa.py's opcode and GEMV-flag numbers and its arena layout (row alignment, FP8 block) as Triton constexprs, for
the kernel code (megakernel.py, ops.py): the
kernel names them (`OP_GEMV`, `FLAG_ACCUMULATE`) and never writes a number. `mismatches()` checks them against
isa.py as it is now; the launcher refuses to run the kernel when they differ.

Imported only by the kernel modules (it needs Triton).
"""
import triton.language as tl

from . import isa

OP_EMBED = tl.constexpr(int(isa.Op.EMBED))
OP_GEMV = tl.constexpr(int(isa.Op.GEMV))
OP_ATTN = tl.constexpr(int(isa.Op.ATTN))
OP_ARGMAX = tl.constexpr(int(isa.Op.ARGMAX))
OP_NORM_SLICE = tl.constexpr(int(isa.Op.NORM_SLICE))
OP_ROPE_MLA = tl.constexpr(int(isa.Op.ROPE_MLA))
OP_INDEX_KEY = tl.constexpr(int(isa.Op.INDEX_KEY))
OP_INDEX_TOPK = tl.constexpr(int(isa.Op.INDEX_TOPK))
OP_MLA_ATTN = tl.constexpr(int(isa.Op.MLA_ATTN))
OP_ROUTE = tl.constexpr(int(isa.Op.ROUTE))
OP_EXPERT_UP = tl.constexpr(int(isa.Op.EXPERT_UP))
OP_EXPERT_DOWN = tl.constexpr(int(isa.Op.EXPERT_DOWN))
OP_ATTN_MERGE = tl.constexpr(int(isa.Op.ATTN_MERGE))
OP_MLA_UK = tl.constexpr(int(isa.Op.MLA_UK))
OP_MLA_UV = tl.constexpr(int(isa.Op.MLA_UV))
OP_PEER_WRITE = tl.constexpr(int(isa.Op.PEER_WRITE))  # not yet run by the kernel (isa.py)
OP_PEER_WAIT = tl.constexpr(int(isa.Op.PEER_WAIT))
OP_REDUCE = tl.constexpr(int(isa.Op.REDUCE))

FLAG_ACCUMULATE = tl.constexpr(isa.ACCUMULATE)
FLAG_FP32_WEIGHTS = tl.constexpr(isa.FP32_WEIGHTS)
FLAG_NORM_INPUT = tl.constexpr(isa.NORM_INPUT)
FLAG_SWIGLU_INPUT = tl.constexpr(isa.SWIGLU_INPUT)
FLAG_FP8_WEIGHTS = tl.constexpr(isa.FP8_WEIGHTS)

ROW_ALIGN = tl.constexpr(isa.ROW_ALIGN)
FP8_BLOCK = tl.constexpr(isa.FP8_BLOCK)
BEST_EMPTY = tl.constexpr(isa.BEST_EMPTY)

FLAGS = ("ACCUMULATE", "FP32_WEIGHTS", "NORM_INPUT", "SWIGLU_INPUT", "FP8_WEIGHTS")
LAYOUT = ("ROW_ALIGN", "FP8_BLOCK", "BEST_EMPTY")


def mismatches() -> list[str]:
    """Every opcode or flag whose kernel constant differs from isa.py's number (or that has no constant)."""
    here = globals()
    out = []
    for op in isa.Op:
        have = here.get(f"OP_{op.name}")
        if have is None or have.value != int(op):
            out.append(f"opcode {op.name}: isa.py says {int(op)}, the kernel uses {getattr(have, 'value', None)}")
    for name in FLAGS:
        if here[f"FLAG_{name}"].value != getattr(isa, name):
            out.append(f"flag {name}: isa.py says {getattr(isa, name)}, the kernel uses {here[f'FLAG_{name}'].value}")
    for name in LAYOUT:
        if here[name].value != getattr(isa, name):
            out.append(f"{name}: isa.py says {getattr(isa, name)}, the kernel uses {here[name].value}")
    known = {f"OP_{op.name}" for op in isa.Op}
    out += [f"kernel constant {k} names no opcode in isa.py" for k in here if k.startswith("OP_") and k not in known]
    return out
