"""What crosses the network in a serving run: transfers (a KV cache to its decode instance, prefix blocks from the
KV store), an instance's expert-parallel all-to-all, and the KV store that decides what a prefill fetches.

A `Transfer` is one flow of the network (network.py): its slices (GPU pairs) and each slice's QPs move in lockstep;
it ends when its bytes have arrived, plus any hold the PFC replays measured for it (the pause time they add). An
`AllToAll` is an instance's expert-parallel traffic as one lasting flow: every GPU to its rail peer on each other
server of the instance, `qps` QPs each, whose demand is what the compute at full speed would send. With two-batch
overlap the flow is capped at that demand and the instance runs at speed rate / demand (the step is the longer of
compute and all-to-all); without overlap it takes what max-min gives and the instance runs at 1 / (1 + demand /
rate) (the step is their sum).

>>> class Tiny:  # the store's view of a cluster: servers of 8 GPUs, block ids per request
...     gpus_per_server, kv_bytes_per_token, hash_ids, input_tokens = 8, 2, [[1, 2, 3], [1, 2, 9]], [1536, 1536]
>>> store = PrefixStore(Tiny())
>>> store.lookup(0, gpu=0), store.lookup(1, gpu=9)  # the second request finds blocks 1, 2 on GPU 0's server
((0, []), (2, [(0, 9, 2048)]))
"""
from __future__ import annotations

from typing import Any, Callable

from .workload import BLOCK_TOKENS

__all__ = ["Transfer", "AllToAll", "PrefixStore", "KINDS"]

KINDS = ("kv", "fetch", "ep")  # a logged flow's kind, by index


class Transfer:
    """One KV transfer or prefix fetch (`kind`) of `request`: `nbytes` split evenly over the (src, dst) slices."""

    def __init__(self, cluster: Any, kind: str, request: int, pairs: list[tuple[int, int]], nbytes: float,
                 on_done: Callable[[], None], on_cut: Callable[[], None]):
        self.cluster = cluster
        self.kind = kind
        self.request = request
        self.pairs = pairs
        self.nbytes = nbytes
        self.on_done = on_done
        self.on_cut = on_cut
        self.flow = None

    def routes(self) -> list | None:
        key = (KINDS.index(self.kind), self.request)
        return self.cluster.qp_routes(self.pairs, key)

    def start(self) -> bool:
        """False if a failure left a slice without a path."""
        routes = self.routes()
        if routes is None:
            return False
        per_qp = self.nbytes / (len(self.pairs) * self.cluster.cfg.qps)
        priority = int(self.cluster.cfg.classes == "separate")
        self.flow = self.cluster.start_flow(self, routes, per_qp, priority)
        return True

    def arrived(self) -> None:
        hold = self.cluster.holds.get((self.kind, self.request), 0.0)
        if hold > 0:
            self.cluster.queue.after(hold, self.on_done)
        else:
            self.on_done()

    def reroute(self) -> bool:
        """After a failure: new routes, or False if it is cut off."""
        routes = self.routes()
        if routes is None:
            return False
        self.cluster.move_flow(self.flow, routes)
        return True

    def cut(self) -> None:
        self.on_cut()


class AllToAll:
    """The expert-parallel traffic of an instance over `gpus` (ranks in order, `per_server` to a server)."""

    kind = "ep"
    request = -1

    def __init__(self, cluster: Any, gpus: list[int], per_server: int, on_speed: Callable[[], None], ident: int):
        self.cluster = cluster
        self.gpus = gpus
        self.per_server = per_server
        self.servers = len(gpus) // per_server
        self.on_speed = on_speed
        self.ident = ident
        self.pairs = [(gpus[s * per_server + r], gpus[t * per_server + r]) for s in range(self.servers)
                      for t in range(self.servers) if t != s for r in range(per_server)]
        self.qps = len(self.pairs) * cluster.cfg.qps
        self.flow = None
        self.demand = 0.0

    def routes(self) -> list:
        """Every pair's QPs that still have a path (a failure drops the others: they carry nothing)."""
        out = []
        for pair in self.pairs:
            found = self.cluster.qp_routes([pair], (KINDS.index("ep"), self.ident))
            out += found or []
        return out

    @property
    def speed(self) -> float:
        """The instance's speed, 0 to 1, that its all-to-all allows."""
        if self.flow is None or self.demand <= 0:
            return 1.0
        rate = self.flow.rate
        if self.cluster.cfg.ep_overlap:
            return min(1.0, rate / self.demand)
        return 1.0 / (1.0 + self.demand / rate) if rate > 0 else 0.0

    def run(self, demand_per_qp: float) -> None:
        """Starts the flow, or sets its demand (bytes/s per QP at full compute speed)."""
        self.demand = demand_per_qp
        cap = demand_per_qp if self.cluster.cfg.ep_overlap else float("inf")
        if self.flow is None:
            routes = self.routes()
            if routes:
                self.flow = self.cluster.start_flow(self, routes, float("inf"), 0, cap, self._changed)
        else:
            self.cluster.network.set_cap(self.flow, cap, self.cluster.queue.now)

    def stop(self) -> None:
        if self.flow is not None:
            flow, self.flow = self.flow, None
            self.cluster.stop_flow(flow)
            self.on_speed()

    def _changed(self, flow: Any) -> None:
        if flow is self.flow:
            self.on_speed()

    def reroute(self) -> bool:
        routes = self.routes()
        if not routes:
            self.stop()
            return True
        self.cluster.move_flow(self.flow, routes)
        return True

    def cut(self) -> None:
        self.flow = None
        self.on_speed()


class PrefixStore:
    """Mooncake's KV store: each prompt block (512 tokens) lives in the host memory of the server whose GPU first
    computed it, from that prefill's start; it never evicts."""

    def __init__(self, cluster: Any):
        self.cluster = cluster
        self.stored_at: dict[int, int] = {}

    def lookup(self, request: int, gpu: int) -> tuple[int, list[tuple[int, int, float]]]:
        """(leading blocks cached, [(holder GPU, gpu, bytes)] one fetch per holding server other than gpu's); the
        prompt's other blocks are stored at gpu's server. At least one token is always computed."""
        c = self.cluster
        ids = c.hash_ids[request]
        k = 0
        while k < len(ids) and ids[k] in self.stored_at:
            k += 1
        hits = min(k, (int(c.input_tokens[request]) - 1) // BLOCK_TOKENS)
        per_server = c.gpus_per_server
        held: dict[int, int] = {}
        for block in ids[:hits]:
            holder = self.stored_at[block]
            if holder // per_server != gpu // per_server:
                held[holder] = held.get(holder, 0) + 1
        for block in ids[hits:]:
            self.stored_at.setdefault(block, gpu)
        return hits, [(holder, gpu, blocks * BLOCK_TOKENS * c.kv_bytes_per_token) for holder, blocks in held.items()]
