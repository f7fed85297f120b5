"""The calibration search: Z.ai's NIC ablation (100 -> 200 Gb/s: +19 % throughput, -22 % TTFT, tolerance ±5 points)
on a 512-GPU ROFT (25.6T switches, as NVIDIA's 2-unit SuperPOD: 16 leaves, 8 spines) at the calibrated point with
one or two of its choices varied; every point printed, those within tolerance marked. Throughput is the steady
rate (output tokens made while requests are still being sent), TTFT the P99. Runs go to --jobs processes.

    OMP_NUM_THREADS=1 python bench/fabric_calibrate.py [--requests 3000] [--grid JSON] [--jobs 2]

--grid is a JSON list of SimConfig / ModelProfile changes, e.g. '[{"prefill_tok_s": 28000, "sessions": 1024}]'
(prefill_tok_s and ep_bytes_per_copy go to the model, the rest to the config).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

os.environ.setdefault("OMP_NUM_THREADS", "1")

from hyperdecode.fabric.flow.config import calibrated  # noqa: E402
from hyperdecode.fabric.flow.model import DecodePlan, ModelProfile  # noqa: E402
from hyperdecode.fabric.flow.serving import simulate  # noqa: E402
from hyperdecode.fabric.flow.summary import summarize  # noqa: E402
from hyperdecode.fabric.flow.workload import load_trace  # noqa: E402
from hyperdecode.fabric.setups import build, decode_context  # noqa: E402
from hyperdecode.fabric.comparison import ablation_check  # noqa: E402

MODEL_FIELDS = ("prefill_tok_s", "ep_bytes_per_copy")


def one(job: tuple) -> dict:
    changes, gbps, requests, name = job
    work = load_trace("mooncake-conversation").head(requests)
    model = ModelProfile.from_model("glm-5", plan=DecodePlan(context=decode_context(work)))
    model = dataclasses.replace(model, **{k: v for k, v in changes.items() if k in MODEL_FIELDS})
    cfg = calibrated(**{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()
                        if k not in MODEL_FIELDS})
    start = time.perf_counter()
    s = summarize(simulate(build(name, 512, 25.6, gbps, fastest_gbps=400), work, model, cfg))
    return {"wall": time.perf_counter() - start, "steady": s["steady_tok_s"], "ttft": s["ttft_p99_s"],
            "prefill_p50": s["ttft_stages"]["prefill"]["p50"], "queue_p99": s["ttft_stages"]["queue"]["p99"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--grid", default='[{}]')
    ap.add_argument("--topology", default="roft")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    grid = json.loads(args.grid)
    jobs = [(changes, gbps, args.requests, args.topology) for changes in grid for gbps in (100, 200)]
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(one, jobs))
    print(f"{'changes':<60}{'steady':>9}{'TTFT P99':>10}{'in':>4}{'prefill p50 ms':>16}{'queue p99 s':>13}"
          f"{'wall s':>8}")
    for k, changes in enumerate(grid):
        slow, fast = results[2 * k], results[2 * k + 1]
        thr, ttft = fast["steady"] / slow["steady"] - 1, fast["ttft"] / slow["ttft"] - 1
        mark = "yes" if ablation_check(thr, ttft) else "no"
        print(f"{json.dumps(changes):<60}{100 * thr:>+8.1f}%{100 * ttft:>+9.1f}%{mark:>4}"
              f"{1e3 * slow['prefill_p50']:>8.0f}/{1e3 * fast['prefill_p50']:<7.0f}"
              f"{slow['queue_p99']:>6.1f}/{fast['queue_p99']:<6.1f}{slow['wall'] + fast['wall']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
