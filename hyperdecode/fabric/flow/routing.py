"""Routes for QPs: ROFT / fat-tree ECMP under a hash model; ZCube NIC-port choice per QP (by policy), then its
shortest path.

Hash models (where a hop has several equal next hops):

- `ideal`: an independent hash per hop (a fresh 5-tuple hash at every switch);
- `polarized`: one hash at every tier: the same value picks the next hop everywhere, so flows that collide at one
  tier collide at the next (hash polarization);
- `low-entropy`: RoCE v2 QPs whose UDP source ports carry no entropy: every QP between two GPUs hashes alike, so a
  transfer's QPs and every later transfer of that pair follow one path;
- `spray`: packet spraying / dynamic load balancing, the optimistic bound: a QP's bytes split evenly over every
  next hop at every hop (routes with fractions).

Port policies (ZCube's two NIC ports): a pair of GPUs uses a port-disjoint set of pairings, {A->B, B->A} (cross)
or {A->A, B->B}, whichever has fewer switches in total (cross on ties). `split` spreads a transfer's QPs over the
set (QP k on pairing k mod 2, both ports at both ends, as a multi-port NIC or Mooncake's transfer engine does);
`fixed` always takes the set's first pairing; `balanced` alternates a source's QPs over it; `hashed` picks by the QP
key. Under every policy but `split` a pair that shares a switch takes its one-switch path.

Directed link ids: cable i carries 2i from `link_a` to `link_b` (for GPU cables: the GPU's uplink) and 2i + 1 back.

>>> from hyperdecode.fabric import zcube
>>> router = Router(zcube(4), "split")
>>> [router.ports(0, 5, key=1, qp=qp) for qp in range(2)]  # block 0 / residue 0 and block 1 / residue 1
[(0, 1), (1, 0)]
"""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from ..topology.graph import Topology
from ..topology.verify import all_pairs, without

__all__ = ["Router", "PORT_POLICIES", "HASH_MODELS", "link_class", "mix"]

PORT_POLICIES = ("fixed", "balanced", "hashed", "split")
HASH_MODELS = ("ideal", "polarized", "low-entropy", "spray")
INF = float("inf")


def mix(*values: int) -> int:
    """A deterministic 64-bit hash of integers (splitmix-style), the stand-in for a switch's 5-tuple hash.

    >>> mix(1, 2) != mix(2, 1)
    True
    """
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
    """Paths between GPUs: shortest paths, ZCube's port policy and an ECMP hash model (module docstring)."""
    def __init__(self, topo: Topology, port_policy: str = "balanced", failed_links: set[int] = frozenset(),
                 hashing: str = "ideal"):
        if port_policy not in PORT_POLICIES:
            raise ConfigError(f"port policy '{port_policy}' is not one of {PORT_POLICIES}")
        if hashing not in HASH_MODELS:
            raise ConfigError(f"hash model '{hashing}' is not one of {HASH_MODELS}")
        self.topo, self.policy, self.hashing, self.failed = topo, port_policy, hashing, set(failed_links)
        N, S = topo.num_gpus, topo.num_switches
        alive = np.array([i not in self.failed for i in range(topo.num_links)], dtype=bool)
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
        self._next: dict[tuple[int, int], list[tuple[int, int]]] = {}

    def _hops(self, src: int, dst: int, p: int, q: int) -> float:
        a, b = self.att[src, p], self.att[dst, q]
        if a < 0 or b < 0 or self.dist[a, b] < 0:
            return INF
        return float(self.dist[a, b] + 1)

    def ports(self, src: int, dst: int, key: int, qp: int = 0) -> tuple[int, int] | None:
        """The NIC ports a QP uses (module docstring); None if no pairing has a path."""
        if self.topo.nic_ports == 1:
            return (0, 0) if self._hops(src, dst, 0, 0) < INF else None
        hops = {(p, q): self._hops(src, dst, p, q) for p in (0, 1) for q in (0, 1)}
        shared = [pq for pq, h in hops.items() if h == 1]
        if shared and self.policy != "split":  # the pair shares a switch: its one-switch path(s)
            return shared[0] if self.policy == "fixed" or len(shared) == 1 else self._pick(shared, src, dst, key)
        sets = [[(0, 1), (1, 0)], [(0, 0), (1, 1)]]
        live = [[pq for pq in ps if hops[pq] < INF] for ps in sets]
        cost = [sum(hops[pq] for pq in ps) if len(ps) == 2 else INF for ps in live]
        chosen = live[0] if cost[0] <= cost[1] else live[1]
        if not chosen or cost[0] == cost[1] == INF:  # a failure broke every port-disjoint set: the best live pairing
            single = [pq for ps in live for pq in ps]
            return min(single, key=lambda pq: hops[pq]) if single else None
        if self.policy == "split":
            return chosen[qp % len(chosen)]
        if self.policy == "fixed" or len(chosen) == 1:
            return chosen[0]
        return self._pick(chosen, src, dst, key)

    def _pick(self, pairings: list[tuple[int, int]], src: int, dst: int, key: int) -> tuple[int, int]:
        """`balanced`: a source's QPs in turn over the pairings; `hashed`: by the QP key."""
        if self.policy == "balanced":
            turn = self._turn[src] = self._turn.get(src, -1) + 1
            return pairings[turn % len(pairings)]
        return pairings[mix(key, src, dst) % len(pairings)]

    def _choices(self, here: int, target: int) -> list[tuple[int, int]]:
        """The next hops (switch, directed link) from switch `here` one hop closer to `target`."""
        found = self._next.get((here, target))
        if found is None:
            step = self.dist[here, target] - 1
            found = [(n, d) for n, d in self.adj[here] if self.dist[n, target] == step]
            self._next[here, target] = found
        return found

    def path(self, src: int, dst: int, key: int, qp: int = 0) -> list[int] | None:
        """Directed links from GPU `src` to GPU `dst` for one QP under a hashing model (`spray` takes the first
        route); None if a failure left no path."""
        routes = self.routes(src, dst, key, qp)
        return list(routes[0][0]) if routes else None

    def routes(self, src: int, dst: int, key: int, qp: int = 0) -> list[tuple[tuple[int, ...], float]] | None:
        """[(path, fraction)] one QP's bytes take: one path with fraction 1, or every shortest path with its share
        under `spray`; None if a failure left no path."""
        pq = self.ports(src, dst, key, qp)
        if pq is None:
            return None
        p, q = pq
        first, last = 2 * int(self.port_cable[src, p]), 2 * int(self.port_cable[dst, q]) + 1
        start, target = int(self.att[src, p]), int(self.att[dst, q])
        if self.hashing == "spray":
            return [((first, *middle, last), share) for middle, share in self._spread(start, target)]
        if self.hashing == "low-entropy":
            key = mix(src, dst, p, q)  # the QP's source port adds nothing: the pair alone picks the path
        here, middle, hop = start, [], 0
        while here != target:
            choices = self._choices(here, target)
            salt = () if self.hashing == "polarized" else (hop,)
            here, link = choices[mix(key, *salt) % len(choices)] if len(choices) > 1 else choices[0]
            middle.append(link)
            hop += 1
        return [((first, *middle, last), 1.0)]

    def _spread(self, here: int, target: int) -> list[tuple[tuple[int, ...], float]]:
        """Every shortest switch path from `here` to `target`, with the share an even split at each hop gives."""
        if here == target:
            return [((), 1.0)]
        choices = self._choices(here, target)
        out = []
        for n, link in choices:
            for rest, share in self._spread(n, target):
                out.append(((link, *rest), share / len(choices)))
        return out
