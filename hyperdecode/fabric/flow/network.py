"""Flow-level network model: max-min fair rates by progressive filling, recomputed whenever a flow arrives, ends or
changes its demand.

A flow here is a set of queue pairs (QPs) that move in lockstep: an all-to-all's flows (a step waits for its
slowest) or a transfer's slices and QPs. Each QP follows one route, or spreads its bytes over several (packet
spraying: a fraction on each); the flow's `rate` is one QP's rate, so a link carries rate × weight of it, the weight
being the QPs (and fractions) on that link. Max-min fairness is per QP. A flow may carry a `cap` (a demand: an
all-to-all needs no more than its compute can use) and an infinite size (it lasts until removed).

Flows carry a priority (0 first): the classes are served in strict priority, each filling max-min fairly what the
classes above it left (with one class this is plain max-min). Progressive filling is vectorised over every flow at
once: each round freezes the flows of every link whose level is the lowest among the links its flows touch (a
local minimum is safe to freeze, since levels only rise as flows freeze), and each flow whose cap is below all its
links' levels; independent parts of the network fill in the same rounds, so a change never alters the rates of
flows that share no link, directly or through others, with it.

The state is kept as arrays (one slot per flow; `Flow` is a handle). Links are directed (a full-duplex cable is two
of them); capacities in bytes per second. The network keeps the bytes moved on every link, how long each link spent
at each utilisation level (`util_seconds`, bins of 1/UTIL_BINS: rates are piecewise constant, so this is exact for
the model) and, per bottleneck link, the seconds flows spent below their line rate.

>>> network = FlowNetwork([10.0, 4.0], lambda flow, eta: None)
>>> a, b, c = network.add_many([([0], 1e9, "A", 0), ([0, 1], 1e9, "B", 0), ([1], 1e9, "C", 0)], now=0.0)
>>> a.rate, b.rate, c.rate  # the classic two-bottleneck case
(8.0, 2.0, 2.0)
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np

from .maxmin import fill

__all__ = ["Flow", "FlowNetwork", "UTIL_BINS", "routes_of"]

UTIL_BINS = 50
INF = float("inf")


def routes_of(path_or_routes: Sequence) -> list[tuple[tuple[int, ...], float]]:
    """A path (directed link ids) as one route carrying a whole QP, or (path, fraction) routes as given.

    >>> routes_of([3, 4]), routes_of([([1], 0.5), ([2], 0.5)])
    ([((3, 4), 1.0)], [((1,), 0.5), ((2,), 0.5)])
    """
    if len(path_or_routes) and isinstance(path_or_routes[0], (int, np.integer)):
        return [(tuple(int(x) for x in path_or_routes), 1.0)]
    return [(tuple(int(x) for x in path), float(share)) for path, share in path_or_routes]


class Flow:
    """A handle on one flow's slot: `routes` [(path, fraction of a QP)], `size` bytes per QP, rates per QP."""

    def __init__(self, network: "FlowNetwork", ident: int, routes: list, size: float, start: float, tag: Any,
                 priority: int, watcher: Callable[["Flow"], None] | None):
        self.network = network
        self.id = ident
        self.slot = -1
        self.size = float(size)
        self.start = start
        self.tag = tag
        self.priority = priority
        self.watcher = watcher
        self.version = 0
        self.final: dict[str, float] = {}
        self.set_routes(routes)

    def set_routes(self, routes: list) -> None:
        weights: dict[int, float] = {}
        for path, share in routes:
            for link in path:
                weights[link] = weights.get(link, 0.0) + share
        if not weights:
            raise ValueError("a flow needs a path of at least one link")
        self.routes = routes
        self.links = np.fromiter(weights, dtype=np.int64, count=len(weights))
        self.weights = np.fromiter(weights.values(), dtype=np.float64, count=len(weights))
        self.link_list = self.links.tolist()
        self.qps = sum(share for _, share in routes)

    @property
    def path(self) -> list[int]:
        """The first route's links (a single-path flow's path)."""
        return list(self.routes[0][0])

    def _get(name: str):
        """A value of the flow's slot, or the one it had when it was removed."""
        def value(self) -> float:
            return self.final[name] if self.slot < 0 else float(getattr(self.network, name)[self.slot])
        return property(value)

    rate = _get("rate")
    remaining = _get("remaining")
    moved = _get("moved")
    cap = _get("cap")
    line = _get("line")
    bottleneck = property(lambda self: -1 if self.slot < 0 else int(self.network.bottleneck[self.slot]))


class FlowNetwork:
    """Links of fixed capacity shared max-min fairly (by priority class) by the flows on them."""
    def __init__(self, capacity: Sequence[float], on_rates: Callable[[Flow, float], None]):
        """`on_rates(flow, eta)` is called whenever a flow of finite size gets a new positive rate, with its new
        completion time; a flow's `watcher` (if any) is called after every change of its rate."""
        self.capacity = np.asarray(capacity, dtype=np.float64)
        links = len(self.capacity)
        self.link_bytes = np.zeros(links)
        self.link_rate = np.zeros(links)  # the sum of its flows' rates × weights
        self.link_since = np.zeros(links)  # since when each link's rate has held
        self.util_seconds = np.zeros((links, UTIL_BINS))
        self.throttled_s = np.zeros(links)  # bottleneck link -> seconds flows spent below line rate
        self.flows: dict[int, Flow] = {}
        self.on_rates = on_rates
        self.recomputations = 0
        self._ids = itertools.count()
        self._pending = False  # deferred removals wait for `flush`
        self._grow(64)
        self._entries: tuple | None = None  # (slot, link, weight) of every active flow, grouped by flow

    # --- slots ------------------------------------------------------------------------------------------------------
    def _grow(self, size: int) -> None:
        old = getattr(self, "rate", np.zeros(0))
        n = len(old)
        fresh = {"rate": 0.0, "remaining": 0.0, "moved": 0.0, "last": 0.0, "cap": INF, "line": 0.0,
                 "priority": 0, "bottleneck": -1}
        for name, value in fresh.items():
            dtype = np.int64 if name in ("priority", "bottleneck") else np.float64
            grown = np.full(size, value, dtype=dtype)
            if n:
                grown[:n] = getattr(self, name)
            setattr(self, name, grown)
        self._free = list(range(size - 1, n - 1, -1)) + getattr(self, "_free", [])

    def _place(self, f: Flow, now: float, cap: float) -> None:
        if not self._free:
            self._grow(2 * len(self.rate))
        s = self._free.pop()
        f.slot = s
        self.rate[s], self.remaining[s], self.moved[s], self.last[s] = 0.0, f.size, 0.0, now
        self.priority[s], self.bottleneck[s] = f.priority, -1
        self._set_line(f, cap)

    def _set_line(self, f: Flow, cap: float) -> None:
        self.cap[f.slot] = cap
        self.line[f.slot] = min(float((self.capacity[f.links] / f.weights).min()), cap)

    # --- adding, removing, changing -------------------------------------------------------------------------------
    def add(self, path: Sequence, size: float, now: float, tag: Any = None, priority: int = 0) -> Flow:
        return self.add_many([(path, size, tag, priority)], now)[0]

    def add_many(self, specs: list[tuple], now: float) -> list[Flow]:
        """Starts every (path or routes, size, tag, priority[, cap[, watcher]]) flow at `now` with one rate
        recomputation (an all-to-all's flows arrive together)."""
        self._settle_all(now)
        made = []
        for spec in specs:
            routes, size, tag, priority, *rest = spec
            cap = rest[0] if rest else INF
            watcher = rest[1] if len(rest) > 1 else None
            f = Flow(self, next(self._ids), routes_of(routes), size, now, tag, priority, watcher)
            self._place(f, now, cap)
            self.flows[f.id] = f
            made.append(f)
        self._entries = None
        self._recompute(now)
        return made

    def remove(self, f: Flow, now: float, defer: bool = False) -> None:
        """Ends a flow; with `defer`, the others' rates are recomputed at the next `flush` (call it before time
        moves on: flows that end together then cost one recomputation)."""
        self._settle_all(now)
        del self.flows[f.id]
        self._entries = None
        s = f.slot
        f.final = {name: float(getattr(self, name)[s]) for name in ("remaining", "moved", "cap", "line")}
        f.final["rate"] = 0.0
        f.slot = -1
        self._free.append(s)
        self.rate[s] = 0.0
        if defer:
            self._pending = True
        else:
            self._recompute(now)

    def flush(self, now: float) -> None:
        """Recomputes the rates that deferred removals left stale."""
        if self._pending:
            self._pending = False
            self._recompute(now)

    def reroute(self, f: Flow, routes: Sequence, now: float) -> None:
        """Moves a flow (with what it has left) onto new routes."""
        self._settle_all(now)
        f.set_routes(routes_of(routes))
        self._set_line(f, self.cap[f.slot])
        self._entries = None
        self._recompute(now)

    def set_cap(self, f: Flow, cap: float, now: float) -> None:
        """A new demand for a flow (an all-to-all whose batch changed)."""
        if cap != self.cap[f.slot]:
            self._settle_all(now)
            self._set_line(f, cap)
            self._recompute(now)

    # --- time and accounting ----------------------------------------------------------------------------------------
    def _entry_arrays(self) -> tuple:
        if self._entries is None:
            flows = list(self.flows.values())
            if flows:
                counts = [len(f.links) for f in flows]
                order = np.array([f.slot for f in flows], dtype=np.int64)
                self._entries = (flows, order, np.repeat(order, counts), np.concatenate([f.links for f in flows]),
                                 np.concatenate([f.weights for f in flows]))
            else:
                empty = np.zeros(0, dtype=np.int64)
                self._entries = ([], empty, empty, empty, np.zeros(0))
        return self._entries

    def _settle_all(self, now: float) -> None:
        """Brings every flow's bytes and the links' counters up to `now`."""
        flows, slots, slot, link, weight = self._entry_arrays()
        if len(slots):
            dt = now - self.last[slots]
            moved = np.minimum(self.rate[slots] * dt, self.remaining[slots])
            self.remaining[slots] -= moved
            self.moved[slots] += moved
            self.last[slots] = now
            per_slot = np.zeros(len(self.rate))
            per_slot[slots] = moved
            self.link_bytes += np.bincount(link, weights=weight * per_slot[slot], minlength=len(self.capacity))
            held = (self.rate[slots] < self.line[slots] * (1 - 1e-9)) & (self.bottleneck[slots] >= 0) & (dt > 0)
            np.add.at(self.throttled_s, self.bottleneck[slots[held]], dt[held])

    def settle(self, now: float) -> None:
        """Brings every running flow's `remaining` bytes up to `now`."""
        self._settle_all(now)

    def close(self, now: float) -> None:
        """Brings every link's utilisation time up to `now` (the end of a run)."""
        self._settle_all(now)
        self._account(np.arange(len(self.capacity)), now)

    def _account(self, links: np.ndarray, now: float) -> None:
        """Credits each of `links` (distinct) its time since its last change at its current utilisation level."""
        level = np.minimum((self.link_rate[links] / self.capacity[links] * UTIL_BINS).astype(np.int64),
                           UTIL_BINS - 1)
        self.util_seconds[links, level] += now - self.link_since[links]
        self.link_since[links] = now

    @property
    def throttled(self) -> dict[int, float]:
        return {int(k): float(self.throttled_s[k]) for k in np.nonzero(self.throttled_s)[0]}

    def throttled_by_class(self, classify: Callable[[int], str]) -> dict[str, float]:
        out: dict[str, float] = {}
        for link, seconds in self.throttled.items():
            out[classify(link)] = out.get(classify(link), 0.0) + seconds
        return out

    # --- max-min ----------------------------------------------------------------------------------------------------
    def _recompute(self, now: float) -> None:
        flows, slots, slot, link, weight = self._entry_arrays()
        self.recomputations += 1
        if not len(slots):
            self._account(np.flatnonzero(self.link_rate), now)
            self.link_rate[:] = 0.0
            return
        position = np.zeros(len(self.rate), dtype=np.int64)
        position[slots] = np.arange(len(slots))
        rates, bottleneck = fill(position[slot], link, weight, self.cap[slots], self.priority[slots], self.capacity)
        old = self.rate[slots]
        self.rate[slots] = rates
        self.bottleneck[slots] = bottleneck
        link_rate = np.bincount(link, weights=weight * rates[position[slot]], minlength=len(self.capacity))
        self._account(np.flatnonzero(link_rate != self.link_rate), now)
        self.link_rate = link_rate
        for k in np.nonzero(rates != old)[0].tolist():
            f = flows[k]
            f.version += 1
            rate = rates[k]
            if rate > 0 and self.remaining[f.slot] < INF:  # a flow stopped by the classes above it waits
                self.on_rates(f, now + self.remaining[f.slot] / rate)
            if f.watcher is not None:
                f.watcher(f)
