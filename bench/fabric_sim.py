"""Serving simulator speed on one core: the Mooncake conversation trace (12,031 requests, ~1 h) at the calibrated
point (flow/config.py's CALIBRATED: kv+ep, closed loop, prefix cache, decode steps from `hyperdecode plan`) on
1,024 and 512 GPUs, ZCube and ROFT; then the plain KV-only model (SimConfig()) for continuity with earlier notes.
Prints the CPU model beside the timings. The issue's goal: the calibrated 1,024-GPU hour in <= 60 s of one core.

    OMP_NUM_THREADS=1 python bench/fabric_sim.py [--trace NAME_OR_PATH] [--gpus 1024,512] [--requests N] [--no-plain]
"""
from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from hyperdecode.fabric.flow.config import SESSIONS_PER_GPU, SimConfig, calibrated  # noqa: E402
from hyperdecode.fabric.flow.model import DecodePlan, ModelProfile  # noqa: E402
from hyperdecode.fabric.flow.serving import simulate  # noqa: E402
from hyperdecode.fabric.flow.summary import summarize  # noqa: E402
from hyperdecode.fabric.flow.workload import load_trace  # noqa: E402
from hyperdecode.fabric.setups import build, decode_context  # noqa: E402


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def row(label: str, topo, work, model, cfg: SimConfig) -> None:
    start = time.perf_counter()
    run = simulate(topo, work, model, cfg)
    wall = time.perf_counter() - start
    s = summarize(run)
    print(f"{label:<34}{len(work):>8}{wall:>9.2f}{run.events:>9}{run.recomputations:>8}{s['steady_tok_s']:>13.0f}"
          f"{s['ttft_p50_s']:>10.3f}{s['ttft_p99_s']:>10.3f}{s['max_link_util']:>10.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default="mooncake-conversation")
    ap.add_argument("--gpus", default="1024,512", help="GPU counts of the calibrated runs, comma-separated")
    ap.add_argument("--requests", type=int, default=None, help="only the trace's first N requests (default: all)")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain KV-only rows")
    args = ap.parse_args()
    work = load_trace(args.trace)
    if args.requests is not None:
        work = work.head(args.requests)
    print(f"CPU: {cpu_model()}, one core (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})")
    start = time.perf_counter()
    model = ModelProfile.from_model("glm-5", plan=DecodePlan(context=decode_context(work)))
    print(f"decode step table from the latency model: {time.perf_counter() - start:.1f} s")
    print(f"{'run':<34}{'requests':>8}{'wall s':>9}{'events':>9}{'max-min':>8}{'steady tok/s':>13}{'TTFT p50':>10}"
          f"{'TTFT p99':>10}{'max util':>10}")
    for gpus in (int(g) for g in args.gpus.split(",")):
        for name in ("zcube", "roft"):
            cfg = calibrated(sessions=SESSIONS_PER_GPU * gpus)
            row(f"{gpus} GPUs {name}, calibrated", build(name, gpus, 25.6, 400), work, model, cfg)
    if args.no_plain:
        return
    plain = ModelProfile()
    for name in ("zcube", "roft"):
        row(f"1024 GPUs {name}, plain KV-only", build(name, 1024, 12.8, 400), work, plain, SimConfig())


if __name__ == "__main__":
    main()
