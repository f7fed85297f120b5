"""Compiles the megakernel ahead of time for a GPU architecture, without a GPU: Triton's code generator and the
`ptxas` its wheel carries run on any machine, so GPU-only compile errors (types the interpreter lets through,
unsupported layouts, inline PTX) show up here, together with the kernel's shared memory and compile time.

    python -m hyperdecode.engine.mega.aot tiny-glm5 --batch 3 [--arch 90] [--prefetch] [--tile 16]

Prints one JSON object. It must run in its own process: the interpreter choice (TRITON_INTERPRET) is made when
Triton decorates the kernel's functions, and this needs the real ones.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["main"]

SIGNATURE = {"table": "*i64", "n_instr": "i32", "n_rounds": "i32", "n_workers": "i32", "W": "*bf16", "W32": "*fp32",
             "A": "*fp32", "C": "*fp32", "tok": "*i32", "pos": "*i32", "counters": "*i32", "err": "*i32",
             "inv_freq": "i32", "eps": "fp32", "slice_eps": "fp32", "rope_factor": "fp32", "softmax_scale": "fp32",
             "routed_scale": "fp32"}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m hyperdecode.engine.mega.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a preset (built on the meta device: no weights are made)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-seq", type=int, default=256)
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = Hopper)")
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--k-block", type=int, default=256)
    ap.add_argument("--num-warps", type=int, default=4)
    ap.add_argument("--prefetch", action="store_true")
    a = ap.parse_args(argv)
    if __package__ + ".megakernel" in sys.modules:
        raise SystemExit("aot: the kernel was already built for the interpreter in this process; run aot in its own")
    os.environ["TRITON_INTERPRET"] = "0"  # hyperdecode chose the interpreter on import (no GPU); not for this
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ...model.loader import preset_config
    from ...model.registry import family_of
    from .kernel import WIDTH, constexprs, load_kernel
    from .runner import compile_model

    cfg = preset_config(a.model)
    with torch.device("meta"):
        model = family_of(cfg).model(cfg).to(torch.bfloat16)
    prog = compile_model(model, a.batch, a.max_seq, tile=a.tile)
    megakernel = load_kernel()
    consts = dict(constexprs(prog, 64), TILE=max(16, a.tile), K_BLOCK=a.k_block, WIDTH=WIDTH, MAX_SPIN=1_000_000,
                  PREFETCH=a.prefetch, LINE=64)
    src = ASTSource(fn=megakernel, signature={**SIGNATURE, **{k: "constexpr" for k in consts}}, constexprs=consts)
    t = time.perf_counter()
    compiled = triton.compile(src, target=GPUTarget("cuda", a.arch, 32),
                              options={"num_warps": a.num_warps, "launch_cooperative_grid": True})
    report = dict(model=a.model, batch=a.batch, arch=a.arch, prefetch=a.prefetch, instructions=len(prog.instrs),
                  stages=prog.num_counters, compile_s=round(time.perf_counter() - t, 2),
                  shared_bytes=compiled.metadata.shared, ptx_lines=compiled.asm["ptx"].count("\n"))
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
