"""Paths for flows: ROFT/fat-tree ECMP by hashing a per-flow key at every hop that has a choice; ZCube NIC-port
choice per flow (cross-port pairing by policy), then its unique shortest path.

Directed link ids: cable i carries 2i from `link_a` to `link_b` (for GPU cables: the GPU's uplink) and 2i + 1 back.
"""
from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .topology import Topology
from .verify import all_pairs, without

__all__ = ["Router", "PORT_POLICIES", "link_class"]

PORT_POLICIES = ("fixed", "balanced", "hashed")


def mix(*values: int) -> int:
    """A deterministic 64-bit hash of integers (splitmix-style), the stand-in for a switch's 5-tuple hash."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h ^= (int(v) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h


def link_class(topo: Topology, directed: int) -> str:
    """"nic_up" (a GPU sending), "nic_down" (a GPU receiving: the last hop, where incast lands) or "fabric"."""
    cable = directed // 2
    if topo.link_port[cable] < 0:
        return "fabric"
    return "nic_up" if directed % 2 == 0 else "nic_down"


class Router:
    def __init__(self, topo: Topology, port_policy: str = "balanced", failed_links: set[int] = frozenset()):
        if port_policy not in PORT_POLICIES:
            raise ConfigError(f"port policy '{port_policy}' is not one of {PORT_POLICIES}")
        self.topo, self.policy, self.failed = topo, port_policy, set(failed_links)
        N, S = topo.num_gpus, topo.num_switches
        alive = np.array([i not in self.failed for i in range(topo.num_links)])
        self.port_cable = np.full((N, topo.nic_ports), -1, dtype=np.int64)
        gpu = np.nonzero(topo.is_gpu_link & alive)[0]
        self.port_cable[topo.link_a[gpu], topo.link_port[gpu]] = gpu
        self.att = np.where(self.port_cable >= 0, topo.attachments(), -1)
        self.adj: list[list[tuple[int, int]]] = [[] for _ in range(S)]
        for i in np.nonzero(~topo.is_gpu_link & alive)[0].tolist():
            a, b = int(topo.link_a[i]) - N, int(topo.link_b[i]) - N
            self.adj[a].append((b, 2 * i))
            self.adj[b].append((a, 2 * i + 1))
        live = without(topo, links=self.failed) if self.failed else topo
        self.dist = all_pairs(live)[0]
        self._turn: dict[int, int] = {}

    def ports(self, src: int, dst: int, key: int) -> tuple[int, int] | None:
        """The NIC ports a flow uses. With two ports (ZCube) the flows of a GPU pair use a port-disjoint set of
        pairings, {A->B, B->A} (cross) or {A->A, B->B}, whichever has fewer switches in total (cross on ties), so both
        NIC ports carry traffic at both ends: `fixed` always takes the set's first live pairing, `balanced`
        alternates a source's flows over the set, `hashed` picks by the flow key. A pair that shares a switch takes
        the pairing(s) through it (one switch). One port: that port."""
        a, b = self.att[src], self.att[dst]

        def hops(p: int, q: int) -> float:
            ok = a[p] >= 0 and b[q] >= 0 and self.dist[a[p], b[q]] >= 0
            return self.dist[a[p], b[q]] + 1 if ok else float("inf")
        if self.topo.nic_ports == 1:
            return (0, 0) if hops(0, 0) < float("inf") else None
        shared = [(p, q) for p in (0, 1) for q in (0, 1) if hops(p, q) == 1]
        if shared:  # the pair shares a switch: its one-switch path(s), never a longer pairing on a tie
            return shared[0] if self.policy == "fixed" or len(shared) == 1 else self._pick(shared, src, dst, key)
        sets = [[(0, 1), (1, 0)], [(0, 0), (1, 1)]]
        live = [[pq for pq in ps if hops(*pq) < float("inf")] for ps in sets]
        cost = [sum(hops(*pq) for pq in ps) if len(ps) == 2 else float("inf") for ps in live]
        chosen = live[0] if cost[0] <= cost[1] else live[1]
        if not chosen:  # a failure broke every port-disjoint set: the best live pairing
            single = [pq for ps in live for pq in ps]
            return min(single, key=lambda pq: hops(*pq)) if single else None
        if self.policy == "fixed" or len(chosen) == 1:
            return chosen[0]
        return self._pick(chosen, src, dst, key)

    def _pick(self, pairings: list[tuple[int, int]], src: int, dst: int, key: int) -> tuple[int, int]:
        """`balanced`: a source's flows in turn over the pairings; `hashed`: by the flow key."""
        if self.policy == "balanced":
            turn = self._turn[src] = self._turn.get(src, -1) + 1
            return pairings[turn % len(pairings)]
        return pairings[mix(key, src, dst) % len(pairings)]

    def path(self, src: int, dst: int, key: int) -> list[int] | None:
        """Directed links from GPU `src` to GPU `dst`; None if the failure left no path."""
        pq = self.ports(src, dst, key)
        if pq is None:
            return None
        p, q = pq
        cur, target = int(self.att[src, p]), int(self.att[dst, q])
        path = [2 * int(self.port_cable[src, p])]
        hop = 0
        while cur != target:
            step = self.dist[cur, target] - 1
            choices = [(n, d) for n, d in self.adj[cur] if self.dist[n, target] == step]
            n, d = choices[mix(key, hop) % len(choices)] if len(choices) > 1 else choices[0]
            path.append(d)
            cur, hop = n, hop + 1
        path.append(2 * int(self.port_cable[dst, q]) + 1)
        return path

