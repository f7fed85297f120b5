"""Simulator speed: the Mooncake conversation trace (12,031 requests, ~1 h) on 1,024 GPUs, ZCube and ROFT, on one
core; then how wall time grows with GPUs (256 / 1,024 / 4,096) and with requests (3k / 6k / 12k), at 16x load,
with the prefix cache's KV-store fetches, and with expert-parallel traffic (1,000 requests at 50x, 32-GPU instances:
every decode step is an all-to-all of flows, so this is the costly case).

    OMP_NUM_THREADS=1 python bench/fabric_sim.py [--trace PATH]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from hyperdecode.fabric import roft  # noqa: E402
from hyperdecode.fabric.report import zcube_for  # noqa: E402
from hyperdecode.fabric.simreport import summarize  # noqa: E402
from hyperdecode.fabric.simconfig import SimConfig  # noqa: E402
from hyperdecode.fabric.simulate import simulate  # noqa: E402
from hyperdecode.fabric.workload import load_trace  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "traces" / "mooncake_conversation_trace.jsonl"


def topologies(gpus: int):
    radix = 32 if gpus <= 1024 else 64  # 12.8T / 25.6T switches at 400G; ZCube ports at 200G
    return {"zcube": zcube_for(gpus, 2 * radix), "roft": roft(gpus, radix, tiers=2 if gpus <= radix ** 2 // 2 else 3)}


def row(label: str, topo, work, cfg: SimConfig | None = None) -> None:
    s = summarize(simulate(topo, work, cfg=cfg))
    print(f"{label:<34}{len(work):>8}{s['sim_wall_s']:>9.2f}{s['throughput_tok_s']:>12.0f}{s['ttft_p50_s']:>10.3f}"
          f"{s['ttft_p99_s']:>10.3f}{1e3 * s['kv_fct_p99_s']:>12.1f}{s['max_link_util']:>10.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", default=str(DEFAULT))
    work = load_trace(ap.parse_args().trace)
    print(f"{'run':<34}{'requests':>8}{'wall s':>9}{'tok/s':>12}{'TTFT p50':>10}{'TTFT p99':>10}{'KV FCT p99 ms':>12}"
          f"{'max util':>10}")
    for name, topo in topologies(1024).items():
        row(f"1024 GPUs {name}", topo, work)
    for gpus in (256, 4096):
        for name, topo in topologies(gpus).items():
            row(f"{gpus} GPUs {name}", topo, work)
    for n in (3000, 6000):
        row(f"1024 GPUs roft, first {n}", topologies(1024)["roft"], work.head(n))
    for name, topo in topologies(1024).items():
        row(f"1024 GPUs {name}, 16x load", topo, work.scaled(16))
    for name, topo in topologies(1024).items():
        row(f"1024 GPUs {name}, prefix cache", topo, work, SimConfig(prefix_cache=True))
    ep = SimConfig(traffic="kv+ep", gpus_per_instance=32)
    for name, topo in topologies(1024).items():
        row(f"1024 GPUs {name}, kv+ep 1k x50", topo, work.head(1000).scaled(50), ep)


if __name__ == "__main__":
    main()
