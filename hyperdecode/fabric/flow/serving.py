"""PD-disaggregated serving on a topology, coupled to the network: what the network does changes how much the
cluster serves.

The objects: prefill instances (prefill.py: queues, chunked prefills sharing the compute, KV memory), decode
admission and decode instances (decode.py), transfers, all-to-alls and the KV store (transfers.py), an arrival
source (open loop: the trace's times; closed loop: `sessions` clients, each sending its next request when one ends)
and a failure injector; `Cluster` holds what they share: the event queue (events.py), the flow network
(network.py: max-min fair, by QP), the router and the run's log (result.py).

TTFT = queue + prefill (with the prefix fetch) + decode admission + KV transfer + the first step. A KV transfer goes
from the prefill rank's server to the decode instance's, sliced over `nic_slices` NICs at each end (slice j from
NIC (a + j) mod 8 to NIC (b + j) mod 8 for ranks a and b, so most slices cross rails), `qps` QPs per slice.
With `traffic="kv+ep"` instances over several servers run their expert-parallel all-to-all (transfers.py) and go
as fast as it lets them. PFC's pauses come from packet-level replays of hot windows (packet/hotwindow.py):
`holds` adds the pause time they measured to the transfers they slowed (coupled.py runs the two passes).

>>> import numpy as np
>>> from hyperdecode.fabric import roft
>>> from hyperdecode.fabric.flow.workload import Workload
>>> from hyperdecode.fabric.flow.model import ModelProfile
>>> work = Workload(np.array([0.0]), np.array([10_000]), np.array([5]), "one")
>>> run = simulate(roft(64, 16), work, ModelProfile(kv_bytes_per_token=1000), SimConfig(qps=1))
>>> round(float(run.ttft_s[0]), 4)  # 10k tokens at 32.2k tok/s, 10 MB at 50 GB/s, a 20.04 ms step
0.3308
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from ...errors import ConfigError
from ..events import EventQueue
from ..topology.graph import Topology
from .config import SimConfig, check_config
from .decode import Admission, DecodeInstance
from .model import ModelProfile
from .network import Flow, FlowNetwork
from .placement import place
from .prefill import PrefillInstance
from .result import ServingRun
from .routing import Router, link_class, mix
from .transfers import KINDS, PrefixStore
from .workload import Workload

__all__ = ["simulate", "Cluster"]


class Cluster:
    """What the serving objects share (module docstring)."""

    def __init__(self, topo: Topology, work: Workload, model: ModelProfile, cfg: SimConfig,
                 holds: dict | None = None, progress: Callable[[int], None] | None = None):
        self.topo, self.work, self.model, self.cfg = topo, work, model, cfg
        self.holds = holds or {}
        self.progress = progress
        n = len(work)
        self.queue = EventQueue()
        self.network = FlowNetwork(np.repeat(topo.link_gbps * 1e9 / 8, 2), self._rate_set)
        self.router = Router(topo, cfg.port_policy, hashing=cfg.hashing)
        self.run = ServingRun.empty(n)
        self.placement = place(topo, cfg)
        self.ep = cfg.traffic == "kv+ep" and model.top_k > 0
        self.gpus_per_server = topo.gpus_per_server
        self.input_tokens, self.output_tokens = work.input_tokens, work.output_tokens
        self.hash_ids = work.hash_ids
        self.kv_bytes_per_token = model.kv_bytes_per_token
        self.kv_bytes = work.input_tokens.astype(np.float64) * model.kv_bytes_per_token
        self.decode_need = (work.input_tokens + work.output_tokens).astype(np.float64) * model.kv_bytes_per_token
        self.prefill_capacity, self.decode_capacity = cfg.prefill_kv_gb * 1e9, cfg.decode_kv_gb * 1e9
        rng = np.random.default_rng(cfg.seed)
        self.src_rank = rng.integers(0, cfg.gpus_per_instance, n)
        self.dst_rank = rng.integers(0, cfg.decode_instance_gpus, n)
        self.store = PrefixStore(self)
        self.prefills = [PrefillInstance(self, i, g) for i, g in enumerate(self.placement.prefill)]
        self.decodes = [DecodeInstance(self, i, g) for i, g in enumerate(self.placement.decode)]
        self.admission = Admission(self, self.decodes)
        self.done = 0
        self._flushing = False
        self.source = ClosedLoop(self, cfg.sessions) if cfg.sessions else OpenLoop(self)

    # --- flows ------------------------------------------------------------------------------------------------------
    def qp_routes(self, pairs: list[tuple[int, int]], key: tuple) -> list | None:
        """Every QP's routes for (src, dst) slices; None if one has no path."""
        out = []
        for a, b in pairs:
            for qp in range(self.cfg.qps):
                found = self.router.routes(a, b, key=mix(*key, a, b, qp), qp=qp)
                if found is None:
                    return None
                out += found
        return out

    def start_flow(self, owner: Any, routes: list, per_qp: float, priority: int, cap: float = float("inf"),
                   watcher: Callable | None = None) -> Flow:
        """A flow of `per_qp` weight on each of `routes` for `owner`, added to the network now."""
        return self.network.add_many([(routes, per_qp, owner, priority, cap, watcher)], self.queue.now)[0]

    def move_flow(self, flow: Any, routes: list) -> None:
        self.network.reroute(flow, routes, self.queue.now)
        self.run.rerouted_flows += 1

    def stop_flow(self, flow: Any) -> None:
        self.network.remove(flow, self.queue.now)
        self._log(flow)

    def _rate_set(self, flow: Any, eta: float) -> None:
        self.queue.at(eta, self._flow_ended, flow, flow.version)

    def _flow_ended(self, flow: Any, version: int) -> None:
        if flow.version != version or flow.id not in self.network.flows:
            return
        self.network.remove(flow, self.queue.now, defer=True)  # flows ending at one instant: one recomputation
        if not self._flushing:
            self._flushing = True
            self.queue.at(self.queue.now, self._flush)
        self._log(flow)
        flow.tag.arrived()

    def _flush(self) -> None:
        self._flushing = False
        self.network.flush(self.queue.now)

    def _log(self, flow: Any) -> None:
        owner = flow.tag
        row = (flow.moved * flow.qps, flow.start, self.queue.now, flow.priority, KINDS.index(owner.kind),
               owner.request, flow.qps)
        self.run.log_flow(row, flow.routes)

    # --- requests ---------------------------------------------------------------------------------------------------
    def kv_pairs(self, request: int, src: list[int], dst: list[int]) -> list[tuple[int, int]]:
        """The KV transfer's (src GPU, dst GPU) slices (module docstring)."""
        if self.cfg.kv_split == "striped":
            pairs = [(src[r], dst[r % len(dst)]) for r in range(len(src))]
        else:
            a, b = (int(self.src_rank[request]) % len(src), int(self.dst_rank[request]) % len(dst))
            if self.cfg.kv_split == "single":
                a, b = 0, 0
            pairs = self.slices(src[a], dst[b], len(src), len(dst))
        self.run.kv_pairs[request] = pairs[0]
        return pairs

    def slices(self, src: int, dst: int, src_size: int = 1 << 30, dst_size: int = 1 << 30) -> list[tuple[int, int]]:
        """A transfer from GPU `src` to GPU `dst` sliced over `nic_slices` NICs of each one's server (or of its
        instance, when smaller): slice j from the j-th NIC after src's to the j-th after dst's."""
        return [(self._nic(src, j, src_size), self._nic(dst, j, dst_size)) for j in range(self.cfg.nic_slices)]

    def _nic(self, gpu: int, j: int, size: int) -> int:
        per = min(self.gpus_per_server, size)
        return gpu // per * per + (gpu % per + j) % per

    def arrive(self, request: int) -> None:
        self.run.arrival_s[request] = self.queue.now
        instance = min(self.prefills, key=lambda p: p.queued_tokens)
        instance.arrive(request)

    def fail(self, request: int) -> None:
        if not self.run.failed[request]:
            self.run.failed[request] = True
            self.run.dropped_requests += 1
            self.request_done(request)

    def request_done(self, request: int) -> None:
        self.done += 1
        if self.progress and self.done % 256 == 0:
            self.progress(self.done)
        self.source.ended(request)


class OpenLoop:
    """Arrivals at the trace's times."""

    def __init__(self, cluster: Cluster):
        for request, at in enumerate(cluster.work.arrival_s.tolist()):
            cluster.queue.at(at, cluster.arrive, request)

    def ended(self, request: int) -> None:
        pass


class ClosedLoop:
    """`sessions` clients: the trace's requests in order, each client sending the next as soon as its last ended."""

    def __init__(self, cluster: Cluster, sessions: int):
        self.cluster = cluster
        self.next = 0
        for _ in range(min(sessions, len(cluster.work))):
            self._send()

    def _send(self) -> None:
        request, self.next = self.next, self.next + 1
        self.cluster.queue.at(self.cluster.queue.now, self.cluster.arrive, request)

    def ended(self, request: int) -> None:
        if self.next < len(self.cluster.work):
            self._send()


class FailureInjector:
    """A link or switch fails at a time: flows crossing it move to new routes or, without one, are cut."""

    def __init__(self, cluster: Cluster, failure: tuple[str, int, float]):
        kind, ident, at = failure
        topo = cluster.topo
        limit = topo.num_links if kind == "link" else topo.num_switches
        if not 0 <= ident < limit:
            raise ConfigError(f"failure: {kind} {ident} is not in 0..{limit - 1}")
        self.cluster = cluster
        if kind == "link":
            self.cables = {ident}
        else:
            node = topo.num_gpus + ident
            self.cables = set(np.nonzero((topo.link_a == node) | (topo.link_b == node))[0].tolist())
        cluster.queue.at(at, self.fire)

    def fire(self) -> None:
        c = self.cluster
        c.router = Router(c.topo, c.cfg.port_policy, self.cables | c.router.failed, c.cfg.hashing)
        dead = {2 * x for x in self.cables} | {2 * x + 1 for x in self.cables}
        for flow in [f for f in c.network.flows.values() if dead & set(f.link_list)]:
            if not flow.tag.reroute():
                c.network.remove(flow, c.queue.now)
                c._log(flow)
                flow.tag.cut()


def simulate(topo: Topology, work: Workload, model: ModelProfile | None = None, cfg: SimConfig | None = None,
             progress: Callable[[int], None] | None = None, holds: dict | None = None) -> ServingRun:
    """Runs the whole workload (module docstring); `holds` maps (kind, request) to seconds a transfer's end is
    delayed by (PFC pauses measured in a replay)."""
    wall = time.perf_counter()
    model, cfg = model or ModelProfile(), cfg or SimConfig()
    model.check()
    check_config(topo, cfg)
    if cfg.prefix_cache and work.hash_ids is None:
        raise ConfigError(f"{work.source}: prefix_cache needs the trace's hash_ids (prefix blocks); it has none")
    cluster = Cluster(topo, work, model, cfg, holds, progress)
    if cfg.failure:
        FailureInjector(cluster, cfg.failure)
    cluster.queue.run()
    for flow in list(cluster.network.flows.values()):  # lasting flows still open (an all-to-all never stopped)
        cluster.stop_flow(flow)
    net, run = cluster.network, cluster.run
    net.close(cluster.queue.now)
    run.link_bytes, run.util_seconds, run.end_s = net.link_bytes, net.util_seconds, cluster.queue.now
    run.throttled = net.throttled_by_class(lambda link: link_class(topo, link))
    run.events, run.recomputations = cluster.queue.events, net.recomputations
    run.topology, run.workload, run.config, run.model, run.placement = topo, work, cfg, model, cluster.placement
    run.holds = dict(cluster.holds)
    run.sim_wall_s = time.perf_counter() - wall
    return run
