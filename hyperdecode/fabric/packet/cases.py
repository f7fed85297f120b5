"""Known-answer cases for the PFC model (pfc.py), kept apart from the code the simulators use: the textbook victim
flow and the pause tree of an incast.

Victim flow (`victim_case`): host H1 and an upstream switch T feed switch S; T carries N incast senders and a
victim V over an uplink of 2C; H1 and the N senders send to R (behind S, link C), V to an idle host X. With PFC,
FIFO and no congestion control, S pauses its two ingress ports alike, so H1 gets C/2 and T's port C/2, and T pauses
its senders alike, so V — which never touches the congested link — is held to each incast sender's C/(2N); max-min
would give C/(N+1), C/(N+1) and C.

Pause tree (`incast_pause_tree`): many GPUs of a topology send to one GPU; the tree is the set of switches that
sent PAUSE, `depth` the number of switch tiers it reaches (ZCube with cross-port routing: block and residue, 2;
3-tier ROFT: leaf, spine, core, 3), `chain` the longest run of switches each paused by the next.

>>> rows = pfc_demo(2, 100)["flows"]
>>> [(r["name"], round(r["gbps"] / 12.5), round(r["maxmin_gbps"], 1)) for r in rows]
[('H1', 4, 33.3), ('incast-1', 2, 33.3), ('incast-2', 2, 33.3), ('victim', 2, 100.0)]
"""
from __future__ import annotations

import dataclasses
from typing import Any

from ..flow.routing import Router
from ..topology.graph import Topology
from .fabricnet import pause_tree, topology_net
from .pfc import Net, PacketFlow, PfcConfig, maxmin_rates, simulate

__all__ = ["victim_case", "pfc_demo", "incast_pause_tree"]


def victim_case(senders: int, gbps: float, delay: float = 1e-6) -> tuple[Net, list[PacketFlow]]:
    """The victim-flow network and its N + 2 backlogged flows (named H1, incast-1..N, victim)."""
    if senders < 1:
        raise ValueError(f"parameter 'senders' must be at least 1, got {senders}")
    if gbps <= 0:
        raise ValueError(f"parameter 'gbps' must be positive, got {gbps}")
    C = gbps / 8 * 1e9
    net = Net()
    h1, victim, r, x = net.host("H1"), net.host("V"), net.host("R"), net.host("X")
    t, s = net.switch("T", 0), net.switch("S", 1)
    t_s = net.cable(t, s, 2 * C, delay)[0]
    to_r = net.cable(s, r, C, delay)[0]
    to_x = net.cable(s, x, C, delay)[0]
    flows = [PacketFlow("H1", [net.cable(h1, s, C, delay)[0], to_r])]
    for i in range(senders):
        host = net.host(f"I{i + 1}")
        flows.append(PacketFlow(f"incast-{i + 1}", [net.cable(host, t, C, delay)[0], t_s, to_r]))
    flows.append(PacketFlow("victim", [net.cable(victim, t, C, delay)[0], t_s, to_x]))
    return net, flows


def pfc_demo(senders: int, gbps: float, pfc: bool = True, until: float = 4e-3,
             config: PfcConfig | None = None) -> dict[str, Any]:
    """Each victim-case flow's rate (Gb/s, measured over the second half of `until` seconds) next to max-min's;
    plus the run's pause and buffer figures."""
    net, flows = victim_case(senders, gbps)
    config = dataclasses.replace(config or PfcConfig(), pfc=pfc)
    result = simulate(net, flows, until, config=config)
    fair = maxmin_rates(net, flows)
    rows = [{"name": f.name, "gbps": result.gbps[f.name], "maxmin_gbps": float(fair[f.name] * 8 / 1e9)} for f in flows]
    return {"flows": rows, "pfc": pfc, "senders": senders, "link_gbps": gbps,
            "pause_frames": sum(result.pause_frames), "drops": result.drops, "ecn_marks": result.marks,
            "headroom_used": max((o / h for o, h in zip(result.over_xoff, result.headroom)), default=0.0)}


def incast_pause_tree(topo: Topology, dst: int, senders: list[int], until: float = 200e-6,
                      config: PfcConfig | None = None, port_policy: str = "balanced") -> dict[str, Any]:
    """Backlogged flows from every sender to GPU `dst` (routed as the flow simulator routes them), under PFC: the
    switches that sent PAUSE, the tiers they span (`depth`), the longest pause chain, and the pause time per tier."""
    net = topology_net(topo)
    router = Router(topo, port_policy)
    flows = []
    for n, src in enumerate(senders):
        path = router.path(src, dst, key=n)
        if path is None:
            raise ValueError(f"no path from GPU {src} to GPU {dst}")
        flows.append(PacketFlow(f"gpu{src}", path))
    result = simulate(net, flows, until, config=config)
    return pause_tree(net, result) | {"result": result}
