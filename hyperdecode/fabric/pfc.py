"""A lossless-Ethernet model: a packet-train discrete-event simulator with priority flow control (802.1Qbb).

Traffic moves in chunks (4–64 KB "packet trains"). Every directed link has, at its sending node, one FIFO per
priority (strict priority between them) and a transmitter (a chunk takes size / capacity to serialise, then the
link's delay to arrive). A switch counts the bytes each ingress port and priority holds in its shared buffer, from
arrival until the chunk starts leaving: once a counter passes XOFF the switch sends PAUSE for that priority back up
the port's link, which stops the upstream transmitter a link delay later (after the chunk it is sending); when the
counter falls below XON it sends RESUME. Thresholds as the HPCC / ns-3 RDMA models set them: XOFF = free shared
buffer >> `shift` (dynamic), XON = XOFF − `xon_offset`, and a headroom per port of 2·BDP + 2·chunk for what is in
flight when PAUSE acts. Hosts send their flows' chunks round-robin whenever their NIC is free and not paused
(no congestion control), or paced at a given rate.

PFC off: hosts pace every flow at its max-min fair rate (an ideal end-to-end congestion control), so queues stay
short and the model must reproduce the flow-level simulator (flowsim.py) on the same flows.

>>> net = Net()
>>> a, s, b = net.host("a"), net.switch("s"), net.host("b")
>>> up, down = net.cable(a, s, 12.5e9)[0], net.cable(s, b, 12.5e9)[0]
>>> r = simulate(net, [Flow("a->b", [up, down])], until=200e-6)
>>> round(r.gbps["a->b"])  # 100 Gb/s line rate, minus the first chunk's trip
100
"""
from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Net", "Flow", "PfcConfig", "PfcResult", "simulate", "maxmin_rates"]


@dataclass
class PfcConfig:
    chunk: int = 4096  # bytes per packet train
    buffer: int = 12 << 20  # shared buffer per switch, bytes
    shift: int = 3  # XOFF = free shared buffer >> shift
    xon_offset: int = 3 << 10  # XON = XOFF - 3 KB
    pfc: bool = True
    priorities: int = 2


@dataclass
class Flow:
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


def maxmin_rates(net: Net, flows: list[Flow]) -> dict[str, float]:
    """Max-min fair rates (bytes/s) of backlogged flows, by the flow-level simulator's progressive filling."""
    import numpy as np
    from .flowsim import FlowNetwork
    network = FlowNetwork(np.array(net.cap), lambda flow, eta: None)
    made = [network.add(f.path, 1e30, 0.0, tag=f.name) for f in flows]
    return {m.tag: m.rate for m in made}


def simulate(net: Net, flows: list[Flow], until: float, warmup: float | None = None,
             config: PfcConfig | None = None) -> PfcResult:
    """Runs the flows from time 0 to `until` seconds; rates are measured over [warmup, until] (default: the last
    half)."""
    c = config or PfcConfig()
    warmup = until / 2 if warmup is None else warmup
    flows = list(flows)
    if not c.pfc:  # ideal congestion control: every flow paced at its max-min rate
        fair = maxmin_rates(net, flows)
        flows = [Flow(f.name, f.path, f.size, f.start, f.priority, min(f.rate or 1e30, fair[f.name])) for f in flows]
    L, P, n = len(net.src), c.priorities, len(net.names)
    queue = [[deque() for _ in range(P)] for _ in range(L)]
    queued = [0] * L
    peak_queue = [0] * L
    busy = [False] * L
    paused = [[False] * P for _ in range(L)]
    paused_since = [[0.0] * P for _ in range(L)]
    pause_s = [0.0] * L
    held = [[0] * P for _ in range(L)]  # bytes of each ingress port (the link's receiving end) and priority
    asked = [[False] * P for _ in range(L)]  # a PAUSE is standing on this link and priority
    paused_at = [[0] * P for _ in range(L)]  # the port's bytes when it was sent (XOFF, or above it when a
    # falling dynamic threshold crossed the counter between arrivals)
    pause_frames = [0] * L
    over_xoff = [0.0] * L
    headroom = [2 * net.cap[k] * net.delay[k] + 2 * c.chunk for k in range(L)]
    used = [0] * n
    left = [float("inf") if f.size is None else float(f.size) for f in flows]
    next_at = [f.start for f in flows]  # when each flow may send its next chunk
    sending = {}  # a host's first link -> its flows' indexes (round robin)
    for i, f in enumerate(flows):
        if net.is_switch[net.src[f.path[0]]]:
            raise ValueError(f"flow '{f.name}' must start at a host")
        sending.setdefault(f.path[0], deque()).append(i)
    delivered = [0.0] * len(flows)
    in_window = [0.0] * len(flows)
    finish: dict[str, float] = {}
    drops = 0
    heap: list = []
    seq = itertools.count()
    now = 0.0

    def at(t: float, kind: int, *args) -> None:
        heapq.heappush(heap, (t, next(seq), kind, args))

    def xoff(node: int) -> float:
        return max(c.buffer - used[node], 0) >> c.shift

    def start(link: int, chunk: tuple) -> None:
        busy[link] = True
        t = chunk[2] / net.cap[link]
        at(now + t, DONE, link)
        at(now + t + net.delay[link], ARRIVE, link, chunk)

    def from_host(link: int) -> None:
        turn = sending[link]
        wake = float("inf")
        for _ in range(len(turn)):
            i = turn[0]
            turn.rotate(-1)
            f = flows[i]
            if left[i] <= 0 or paused[link][f.priority]:
                continue
            if next_at[i] > now:
                wake = min(wake, next_at[i])
                continue
            size = int(min(c.chunk, left[i]))
            left[i] -= size
            if f.rate is not None:
                next_at[i] = now + size / f.rate
            return start(link, (i, 0, size, -1))
        if wake < float("inf"):
            at(wake, WAKE, link)

    def from_switch(link: int) -> None:
        node = net.src[link]
        for p in range(P):
            if paused[link][p] or not queue[link][p]:
                continue
            chunk = queue[link][p].popleft()
            queued[link] -= chunk[2]
            came = chunk[3]
            held[came][p] -= chunk[2]
            used[node] -= chunk[2]
            if asked[came][p] and held[came][p] < xoff(node) - c.xon_offset:
                asked[came][p] = False
                at(now + net.delay[came], RESUME, came, p)
            return start(link, chunk)

    def send(link: int) -> None:
        if not busy[link]:
            (from_switch if net.is_switch[net.src[link]] else from_host)(link)

    def arrive(link: int, chunk: tuple) -> None:
        nonlocal drops
        i, hop, size, _ = chunk
        f = flows[i]
        node = net.dst[link]
        if hop == len(f.path) - 1:
            delivered[i] += size
            if now >= warmup:
                in_window[i] += size
            if left[i] <= 0 and f.size is not None and delivered[i] >= f.size:
                finish[f.name] = now
            return
        p = f.priority
        if used[node] + size > c.buffer:
            drops += 1
            return
        held[link][p] += size
        used[node] += size
        threshold = xoff(node)
        if asked[link][p]:  # arrived after PAUSE was sent: what the headroom must absorb
            over_xoff[link] = max(over_xoff[link], held[link][p] - paused_at[link][p])
        nxt = f.path[hop + 1]
        queue[nxt][p].append((i, hop + 1, size, link))
        queued[nxt] += size
        peak_queue[nxt] = max(peak_queue[nxt], queued[nxt])
        if c.pfc and not asked[link][p] and held[link][p] > threshold:
            asked[link][p] = True
            paused_at[link][p] = held[link][p]
            pause_frames[link] += 1
            at(now + net.delay[link], PAUSE, link, p)
        send(nxt)

    def pause(link: int, p: int, on: bool) -> None:
        if paused[link][p] == on:
            return
        paused[link][p] = on
        if on:
            paused_since[link][p] = now
        else:
            pause_s[link] += now - paused_since[link][p]
            send(link)

    DONE, ARRIVE, PAUSE, RESUME, WAKE = range(5)
    for link in sending:
        at(min(flows[i].start for i in sending[link]), WAKE, link)
    events = 0
    while heap and heap[0][0] <= until:
        now, _, kind, args = heapq.heappop(heap)
        events += 1
        if kind == DONE:
            busy[args[0]] = False
            send(args[0])
        elif kind == ARRIVE:
            arrive(*args)
        elif kind == PAUSE:
            pause(args[0], args[1], True)
        elif kind == RESUME:
            pause(args[0], args[1], False)
        else:
            send(args[0])
    for link in range(L):
        for p in range(P):
            if paused[link][p]:
                pause_s[link] += until - paused_since[link][p]
    span = until - warmup
    return PfcResult(gbps={f.name: in_window[i] * 8 / span / 1e9 for i, f in enumerate(flows)},
                     delivered={f.name: in_window[i] for i, f in enumerate(flows)}, finish=finish,
                     pause_frames=pause_frames, pause_s=pause_s, over_xoff=over_xoff, headroom=headroom,
                     peak_queue=peak_queue, drops=drops, events=events, window=(warmup, until), names=net.names)
