"""Property verifier: switch-hop diameter, shortest-path counts per NIC-port pairing, bisection, single failures.

GPUs do not forward traffic (no NIC relaying), so paths run over switches only. All-pairs switch distances and
shortest-path counts (parallel links counted) come from level-synchronous BFS as dense matrix products. GPU pairs
are enumerated exactly over pairs of attachment signatures (GPUs plugged into the same switches behave alike) when
that is small enough, else sampled uniformly; results say which.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from .graph import Topology

__all__ = ["all_pairs", "PairSet", "gpu_pairs", "pairing_matrix", "streamed_hops", "diameter", "path_table",
           "bisection", "failure_impact"]

EXACT_LIMIT = 5_000_000


def all_pairs(topo: Topology) -> tuple[np.ndarray, np.ndarray]:
    """(dist, count): [S, S] switch hops between switches (-1 if unreachable) and the number of shortest paths.

    >>> from hyperdecode.fabric import zcube
    >>> dist, count = all_pairs(zcube(3))
    >>> int(dist.max()), int(count[0, 1])  # two block switches: 2 hops, via any of the 3 residue switches
    (2, 3)
    """
    A = topo.switch_adjacency().astype(np.float64)
    S = len(A)
    dist = np.full((S, S), -1, dtype=np.int64)
    np.fill_diagonal(dist, 0)
    count = np.eye(S)
    frontier, level = np.eye(S), 0
    while frontier.any():
        level += 1
        nxt = frontier @ A
        new = (nxt > 0) & (dist < 0)
        dist[new], count[new] = level, nxt[new]
        frontier = np.where(new, nxt, 0.0)
    return dist, count


@dataclass
class PairSet:
    """GPU pairs with weights: `src`/`dst` are representative GPUs, `weight` how many GPU pairs each stands for."""
    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    exact: bool

    @property
    def total(self) -> int:
        return int(self.weight.sum())


def gpu_pairs(topo: Topology, max_pairs: int = EXACT_LIMIT, sample: int = 200_000, seed: int = 0) -> PairSet:
    """All unordered GPU pairs, grouped by attachment signature when that fits in `max_pairs`, else `sample`
    uniformly drawn ordered pairs of distinct GPUs."""
    att = topo.attachments()
    sigs, first, counts = np.unique(att, axis=0, return_index=True, return_counts=True)
    U = len(sigs)
    if U * (U + 1) // 2 <= max_pairs:
        i, j = np.triu_indices(U, k=0)
        w = np.where(i == j, counts[i] * (counts[i] - 1) // 2, counts[i] * counts[j])
        keep = w > 0
        return PairSet(first[i[keep]], first[j[keep]], w[keep].astype(np.int64), True)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, topo.num_gpus, sample)
    dst = (src + rng.integers(1, topo.num_gpus, sample)) % topo.num_gpus
    return PairSet(src, dst, np.ones(sample, dtype=np.int64), False)


def pairing_matrix(topo: Topology, pairs: PairSet, dist: np.ndarray, count: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """[M, P, P] switch hops (inf if no path) and shortest-path counts for each (source port, destination port)."""
    att = topo.attachments()
    a, b = att[pairs.src][:, :, None], att[pairs.dst][:, None, :]
    ok = (a >= 0) & (b >= 0)
    d = np.where(ok, dist[np.maximum(a, 0), np.maximum(b, 0)], -1)
    hops = np.where(d >= 0, d + 1.0, np.inf)
    paths = np.where(d >= 0, count[np.maximum(a, 0), np.maximum(b, 0)], 0.0)
    return hops, paths


NO_PATH = np.iinfo(np.int16).max
NO_PATH_LEVEL = 64  # the hop level of "no path" (switch-hop diameters stay far below it)


def _hop_table(dist: np.ndarray) -> np.ndarray:
    """[S + 1, S + 1] GPU-to-GPU switch hops between attachment switches (NO_PATH if none; index S = unplugged),
    int16: the streamed minimum reads these tables O(signatures²) times."""
    S = len(dist)
    hops = np.full((S + 1, S + 1), NO_PATH, dtype=np.int16)
    hops[:S, :S] = np.where(dist >= 0, dist + 1, NO_PATH)
    return hops


def streamed_hops(topos: list[Topology], dists: list[np.ndarray], block: int = 256
                  ) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Every ordered pair of distinct GPUs, exactly, in blocks of source signatures (GPUs plugged into the same
    switches in every topology behave alike): yields (weights [b, U], [hop levels [b, U] per topology]), each pair
    using its best port pairing; a level is the switch hops, or NO_PATH_LEVEL. Memory O(block × signatures),
    time O(signatures²)."""
    atts = [t.attachments() for t in topos]
    sigs, counts = np.unique(np.concatenate(atts, axis=1), axis=0, return_counts=True)
    P = topos[0].nic_ports
    tables = [_hop_table(d) for d in dists]
    parts = [np.where(sigs[:, k * P:(k + 1) * P] >= 0, sigs[:, k * P:(k + 1) * P], len(d)) for k, d in enumerate(dists)]
    for i0 in range(0, len(sigs), block):
        i1 = min(i0 + block, len(sigs))
        w = counts[i0:i1, None] * counts[None, :]
        w[np.arange(i1 - i0), np.arange(i0, i1)] -= counts[i0:i1]  # a GPU is not paired with itself
        bests = []
        for hops, att in zip(tables, parts):
            a = att[i0:i1]
            best = np.full((i1 - i0, len(sigs)), NO_PATH, dtype=np.int16)
            for p in range(P):
                rows = hops[a[:, p]]  # [b, S + 1]: from each source's port-p switch
                for q in range(P):
                    np.minimum(best, np.take(rows, att[:, q], axis=1), out=best)
            bests.append(np.minimum(best, NO_PATH_LEVEL))
        yield w, bests


def _level_weights(levels: np.ndarray, w: np.ndarray) -> np.ndarray:
    """[NO_PATH_LEVEL + 1]: the weight of the pairs at each hop level."""
    return np.bincount(levels.ravel(), weights=w.ravel(), minlength=NO_PATH_LEVEL + 1)


def diameter(topo: Topology, pairs: PairSet | None = None, ap: tuple | None = None) -> dict[str, Any]:
    """Largest switch-hop distance between two GPUs (each pair using its best port pairing) and the mean: over
    every GPU pair exactly (streamed), or over `pairs`.

    >>> from hyperdecode.fabric import zcube
    >>> d = diameter(zcube(32))  # the paper's APL counts links: 1 + mean switch hops = 3 - 2 / (n + 1)
    >>> d["diameter"], round(1 + d["mean_hops"], 5), d["exact"]
    (2, 2.93939, True)
    """
    dist = (ap or all_pairs(topo))[0]
    if pairs is None:
        hist = sum(_level_weights(levels, w) for w, (levels,) in streamed_hops([topo], [dist]))
        reached, unreachable = hist[:NO_PATH_LEVEL], int(hist[NO_PATH_LEVEL])
        weight = int(reached.sum())
        mean = float((np.arange(NO_PATH_LEVEL) * reached).sum() / weight) if weight else float("nan")
        return {"diameter": int(np.nonzero(reached)[0].max()) if weight else None, "mean_hops": mean,
                "unreachable_pairs": unreachable // 2, "pairs": (weight + unreachable) // 2, "exact": True}
    hops, _ = pairing_matrix(topo, pairs, *(ap or all_pairs(topo)))
    best = hops.min(axis=(1, 2))
    finite = np.isfinite(best)
    return {"diameter": int(best[finite].max()) if finite.any() else None,
            "mean_hops": float((best[finite] * pairs.weight[finite]).sum() / pairs.weight[finite].sum()),
            "unreachable_pairs": int(pairs.weight[~finite].sum()), "pairs": pairs.total, "exact": pairs.exact}


def path_table(topo: Topology, pairs: PairSet | None = None, ap: tuple | None = None) -> dict[str, list[dict]]:
    """For each NIC-port pairing "p->q": how many GPU pairs see (shares a switch?, switch hops, shortest paths).

    >>> from hyperdecode.fabric import zcube
    >>> [r for r in path_table(zcube(4))["0->1"] if not r["shares_switch"]]
    [{'shares_switch': False, 'switch_hops': 2, 'paths': 1, 'pairs': 72}]
    """
    pairs = pairs or gpu_pairs(topo)
    att = topo.attachments()
    hops, paths = pairing_matrix(topo, pairs, *(ap or all_pairs(topo)))
    sa, sb = att[pairs.src], att[pairs.dst]
    shares = ((sa[:, :, None] == sb[:, None, :]) & (sa[:, :, None] >= 0)).any(axis=(1, 2))
    table = {}
    P = topo.nic_ports
    for p in range(P):
        for q in range(P):
            c = collections.Counter()
            h, n = hops[:, p, q], paths[:, p, q]
            for key, w in zip(zip(shares.tolist(), h.tolist(), n.tolist()), pairs.weight.tolist()):
                c[key] += w
            table[f"{p}->{q}"] = [{"shares_switch": s, "switch_hops": int(hh) if np.isfinite(hh) else None,
                                   "paths": int(nn), "pairs": int(w)} for (s, hh, nn), w in sorted(c.items())]
    return table


def bisection(topo: Topology, cut: str = "halves", seed: int = 0) -> dict[str, Any]:
    """Max-flow from one half of the GPUs to the other over the links (each direction at link speed), divided by
    the smaller half's NIC bandwidth: 1.0 is full bisection for that cut. Cuts: halves (by index), interleave
    (even/odd servers), random. `local_ratio` is the smallest (uplink / GPU-facing) capacity over switches."""
    import networkx as nx
    N = topo.num_gpus
    if cut == "halves":
        side = np.arange(N) < N // 2
    elif cut == "interleave":
        side = (np.arange(N) // topo.gpus_per_server) % 2 == 0
    elif cut == "random":
        side = np.zeros(N, dtype=bool)
        side[np.random.default_rng(seed).permutation(N)[:N // 2]] = True
    else:
        raise ValueError(f"cut '{cut}' is not one of halves, interleave, random")
    G = nx.DiGraph()
    caps = collections.defaultdict(float)
    for a, b, gbps, port in zip(topo.link_a.tolist(), topo.link_b.tolist(), topo.link_gbps.tolist(),
                                topo.link_port.tolist()):
        if port < 0:
            caps[a, b] += gbps
            caps[b, a] += gbps
        elif side[a]:
            caps[a, b] += gbps  # GPUs do not relay: sending GPUs only send, receiving GPUs only receive
            caps["src", a] += gbps
        else:
            caps[b, a] += gbps
            caps[a, "dst"] += gbps
    G.add_edges_from((u, v, {"capacity": c}) for (u, v), c in caps.items())
    flow = nx.maximum_flow_value(G, "src", "dst")
    nic = topo.nic_ports * topo.nic_gbps
    demand = min(side.sum(), (~side).sum()) * nic
    gpu_side = np.bincount(topo.link_b[topo.is_gpu_link] - N, minlength=topo.num_switches)
    sw = ~topo.is_gpu_link
    other = np.bincount(np.concatenate([topo.link_a[sw], topo.link_b[sw]]) - N, minlength=topo.num_switches)
    ratios = other[gpu_side > 0] / gpu_side[gpu_side > 0]
    return {"cut": cut, "flow_gbps": float(flow), "demand_gbps": float(demand), "ratio": float(flow / demand),
            "full": bool(flow >= demand * (1 - 1e-9)), "local_ratio": float(ratios.min()) if len(ratios) else None}


def without(topo: Topology, switch: int | None = None, links: Iterable[int] = ()) -> Topology:
    """A copy with a switch's links and/or the given links removed (a switch itself stays, isolated)."""
    keep = np.ones(topo.num_links, dtype=bool)
    if switch is not None:
        node = topo.num_gpus + switch
        keep &= (topo.link_a != node) & (topo.link_b != node)
    keep[list(links)] = False
    fields = {k: getattr(topo, k)[keep] for k in ("link_a", "link_b", "link_gbps", "link_medium", "link_port")}
    return Topology(topo.kind, {**topo.params}, topo.num_gpus, topo.nic_ports, topo.nic_gbps, topo.gpus_per_server,
                    topo.switch_radix, topo.switch_gbps, topo.switch_tier, tier_names=topo.tier_names, **fields)


def failure_impact(topo: Topology, switch: int | None = None, link: int | None = None) -> dict[str, Any]:
    """What one switch or link failure does: GPU ports lost, GPUs cut off, diameter and mean hops before and
    after, and the share of GPU pairs whose best path got longer or vanished (every pair, exactly)."""
    if (switch is None) == (link is None):
        raise ValueError("give exactly one of switch or link")
    if switch is not None and not 0 <= switch < topo.num_switches:
        raise ValueError(f"switch {switch} is not in 0..{topo.num_switches - 1}")
    if link is not None and not 0 <= link < topo.num_links:
        raise ValueError(f"link {link} is not in 0..{topo.num_links - 1}")
    after = without(topo, switch, () if link is None else (link,))
    before_dist, after_dist = all_pairs(topo)[0], all_pairs(after)[0]
    n = NO_PATH_LEVEL + 1
    joint = sum(np.bincount((b * n + a).ravel(), weights=w.ravel(), minlength=n * n)  # [before level, after level]
                for w, (b, a) in streamed_hops([topo, after], [before_dist, after_dist])).reshape(n, n)
    level = np.arange(NO_PATH_LEVEL)
    before, after_w = joint.sum(axis=1), joint.sum(axis=0)
    total = joint.sum()
    longer = np.triu(joint[:NO_PATH_LEVEL, :NO_PATH_LEVEL], k=1).sum()  # reachable after, and further
    lost = (topo.attachments() >= 0) & (after.attachments() < 0)
    return {"removed": {"switch": switch} if switch is not None else {"link": link},
            "gpu_ports_lost": int(lost.sum()), "gpus_disconnected": int((after.attachments() < 0).all(1).sum()),
            "diameter_before": int(np.nonzero(before[:NO_PATH_LEVEL])[0].max(initial=0)),
            "diameter_after": int(np.nonzero(after_w[:NO_PATH_LEVEL])[0].max(initial=0)),
            "mean_hops_before": float((level * before[:NO_PATH_LEVEL]).sum() / total),
            "mean_hops_after": float((level * after_w[:NO_PATH_LEVEL]).sum() / max(after_w[:NO_PATH_LEVEL].sum(), 1)),
            "pairs_longer": float(longer / total),
            "pairs_unreachable": float(after_w[NO_PATH_LEVEL] / total), "exact": True}
