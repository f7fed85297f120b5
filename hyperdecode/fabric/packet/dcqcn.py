"""ECN marking and DCQCN rate control for the packet model (pfc.py): congestion control that acts before PFC.

A switch marks a chunk it queues with a probability that grows with its egress queue (RED: 0 up to `kmin` bytes,
rising linearly to `pmax` at `kmax`, 1 beyond). A receiver that gets a marked chunk sends its sender a CNP, at most
one per flow per `cnp_interval`. The sender (DCQCN's reaction point, per flow) then cuts its rate:
target = current, current ×= (1 − α/2), α = (1 − g)·α + g. Every `timer` seconds without a CNP, α decays by
(1 − g), and the rate rises, as it also does every `byte_counter` bytes sent: for the first `fast_recovery` rises
current moves halfway to target (fast recovery); then target grows by `rate_ai` (additive increase), or by
`rate_hai` once both counters passed `fast_recovery` (hyper increase); current always moves halfway to target.

Defaults: DCQCN's own (Zhu et al., SIGCOMM'15: g = 1/256, 55 µs timers, F = 5, 10 MB byte counter, 40 Mb/s
additive step, 50 µs between CNPs) with the 100 Gb/s marking thresholds of HPCC's ns-3 RDMA model
(kmin 100 KB, kmax 400 KB, pmax 0.2).

>>> rc = RateControl(Dcqcn(), line=12.5e9)
>>> rc.on_cnp(now=0.0)
>>> rc.rate  # current ×= 1 − α/2 with α = 1 at the start
6250000000.0
>>> rc.on_timer(now=60e-6)  # a quiet period: fast recovery halfway back to the target
>>> rc.rate
9375000000.0
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Dcqcn", "RateControl", "mark_probability"]


@dataclass
class Dcqcn:
    """ECN marking thresholds at switches and DCQCN's rate-control constants at senders."""
    kmin: int = 100 << 10  # bytes queued at an egress port before marking starts
    kmax: int = 400 << 10  # ... where the marking probability reaches pmax (and 1 beyond)
    pmax: float = 0.2
    g: float = 1 / 256  # α's gain
    timer: float = 55e-6  # α decay and rate-increase period, seconds
    byte_counter: int = 10 << 20  # a rate increase every this many bytes sent
    fast_recovery: int = 5  # increases before additive increase starts
    rate_ai: float = 40e6 / 8  # additive increase, bytes/s
    rate_hai: float = 400e6 / 8  # hyper increase, bytes/s
    min_rate: float = 100e6 / 8  # the rate never goes below this, bytes/s
    cnp_interval: float = 50e-6  # at most one CNP per flow per interval


def mark_probability(config: Dcqcn, queued: int) -> float:
    """RED's marking probability for an egress queue holding `queued` bytes."""
    if queued <= config.kmin:
        return 0.0
    if queued >= config.kmax:
        return 1.0
    return config.pmax * (queued - config.kmin) / (config.kmax - config.kmin)


class RateControl:
    """One flow's DCQCN reaction point: its sending rate in bytes/s, starting at line rate."""

    def __init__(self, config: Dcqcn, line: float):
        self.config = config
        self.line = line
        self.rate = line
        self.target = line
        self.alpha = 1.0
        self.timer_rises = 0
        self.byte_rises = 0
        self.bytes_sent = 0
        self.last_cnp = -1.0

    @property
    def throttled(self) -> bool:
        """True while the flow is below line rate (its timer must keep running)."""
        return self.rate < self.line

    def on_cnp(self, now: float) -> None:
        c = self.config
        self.target = self.rate
        self.rate = max(self.rate * (1 - self.alpha / 2), c.min_rate)
        self.alpha = (1 - c.g) * self.alpha + c.g
        self.timer_rises = 0
        self.byte_rises = 0
        self.bytes_sent = 0
        self.last_cnp = now

    def on_timer(self, now: float) -> None:
        """The periodic timer: α decays and the rate rises, unless a CNP came within the last period."""
        if now - self.last_cnp < self.config.timer:
            return
        self.alpha *= 1 - self.config.g
        self.timer_rises += 1
        self._rise()

    def on_sent(self, size: int) -> None:
        self.bytes_sent += size
        if self.bytes_sent >= self.config.byte_counter:
            self.bytes_sent -= self.config.byte_counter
            self.byte_rises += 1
            self._rise()

    def _rise(self) -> None:
        c = self.config
        if max(self.timer_rises, self.byte_rises) <= c.fast_recovery:
            pass  # fast recovery: the target stays
        elif min(self.timer_rises, self.byte_rises) > c.fast_recovery:
            self.target += c.rate_hai
        else:
            self.target += c.rate_ai
        self.target = min(self.target, self.line)
        self.rate = (self.rate + self.target) / 2
        if self.line - self.rate < 1e-6 * self.line:
            self.rate = self.line
