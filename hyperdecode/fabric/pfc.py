"""A lossless-Ethernet model: a packet-train discrete-event simulator with priority flow control (802.1Qbb).

Traffic moves in chunks (4–64 KB "packet trains"). Every directed link has, at its sending node, one FIFO per
priority (strict priority between them) and a transmitter (a chunk takes size / capacity to serialise, then the
link's delay to arrive). A switch counts the bytes each ingress port and priority holds in its shared buffer, from
arrival until the chunk starts leaving: once a counter passes XOFF the switch sends PAUSE for that priority back up
the port's link, which stops the upstream transmitter a link delay later (after the chunk it is sending); when the
counter falls below XON it sends RESUME. Thresholds as the HPCC / ns-3 RDMA models set them: XOFF = free shared
buffer >> `shift` (dynamic), XON = XOFF − `xon_offset`, and a headroom per port of 2·BDP + 2·chunk for what is in
flight when PAUSE acts. Hosts send their flows' chunks round-robin whenever their NIC is free and not paused
(no congestion control), or paced at a given rate; with `dcqcn` (dcqcn.py) switches mark chunks by their egress
queue's depth, receivers return CNPs (a path's delay later) and each flow's sender runs DCQCN's rate control.

Besides pause figures the result has, per link, the utilisation P99 over `window`-second windows (100 µs by
default: the bursts a run's mean hides) and the P99 of the egress queue's depth over those windows.

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
import random
from collections import deque
from dataclasses import dataclass, field

from .dcqcn import Dcqcn, RateControl, mark_probability

__all__ = ["Net", "Flow", "PfcConfig", "PfcResult", "simulate", "maxmin_rates"]


@dataclass
class PfcConfig:
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
    util_p99: dict[int, float] = field(default_factory=dict)  # per link that sent: P99 of its windows' utilisation
    queue_p99: dict[int, float] = field(default_factory=dict)  # per link that queued: P99 of its windows' peak depth
    marks: int = 0  # chunks ECN-marked
    cnps: int = 0  # CNPs that reached senders


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
    pace = [f.rate for f in flows]  # bytes/s, None: unpaced
    rate_control = [RateControl(c.dcqcn, net.cap[f.path[0]]) for f in flows] if c.dcqcn else []
    timer_running = [False] * len(flows)
    cnp_sent = [float("-inf")] * len(flows)  # when the receiver last sent this flow a CNP
    cnp_delay = [sum(net.delay[k] for k in f.path) for f in flows]  # CNPs go back at top priority, unqueued
    draw = random.Random(c.seed)
    sent_bins: dict[int, dict[int, int]] = {}  # link -> window -> bytes it started sending
    queue_bins: dict[int, dict[int, list[int]]] = {}  # link -> window -> [peak, last] bytes queued
    counts = {"marks": 0, "cnps": 0}
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
        bins = sent_bins.setdefault(link, {})
        b = int(now / c.window)
        bins[b] = bins.get(b, 0) + chunk[2]
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
            rate = pace[i]
            if rate_control:
                rate_control[i].on_sent(size)
                rate = min(rate or float("inf"), rate_control[i].rate)
            if rate is not None:
                next_at[i] = now + size / rate
            return start(link, (i, 0, size, -1, False))
        if wake < float("inf"):
            at(wake, WAKE, link)

    def from_switch(link: int) -> None:
        node = net.src[link]
        for p in range(P):
            if paused[link][p] or not queue[link][p]:
                continue
            chunk = queue[link][p].popleft()
            queued[link] -= chunk[2]
            note_queue(link, queued[link] + chunk[2])
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

    def note_queue(link: int, before: int) -> None:
        """Keeps each window's peak depth of the link's queue (and its depth at the window's last change)."""
        bins = queue_bins.setdefault(link, {})
        b = int(now / c.window)
        if b not in bins:
            bins[b] = [before, before]
        bins[b][0] = max(bins[b][0], queued[link])
        bins[b][1] = queued[link]

    def arrive(link: int, chunk: tuple) -> None:
        nonlocal drops
        i, hop, size, _, marked = chunk
        f = flows[i]
        node = net.dst[link]
        if hop == len(f.path) - 1:
            if marked and now - cnp_sent[i] >= c.dcqcn.cnp_interval:
                cnp_sent[i] = now
                at(now + cnp_delay[i], CNP, i)
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
        if c.dcqcn and not marked and draw.random() < mark_probability(c.dcqcn, queued[nxt]):
            marked = True
            counts["marks"] += 1
        queue[nxt][p].append((i, hop + 1, size, link, marked))
        queued[nxt] += size
        peak_queue[nxt] = max(peak_queue[nxt], queued[nxt])
        note_queue(nxt, queued[nxt] - size)
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

    def cnp(i: int) -> None:
        counts["cnps"] += 1
        rate_control[i].on_cnp(now)
        if not timer_running[i]:
            timer_running[i] = True
            at(now + c.dcqcn.timer, TIMER, i)

    def timer(i: int) -> None:
        rate_control[i].on_timer(now)
        if rate_control[i].throttled:
            at(now + c.dcqcn.timer, TIMER, i)
        else:
            timer_running[i] = False

    DONE, ARRIVE, PAUSE, RESUME, WAKE, CNP, TIMER = range(7)
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
        elif kind == CNP:
            cnp(args[0])
        elif kind == TIMER:
            timer(args[0])
        else:
            send(args[0])
    for link in range(L):
        for p in range(P):
            if paused[link][p]:
                pause_s[link] += until - paused_since[link][p]
    span = until - warmup
    util_p99, queue_p99 = _window_p99(net, sent_bins, queue_bins, c.window, warmup, until)
    return PfcResult(gbps={f.name: in_window[i] * 8 / span / 1e9 for i, f in enumerate(flows)},
                     delivered={f.name: in_window[i] for i, f in enumerate(flows)}, finish=finish,
                     pause_frames=pause_frames, pause_s=pause_s, over_xoff=over_xoff, headroom=headroom,
                     peak_queue=peak_queue, drops=drops, events=events, window=(warmup, until), names=net.names,
                     util_p99=util_p99, queue_p99=queue_p99, marks=counts["marks"], cnps=counts["cnps"])


def _window_p99(net: Net, sent_bins: dict, queue_bins: dict, width: float, warmup: float,
                until: float) -> tuple[dict[int, float], dict[int, float]]:
    """Per link, the P99 over the measuring span's windows of its utilisation and of its queue's peak depth (a
    window in which the queue did not change holds the depth the last change left)."""
    import numpy as np
    first = int(warmup // width)
    bins = range(first, max(int(until // width), first + 1))
    span = np.array([min(width, until - b * width) for b in bins])
    util = {}
    for link, sent in sent_bins.items():
        moved = np.array([sent.get(b, 0) for b in bins], dtype=np.float64)
        util[link] = float(np.percentile(moved / (net.cap[link] * span), 99))
    depth = {}
    for link, peaks in queue_bins.items():
        last, values = 0, []
        for b in range(min(peaks), bins[-1] + 1):
            if b in peaks:
                last = peaks[b][1]
            if b >= first:
                values.append(peaks[b][0] if b in peaks else last)
        if values:
            depth[link] = float(np.percentile(values, 99))
    return util, depth
