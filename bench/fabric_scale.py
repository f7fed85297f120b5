"""Build + verify 16,384-GPU networks on one core: ZCube(128, 2) on 51.2T (256x200G) switches and a 3-tier ROFT on
51.2T (128x400G) switches. Verify = all-pairs switch distances and path counts, diameter and mean hops over every
GPU pair (exact, streamed), path multiplicity over GPU pairs (exact over attachment signatures when small enough,
else 200,000 sampled pairs), one switch failure (exact).

    OMP_NUM_THREADS=1 python bench/fabric_scale.py [--zcube-n 128] [--roft-gpus 16384] [--radix 128]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from hyperdecode.fabric import diameter, failure_impact, roft, zcube  # noqa: E402
from hyperdecode.fabric.topology.report import path_multiplicity  # noqa: E402
from hyperdecode.fabric.topology.verify import all_pairs, gpu_pairs  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zcube-n", type=int, default=128, help="ZCube(n, 2): 2n switches of n GPUs, n^2 GPUs")
    ap.add_argument("--roft-gpus", type=int, default=16384, help="GPUs of the 3-tier ROFT")
    ap.add_argument("--radix", type=int, default=128, help="the ROFT switches' radix (128 x 400G = 51.2T)")
    args = ap.parse_args()
    print(f"{'topology':<22}{'build s':>9}{'verify s':>10}{'switches':>10}{'diam':>6}  {'GPU pairs':<24}"
          f"{'paths/pairing':>15}{'fail s':>8}")
    for name, build in ((f"ZCube({args.zcube_n},2)", lambda: zcube(args.zcube_n)),
                        (f"ROFT 3-tier radix {args.radix}", lambda: roft(args.roft_gpus, args.radix, tiers=3))):
        t0 = time.perf_counter()
        topo = build()
        t1 = time.perf_counter()
        ap, pairs = all_pairs(topo), gpu_pairs(topo)
        d = diameter(topo, ap=ap)
        m = path_multiplicity(topo, pairs, ap)
        t2 = time.perf_counter()
        failure_impact(topo, switch=0)
        t3 = time.perf_counter()
        kind = "exact" if pairs.exact else "sampled"  # the path-multiplicity pairs
        print(f"{name:<22}{t1 - t0:>9.3f}{t2 - t1:>10.3f}{topo.num_switches:>10}{d['diameter']:>6}"
              f"  {f'{pairs.total:,} {kind}':<24}{'{}-{}'.format(*m['paths_per_best_pairing']):>15}{t3 - t2:>8.2f}")


if __name__ == "__main__":
    main()
