"""The PFC model's network of a topology, and what a run's PAUSE frames form (the pause tree): shared by the
known-answer cases (cases.py) and the hot-window replays (hotwindow.py).

>>> from hyperdecode.fabric import zcube
>>> net = topology_net(zcube(2))
>>> len(net.names), len(net.src)  # 4 GPUs and 4 switches; 12 cables, each two links
(8, 24)
"""
from __future__ import annotations

from typing import Any

from ..topology.graph import Topology
from .pfc import Net, PfcResult

__all__ = ["topology_net", "pause_tree"]


def topology_net(topo: Topology, delay: float = 1e-6) -> Net:
    """The PFC model's network of a topology: GPUs are hosts, switches keep their tiers; cable i becomes links 2i
    (link_a -> link_b) and 2i + 1 (back), the numbering routing.Router's paths use."""
    net = Net()
    for g in range(topo.num_gpus):
        net.host(f"gpu{g}")
    for s in range(topo.num_switches):
        net.switch(f"{topo.tier_names[topo.switch_tier[s]]}{s}", int(topo.switch_tier[s]))
    for i in range(topo.num_links):
        net.cable(int(topo.link_a[i]), int(topo.link_b[i]), float(topo.link_gbps[i]) / 8 * 1e9, delay)
    return net


def pause_tree(net: Net, result: PfcResult) -> dict[str, Any]:
    """The switches that sent PAUSE, the tiers they span, the longest chain of them, pause seconds per tier."""
    paused_links = [k for k, frames in enumerate(result.pause_frames) if frames]
    pausing = {net.dst[k] for k in paused_links}
    upstream: dict[int, set[int]] = {}
    for k in paused_links:
        if net.src[k] in pausing:
            upstream.setdefault(net.dst[k], set()).add(net.src[k])
    memo: dict[int, int] = {}

    def chain(node: int, seen: frozenset) -> int:
        if node in memo:
            return memo[node]
        longest = 1 + max((chain(u, seen | {node}) for u in upstream.get(node, ()) if u not in seen), default=0)
        memo[node] = longest
        return longest
    per_tier: dict[int, float] = {}
    for k in paused_links:
        tier = net.tier[net.dst[k]]
        per_tier[tier] = per_tier.get(tier, 0.0) + result.pause_s[k]
    return {"switches": sorted(net.names[v] for v in pausing), "depth": len({net.tier[v] for v in pausing}),
            "chain": max((chain(v, frozenset()) for v in pausing), default=0), "pause_s_by_tier": per_tier}
