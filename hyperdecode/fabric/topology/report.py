"""One-call summaries: describe a topology (counts, diameter, path multiplicity, bisection, cost) and compare
ZCube, ROFT and a leaf–spine fat-tree for a GPU count and a switch capacity."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError
from .builders import fattree, roft, zcube
from .cost import network_cost
from .graph import Topology
from .optics import REACH_SERVERS, optics_counts
from .verify import PairSet, all_pairs, bisection, diameter, gpu_pairs, pairing_matrix

__all__ = ["describe", "path_multiplicity", "compare", "zcube_for"]

BISECTION_MAX_GPUS = 4096  # max-flow above this is slow in networkx; the local ratio still holds the argument


def path_multiplicity(topo: Topology, pairs: PairSet | None = None, ap: tuple | None = None) -> dict[str, Any]:
    """Over GPU pairs that share no switch: how many port pairings reach the minimum hop count, and how many
    shortest paths each such pairing has (1 = no ECMP choice; ROFT shows its ECMP fan-out here)."""
    pairs = pairs or gpu_pairs(topo)
    ap = ap or all_pairs(topo)
    hops, paths = pairing_matrix(topo, pairs, *ap)
    att = topo.attachments()
    sa, sb = att[pairs.src], att[pairs.dst]
    disjoint = ~((sa[:, :, None] == sb[:, None, :]) & (sa[:, :, None] >= 0)).any(axis=(1, 2))
    best = hops.min(axis=(1, 2), keepdims=True)
    on_best = (hops == best) & np.isfinite(best)
    n_best = on_best.sum(axis=(1, 2))[disjoint]
    per = paths[on_best & disjoint[:, None, None]]
    if not disjoint.any():
        return {"pairs": 0}
    return {"pairs": int(pairs.weight[disjoint].sum()), "best_pairings": [int(n_best.min()), int(n_best.max())],
            "paths_per_best_pairing": [int(per.min()), int(per.max())], "exact": pairs.exact}


def describe(topo: Topology, prices: dict | None = None, bisect: bool | None = None,
             reach_servers: int | None = None) -> dict[str, Any]:
    """Counts, diameter, path multiplicity, cost and (for small networks) bisection of a topology."""
    pairs, ap = gpu_pairs(topo), all_pairs(topo)
    out = {"kind": topo.kind, "params": topo.params, "counts": topo.counts(),
           "diameter": diameter(topo, ap=ap), "multiplicity": path_multiplicity(topo, pairs, ap),  # exact mean
           "cost": network_cost(topo, prices, reach_servers)}
    if bisect if bisect is not None else topo.num_gpus <= BISECTION_MAX_GPUS:
        out["bisection"] = min((bisection(topo, cut) for cut in ("halves", "interleave", "random")),
                               key=lambda b: b["ratio"])
    return out


def zcube_for(num_gpus: int, switch_radix: int, port_gbps: int = 200) -> Topology:
    """The non-blocking ZCube with the fewest switches for `num_gpus` on radix-`switch_radix` switches: the largest
    k GPUs per switch (m = N / k per group) with ceil(k / m) links per switch pair such that k + m·links fits the
    radix. At N = k² this is the paper's ZCube(k, 2); above it, the blog's variant with parallel links.

    >>> zcube_for(1024, 64).params["n"], zcube_for(1024, 256).params["links_per_pair"]
    (32, 16)
    """
    for k in range(min(num_gpus, switch_radix), 0, -1):
        m = num_gpus // k
        if num_gpus % k or m < 1:
            continue
        links = -(-k // m)
        if k + m * links <= switch_radix:
            if k == m:
                return zcube(k, port_gbps=port_gbps, switch_radix=switch_radix)
            return zcube(num_gpus=num_gpus, gpus_per_switch=k, links_per_pair=links, port_gbps=port_gbps,
                         switch_radix=switch_radix)
    raise ConfigError(f"no ZCube for {num_gpus} GPUs fits radix-{switch_radix} switches; the largest is "
                      f"ZCube({switch_radix // 2}, 2) = {(switch_radix // 2) ** 2} GPUs")


def compare(num_gpus: int, switch_tbps: float, nic_gbps: int = 400, zcube_port_gbps: int = 200,
            prices: dict | None = None, gpus_per_server: int = 8, reach_servers: int = REACH_SERVERS
            ) -> list[dict[str, Any]]:
    """One row per topology at equal switch capacity: ZCube on ports of half the NIC speed (a 2-port NIC), ROFT
    and leaf–spine on NIC-speed ports, each with the fewest tiers that hold `num_gpus`; optics counted both ways
    (optics.py) with copper reaching `reach_servers` servers."""
    if switch_tbps <= 0:
        raise ConfigError("parameter 'switch_tbps' must be positive")
    rows = []
    builds = [("zcube", lambda: zcube_for(num_gpus, int(switch_tbps * 1000 // zcube_port_gbps), zcube_port_gbps))]
    radix = int(switch_tbps * 1000 // nic_gbps)
    for name, fn in (("roft", roft), ("fattree", fattree)):
        tiers = 2 if num_gpus <= radix * radix // 2 else 3
        builds.append((name, lambda fn=fn, tiers=tiers: fn(num_gpus, radix, nic_gbps=nic_gbps, tiers=tiers,
                                                           gpus_per_server=gpus_per_server)))
    for name, build in builds:
        topo = build()
        d = describe(topo, prices, bisect=False, reach_servers=reach_servers)
        c = d["counts"]
        rows.append({"topology": name, "params": topo.params, "switches": c["switches"],
                     "switches_by_radix": c["switches_by_radix"], "copper_links": c["copper_links"],
                     "fiber_links": c["fiber_links"], "optics": c["optics"], "nic_ports": c["nic_ports"],
                     "diameter": d["diameter"]["diameter"], "multiplicity": d["multiplicity"],
                     "cost_total": d["cost"]["total"], "cost_per_gpu": d["cost"]["per_gpu"],
                     "switches_and_optics_cost": d["cost"]["switches_and_optics"],
                     "optics_counts": optics_counts(topo, reach_servers)})
    return rows
