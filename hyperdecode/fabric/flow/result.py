"""A serving run's typed result: per-request stage times, the decode stretches, the flows the network carried and
the network's counters. `summary.py` turns it into figures; the hot-window replays read its flows.

>>> run = ServingRun.empty(2)
>>> run.log_steps(0.02, 5, 3, 1.0)
>>> run.steps.tolist(), run.failed.tolist()
([[0.02, 5.0, 3.0, 1.0]], [False, False])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ServingRun", "FLOW_COLUMNS"]

# a logged flow: its bytes (all QPs), start and end (s), priority class, kind (transfers.KINDS), request (-1: none),
# QPs
FLOW_COLUMNS = ("bytes", "start", "end", "priority", "kind", "request", "qps")
STAGES = ("prefill_start_s", "prefill_end_s", "admitted_s", "kv_done_s", "first_token_s", "finish_s")


@dataclass
class ServingRun:
    """A serving run's typed result: per-request times, flows, link bytes and counters (summary.py reads it)."""
    arrival_s: np.ndarray
    prefill_start_s: np.ndarray
    prefill_end_s: np.ndarray
    admitted_s: np.ndarray
    kv_done_s: np.ndarray
    first_token_s: np.ndarray
    finish_s: np.ndarray
    failed: np.ndarray
    prefill_of: np.ndarray
    decode_of: np.ndarray
    kv_pairs: np.ndarray  # [n, 2] the GPUs of each request's first KV slice
    prefix_hit_blocks: np.ndarray
    step_log: list = field(default_factory=list)  # (step seconds, steps, batch, start) per stretch
    flow_log: list = field(default_factory=list)  # FLOW_COLUMNS per ended flow
    flow_routes: list = field(default_factory=list)  # each logged flow's routes [(path, fraction)] per QP
    ep_bytes: float = 0.0
    fetch_bytes: float = 0.0
    rerouted_flows: int = 0
    dropped_requests: int = 0
    link_bytes: np.ndarray | None = None
    util_seconds: np.ndarray | None = None
    throttled: dict[str, float] = field(default_factory=dict)
    end_s: float = 0.0
    sim_wall_s: float = 0.0
    events: int = 0
    recomputations: int = 0
    topology: Any = None
    workload: Any = None
    config: Any = None
    model: Any = None
    placement: Any = None
    holds: dict = field(default_factory=dict)  # (kind, request) -> seconds added by PFC pauses (pfc feedback)

    @classmethod
    def empty(cls, n: int) -> "ServingRun":
        nan = {name: np.full(n, np.nan) for name in ("arrival_s", *STAGES)}
        return cls(**nan, failed=np.zeros(n, dtype=bool), prefill_of=np.full(n, -1), decode_of=np.full(n, -1),
                   kv_pairs=np.full((n, 2), -1), prefix_hit_blocks=np.zeros(n, dtype=np.int64))

    def log_steps(self, step: float, steps: int, batch: int, start: float) -> None:
        self.step_log.append((step, steps, batch, start))

    def log_flow(self, row: tuple, routes: list) -> None:
        self.flow_log.append(row)
        self.flow_routes.append(routes)

    @property
    def steps(self) -> np.ndarray:
        return np.array(self.step_log, dtype=np.float64).reshape(-1, 4)

    @property
    def flows(self) -> np.ndarray:
        return np.array(self.flow_log, dtype=np.float64).reshape(-1, len(FLOW_COLUMNS))

    @property
    def ttft_s(self) -> np.ndarray:
        return self.first_token_s - self.arrival_s

    @property
    def completed(self) -> np.ndarray:
        return ~self.failed & np.isfinite(self.finish_s)
