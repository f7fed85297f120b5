"""A packet-level cross-check of the max-min flow model with ns-3 (the `ns3` wheel from PyPI, optional).

The project's topology becomes ns-3 nodes joined by point-to-point links at the same relative speeds (scaled down
by `scale` to keep the packet count small); every flow is a long-lived TCP transfer (BulkSend, 1,448-byte
segments) on the path the project's router gives it (its ACKs on the same links back), set up as static host routes at
every node (so two flows to one GPU must agree on the path from where they meet; `cross_check` refuses flows that
do not). Switch ports keep
ns-3's default queue discipline (FqCoDel: per-flow fair queueing, what max-min assumes). Each flow's goodput over
the second half of the run is set against its max-min rate times TCP's payload share of the wire (1448 / 1502
bytes: TCP/IP headers with timestamps, and PPP).

Max-min has no ACKs; in ns-3 a flow's ACKs take a share of every link its data crosses the other way, so a flow
whose links carry another's ACKs gets less (two opposed 400G flows on one leaf-spine path: 4.2 % less at one ACK
per segment, 2.2 % at ns-3's default of one per 2, 0.9 % at one per 8; bench/ns3_check.py). The check ACKs every
`ack_every` = 8 segments, so that what it compares is how the data shares links. A queue that drains or fills
during the measured half moves a flow's figure by a few % either way at the default 0.4 s.

    >>> from hyperdecode.fabric import fattree
    >>> rows = cross_check(fattree(8, 4, gpus_per_server=1), [(0, 4), (1, 4), (2, 5)])  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..flow.routing import Router, mix
from ..topology.graph import Topology
from .fabricnet import topology_net
from .pfc import PacketFlow, maxmin_rates

__all__ = ["cross_check", "routable", "random_routable_pairs", "flow_paths", "destination_routes", "maxmin_gbps",
           "PAYLOAD_SHARE"]

PAYLOAD_SHARE = 1448 / 1502


def maxmin_gbps(topo: Topology, paths: list[list[int]]) -> list[float]:
    """The flows' max-min rates in Gb/s, on the topology's directed links."""
    rates = maxmin_rates(topology_net(topo), [PacketFlow(str(k), p) for k, p in enumerate(paths)])
    return [rates[str(k)] * 8 / 1e9 for k in range(len(paths))]


def _hops(topo: Topology, path: list[int]) -> list[tuple[int, int]]:
    """(node it leaves, cable) for each directed link of a path, source first."""
    return [(int((topo.link_a if d % 2 == 0 else topo.link_b)[d // 2]), d // 2) for d in path]


def flow_paths(topo: Topology, pairs: list[tuple[int, int]], port_policy: str = "balanced") -> list[list[int]]:
    """The project's router's path for each (src, dst) flow, keyed as the simulators key them."""
    router = Router(topo, port_policy)
    return [router.path(a, b, key=mix(a, b, k)) for k, (a, b) in enumerate(pairs)]


def destination_routes(topo: Topology, pairs: list[tuple[int, int]], paths: list[list[int]]
                       ) -> dict[tuple[int, int], int]:
    """{(node, destination GPU): cable it leaves on} carrying every flow's data and its ACKs (the same cables back,
    so parallel cables between two switches stay apart); a ValueError when two flows to one GPU leave a node on
    different cables."""
    out: dict[tuple[int, int], int] = {}
    for (src, dst), path in zip(pairs, paths):
        back = [d ^ 1 for d in reversed(path)]
        for end, way in ((dst, path), (src, back)):
            for here, cable in _hops(topo, way):
                if out.setdefault((here, end), cable) != cable:
                    raise ValueError(f"flows to GPU {end} leave node {here} on two different links: static "
                                     "destination routes cannot carry both")
    return out


def routable(topo: Topology, pairs: list[tuple[int, int]], port_policy: str = "balanced") -> list[tuple[int, int]]:
    """The longest prefix-greedy subset of `pairs` that static destination routes can carry (in order)."""
    kept: list[tuple[int, int]] = []
    for pair in pairs:
        trial = kept + [pair]
        try:
            destination_routes(topo, trial, flow_paths(topo, trial, port_policy))
        except ValueError:
            continue
        kept = trial
    return kept


def random_routable_pairs(topo: Topology, n: int, seed: int) -> list[tuple[int, int]]:
    """Up to `n` random (src, dst) GPU pairs, drawn with `seed`, that static destination routes can carry."""
    rng = np.random.default_rng(seed)
    pairs = [tuple(int(x) for x in rng.choice(topo.num_gpus, 2, replace=False)) for _ in range(4 * n)]
    return routable(topo, pairs)[:n]


def cross_check(topo: Topology, pairs: list[tuple[int, int]], scale: float = 100.0, seconds: float = 0.4,
                delay_us: float = 2.0, port_policy: str = "balanced", ack_every: int = 8,
                paths: list[list[int]] | None = None) -> list[dict[str, Any]]:
    """Runs the (src GPU, dst GPU) flows in ns-3 and in the flow model; one row per flow: its path, the max-min
    rate and ns-3's goodput (both in the topology's Gb/s, ns-3's scaled back up by `scale`), and their ratio
    after TCP's header share. `paths` (directed links per flow) replaces the router's when given."""
    from ns import ns  # the optional wheel: imported only here
    paths = paths if paths is not None else flow_paths(topo, pairs, port_policy)
    leave_on = destination_routes(topo, pairs, paths)
    ns.Config.SetDefault("ns3::TcpSocket::SegmentSize", ns.UintegerValue(1448))
    ns.Config.SetDefault("ns3::TcpSocket::DelAckCount", ns.UintegerValue(ack_every))
    ns.Config.SetDefault("ns3::TcpSocket::SndBufSize", ns.UintegerValue(1 << 22))
    ns.Config.SetDefault("ns3::TcpSocket::RcvBufSize", ns.UintegerValue(1 << 22))
    nodes, where, gpu_address = _ns3_cables(ns, topo, paths, scale, delay_us)
    static = ns.Ipv4StaticRoutingHelper()
    for (node, dst), cable in leave_on.items():
        iface, peer_ip = where[node, cable]
        routing = static.GetStaticRouting(nodes.Get(node).GetObject[ns.Ipv4]())
        routing.AddHostRouteTo(ns.Ipv4Address(gpu_address[dst]), ns.Ipv4Address(peer_ip), iface)
    rx = _ns3_goodput(ns, nodes, pairs, gpu_address, seconds)
    fair = maxmin_gbps(topo, paths)
    rows = []
    for (src, dst), path, got, want in zip(pairs, paths, rx, fair):
        gbps = got * 8 / (seconds / 2) / 1e9 * scale
        rows.append({"src": src, "dst": dst, "links": path, "maxmin_gbps": want, "ns3_gbps": gbps,
                     "ratio": gbps / (want * PAYLOAD_SHARE)})
    return rows


def _ns3_cables(ns: Any, topo: Topology, paths: list[list[int]], scale: float, delay_us: float
                ) -> tuple[Any, dict[tuple[int, int], tuple[int, str]], dict[int, str]]:
    """ns-3 nodes for the topology's GPUs and switches, point-to-point cables for the links the paths use (at
    1/`scale` of their speed); (nodes, (node, cable) -> (interface, far end's address), GPU -> its address)."""
    nodes = ns.NodeContainer()
    nodes.Create(topo.num_gpus + topo.num_switches)
    ns.InternetStackHelper().Install(nodes)
    p2p = ns.PointToPointHelper()
    p2p.SetChannelAttribute("Delay", ns.StringValue(f"{delay_us}us"))
    address = ns.Ipv4AddressHelper()
    address.SetBase(ns.Ipv4Address("10.0.0.0"), ns.Ipv4Mask("255.255.255.252"))
    where: dict[tuple[int, int], tuple[int, str]] = {}
    gpu_address: dict[int, str] = {}
    for cable in sorted({c for p in paths for c in (d // 2 for d in p)}):
        a, b = int(topo.link_a[cable]), int(topo.link_b[cable])
        p2p.SetDeviceAttribute("DataRate", ns.StringValue(f"{topo.link_gbps[cable] * 1e3 / scale:g}Mbps"))
        devices = p2p.Install(nodes.Get(a), nodes.Get(b))
        ifaces = address.Assign(devices)
        address.NewNetwork()
        ip = [f"{ifaces.GetAddress(k)}" for k in (0, 1)]
        for node, dev, peer_ip in ((a, devices.Get(0), ip[1]), (b, devices.Get(1), ip[0])):
            ipv4 = nodes.Get(node).GetObject[ns.Ipv4]()
            where[node, cable] = (ipv4.GetInterfaceForDevice(dev), peer_ip)
        for node, own in ((a, ip[0]), (b, ip[1])):
            if node < topo.num_gpus:
                gpu_address.setdefault(node, own)
    return nodes, where, gpu_address


def _ns3_goodput(ns: Any, nodes: Any, pairs: list[tuple[int, int]], gpu_address: dict[int, str],
                 seconds: float) -> list[int]:
    """A backlogged TCP flow per pair; the bytes each one's sink receives over the second half of `seconds`."""
    sinks = []
    for k, (src, dst) in enumerate(pairs):
        port = 9000 + k
        sink = ns.PacketSinkHelper("ns3::TcpSocketFactory",
                                   ns.InetSocketAddress(ns.Ipv4Address.GetAny(), port).ConvertTo())
        apps = sink.Install(nodes.Get(dst))
        apps.Start(ns.Seconds(0.0))
        sinks.append(apps.Get(0).GetObject[ns.PacketSink]())
        bulk = ns.BulkSendHelper("ns3::TcpSocketFactory",
                                 ns.InetSocketAddress(ns.Ipv4Address(gpu_address[dst]), port).ConvertTo())
        bulk.SetAttribute("MaxBytes", ns.UintegerValue(0))
        sender = bulk.Install(nodes.Get(src))
        sender.Start(ns.Seconds(0.001 * (k % 7)))
    ns.Simulator.Stop(ns.Seconds(seconds / 2))
    ns.Simulator.Run()
    half = [s.GetTotalRx() for s in sinks]
    ns.Simulator.Stop(ns.Seconds(seconds / 2))
    ns.Simulator.Run()
    rx = [s.GetTotalRx() - h for s, h in zip(sinks, half)]
    ns.Simulator.Destroy()
    return rx
