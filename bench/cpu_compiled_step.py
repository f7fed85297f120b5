"""Probe for issue 18's compiled CPU step: what `torch.compile` (inductor's C++ backend) makes of SmolLM2's batch-1
decode step with the quantized weights, before any of it becomes a backend.

Runs the static-shape decode step (the one the graph backend captures on GPUs: the whole cache under a mask) eagerly
and compiled, with the quantized matmul as a Python custom op (`torch.library.custom_op` around the ctypes kernel),
and the ordinary dynamic reference step for scale; checks the compiled logits against the eager ones; prints the
compile time and ms per step (best of `--repeats` runs of `--steps` steps).

    python bench/cpu_compiled_step.py [--context 128] [--steps 50] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

import hyperdecode as hd
from hyperdecode.engine.graph import GraphRunner
from hyperdecode.model import quant


@torch.library.custom_op("hyperdecode_probe::qmatmul", mutates_args=())
def qmatmul(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, c: torch.Tensor | None, kind: int) -> torch.Tensor:
    m, k = x.shape
    y = torch.empty(m, qs.shape[0])
    sums = torch.empty(m, k // quant.BLOCK)
    x = x.contiguous()
    quant.kernel_library().qmatmul(kind, qs.data_ptr(), d.data_ptr(), None if c is None else c.data_ptr(),
                                   x.data_ptr(), sums.data_ptr(), y.data_ptr(), m, qs.shape[0], k,
                                   torch.get_num_threads())
    return y


@qmatmul.register_fake
def _(x, qs, d, c, kind):
    return x.new_empty(x.shape[0], qs.shape[0])


def traceable(self, x: torch.Tensor) -> torch.Tensor:
    """QuantLinear.forward as the compiler sees it: one opaque op."""
    if torch.compiler.is_compiling():
        y = torch.ops.hyperdecode_probe.qmatmul(x.reshape(-1, self.in_features), self.qs, self.d, self.c, self.kind)
        return y.view(*x.shape[:-1], self.out_features)
    return eager_forward(self, x)


eager_forward = quant.QuantLinear.forward


def per_step(fn, pos: torch.Tensor, steps: int, repeats: int, context: int) -> float:
    """Best seconds per step over `repeats` runs of `steps` steps at positions 0, 1, ... (wrapping in the cache)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            pos[0, 0] = i % (context - 1)
            fn()
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--context", type=int, default=128, help="cache positions the static step reads")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    quant.QuantLinear.forward = traceable
    llm = hd.LLM("smollm2", device="cpu")
    runner = GraphRunner(llm.model, capture=False)
    runner.setup(1, args.context)
    step = runner._static_step(1, 1)
    tokens, pos, slots = step.inputs
    tokens[0, 0], pos[0, 0], slots[0] = 1, 0, 0
    compiled = torch.compile(step, dynamic=False)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled()
        compile_s = time.perf_counter() - start
        for fn in (step, compiled):
            for _ in range(5):
                fn()
        eager_ms = 1e3 * per_step(step, pos, args.steps, args.repeats, args.context)
        compiled_ms = 1e3 * per_step(compiled, pos, args.steps, args.repeats, args.context)
        pos[0, 0] = 7
        diff = (step()[1].clone() - compiled()[1].clone()).abs().max().item()
    prompt = llm.tokenizer.encode("The history of the city of Paris begins")
    best = max(llm.generate(prompt, max_tokens=args.steps, ignore_eos=True).stats.tokens_per_s
               for _ in range(args.repeats))
    print(f"SmolLM2 quantized, batch 1, {torch.get_num_threads()} threads, static cache of {args.context} positions")
    print(f"compile (first call, inductor's caches as found) {compile_s:.1f} s; logits max |diff| {diff:.2e}")
    print(f"{'step':<34}{'ms':>8}")
    print(f"{'dynamic reference (generate)':<34}{1e3 / best:>8.2f}")
    print(f"{'static step, eager':<34}{eager_ms:>8.2f}")
    print(f"{'static step, compiled':<34}{compiled_ms:>8.2f}")


if __name__ == "__main__":
    main()
