"""The one event core of the fabric's simulators (SimPy's shape, a heap and a clock): the flow-level serving model
and the packet-level PFC model both schedule callbacks here; the model logic lives in small objects that own
their state.

A `Timer` is a rescheduleable single event (an object's next completion, moved when its rate changes): setting it
again makes the earlier event a no-op, so no event is ever removed from the heap.

>>> queue = EventQueue()
>>> seen = []
>>> queue.at(2.0, seen.append, "b")
>>> queue.at(1.0, seen.append, "a")
>>> timer = Timer(queue, seen.append, "t")
>>> timer.set(1.5)
>>> timer.set(3.0)  # moved: nothing fires at 1.5
>>> queue.run()
>>> seen, queue.now
(['a', 'b', 't'], 3.0)
"""
from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable

__all__ = ["EventQueue", "Timer"]


class EventQueue:
    """A heap of (time, sequence, callback, args): ties run in the order they were scheduled."""

    def __init__(self) -> None:
        self.heap: list = []
        self.now = 0.0
        self.events = 0
        self._sequence = itertools.count()

    def at(self, time: float, callback: Callable, *args: Any) -> None:
        heapq.heappush(self.heap, (time, next(self._sequence), callback, args))

    def after(self, delay: float, callback: Callable, *args: Any) -> None:
        self.at(self.now + delay, callback, *args)

    def run(self, until: float = float("inf")) -> None:
        """Runs every event due at or before `until` (the clock stays at the last one run)."""
        heap = self.heap
        while heap and heap[0][0] <= until:
            time, _, callback, args = heapq.heappop(heap)
            self.now = time
            self.events += 1
            callback(*args)

    def __len__(self) -> int:
        return len(self.heap)


class Timer:
    """One pending call of `callback(*args)` that can be moved or cancelled (a version number voids the old
    event)."""

    def __init__(self, queue: EventQueue, callback: Callable, *args: Any) -> None:
        self.queue = queue
        self.callback = callback
        self.args = args
        self.version = 0
        self.when: float | None = None

    def set(self, time: float) -> None:
        self.version += 1
        self.when = time
        self.queue.at(time, self._fire, self.version)

    def cancel(self) -> None:
        self.version += 1
        self.when = None

    def _fire(self, version: int) -> None:
        if version == self.version:
            self.when = None
            self.callback(*self.args)
