"""The PFC packet-train model's cost: wall time and events for random GPU-to-GPU traffic at a given load on ROFT and
ZCube of 64 / 128 / 256 GPUs, over a short simulated span, and the wall time that predicts for 1 s (events grow
linearly with simulated time at a fixed load); then serving traffic: a kv+ep run of 64 / 256 GPUs at --scale x
the conversation trace, its hottest windows of 2 / 5 / 10 ms replayed with their transfers and the all-to-alls
beside them; then the calibrated point's hot windows replayed one by one and over processes.

    OMP_NUM_THREADS=1 python bench/pfc_scale.py [--ms 0.5] [--chunk-kb 64] [--loads 0.3,0.8] [--scale 20]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hyperdecode.fabric import roft
from hyperdecode.fabric.coupled import replay_windows
from hyperdecode.fabric.flow.config import SimConfig, calibrated
from hyperdecode.fabric.flow.model import DecodePlan, ModelProfile
from hyperdecode.fabric.flow.routing import Router
from hyperdecode.fabric.flow.serving import simulate as serve
from hyperdecode.fabric.flow.workload import load_trace
from hyperdecode.fabric.packet.fabricnet import topology_net
from hyperdecode.fabric.packet.hotwindow import hot_windows, replay_window
from hyperdecode.fabric.packet.pfc import PacketFlow, PfcConfig, simulate
from hyperdecode.fabric.setups import build, decode_context
from hyperdecode.fabric.topology.report import zcube_for

TRACE = "mooncake-conversation"


def traffic(topo, load: float, span: float, size: float, seed: int = 0) -> list[PacketFlow]:
    """Poisson flows of `size` bytes from every GPU to random others, offering `load` of each NIC's rate."""
    rng = np.random.default_rng(seed)
    router = Router(topo)
    nic = topo.nic_gbps * topo.nic_ports / 8 * 1e9
    rate = load * nic / size  # flows per second per GPU
    flows = []
    for src in range(topo.num_gpus):
        t = rng.exponential(1 / rate)
        while t < span:
            dst = int(rng.integers(0, topo.num_gpus - 1))
            dst += dst >= src
            flows.append(PacketFlow(f"{src}-{len(flows)}", router.path(src, dst, key=len(flows)), size=size, start=t))
            t += rng.exponential(1 / rate)
    return flows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=float, default=0.5, help="simulated milliseconds per run")
    ap.add_argument("--chunk-kb", type=int, default=64)
    ap.add_argument("--loads", default="0.3,0.8", help="offered load per NIC, comma-separated")
    ap.add_argument("--scale", type=float, default=20.0, help="serving load, x the trace's arrival rate")
    ap.add_argument("--trace", default=str(TRACE))
    args = ap.parse_args()
    span = args.ms / 1e3
    config = PfcConfig(chunk=args.chunk_kb << 10)
    print(f"{'topology':<22}{'load':>6}{'flows':>8}{'events':>10}{'wall s':>9}{'Mev/s':>7}{'pauses':>8}"
          f"{'1 s at this rate':>18}")
    for gpus in (64, 128, 256):
        topos = {f"roft {gpus}": roft(gpus, 16 if gpus <= 128 else 32), f"zcube {gpus}": zcube_for(gpus, 32)}
        for name, topo in topos.items():
            for load in (float(x) for x in args.loads.split(",")):
                flows = traffic(topo, load, span, size=1 << 20)
                start = time.perf_counter()
                r = simulate(topology_net(topo), flows, until=span, config=config)
                wall = time.perf_counter() - start
                print(f"{name:<22}{load:>6.2f}{len(flows):>8}{r.events:>10}{wall:>9.2f}{r.events / wall / 1e6:>7.2f}"
                      f"{sum(r.pause_frames):>8}{wall / span / 3600:>15.1f} h")
    serving(args.trace, args.scale)
    calibrated_windows(args.trace)


def serving(trace: str, scale: float) -> None:
    """Hot windows of kv+ep serving runs replayed with all their flows: wall time per simulated second."""
    print(f"\n{'serving run, kv+ep':<28}{'window ms':>10}{'flows':>7}{'events':>10}{'wall s':>8}{'pauses':>8}"
          f"{'1 s at this rate':>18}")
    work = load_trace(trace).head(600).scaled(scale)
    for gpus in (64, 256):
        topos = {f"roft {gpus}": roft(gpus, 16 if gpus <= 128 else 32), f"zcube {gpus}": zcube_for(gpus, 32)}
        for name, topo in topos.items():
            r = serve(topo, work, cfg=SimConfig(traffic="kv+ep", gpus_per_instance=16))
            for width in (0.002, 0.005, 0.01):
                start = time.perf_counter()
                w = replay_window(r, hot_windows(r, width)[0], max_flows=1 << 30)
                wall = time.perf_counter() - start
                print(f"{name:<28}{1e3 * width:>10g}{w['flows']:>7}{w['events']:>10}{wall:>8.2f}{w['pause_frames']:>8}"
                      f"{wall / w['replayed_s'] / 60:>14.1f} min")


def calibrated_windows(trace: str) -> None:
    """The calibrated point's two hottest 2 ms windows (ROFT, 512 GPUs at 200G, the first 3,000 requests), replayed
    in one process and in two: the study's PFC feedback pays this per run."""
    work = load_trace(trace).head(3000)
    model = ModelProfile.from_model("glm-5", plan=DecodePlan(context=decode_context(work)))
    run = serve(build("roft", 512, 25.6, 200, fastest_gbps=400), work, model, calibrated())
    print(f"\n{'calibrated point, ROFT 512 GPUs 200G':<40}{'processes':>10}{'windows':>8}{'flows':>7}{'wall s':>8}")
    for processes in (1, 2):
        start = time.perf_counter()
        replays = replay_windows(run, 0.002, count=2, processes=processes)
        wall = time.perf_counter() - start
        flows = sum(r["flows"] + r["background_flows"] for r in replays)
        print(f"{'':<40}{processes:>10}{len(replays):>8}{flows:>7}{wall:>8.2f}")


if __name__ == "__main__":
    main()
