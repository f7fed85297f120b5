"""A lossless-Ethernet model: a packet-train simulator with priority flow control (802.1Qbb), on the fabric's event
core (events.py).

Traffic moves in chunks (4–64 KB "packet trains"). Every directed link is a `Port`: at its sending node one FIFO
per priority (strict priority between them) and a transmitter (a chunk takes size / capacity to serialise, then the
link's delay to arrive); at its receiving switch, the bytes each priority holds in the shared buffer, from arrival
until the chunk starts leaving. Once a counter passes XOFF the switch sends PAUSE for that priority back up the
link, which stops its transmitter a link delay later (after the chunk it is sending); when the counter falls below
XON it sends RESUME. Thresholds as the HPCC / ns-3 RDMA models set them: XOFF = free shared buffer >> `shift`
(dynamic), XON = XOFF − `xon_offset`, and a headroom per port of 2·BDP + 2·chunk for what is in flight when PAUSE
acts. A host's `Sender`s (one per flow) send chunks round-robin whenever the NIC is free and not paused (no
congestion control), or paced at a given rate; with `dcqcn` (dcqcn.py) switches mark chunks by their egress
queue's depth, receivers return CNPs (a path's delay later) and each flow's sender runs DCQCN's rate control.

Besides pause figures the result has, per link, the utilisation P99 over `window`-second windows (100 µs by
default: the bursts a run's mean hides) and the P99 of the egress queue's depth over those windows.

PFC off: hosts pace every flow at its max-min fair rate (an ideal end-to-end congestion control), so queues stay
short and the model must reproduce the flow-level model (flow/network.py) on the same flows.

>>> net = Net()
>>> a, s, b = net.host("a"), net.switch("s"), net.host("b")
>>> up, down = net.cable(a, s, 12.5e9)[0], net.cable(s, b, 12.5e9)[0]
>>> r = simulate(net, [PacketFlow("a->b", [up, down])], until=200e-6)
>>> round(r.gbps["a->b"])  # 100 Gb/s line rate, minus the first chunk's trip
100
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .dcqcn import Dcqcn
from .ports import PfcModel

__all__ = ["Net", "PacketFlow", "PfcConfig", "PfcResult", "simulate", "maxmin_rates"]


@dataclass
class PfcConfig:
    """The packet-train model's knobs: train size, switch buffers, PFC thresholds, classes, DCQCN."""
    chunk: int = 4096  # bytes per packet train
    buffer: int = 12 << 20  # shared buffer per switch, bytes
    shift: int = 3  # XOFF = free shared buffer >> shift
    xon_offset: int = 3 << 10  # XON = XOFF - 3 KB
    pfc: bool = True
    priorities: int = 2
    dcqcn: Dcqcn | None = None  # ECN marking and DCQCN at senders; None: no congestion control
    window: float = 100e-6  # seconds per utilisation / queue-depth window
    seed: int = 0  # ECN marking's random draws


@dataclass
class PacketFlow:
    """A flow over directed links `path` (host to host); `size` None = always backlogged; `rate` paces it (bytes/s)."""
    name: str
    path: list[int]
    size: float | None = None
    start: float = 0.0
    priority: int = 0
    rate: float | None = None


class Net:
    """Nodes (hosts and switches) and directed links (capacity in bytes/s, delay in s)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.is_switch: list[bool] = []
        self.tier: list[int] = []
        self.src: list[int] = []
        self.dst: list[int] = []
        self.cap: list[float] = []
        self.delay: list[float] = []

    def _node(self, name: str, switch: bool, tier: int) -> int:
        self.names.append(name)
        self.is_switch.append(switch)
        self.tier.append(tier)
        return len(self.names) - 1

    def host(self, name: str) -> int:
        return self._node(name, False, -1)

    def switch(self, name: str, tier: int = 0) -> int:
        return self._node(name, True, tier)

    def link(self, a: int, b: int, capacity: float, delay: float = 1e-6) -> int:
        self.src.append(a)
        self.dst.append(b)
        self.cap.append(float(capacity))
        self.delay.append(float(delay))
        return len(self.src) - 1

    def cable(self, a: int, b: int, capacity: float, delay: float = 1e-6) -> tuple[int, int]:
        """A full-duplex cable: (the a -> b link, the b -> a link)."""
        return self.link(a, b, capacity, delay), self.link(b, a, capacity, delay)


@dataclass
class PfcResult:
    """What a packet-train run measured: rates, pauses, headroom, queues, events."""
    gbps: dict[str, float]  # each flow's delivered rate over the measuring window
    delivered: dict[str, float]  # bytes delivered in the window
    finish: dict[str, float]  # finite flows: when their last byte arrived
    pause_frames: list[int]  # per link: PAUSE frames its receiving switch sent up it
    pause_s: list[float]  # per link: time its transmitter spent paused (summed over priorities)
    over_xoff: list[float]  # per link: peak bytes its receiving port took in after sending PAUSE (the headroom's
    #                         use: must stay within `headroom`)
    headroom: list[float]  # per link: the receiving port's headroom
    peak_queue: list[int]  # per link: peak bytes queued at its sending node
    drops: int
    events: int
    window: tuple[float, float]
    names: list[str] = field(default_factory=list)
    util_p99: dict[int, float] = field(default_factory=dict)  # per link that sent: P99 of its windows' utilisation
    queue_p99: dict[int, float] = field(default_factory=dict)  # per link that queued: P99 of its windows' peak depth
    marks: int = 0  # chunks ECN-marked
    cnps: int = 0  # CNPs that reached senders


def maxmin_rates(net: Net, flows: list[PacketFlow]) -> dict[str, float]:
    """Max-min fair rates (bytes/s) of backlogged flows, by the flow-level model's progressive filling."""
    from ..flow.network import FlowNetwork
    network = FlowNetwork(np.array(net.cap), lambda flow, eta: None)
    made = network.add_many([(f.path, 1e30, f.name, 0) for f in flows], 0.0) if flows else []
    return {m.tag: m.rate for m in made}


def simulate(net: Net, flows: list[PacketFlow], until: float, warmup: float | None = None,
             config: PfcConfig | None = None) -> PfcResult:
    """Runs the flows from time 0 to `until` seconds; rates are measured over [warmup, until] (default: the last
    half)."""
    c = config or PfcConfig()
    warmup = until / 2 if warmup is None else warmup
    flows = list(flows)
    if not c.pfc:  # ideal congestion control: every flow paced at its max-min rate
        fair = maxmin_rates(net, flows)
        flows = [PacketFlow(f.name, f.path, f.size, f.start, f.priority, min(f.rate or 1e30, fair[f.name]))
                 for f in flows]
    model = PfcModel(net, flows, c, warmup)
    model.queue.run(until)
    return PfcResult(**model.result(until, warmup))
