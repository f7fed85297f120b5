"""Compiles the megakernel ahead of time for a GPU architecture, without a GPU: Triton's code generator and the
`ptxas` its wheel carries run on any machine, so GPU-only compile errors (types the interpreter lets through,
unsupported layouts, inline PTX) show up here, together with the kernel's registers, spills, shared memory and
compile time. Arguments get the specialisation Triton's runtime JIT gives them (pointers 16-byte aligned, integers
divisible by 16 where they are), so the code is the code a GPU would run.

    python -m hyperdecode.engine.mega.aot tiny-glm5 --batch 3 [--arch 90] [--prefetch] [--tile 16] [--fp8]
        [--ptx FILE] [--cubin FILE] [--sass FILE]

Prints one JSON object. It must run in its own process: the interpreter choice (TRITON_INTERPRET) is made when
Triton decorates the kernel's functions, and this needs the real ones. `cuobjdump --dump-sass` (in Triton's wheel,
`triton/backends/nvidia/bin`) disassembles the cubin; `--sass` writes that listing.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "compile_kernel", "resources", "sass", "load_widths", "poll_loop_barriers", "check_bodies"]

SIGNATURE = {"table": "*i64", "n_instr": "i32", "n_rounds": "i32", "n_workers": "i32", "W": "*bf16", "W32": "*fp32",
             "W8": "*fp8e4nv", "A": "*fp32", "C": "*fp32", "tok": "*i32", "pos": "*i32", "counters": "*i32",
             "err": "*i32", "inv_freq": "i32", "eps": "fp32", "slice_eps": "fp32", "rope_factor": "fp32",
             "softmax_scale": "fp32", "routed_scale": "fp32"}


def nvidia_tool(name: str) -> str:
    """A CUDA binary Triton's wheel carries (ptxas, cuobjdump, nvdisasm)."""
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def compile_kernel(fn, signature: dict[str, str], consts: dict, ints: dict[str, int], arch: int = 90,
                   num_warps: int = 4, cooperative: bool = False):
    """Compiles a @triton.jit function for sm_`arch` with the runtime JIT's specialisation: every pointer
    16-byte aligned, and the integer arguments given in `ints` divisible by 16 when their values are. Returns the
    compiled kernel and ptxas's log (registers, spills)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    aligned = [k for k, v in signature.items() if v.startswith("*") or (k in ints and ints[k] % 16 == 0)]
    attrs = {(names.index(k),): [["tt.divisibility", 16]] for k in aligned}
    src = ASTSource(fn=fn, signature={**signature, **{k: "constexpr" for k in consts}}, constexprs=consts,
                    attrs=attrs)
    options = {"num_warps": num_warps}
    if cooperative:
        options["launch_cooperative_grid"] = True
    # ptxas's log is what tells registers and spills: compile (no cache hit) and keep the log
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    finally:
        triton.knobs.nvidia.dump_ptxas_log = False
        triton.knobs.compilation.always_compile = False
    return compiled, log.getvalue()


def resources(log: str) -> dict[str, int]:
    """Registers, spill bytes (stores + loads) and stack frame of the kernel, from ptxas's -v log."""
    def grab(pattern: str) -> int:
        found = re.findall(pattern, log)
        return int(found[-1]) if found else 0
    return dict(registers=grab(r"Used (\d+) registers"),
                spill_bytes=grab(r"(\d+) bytes spill stores") + grab(r"(\d+) bytes spill loads"),
                stack_bytes=grab(r"(\d+) bytes stack frame"))


def sass(cubin: bytes) -> str:
    """The cubin's machine code, disassembled by the cuobjdump in Triton's wheel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([nvidia_tool("cuobjdump"), "--dump-sass", f.name], capture_output=True, text=True,
                              timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump failed: {done.stderr[-2000:]}")
    return done.stdout


def load_widths(sass_text: str) -> dict[str, int]:
    """How many global loads of each kind the machine code holds: "LDG.E.U16", "LDGSTS.E.BYPASS.128", ... (a cp.async
    is LDGSTS; a plain LDG.E / LDGSTS.E moves 4 bytes per thread)."""
    found: dict[str, int] = {}
    for op in re.findall(r"\b(LDGSTS[.A-Z0-9_]*|LDG[.A-Z0-9_]*)\b", sass_text):
        found[op] = found.get(op, 0) + 1
    return found


def narrow_loads(widths: dict[str, int]) -> int:
    """Global loads of fewer than 4 bytes per thread (bf16 or fp8 elements one at a time)."""
    return sum(n for op, n in widths.items() if re.search(r"\.(U8|S8|U16|S16)\b", op))


def wide_loads(widths: dict[str, int]) -> int:
    """Global loads (or cp.async) of 16 bytes per thread."""
    return sum(n for op, n in widths.items() if op.endswith(".128"))


def poll_loop_barriers(ptx: str) -> tuple[int, int]:
    """(barriers inside the dependency-poll loop, barriers from the loop's exit until the acquire's broadcast value is
    read back from shared memory): the loop is the one around the kernel's volatile counter load."""
    lines = ptx.splitlines()
    polls = [i for i, line in enumerate(lines) if "ld.volatile.global" in line]
    if len(polls) < 2:
        raise ValueError("no dependency-poll loop (two volatile counter loads) in this PTX")
    at = polls[1]  # the first is the load before the loop
    head = next(i for i in range(at, -1, -1) if re.match(r"^\$L__BB\d+_\d+:", lines[i]))
    label = lines[head].split(":")[0]
    back = next(i for i in range(at, len(lines)) if re.search(rf"\bbra(\.uni)?\s+{re.escape(label)};", lines[i]))
    inside = sum("bar.sync" in line for line in lines[head:back + 1])
    acquire = next(i for i in range(back, len(lines)) if ".acquire" in lines[i])
    broadcast = next(i for i in range(acquire, len(lines)) if "ld.shared" in lines[i])
    after = sum("bar.sync" in line for line in lines[back + 1:broadcast])
    return inside, after


def check_bodies(arch: int = 90) -> dict[str, dict]:
    """Compiles the GEMV and expert bodies alone (bf16 and FP8 weights) and reports each one's registers, spills,
    shared memory and global-load widths."""
    from .bodies import BODIES
    report = {}
    for weights in ("*bf16", "*fp8e4nv"):
        for name, (fn, signature, consts, warps) in BODIES(weights).items():
            compiled, log = compile_kernel(fn, signature, consts, {}, arch, warps)
            widths = load_widths(sass(compiled.asm["cubin"]))
            report[f"{name}_{weights.strip('*')}"] = dict(**resources(log), shared_bytes=compiled.metadata.shared,
                                                          wide_loads=wide_loads(widths),
                                                          narrow_loads=narrow_loads(widths), loads=widths)
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m hyperdecode.engine.mega.aot", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="a preset (built on the meta device: no weights are made)")
    ap.add_argument("--bodies", action="store_true", help="compile the GEMV and expert bodies alone and report "
                    "their load widths instead")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--queries", type=int, default=1, help="tokens per row: 1 + k compiles the program that verifies "
                                                           "k draft tokens")
    ap.add_argument("--max-seq", type=int, default=256)
    ap.add_argument("--kv-split", type=int, default=None, help="positions per attention instruction (Llama family)")
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability x10 (90 = Hopper)")
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--k-block", type=int, default=256)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--num-warps", type=int, default=None, help="default: the launcher's (4, or 8 above batch 4)")
    ap.add_argument("--prefetch", action="store_true")
    ap.add_argument("--fp8", action="store_true", help="block-FP8 projections and experts")
    ap.add_argument("--ptx", help="write the kernel's PTX here")
    ap.add_argument("--cubin", help="write the kernel's cubin here")
    ap.add_argument("--sass", help="write the cubin's disassembly (cuobjdump --dump-sass) here")
    a = ap.parse_args(argv)
    if __package__ + ".megakernel" in sys.modules:
        raise SystemExit("aot: the kernel was already built for the interpreter in this process; run aot in its own")
    os.environ["TRITON_INTERPRET"] = "0"  # hyperdecode chose the interpreter on import (no GPU); not for this
    if a.bodies:
        report = check_bodies(a.arch)
        print(json.dumps(report))
        return report
    if not a.model:
        ap.error("give a model preset, or --bodies")
    import torch

    from ...model.loader import preset_config
    from ...model.registry import family_of
    from .kernel import REGISTER_BUDGET, constexprs, default_warps, encode, load_kernel
    from .runner import compile_model

    cfg = preset_config(a.model)
    with torch.device("meta"):
        model = family_of(cfg).model(cfg).to(torch.bfloat16)
    prog = compile_model(model, a.batch, a.max_seq, tile=a.tile, fp8=a.fp8, kv_split=a.kv_split, queries=a.queries)
    megakernel = load_kernel()
    consts = constexprs(prog, 64, tile=a.tile, k_block=a.k_block, budget=REGISTER_BUDGET, stages=a.stages,
                        prefetch=a.prefetch)
    n = len(prog.instrs)
    workers = 132
    ints = dict(n_instr=n, n_rounds=-(-n // workers), n_workers=workers, inv_freq=prog.dims.inv_freq)
    t = time.perf_counter()
    compiled, log = compile_kernel(megakernel, SIGNATURE, consts, ints, a.arch,
                                  a.num_warps or default_warps(prog.batch, prog.queries), cooperative=True)
    report = dict(model=a.model, batch=a.batch, queries=a.queries, arch=a.arch, prefetch=a.prefetch, fp8=a.fp8,
                  num_warps=a.num_warps or default_warps(prog.batch, prog.queries), instructions=n,
                  stages=prog.num_counters, table_bytes=encode(prog).numel() * 8,
                  compile_s=round(time.perf_counter() - t, 2), shared_bytes=compiled.metadata.shared,
                  ptx_lines=compiled.asm["ptx"].count("\n"), **resources(log))
    report["poll_loop_barriers"], report["barriers_after_poll"] = poll_loop_barriers(compiled.asm["ptx"])
    for path, text in ((a.ptx, compiled.asm["ptx"]), (a.sass, sass(compiled.asm["cubin"]) if a.sass else None)):
        if path:
            Path(path).write_text(text)
    if a.cubin:
        Path(a.cubin).write_bytes(compiled.asm["cubin"])
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
