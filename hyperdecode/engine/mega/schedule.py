"""A schedule model of one megakernel step: from the compiled program (bytes per instruction, the workers'
round-robin queues, the dependency counters) and a small hardware table, predict the step time, the tokens per
second, the MBU and the critical path. It predicts; it never replaces a measurement (bench/NOTES.md keeps the
prediction beside each device run).

The model, per instruction i in list order (every wait names earlier instructions, so one pass is exact):
    worker     w = i mod workers (the kernel's queues)
    ready      the time the wait's counter reaches its target (the target-th earliest signal) + one flag hop,
               or 0 when the worker's previous wait already saw that counter that far (the kernel skips the poll)
    start      max(the worker's previous finish, ready)
    fill       the first chunk's memory latency; with `prefetch` (the kernel's L2 prefetch of a worker's next GEMV
               tile as it starts the current one) hidden by the previous instruction's time and any waiting
    finish     start + overhead + fill + HBM bytes / per-SM stream rate
The step is the last finish plus the launch; MBU is the step's HBM bytes / (step x bandwidth).

    python -m hyperdecode.engine.mega.schedule llama-3.2-1b --batch 1 --context 1024 [--tiles 16,32,64]
"""
from __future__ import annotations

import argparse
import bisect
import json
from dataclasses import asdict, dataclass, field

from ...hardware import GPUS, Machine, machine
from .isa import FP8_BLOCK, FP8_WEIGHTS, FP32_WEIGHTS, Instr, Op, row_stride
from .program import Program

__all__ = ["Hardware", "H200", "Prediction", "simulate", "instruction_bytes", "predict", "main"]


@dataclass(frozen=True)
class Hardware:
    """What one step's time depends on: a GPU's row of the hardware table (hyperdecode/hardware.py), or made up."""
    sms: int
    bandwidth: float  # B/s, measured copy bandwidth (the MBU denominator)
    hop_s: float  # a release signal seen by a waiting program
    latency_s: float  # an instruction's first weight chunk from HBM (the pipeline fill)
    overhead_s: float  # per instruction: table row, dispatch, the barrier before the release
    launch_s: float  # the cooperative launch and the counters' reset

    @classmethod
    def of(cls, row: Machine, bandwidth: float | None = None) -> "Hardware":
        """The schedule model's view of a table row; `bandwidth` (B/s): a copy bandwidth measured now instead of
        the table's."""
        return cls(row.sms, bandwidth or row.copy_tbps * 1e12, row.signal_s, row.first_chunk_s, row.instruction_s,
                   row.kernel_launch_s)

    @property
    def per_sm(self) -> float:
        """Bytes per second one program streams when every SM streams (bandwidth / SMs)."""
        return self.bandwidth / self.sms


H200 = Hardware.of(machine("h200"))


@dataclass
class Prediction:
    step_s: float
    tokens_per_s: float  # batch rows / step
    mbu: float
    hbm_bytes: float
    busy_s: float  # summed over workers: time streaming or paying overheads
    wait_s: float  # summed over workers: time spent waiting for dependencies
    critical: list[tuple[int, str, str]] = field(default_factory=list)  # (instruction, opcode, "wait" | "queue")

    def summary(self) -> dict:
        waits = sum(1 for _, _, how in self.critical if how == "wait")
        return dict(step_us=round(self.step_s * 1e6, 2), tokens_per_s=round(self.tokens_per_s, 1),
                    mbu=round(self.mbu, 4), hbm_mb=round(self.hbm_bytes / 1e6, 3),
                    idle_share=round(self.wait_s / max(self.busy_s + self.wait_s, 1e-30), 4),
                    critical_instructions=len(self.critical), critical_hops=waits)


def simulate(instrs: list[Instr], nbytes: list[float], workers: int, hw: Hardware = H200, batch: int = 1,
             prefetch: bool = True) -> Prediction:
    """The model above over an instruction list and each instruction's HBM bytes."""
    free = [0.0] * workers
    took = [0.0] * workers  # the worker's previous instruction's duration (its next tile was prefetched meanwhile)
    seen: list[tuple[int, int]] = [(-1, 0)] * workers  # the counter each worker last waited on, and how far
    finish = [0.0] * len(instrs)
    cause: list[tuple[int, str]] = [(-1, "")] * len(instrs)
    signals: dict[int, list[tuple[float, int]]] = {}  # each counter's signals so far: (time, instruction), in order
    busy = wait = 0.0
    for i, ins in enumerate(instrs):
        w = i % workers
        ready, source = 0.0, -1
        if ins.waits:
            c, target = ins.waits[0]
            times = signals.get(c, [])
            if len(times) < target:
                raise ValueError(f"instruction {i} waits for counter {c} to reach {target}; only {len(times)} "
                                 f"earlier instructions signal it")
            if not (seen[w][0] == c and seen[w][1] >= target):
                at, source = times[target - 1]
                ready = at + hw.hop_s
                seen[w] = (c, target)
        start = max(free[w], ready)
        idle = start - free[w]
        ahead = took[w] if prefetch and ins.op == Op.GEMV else 0.0
        fill = max(0.0, hw.latency_s - idle - ahead) if prefetch else hw.latency_s
        cost = hw.overhead_s + fill + nbytes[i] / hw.per_sm
        finish[i] = start + cost
        cause[i] = (source, "wait") if ready > free[w] else (i - workers if i >= workers else -1, "queue")
        busy += cost
        wait += idle
        free[w] = finish[i]
        took[w] = cost
        bisect.insort(signals.setdefault(ins.signal, []), (finish[i], i))
    last = max(range(len(instrs)), key=finish.__getitem__)
    path, at = [], last
    while at >= 0:
        prev, how = cause[at]
        path.append((at, instrs[at].op.name, how))
        at = prev
    step = finish[last] + hw.launch_s
    total = float(sum(nbytes))
    wait += sum(finish[last] - f for f in free)  # workers done early idle until the step ends
    return Prediction(step_s=step, tokens_per_s=batch / step, mbu=total / (step * hw.bandwidth), hbm_bytes=total,
                      busy_s=busy, wait_s=wait, critical=path[::-1])


def _matrix_bytes(rows: int, k: int, elem: int, fp8: bool) -> float:
    ld = row_stride(k)
    if fp8:  # one byte per weight and a 4-byte scale per 128 x 128 block
        return rows * ld + 4 * -(-rows // FP8_BLOCK) * -(-ld // FP8_BLOCK)
    return rows * ld * elem


def instruction_bytes(prog: Program, ins: Instr, context: int) -> float:
    """HBM bytes one instruction reads at a step where every row has `context` positions (weights, cache; the
    activations are small and stay in L2)."""
    a, d, elem, B = ins.args, prog.dims, prog.W.element_size(), prog.batch
    op = ins.op
    if op == Op.GEMV:
        rows = a["c1"] - a["c0"]
        if a["flags"] & FP32_WEIGHTS:
            return _matrix_bytes(rows, a["k"], 4, False)
        return _matrix_bytes(rows, a["k"], elem, bool(a["flags"] & FP8_WEIGHTS))
    if op == Op.EMBED:
        return B * a["n"] * elem
    if op == Op.ATTN:  # k and v of its split's positions (fp32 cache), one kv head
        lo = a["split"] * d.kv_split
        return max(0, min(lo + d.kv_split, context) - lo) * d.head_dim * 2 * 4
    if op == Op.MLA_ATTN:  # every latent and roped key of the row
        return context * (d.kv_lora + d.rope) * 4
    if op == Op.MLA_UK:
        return _matrix_bytes(a["c1"] - a["c0"], d.nope, elem, False)
    if op == Op.MLA_UV:
        return _matrix_bytes(a["c1"] - a["c0"], d.kv_lora, elem, False)
    if op == Op.INDEX_TOPK:
        return context * d.index_dim * 4
    if op == Op.EXPERT_UP:
        return _matrix_bytes(2 * (a["c1"] - a["c0"]), d.hidden, elem, a["scale"] >= 0)
    if op == Op.EXPERT_DOWN:
        return _matrix_bytes(a["c1"] - a["c0"], d.moe_inter, elem, a["scale"] >= 0)
    if op == Op.ARGMAX:  # its slice of logits (from L2, at the streaming rate: conservative)
        return (a["c1"] - a["c0"]) * 4
    if op == Op.ROPE_MLA:
        return (d.kv_lora + d.rope) * 4
    return 0.0  # NORM_SLICE, INDEX_KEY, ROUTE, ATTN_MERGE: activations only


def predict(prog: Program, context: int, workers: int | None = None, hw: Hardware = H200,
            prefetch: bool = True) -> Prediction:
    """The predicted step of a compiled program at `context` positions per row (tokens per step: one per cache row,
    the least a verify step yields)."""
    nbytes = [instruction_bytes(prog, ins, context) for ins in prog.instrs]
    return simulate(prog.instrs, nbytes, workers or hw.sms, hw, prog.cache_rows, prefetch)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m hyperdecode.engine.mega.schedule",
                                 description="Predicted megakernel step time, MBU and critical path")
    ap.add_argument("model", help="a preset (built on the meta device: no weights are made)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--queries", type=int, default=1, help="tokens per row (1 + k: a verify step of k drafts)")
    ap.add_argument("--context", type=int, default=1024, help="positions per row at this step")
    ap.add_argument("--tiles", default="16", help="GEMV output rows per instruction, comma-separated: one row each")
    ap.add_argument("--kv-split", type=int, default=512)
    ap.add_argument("--fp8", action="store_true")
    ap.add_argument("--no-prefetch", action="store_true", help="the first chunk's latency is never hidden")
    ap.add_argument("--hw", default="h200", choices=GPUS, help="the hardware table's GPU (default h200)")
    ap.add_argument("--bandwidth-tbps", type=float, default=None,
                    help="a copy bandwidth measured now (TB/s, read + written) instead of the table's")
    a = ap.parse_args(argv)
    import torch

    from ...model.loader import preset_config
    from ...model.registry import family_of
    from .runner import compile_model

    cfg = preset_config(a.model)
    with torch.device("meta"):
        model = family_of(cfg).model(cfg).to(torch.bfloat16)
    hw = Hardware.of(machine(a.hw), a.bandwidth_tbps and a.bandwidth_tbps * 1e12)
    rows = []
    for tile in (int(t) for t in a.tiles.split(",")):
        prog = compile_model(model, a.batch, max(a.context + 1, 2), tile=tile, fp8=a.fp8, kv_split=a.kv_split,
                             queries=a.queries)
        p = predict(prog, a.context, hw=hw, prefetch=not a.no_prefetch)
        rows.append(dict(model=a.model, batch=a.batch, queries=a.queries, context=a.context, tile=tile, fp8=a.fp8,
                         instructions=len(prog.instrs), stages=prog.num_counters, **p.summary(), hw=a.hw,
                         hardware=asdict(hw)))
        print(json.dumps(rows[-1]))
    return rows


if __name__ == "__main__":
    main()
