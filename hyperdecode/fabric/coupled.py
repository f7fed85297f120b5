"""PFC fed back into serving: a run, its hottest windows replayed packet by packet (packet/hotwindow.py; over
processes when there are several), then the run again with the pause delay each replayed transfer suffered added
to its end (`holds`), so that PFC's backpressure reaches TTFT and throughput.

Each window is replayed with only its own flows; a transfer's hold is its completion with PFC minus without. The
second run is the reported one; its summary keeps the first run's TTFT P99 and throughput beside it
(`pfc_feedback`).

>>> merge_holds([{"added_s": {"t3.0": 0.002, "t3.1": 0.001, "t5.0": 0.0}}], {3: ("kv", 7), 5: ("fetch", 9)})
{('kv', 7): 0.002}
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from .flow.summary import summarize
from .flow.serving import simulate
from .flow.transfers import KINDS
from .packet.hotwindow import hot_windows, replay, window_flows

__all__ = ["run_with_pfc", "merge_holds", "replay_windows"]


def merge_holds(replays: list[dict[str, Any]], owners: dict[int, tuple[str, int]]) -> dict[tuple[str, int], float]:
    """(kind, request) -> the largest delay over the transfer's QP routes ("t<flow>.<route>"), where positive."""
    holds: dict[tuple[str, int], float] = {}
    for replayed in replays:
        for name, added in replayed["added_s"].items():
            owner = owners[int(name[1:].split(".")[0])]
            if added > 0:
                holds[owner] = max(holds.get(owner, 0.0), added)
    return holds


def _replay_one(job: tuple) -> dict[str, Any]:
    topo, flows, width, dcqcn = job
    return replay(topo, flows, width, dcqcn=dcqcn)


def replay_windows(run: Any, width: float, count: int = 1, max_flows: int = 64, dcqcn: bool = False,
                   processes: int | None = None) -> list[dict[str, Any]]:
    """The `count` hottest windows of a run, each replayed; in `processes` worker processes when more than one
    (default: one per window, at most the CPUs)."""
    windows = hot_windows(run, width, count)
    jobs = [(run.topology, window_flows(run, w, max_flows), width, dcqcn) for w in windows]
    workers = min(len(jobs), processes or os.cpu_count() or 1)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_replay_one, jobs))
    else:
        results = [_replay_one(job) for job in jobs]
    return [{"window": w} | r for w, r in zip(windows, results)]


def run_with_pfc(topo: Any, work: Any, model: Any, cfg: Any, width: float, count: int = 1, max_flows: int = 64,
                 dcqcn: bool = False, processes: int | None = None, progress: Any = None) -> tuple[Any, dict]:
    """(the second run, its summary with the replays' figures and the feedback's effect)."""
    first = simulate(topo, work, model, cfg, progress)
    replays = replay_windows(first, width, count, max_flows, dcqcn, processes)
    logged = first.flows
    owners = {i: (KINDS[int(logged[i, 4])], int(logged[i, 5])) for i in range(len(logged)) if logged[i, 4] != 2}
    holds = merge_holds(replays, owners)
    second = simulate(topo, work, model, cfg, progress, holds=holds)
    before, after = summarize(first), summarize(second)
    worst = max(replays, key=lambda r: r["pause_s_total"])
    after["pfc_windows"] = [{k: v for k, v in r.items() if k not in ("slowdowns", "added_s")} for r in replays]
    after["pause_s_total"] = sum(r["pause_s_total"] for r in replays)
    after["symptoms"] |= {"leaf_queue_bytes_p99_100us": worst["leaf_queue_bytes_p99_100us"],
                          "leaf_port_pause_s": sum(r["leaf_port_pause_s"] for r in replays),
                          "leaf_port_pause_frames": sum(r["leaf_port_pause_frames"] for r in replays)}
    after["pfc_feedback"] = {"transfers_held": len(holds), "hold_s_total": sum(holds.values()),
                             "ttft_p99_s_without": before["ttft_p99_s"],
                             "throughput_tok_s_without": before["throughput_tok_s"]}
    return second, after
