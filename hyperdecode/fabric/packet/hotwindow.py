"""Hot windows: the busiest stretches of a serving run (flow/result.py), replayed packet by packet with PFC.

`hot_windows` picks the windows of `width` seconds in which the most transfer bytes (KV and prefix fetches)
started, apart from each other. `window_flows` takes a window's transfers (at most `max_flows`, largest first, each
QP route a packet flow with its start, size and class) and, as paced background, the lasting flows (all-to-alls)
that share a link with them at the average rate they had. `replay` runs them twice on the same topology, in the
max-min flow model and in the PFC model, for the window and at most as long again (a burst can hold hundreds of GB:
the replay is bounded by time, not by the flows' ends), and reports what PFC changes: pause frames and pause time
per switch tier and at leaf ports, each transfer's slowdown (completion with PFC over without) and the delay PFC
added to it (`holds`, fed back into the serving run by coupled.py), the egress queues' peak depths, each link's
utilisation and queue depth P99 over 100 µs windows (max and mean over links, and over leaf ports), and the
victims, transfers slowed by PFC that do not end at an incast destination (a GPU that receives more than one
transfer in the window).

>>> import numpy as np
>>> class Run:  # the flows of a run: bytes, start, end, class, kind (0 kv), request, QPs
...     flows = np.array([[1e6, 0.0, 0.1, 0, 0, 0, 1], [4e6, 2.0, 2.1, 0, 0, 1, 1], [4e6, 2.2, 2.3, 1, 0, 2, 1]])
>>> hot_windows(Run(), 0.5)
[(2.0, 2.5)]
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..events import EventQueue
from ..flow.network import FlowNetwork
from ..flow.transfers import KINDS
from ..topology.graph import Topology
from .dcqcn import Dcqcn
from .fabricnet import pause_tree, topology_net
from .pfc import PacketFlow, PfcConfig, simulate

__all__ = ["hot_windows", "window_flows", "replay", "replay_window"]

EP = KINDS.index("ep")


def hot_windows(run: Any, width: float, count: int = 1) -> list[tuple[float, float]]:
    """Up to `count` windows [t0, t0 + width), apart from each other, with the most transfer bytes starting in them
    (t0 at a transfer's start), busiest first."""
    flows = run.flows
    flows = flows[flows[:, 4] != EP] if len(flows) else flows
    if not len(flows):
        raise ValueError("the run has no transfers to replay")
    order = np.argsort(flows[:, 1])
    starts, sizes = flows[order, 1], np.cumsum(flows[order, 0])
    ends = np.searchsorted(starts, starts + width, side="left")
    before = np.concatenate([[0.0], sizes])
    load = before[ends] - before[np.arange(len(starts))]
    chosen: list[tuple[float, float]] = []
    for k in np.argsort(-load, kind="stable"):
        t0 = float(starts[k])
        if all(t0 + width <= a or t0 >= b for a, b in chosen):
            chosen.append((t0, t0 + width))
        if len(chosen) == count:
            break
    return chosen


def window_flows(run: Any, window: tuple[float, float], max_flows: int = 64) -> list[PacketFlow]:
    """The window's transfers as packet flows (named "t<flow>.<route>"), then the lasting flows that share a link
    with them, paced at their average rate ("b<flow>.<route>"); starts relative to the window."""
    t0, t1 = window
    logged = run.flows
    transfers = [i for i in np.argsort(-logged[:, 0]) if logged[i, 4] != EP and t0 <= logged[i, 1] < t1][:max_flows]
    if not transfers:
        raise ValueError(f"no transfer starts in the window [{t0:g}, {t1:g}) s")
    out, links = [], set()
    for i in sorted(transfers):
        per_qp = logged[i, 0] / logged[i, 6]
        for k, (path, share) in enumerate(run.flow_routes[i]):
            out.append(PacketFlow(f"t{i}.{k}", list(path), size=per_qp * share, start=float(logged[i, 1] - t0),
                                  priority=int(logged[i, 3])))
            links.update(path)
    lasting = np.nonzero((logged[:, 4] == EP) & (logged[:, 1] < t1) & (logged[:, 2] > t0))[0]
    for i in lasting:
        span = max(logged[i, 2] - logged[i, 1], 1e-12)
        per_qp_rate = logged[i, 0] / logged[i, 6] / span
        paced: dict[tuple, float] = {}
        for path, share in run.flow_routes[i]:
            if links.intersection(path):
                paced[tuple(path)] = paced.get(tuple(path), 0.0) + per_qp_rate * share
        for k, (path, rate) in enumerate(paced.items()):
            if rate > 0:
                out.append(PacketFlow(f"b{i}.{k}", list(path), start=0.0, priority=int(logged[i, 3]), rate=rate))
    return out


def _maxmin(topo: Topology, flows: list[PacketFlow], until: float) -> tuple[dict[str, float], dict[str, float]]:
    """The flows in the max-min model up to `until`: (finish times of those done, bytes delivered by each)."""
    queue, done, made = EventQueue(), {}, {}

    def finish(f: Any, version: int) -> None:
        if f.version == version and f.id in network.flows:
            network.remove(f, queue.now)
            done[f.tag] = queue.now

    network = FlowNetwork(np.repeat(topo.link_gbps * 1e9 / 8, 2), lambda f, eta: queue.at(eta, finish, f, f.version))

    def start(fl: PacketFlow) -> None:
        size = fl.size if fl.size is not None else float("inf")
        cap = fl.rate if fl.rate is not None else float("inf")
        made[fl.name] = network.add_many([(fl.path, size, fl.name, fl.priority, cap)], queue.now)[0]

    for fl in flows:
        queue.at(fl.start, start, fl)
    queue.run(until)
    network.settle(until)
    return done, {name: f.moved for name, f in made.items()}


def _over_links(per_link: dict[int, float], links: set[int] | None = None) -> dict[str, float]:
    values = [v for k, v in per_link.items() if links is None or k in links] or [0.0]
    return {"max": float(max(values)), "mean": float(np.mean(values))}


def replay(topo: Topology, flows: list[PacketFlow], width: float, config: PfcConfig | None = None,
           dcqcn: bool = False) -> dict[str, Any]:
    """The flows with and without PFC (module docstring). Chunks of 64 KB unless `config` says otherwise; `dcqcn`
    adds ECN marking and DCQCN at the senders to that default."""
    config = config or PfcConfig(chunk=64 << 10, dcqcn=Dcqcn() if dcqcn else None)
    net = topology_net(topo)
    transfers = [f for f in flows if f.size is not None]
    drained = width + sum(f.size for f in transfers) / (min(topo.link_gbps) * 1e9 / 8)  # every transfer done by then
    horizon = min(drained, 2 * width)
    result = simulate(net, flows, until=horizon, warmup=0.0, config=config)
    done, sent = _maxmin(topo, flows, horizon)
    slowdown, added = {}, {}
    for f in transfers:
        if f.name in done and f.name in result.finish:
            slowdown[f.name] = (result.finish[f.name] - f.start) / max(done[f.name] - f.start, 1e-12)
            added[f.name] = max(result.finish[f.name] - done[f.name], 0.0)
        else:
            slowdown[f.name] = sent[f.name] / max(result.delivered[f.name], 1.0)
            added[f.name] = (slowdown[f.name] - 1) * (horizon - f.start)
    receivers: dict[int, int] = {}
    for f in transfers:
        receivers[f.path[-1]] = receivers.get(f.path[-1], 0) + 1
    victims = [f.name for f in transfers if receivers[f.path[-1]] == 1 and slowdown[f.name] > 1.1]
    values = np.array(list(slowdown.values()))
    tree = pause_tree(net, result)
    leaf_out = {k for k in range(len(net.src)) if net.is_switch[net.src[k]] and net.tier[net.src[k]] == 0}
    leaf_in = {k for k in range(len(net.src)) if net.is_switch[net.dst[k]] and net.tier[net.dst[k]] == 0}
    return {"replayed_s": horizon, "flows": len(transfers), "background_flows": len(flows) - len(transfers),
            "unfinished": sum(f.name not in result.finish for f in transfers),
            "pause_frames": int(sum(result.pause_frames)), "pause_s_total": float(sum(result.pause_s)),
            "pause_s_by_tier": tree["pause_s_by_tier"], "pause_tiers": tree["depth"],
            "leaf_port_pause_frames": int(sum(result.pause_frames[k] for k in leaf_in)),
            "leaf_port_pause_s": float(sum(result.pause_s[k] for k in leaf_in)),
            "slowdown_p50": float(np.percentile(values, 50)), "slowdown_p99": float(np.percentile(values, 99)),
            "slowdowns": slowdown, "added_s": added,
            "victims": victims, "queue_peak_bytes_max": int(max(result.peak_queue, default=0)),
            "queue_peak_bytes_p99": float(np.percentile([q for q in result.peak_queue if q] or [0], 99)),
            "link_util_p99_100us": _over_links(result.util_p99), "queue_bytes_p99_100us": _over_links(result.queue_p99),
            "leaf_queue_bytes_p99_100us": _over_links(result.queue_p99, leaf_out),
            "ecn_marks": result.marks, "cnps": result.cnps, "drops": result.drops, "events": result.events}


def replay_window(run: Any, window: tuple[float, float], config: PfcConfig | None = None, max_flows: int = 64,
                  dcqcn: bool = False) -> dict[str, Any]:
    """One window of a run replayed (`window_flows`, then `replay`)."""
    out = replay(run.topology, window_flows(run, window, max_flows), window[1] - window[0], config, dcqcn)
    return {"window": window} | out
