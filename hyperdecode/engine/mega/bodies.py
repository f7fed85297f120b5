"""The GEMV and expert opcode bodies, each wrapped as a kernel of its own, so that `aot --bodies` can compile them
alone and check their machine code (load widths, spills) without the rest of the megakernel around them. Imported
only by aot.py, after it has turned Triton's interpreter off."""
import triton
import triton.language as tl

from . import ops, ops_mla

__all__ = ["gemv_body", "expert_up_body", "expert_down_body", "BODIES"]


@triton.jit
def gemv_body(Wp, W, W32, A, x, k, w, out, n, c0, c1, flags, norm, scale, eps, B: tl.constexpr, ROWS: tl.constexpr,
              K_BLOCK: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr):
    ops.gemv(Wp, W, W32, A, x, k, w, out, n, c0, c1, flags, norm, scale, eps, 0, 0, B, ROWS, K_BLOCK, TILE, STAGES)


@triton.jit
def expert_up_body(Wp, W, W32, A, x, route, act, row, slot, w13, c0, c1, norm, scale, eps, H: tl.constexpr,
                   I: tl.constexpr, K: tl.constexpr, K_BLOCK: tl.constexpr, TILE: tl.constexpr,
                   STAGES: tl.constexpr):
    ops_mla.expert_up(Wp, W, W32, A, x, route, act, row, slot, w13, c0, c1, norm, scale, eps, H, I, K, K_BLOCK, TILE,
                      STAGES)


@triton.jit
def expert_down_body(Wp, W32, A, route, act, x, row, slot, w2, c0, c1, scale, H: tl.constexpr, I: tl.constexpr,
                     K: tl.constexpr, K_BLOCK: tl.constexpr, TILE: tl.constexpr, STAGES: tl.constexpr):
    ops_mla.expert_down(Wp, W32, A, route, act, x, row, slot, w2, c0, c1, scale, H, I, K, K_BLOCK, TILE, STAGES)


def _signature(fn, pointers: dict[str, str]) -> dict[str, str]:
    """Every non-constexpr argument: the given pointer types, fp32 for eps, int64 (table operands) otherwise."""
    names = [n for n, p in zip(fn.arg_names, fn.params) if not p.is_constexpr]
    return {n: pointers.get(n, "fp32" if n == "eps" else "i64") for n in names}


def BODIES(weights: str) -> dict[str, tuple]:
    """The bodies to check for one weight type ("*bf16" or "*fp8e4nv"): name -> (kernel, signature, constexprs,
    warps), with the launcher's block sizes and warps for Llama-3.2-1B / medium-glm5 shapes (TILE 16)."""
    from .kernel import REGISTER_BUDGET, default_warps
    common = {"W": "*bf16", "W32": "*fp32", "A": "*fp32", "Wp": weights}
    k_small = 128 if weights == "*fp8e4nv" else 256
    out = {}
    for batch, rows in ((1, 1), (3, 4), (8, 16)):
        k = min(k_small, max(16, REGISTER_BUDGET // (rows * 16))) if rows <= 4 else 64  # as the launcher
        out[f"gemv_b{batch}"] = (gemv_body, _signature(gemv_body, common),
                                 dict(B=batch, ROWS=rows, K_BLOCK=k, TILE=16, STAGES=4), default_warps(batch))
    expert = dict(H=1536, I=384, K=8, K_BLOCK=min(k_small, REGISTER_BUDGET // 32), TILE=16, STAGES=4)
    out["expert_up"] = (expert_up_body, _signature(expert_up_body, common), expert, 4)
    out["expert_down"] = (expert_down_body, _signature(expert_down_body, common), expert, 4)
    return out
