"""Flow-level network model: max-min fair rates by progressive filling, recomputed only for the flows that share
(transitively) a link with a flow that arrived or finished; plus a tiny event queue.

Flows carry a priority (0 first): the classes are served in strict priority, each filling max-min fairly what the
classes above it left on every link (so with one class this is plain max-min).

Links are directed (a full-duplex cable is two of them); capacities in bytes per second. The network keeps the bytes
moved on every link (utilisation), how long each link spent at each utilisation level (`util_seconds`, bins of
1/UTIL_BINS: max-min rates are piecewise constant, so this is exact for the model) and, per bottleneck link, the
flow-seconds flows spent below their line rate.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

__all__ = ["Flow", "FlowNetwork", "EventQueue", "UTIL_BINS"]

UTIL_BINS = 50


@dataclass
class Flow:
    id: int
    path: list[int]
    size: float
    remaining: float
    start: float
    rate: float = 0.0
    last: float = 0.0  # time `remaining` was last brought up to date
    version: int = 0
    bottleneck: int = -1
    tag: Any = None
    priority: int = 0


class FlowNetwork:
    def __init__(self, capacity: np.ndarray, on_rates: Callable[[Flow, float], None]):
        """`on_rates(flow, eta)` is called whenever a flow gets a new positive rate, with its new completion time."""
        self.cap = np.asarray(capacity, dtype=np.float64)
        self.link_bytes = np.zeros_like(self.cap)
        self.link_rate = np.zeros_like(self.cap)  # the sum of its flows' rates
        self.link_since = np.zeros_like(self.cap)  # since when link_rate has held
        self.util_seconds = np.zeros((len(self.cap), UTIL_BINS))
        self.link_flows: dict[int, set[int]] = {}
        self.flows: dict[int, Flow] = {}
        self.throttled: dict[int, float] = {}  # bottleneck link -> flow-seconds spent below line rate
        self.on_rates = on_rates
        self._ids = itertools.count()
        self._dirty: list[int] = []  # links of deferred removals

    def _settle(self, f: Flow, now: float) -> None:
        dt = now - f.last
        if dt > 0 and f.rate > 0:
            moved = min(f.rate * dt, f.remaining)
            f.remaining -= moved
            for link in f.path:
                self.link_bytes[link] += moved
            line = min(self.cap[link] for link in f.path)
            if f.rate < line * (1 - 1e-9):  # held below its line rate by its bottleneck link
                self.throttled[f.bottleneck] = self.throttled.get(f.bottleneck, 0.0) + dt
        f.last = now

    def _account(self, links: Any, now: float) -> None:
        """Credits each link's time since its last change to its current utilisation level (`links` distinct: a
        path, shortest, never repeats one)."""
        links = np.asarray(links, dtype=np.int64)
        level = np.minimum((self.link_rate[links] / self.cap[links] * UTIL_BINS).astype(np.int64), UTIL_BINS - 1)
        np.add.at(self.util_seconds, (links, level), now - self.link_since[links])
        self.link_since[links] = now

    def _set_rate(self, f: Flow, rate: float, now: float) -> None:
        self._account(f.path, now)
        for link in f.path:
            self.link_rate[link] += rate - f.rate
        f.rate = rate

    def settle(self, now: float) -> None:
        """Brings every running flow's `remaining` bytes up to `now`."""
        for f in self.flows.values():
            self._settle(f, now)

    def close(self, now: float) -> None:
        """Brings every link's utilisation time up to `now` (the end of a run)."""
        self._account(range(len(self.cap)), now)

    def add(self, path: list[int], size: float, now: float, tag: Any = None, priority: int = 0) -> Flow:
        return self.add_many([(path, size, tag, priority)], now)[0]

    def add_many(self, specs: list[tuple[list[int], float, Any, int]], now: float) -> list[Flow]:
        """Starts every (path, size, tag, priority) flow at `now` with one rate recomputation (an all-to-all's
        flows arrive together)."""
        made, touched = [], []
        for path, size, tag, priority in specs:
            if not path:
                raise ValueError("a flow needs a path of at least one link")
            f = Flow(next(self._ids), list(path), float(size), float(size), now, last=now, tag=tag, priority=priority)
            self.flows[f.id] = f
            for link in f.path:
                self.link_flows.setdefault(link, set()).add(f.id)
            made.append(f)
            touched.extend(f.path)
        self._recompute(touched, now)
        return made

    def remove(self, f: Flow, now: float, defer: bool = False) -> None:
        """Ends a flow; with `defer`, the others' rates are recomputed at the next `flush` (call it before time
        moves on: flows that end together then cost one recomputation)."""
        self._settle(f, now)
        self._set_rate(f, 0.0, now)
        del self.flows[f.id]
        for link in f.path:
            s = self.link_flows[link]
            s.discard(f.id)
            if not s:
                del self.link_flows[link]
        if defer:
            self._dirty.extend(f.path)
        else:
            self._recompute(f.path, now)

    def flush(self, now: float) -> None:
        """Recomputes the rates that deferred removals left stale."""
        dirty, self._dirty = self._dirty, []
        if dirty:
            self._recompute(dirty, now)

    def reroute(self, f: Flow, path: list[int], now: float) -> None:
        """Moves a flow (with what it has left) onto a new path."""
        self._settle(f, now)
        self._set_rate(f, 0.0, now)
        old = f.path
        for link in old:
            self.link_flows[link].discard(f.id)
            if not self.link_flows[link]:
                del self.link_flows[link]
        f.path = list(path)
        for link in f.path:
            self.link_flows.setdefault(link, set()).add(f.id)
        self._recompute(old + f.path, now)

    def throttled_by_class(self, classify: Callable[[int], str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for link, seconds in self.throttled.items():
            out[classify(link)] = out.get(classify(link), 0.0) + seconds
        return out

    def _component(self, links: list[int]) -> set[int]:
        flows, seen_links, todo = set(), set(), list(links)
        while todo:
            link = todo.pop()
            if link in seen_links:
                continue
            seen_links.add(link)
            for fid in self.link_flows.get(link, ()):
                if fid not in flows:
                    flows.add(fid)
                    todo.extend(self.flows[fid].path)
        return flows

    def _recompute(self, links: list[int], now: float) -> None:
        ids = self._component(links)
        if not ids:
            return
        flows = [self.flows[i] for i in ids]
        for f in flows:
            self._settle(f, now)
        rem = {link: self.cap[link] for f in flows for link in f.path}
        rate = {}
        for level in sorted({f.priority for f in flows}):  # strict priority: each class fills what is left
            self._fill([f for f in flows if f.priority == level], rem, rate)
        changed = [f for f in flows if rate[f.id] != f.rate]
        if changed:  # one utilisation update for every link whose load changes
            self._account(list({link for f in changed for link in f.path}), now)
        for f in changed:
            for link in f.path:
                self.link_rate[link] += rate[f.id] - f.rate
            f.rate = rate[f.id]
            f.version += 1
            if f.rate > 0:  # a flow stopped by the classes above it finishes only once it moves again
                self.on_rates(f, now + f.remaining / f.rate)

    @staticmethod
    def _fill(flows: list[Flow], rem: dict[int, float], rate: dict[int, float]) -> None:
        """Progressive filling of `flows` over the capacities `rem` (used up in place): the tightest link fixes the
        rate of all its unfrozen flows."""
        count, users = {}, {}
        for f in flows:
            for link in f.path:
                count[link] = count.get(link, 0) + 1
                users.setdefault(link, []).append(f)
        unfrozen = {f.id for f in flows}
        while unfrozen:
            link = min((lk for lk in count if count[lk] > 0), key=lambda lk: rem[lk] / count[lk])
            share = max(rem[link] / count[link], 0.0)
            for f in users[link]:
                if f.id in unfrozen:
                    unfrozen.discard(f.id)
                    rate[f.id] = share
                    f.bottleneck = link
                    for lk in f.path:
                        rem[lk] -= share
                        count[lk] -= 1


class EventQueue:
    """A heap of (time, sequence, callback, args): ties run in the order they were scheduled."""

    def __init__(self):
        self.heap: list = []
        self.now = 0.0
        self._seq = itertools.count()

    def at(self, time: float, fn: Callable, *args: Any) -> None:
        heapq.heappush(self.heap, (time, next(self._seq), fn, args))

    def run(self, until: float = float("inf")) -> None:
        while self.heap and self.heap[0][0] <= until:
            time, _, fn, args = heapq.heappop(self.heap)
            self.now = time
            fn(*args)
