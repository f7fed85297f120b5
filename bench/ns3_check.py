"""ns-3 against the max-min flow model: random routable GPU pairs on small leaf-spines (one rate level or several,
with and without oversubscription), long-lived TCP flows on the project's routes; per case the goodput / (max-min x
TCP payload share) ratios and which flows share their data links with other flows' ACKs (max-min has no ACKs);
then two opposed flows on one path (each one's data on the other's ACK links) at one ACK per 1, 2 and 8 segments.

    pip install -e ".[ns3]"; OMP_NUM_THREADS=1 python bench/ns3_check.py [--seeds 0,1,2] [--flows 8]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from hyperdecode.fabric import fattree
from hyperdecode.fabric.packet.ns3check import cross_check, flow_paths, random_routable_pairs

CASES = {
    "leaf-spine 8 GPUs, 2 leaves, 1:1": lambda: fattree(8, 4, gpus_per_server=1),
    "leaf-spine 16 GPUs, 3:1 oversubscribed": lambda: fattree(16, 8, gpus_per_server=1, oversubscription=3),
}


def acks_on_data(rows: list[dict]) -> list[int]:
    """For each flow, how many other flows send their ACKs over one of its data links."""
    back = [{d ^ 1 for d in r["links"]} for r in rows]
    return [sum(1 for j, b in enumerate(back) if j != i and b & set(r["links"])) for i, r in enumerate(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--flows", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.4, help="simulated seconds (goodput over the second half)")
    args = ap.parse_args()
    print(f"{'case':<42}{'seed':>5}{'flows':>6}{'levels':>7}{'ratio min':>10}{'median':>8}{'max':>7}"
          f"{'worst: ACK-sharing flows':>26}{'wall s':>8}")
    for name, build in CASES.items():
        topo = build()
        for seed in (int(s) for s in args.seeds.split(",")):
            pairs = random_routable_pairs(topo, args.flows, seed)
            start = time.perf_counter()
            rows = cross_check(topo, pairs, seconds=args.seconds)
            wall = time.perf_counter() - start
            ratios = np.array([r["ratio"] for r in rows])
            levels = len(set(np.round([r["maxmin_gbps"] for r in rows], 1)))
            worst = int(np.argmax(abs(ratios - 1)))
            print(f"{name:<42}{seed:>5}{len(rows):>6}{levels:>7}{ratios.min():>10.3f}{np.median(ratios):>8.3f}"
                  f"{ratios.max():>7.3f}{acks_on_data(rows)[worst]:>26}{wall:>8.1f}")
    topo = fattree(8, 4, gpus_per_server=1)
    there = flow_paths(topo, [(0, 4)])[0]
    back = [d ^ 1 for d in reversed(there)]
    print(f"\ntwo opposed flows GPU 0 <-> GPU 4 on one path ({len(there)} links), leaf-spine 8 GPUs")
    print(f"{'ACK every':>10}{'ratio 0->4':>12}{'ratio 4->0':>12}")
    for every in (1, 2, 8):
        rows = cross_check(topo, [(0, 4), (4, 0)], seconds=args.seconds, ack_every=every, paths=[there, back])
        print(f"{every:>10}{rows[0]['ratio']:>12.3f}{rows[1]['ratio']:>12.3f}")


if __name__ == "__main__":
    main()
