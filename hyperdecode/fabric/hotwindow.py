"""Hot windows: the busiest stretch of a max-min serving run, replayed packet by packet with PFC (pfc.py).

`hot_window` picks the window of `width` seconds in which the most flow bytes started; `replay_window` runs those
flows (same start times, sizes, paths and classes) twice on the same topology, in the max-min flow model and in the
PFC model, for the window and at most as long again (an EP burst can hold hundreds of GB: the replay is bounded by
time, not by the flows' ends), and reports what PFC changes: pause frames and pause time per switch tier, each flow's
slowdown (completion time with PFC over without), the egress queues' peak depths (P99 over the links that queued),
each link's utilisation and queue depth P99 over 100 µs windows (their maximum and mean over links), and the
victims, flows slowed by PFC that do not end at an incast destination (a GPU that receives more than one
flow in the window). The replay keeps only the window's flows, so both sides see the same traffic.

>>> r = {"flows": np.array([[1e6, 0.0, 0.1, 0], [4e6, 2.0, 2.1, 0], [4e6, 2.2, 2.3, 1]])}  # bytes, start, end, class
>>> hot_window(r, 0.5)
(2.0, 2.5)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .flowsim import EventQueue, FlowNetwork
from .dcqcn import Dcqcn
from .pfc import Flow, PfcConfig, simulate
from .pfccases import pause_tree, topology_net
from .topology import Topology

__all__ = ["hot_window", "replay_window"]


def hot_window(r: dict[str, Any], width: float) -> tuple[float, float]:
    """[t0, t0 + width) with the most flow bytes starting in it (t0 at a flow's start)."""
    flows = r["flows"]
    if not len(flows):
        raise ValueError("the run has no flows to replay")
    order = np.argsort(flows[:, 1])
    starts, sizes = flows[order, 1], np.cumsum(flows[order, 0])
    ends = np.searchsorted(starts, starts + width, side="left")
    before = np.concatenate([[0.0], sizes])
    best = int(np.argmax(before[ends] - before[np.arange(len(starts))]))
    return float(starts[best]), float(starts[best] + width)


def _maxmin(topo: Topology, flows: list[Flow], until: float) -> tuple[dict[str, float], dict[str, float]]:
    """The flows in the max-min model up to `until`: (finish times of those done, bytes delivered by each)."""
    ev, done, made = EventQueue(), {}, {}
    net = FlowNetwork(np.repeat(topo.link_gbps * 1e9 / 8, 2), lambda f, eta: ev.at(eta, finish, f, f.version))

    def finish(f, version):
        if f.version == version and f.id in net.flows:
            net.remove(f, ev.now)
            done[f.tag] = ev.now

    def start(fl):
        made[fl.name] = net.add(fl.path, fl.size, ev.now, tag=fl.name, priority=fl.priority)

    for fl in flows:
        ev.at(fl.start, start, fl)
    ev.run(until)
    net.settle(until)
    return done, {name: f.size - f.remaining for name, f in made.items()}


def _max_mean(per_link: dict[int, float]) -> dict[str, float]:
    values = list(per_link.values()) or [0.0]
    return {"max": float(max(values)), "mean": float(np.mean(values))}


def replay_window(r: dict[str, Any], window: tuple[float, float], config: PfcConfig | None = None,
                  max_flows: int = 64, dcqcn: bool = False) -> dict[str, Any]:
    """The window's flows (at most `max_flows`, largest first) with and without PFC, for the window and at most as
    long again to drain: pause figures per tier, slowdowns, victims. A flow's slowdown is its completion time with
    PFC over without when it ends in both, else the bytes max-min delivered by the end over those PFC did. Chunks of
    64 KB unless `config` says otherwise; `dcqcn` adds ECN marking and DCQCN at the senders to that default."""
    topo: Topology = r["topology"]
    t0, t1 = window
    logged = r["flows"]
    picked = [i for i in np.argsort(-logged[:, 0]) if t0 <= logged[i, 1] < t1][:max_flows]
    flows = [Flow(f"f{i}", list(r["flow_paths"][i]), size=float(logged[i, 0]), start=float(logged[i, 1] - t0),
                  priority=int(logged[i, 3])) for i in sorted(picked)]
    if not flows:
        raise ValueError(f"no flow starts in the window [{t0:g}, {t1:g}) s")
    config = config or PfcConfig(chunk=64 << 10, dcqcn=Dcqcn() if dcqcn else None)
    net = topology_net(topo)
    drained = (t1 - t0) + sum(f.size for f in flows) / (min(topo.link_gbps) * 1e9 / 8)  # every flow done by then
    horizon = min(drained, 2 * (t1 - t0))
    result = simulate(net, flows, until=horizon, warmup=0.0, config=config)
    done, sent = _maxmin(topo, flows, horizon)
    slowdown = {}
    for f in flows:
        if f.name in done and f.name in result.finish:
            slowdown[f.name] = (result.finish[f.name] - f.start) / (done[f.name] - f.start)
        else:
            slowdown[f.name] = sent[f.name] / max(result.delivered[f.name], 1.0)
    receivers: dict[int, int] = {}
    for f in flows:
        receivers[f.path[-1]] = receivers.get(f.path[-1], 0) + 1
    victims = [f.name for f in flows if receivers[f.path[-1]] == 1 and slowdown[f.name] > 1.1]
    values = np.array(list(slowdown.values()))
    tree = pause_tree(net, result)
    return {"window": window, "replayed_s": horizon, "flows": len(flows),
            "unfinished": sum(f.name not in result.finish for f in flows),
            "pause_frames": int(sum(result.pause_frames)), "pause_s_total": float(sum(result.pause_s)),
            "pause_s_by_tier": tree["pause_s_by_tier"], "pause_tiers": tree["depth"],
            "slowdown_p50": float(np.percentile(values, 50)), "slowdown_p99": float(np.percentile(values, 99)),
            "victims": victims, "queue_peak_bytes_max": int(max(result.peak_queue, default=0)),
            "queue_peak_bytes_p99": float(np.percentile([q for q in result.peak_queue if q] or [0], 99)),
            "link_util_p99_100us": _max_mean(result.util_p99), "queue_bytes_p99_100us": _max_mean(result.queue_p99),
            "ecn_marks": result.marks, "cnps": result.cnps,
            "drops": result.drops, "events": result.events}
