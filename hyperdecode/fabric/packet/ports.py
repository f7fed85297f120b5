"""The PFC model's objects (pfc.py describes the model): a `Port` per directed link, a `Sender` per flow, and
`PfcModel`, which wires them to the event queue and handles a chunk's trip: sent, queued, paused, arrived.

A chunk is (sender index, hop, bytes, the link it came in on, ECN-marked).

>>> port = Port(0, capacity=10.0, delay=1.0, priorities=2, headroom=5.0)
>>> port.note_queue(now=0.25, window=0.1, before=0)
>>> port.queued = 7
>>> port.note_queue(now=0.26, window=0.1, before=0)
>>> port.queue_bins  # window 2's [peak, last] depth
{2: [7, 7]}
"""
from __future__ import annotations

import math
import random
from collections import deque
from typing import Any

import numpy as np

from ..events import EventQueue
from .dcqcn import RateControl, mark_probability

__all__ = ["Port", "Sender", "PfcModel"]


class Port:
    """A directed link: the transmitter and egress queues at its sending node, the ingress counters (PAUSE state)
    at its receiving node."""

    def __init__(self, link: int, capacity: float, delay: float, priorities: int, headroom: float):
        self.link = link
        self.capacity = capacity
        self.delay = delay
        self.queues = [deque() for _ in range(priorities)]
        self.queued = 0
        self.peak_queue = 0
        self.busy = False
        self.paused = [False] * priorities
        self.paused_since = [0.0] * priorities
        self.pause_s = 0.0
        self.held = [0] * priorities  # bytes the receiving port holds per priority
        self.asked = [False] * priorities  # a PAUSE is standing
        self.paused_at = [0] * priorities  # the port's bytes when PAUSE was sent
        self.pause_frames = 0
        self.over_xoff = 0.0
        self.headroom = headroom
        self.sent_bins: dict[int, int] = {}  # window -> bytes it started sending
        self.queue_bins: dict[int, list[int]] = {}  # window -> [peak, last] bytes queued

    def note_queue(self, now: float, window: float, before: int) -> None:
        """Keeps each window's peak depth of the queue (and its depth at the window's last change)."""
        b = int(now / window)
        if b not in self.queue_bins:
            self.queue_bins[b] = [before, before]
        self.queue_bins[b][0] = max(self.queue_bins[b][0], self.queued)
        self.queue_bins[b][1] = self.queued


class Sender:
    """One flow at its host: bytes left, pacing, DCQCN state, what arrived."""

    def __init__(self, flow: Any, control: RateControl | None, cnp_delay: float):
        self.flow = flow
        self.left = float("inf") if flow.size is None else float(max(math.ceil(flow.size), 1))  # whole bytes
        self.next_at = flow.start  # when it may send its next chunk
        self.pace = flow.rate  # bytes/s, None: unpaced
        self.control = control
        self.timer_running = False
        self.cnp_sent = float("-inf")  # when the receiver last sent it a CNP
        self.cnp_delay = cnp_delay  # CNPs go back at top priority, unqueued
        self.delivered = 0.0
        self.in_window = 0.0


class PfcModel:
    """One packet-train run: ports, senders and switch buffers on the fabric's event queue."""
    def __init__(self, net: Any, flows: list, config: Any, warmup: float):
        self.net, self.config, self.warmup = net, config, warmup
        c = config
        self.queue = EventQueue()
        self.ports = [Port(k, net.cap[k], net.delay[k], c.priorities, 2 * net.cap[k] * net.delay[k] + 2 * c.chunk)
                      for k in range(len(net.src))]
        self.used = [0] * len(net.names)  # bytes in each switch's shared buffer
        self.senders = []
        self.nics: dict[int, deque] = {}  # a host's first link -> its senders' indexes (round robin)
        for i, f in enumerate(flows):
            if net.is_switch[net.src[f.path[0]]]:
                raise ValueError(f"flow '{f.name}' must start at a host")
            control = RateControl(c.dcqcn, net.cap[f.path[0]]) if c.dcqcn else None
            self.senders.append(Sender(f, control, sum(net.delay[k] for k in f.path)))
            self.nics.setdefault(f.path[0], deque()).append(i)
        self.draw = random.Random(c.seed)
        self.marks = self.cnps = self.drops = 0
        self.finish: dict[str, float] = {}
        for link, turn in self.nics.items():
            self.queue.at(min(self.senders[i].flow.start for i in turn), self.send, self.ports[link])

    def xoff(self, node: int) -> float:
        return max(self.config.buffer - self.used[node], 0) >> self.config.shift

    # --- transmitting ------------------------------------------------------------------------------------------------
    def send(self, port: Port) -> None:
        if not port.busy:
            (self._from_switch if self.net.is_switch[self.net.src[port.link]] else self._from_host)(port)

    def _start(self, port: Port, chunk: tuple) -> None:
        now = self.queue.now
        port.busy = True
        b = int(now / self.config.window)
        port.sent_bins[b] = port.sent_bins.get(b, 0) + chunk[2]
        t = chunk[2] / port.capacity
        self.queue.at(now + t, self._sent, port)
        self.queue.at(now + t + port.delay, self._arrive, port, chunk)

    def _sent(self, port: Port) -> None:
        port.busy = False
        self.send(port)

    def _from_host(self, port: Port) -> None:
        now = self.queue.now
        turn = self.nics[port.link]
        wake = float("inf")
        for _ in range(len(turn)):
            i = turn[0]
            turn.rotate(-1)
            s = self.senders[i]
            if s.left <= 0 or port.paused[s.flow.priority]:
                continue
            if s.next_at > now:
                wake = min(wake, s.next_at)
                continue
            size = int(min(self.config.chunk, s.left))
            s.left -= size
            rate = s.pace
            if s.control is not None:
                s.control.on_sent(size)
                rate = min(rate or float("inf"), s.control.rate)
            if rate is not None:
                s.next_at = now + size / rate
            return self._start(port, (i, 0, size, -1, False))
        if wake < float("inf"):
            self.queue.at(wake, self.send, port)

    def _from_switch(self, port: Port) -> None:
        node = self.net.src[port.link]
        for p, fifo in enumerate(port.queues):
            if port.paused[p] or not fifo:
                continue
            chunk = fifo.popleft()
            port.queued -= chunk[2]
            port.note_queue(self.queue.now, self.config.window, port.queued + chunk[2])
            came = self.ports[chunk[3]]
            came.held[p] -= chunk[2]
            self.used[node] -= chunk[2]
            if came.asked[p] and came.held[p] < self.xoff(node) - self.config.xon_offset:
                came.asked[p] = False
                self.queue.at(self.queue.now + came.delay, self._pause, came, p, False)
            return self._start(port, chunk)

    # --- receiving ---------------------------------------------------------------------------------------------------
    def _arrive(self, port: Port, chunk: tuple) -> None:
        i, hop, size, _, marked = chunk
        s = self.senders[i]
        f = s.flow
        if hop == len(f.path) - 1:
            return self._deliver(s, i, size, marked)
        node = self.net.dst[port.link]
        p = f.priority
        c = self.config
        if self.used[node] + size > c.buffer:
            self.drops += 1
            return
        port.held[p] += size
        self.used[node] += size
        threshold = self.xoff(node)
        if port.asked[p]:  # arrived after PAUSE was sent: what the headroom must absorb
            port.over_xoff = max(port.over_xoff, port.held[p] - port.paused_at[p])
        out = self.ports[f.path[hop + 1]]
        if c.dcqcn and not marked and self.draw.random() < mark_probability(c.dcqcn, out.queued):
            marked = True
            self.marks += 1
        out.queues[p].append((i, hop + 1, size, port.link, marked))
        out.queued += size
        out.peak_queue = max(out.peak_queue, out.queued)
        out.note_queue(self.queue.now, c.window, out.queued - size)
        if c.pfc and not port.asked[p] and port.held[p] > threshold:
            port.asked[p] = True
            port.paused_at[p] = port.held[p]
            port.pause_frames += 1
            self.queue.at(self.queue.now + port.delay, self._pause, port, p, True)
        self.send(out)

    def _deliver(self, s: Sender, i: int, size: int, marked: bool) -> None:
        now = self.queue.now
        if marked and now - s.cnp_sent >= self.config.dcqcn.cnp_interval:
            s.cnp_sent = now
            self.queue.at(now + s.cnp_delay, self._cnp, s)
        s.delivered += size
        if now >= self.warmup:
            s.in_window += size
        if s.left <= 0 and s.flow.size is not None and s.delivered >= s.flow.size:
            self.finish[s.flow.name] = now

    def _pause(self, port: Port, p: int, on: bool) -> None:
        if port.paused[p] == on:
            return
        port.paused[p] = on
        if on:
            port.paused_since[p] = self.queue.now
        else:
            port.pause_s += self.queue.now - port.paused_since[p]
            self.send(port)

    # --- DCQCN -------------------------------------------------------------------------------------------------------
    def _cnp(self, s: Sender) -> None:
        self.cnps += 1
        s.control.on_cnp(self.queue.now)
        if not s.timer_running:
            s.timer_running = True
            self.queue.at(self.queue.now + self.config.dcqcn.timer, self._timer, s)

    def _timer(self, s: Sender) -> None:
        s.control.on_timer(self.queue.now)
        if s.control.throttled:
            self.queue.at(self.queue.now + self.config.dcqcn.timer, self._timer, s)
        else:
            s.timer_running = False

    # --- the result --------------------------------------------------------------------------------------------------
    def result(self, until: float, warmup: float) -> dict[str, Any]:
        """PfcResult's fields."""
        for port in self.ports:
            for p, on in enumerate(port.paused):
                if on:
                    port.pause_s += until - port.paused_since[p]
        span = until - warmup
        util_p99, queue_p99 = self._window_p99(until, warmup)
        names = [s.flow.name for s in self.senders]
        return dict(gbps={n: s.in_window * 8 / span / 1e9 for n, s in zip(names, self.senders)},
                    delivered={n: s.in_window for n, s in zip(names, self.senders)}, finish=self.finish,
                    pause_frames=[p.pause_frames for p in self.ports], pause_s=[p.pause_s for p in self.ports],
                    over_xoff=[p.over_xoff for p in self.ports], headroom=[p.headroom for p in self.ports],
                    peak_queue=[p.peak_queue for p in self.ports], drops=self.drops, events=self.queue.events,
                    window=(warmup, until), names=self.net.names, util_p99=util_p99, queue_p99=queue_p99,
                    marks=self.marks, cnps=self.cnps)

    def _window_p99(self, until: float, warmup: float) -> tuple[dict[int, float], dict[int, float]]:
        """Per link, the P99 over the measuring span's windows of its utilisation and of its queue's peak depth (a
        window in which the queue did not change holds the depth the last change left)."""
        width = self.config.window
        first = int(warmup // width)
        bins = range(first, max(int(until // width), first + 1))
        span = np.array([min(width, until - b * width) for b in bins])
        util, depth = {}, {}
        for port in self.ports:
            if port.sent_bins:
                moved = np.array([port.sent_bins.get(b, 0) for b in bins], dtype=np.float64)
                util[port.link] = float(np.percentile(moved / (port.capacity * span), 99))
            if port.queue_bins:
                last, values = 0, []
                for b in range(min(port.queue_bins), bins[-1] + 1):
                    if b in port.queue_bins:
                        last = port.queue_bins[b][1]
                    if b >= first:
                        values.append(port.queue_bins[b][0] if b in port.queue_bins else last)
                if values:
                    depth[port.link] = float(np.percentile(values, 99))
        return util, depth
