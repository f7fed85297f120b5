"""Prefill→decode (PD-disaggregated) inference traffic on a topology: requests queue at prefill instances, their KV
cache crosses the network to a decode instance as flows, and TTFT = queueing + prefill + KV transfer + first decode
step.

Model and its simplifications (parameters, not facts): instances of `gpus_per_instance` consecutive GPUs (whole
servers); requests go to the prefill instance that frees up first and, once prefilled, to the decode instance with
the fewest running requests; prefill is FIFO at `prefill_tok_s`; no prefix caching; the KV cache is split evenly
over the instance's GPUs, each sending its share to the decode GPU of the same local rank (`kv_split="striped"`),
or all of it leaves rank 0's NIC (`"single"`, MLA's replicated latent); `qps` flows per GPU pair. No PFC model:
flows share links max-min fairly, so congestion shows as lower rates, not as pauses spreading upstream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from .flowsim import EventQueue, Flow, FlowNetwork
from .routing import Router, link_class, mix
from .topology import Topology
from .workload import ModelProfile, Workload

__all__ = ["SimConfig", "simulate", "parse_pd_ratio", "parse_failure"]

PLACEMENTS = ("contiguous", "interleaved", "random")


@dataclass
class SimConfig:
    gpus_per_instance: int = 8
    pd_ratio: tuple[int, int] = (1, 1)
    placement: str = "interleaved"
    kv_split: str = "striped"
    port_policy: str = "balanced"
    qps: int = 2
    ttft_slo_s: float = 2.0
    failure: tuple[str, int, float] | None = None  # ("link" | "switch", id, time in s)
    seed: int = 0


def parse_pd_ratio(text: str) -> tuple[int, int]:
    try:
        p, d = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"P:D ratio '{text}' must look like 1:2") from None
    if p < 1 or d < 1:
        raise ConfigError(f"P:D ratio '{text}' needs at least one of each")
    return p, d


def parse_failure(text: str) -> tuple[str, int, float]:
    """'link:ID@T' or 'switch:ID@T' (T in seconds of simulated time)."""
    try:
        what, rest = text.split(":", 1)
        ident, at = rest.split("@", 1)
        out = (what, int(ident), float(at))
    except ValueError:
        raise ConfigError(f"failure '{text}' must look like link:12@30 or switch:3@30") from None
    if what not in ("link", "switch") or out[2] < 0:
        raise ConfigError(f"failure '{text}' must name a link or a switch and a time >= 0")
    return out


def roles(topo: Topology, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids of prefill and decode instances (instance i = GPUs i*g .. i*g+g-1)."""
    g = cfg.gpus_per_instance
    if g < 1 or topo.num_gpus % g:
        raise ConfigError(f"gpus_per_instance {g} must divide the {topo.num_gpus} GPUs")
    n = topo.num_gpus // g
    p, d = cfg.pd_ratio
    n_p = n * p // (p + d)
    if n < p + d or n_p < 1 or n - n_p < 1:
        raise ConfigError(f"P:D {p}:{d} does not fit {n} instances of {g} GPUs ({topo.num_gpus} GPUs): "
                          f"it needs at least {p + d} instances")
    if cfg.placement == "contiguous":
        is_p = np.arange(n) < n_p
    elif cfg.placement == "interleaved":
        is_p = np.diff(np.floor(np.arange(n + 1) * n_p / n)) > 0
    elif cfg.placement == "random":
        is_p = np.zeros(n, dtype=bool)
        is_p[np.random.default_rng(cfg.seed).permutation(n)[:n_p]] = True
    else:
        raise ConfigError(f"placement '{cfg.placement}' is not one of {PLACEMENTS}")
    return np.nonzero(is_p)[0], np.nonzero(~is_p)[0]


def simulate(topo: Topology, work: Workload, model: ModelProfile | None = None, cfg: SimConfig | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Runs the whole workload; returns per-request arrays and network statistics (see `summarize`)."""
    import time
    wall = time.perf_counter()
    model, cfg = model or ModelProfile(), cfg or SimConfig()
    model.check()
    if cfg.kv_split not in ("striped", "single") or cfg.qps < 1:
        raise ConfigError("kv_split must be 'striped' or 'single' and qps >= 1")
    prefill_ids, decode_ids = roles(topo, cfg)
    g = cfg.gpus_per_instance
    router = Router(topo, cfg.port_policy)
    ev = EventQueue()
    n = len(work)
    prefill_free = np.zeros(len(prefill_ids))
    decode_load = np.zeros(len(decode_ids), dtype=np.int64)
    t_prefill_end = np.full(n, np.nan)
    t_kv_done = np.full(n, np.nan)
    failed = np.zeros(n, dtype=bool)
    pending = np.zeros(n, dtype=np.int64)
    flow_log: list[tuple[float, float, float]] = []  # (size, start, end)
    rerouted = dropped = 0
    state = {"done": 0}

    def on_rates(f: Flow, eta: float) -> None:
        ev.at(eta, finish_flow, f, f.version)

    net = FlowNetwork(np.repeat(topo.link_gbps * 1e9 / 8, 2), on_rates)

    def finish_flow(f: Flow, version: int) -> None:
        if f.version != version or f.id not in net.flows:
            return
        net.remove(f, ev.now)
        flow_log.append((f.size, f.start, ev.now))
        req, d = f.tag
        pending[req] -= 1
        if pending[req] == 0 and not failed[req]:
            t_kv_done[req] = ev.now
            ev.at(ev.now + model.decode_step_s * max(int(work.output_tokens[req]), 1), end_decode, d)
            done(req)

    def done(req: int) -> None:
        state["done"] += 1
        if progress and state["done"] % 256 == 0:
            progress(state["done"])

    def end_decode(d: int) -> None:
        decode_load[d] -= 1

    def arrive(req: int) -> None:
        i = int(np.argmin(np.maximum(prefill_free, ev.now)))
        start = max(prefill_free[i], ev.now)
        prefill_free[i] = start + model.prefill_s(int(work.input_tokens[req]))
        ev.at(prefill_free[i], prefilled, req, i)

    def prefilled(req: int, i: int) -> None:
        t_prefill_end[req] = ev.now
        d = int(np.argmin(decode_load))
        decode_load[d] += 1
        total = float(work.input_tokens[req]) * model.kv_bytes_per_token
        src0, dst0 = prefill_ids[i] * g, decode_ids[d] * g
        senders = range(g) if cfg.kv_split == "striped" else range(1)
        share = total / len(senders) / cfg.qps
        for r in senders:
            for qp in range(cfg.qps):
                path = router.path(src0 + r, dst0 + r, key=mix(req, r, qp))  # distinct for any QP / rank count
                if path is None:
                    fail_request(req)
                    return
                pending[req] += 1
                net.add(path, share, ev.now, tag=(req, d))

    def fail_request(req: int) -> None:
        nonlocal dropped
        if not failed[req]:
            failed[req] = True
            dropped += 1
            done(req)

    def inject() -> None:
        nonlocal router, rerouted
        kind, ident, _ = cfg.failure
        if kind == "link":
            if not 0 <= ident < topo.num_links:
                raise ConfigError(f"failure: link {ident} is not in 0..{topo.num_links - 1}")
            cables = {ident}
        else:
            if not 0 <= ident < topo.num_switches:
                raise ConfigError(f"failure: switch {ident} is not in 0..{topo.num_switches - 1}")
            node = topo.num_gpus + ident
            cables = set(np.nonzero((topo.link_a == node) | (topo.link_b == node))[0].tolist())
        router = Router(topo, cfg.port_policy, cables | router.failed)
        dead = {2 * c for c in cables} | {2 * c + 1 for c in cables}
        for f in [f for f in net.flows.values() if dead & set(f.path)]:
            req, _ = f.tag
            src, dst = int(topo.link_a[f.path[0] // 2]), int(topo.link_a[f.path[-1] // 2])
            path = router.path(src, dst, key=f.id)
            if path is None:
                net.remove(f, ev.now)
                fail_request(req)
            else:
                net.reroute(f, path, ev.now)
                rerouted += 1

    for req in range(n):
        ev.at(float(work.arrival_s[req]), arrive, req)
    if cfg.failure:
        ev.at(cfg.failure[2], inject)
    ev.run()
    ttft = t_kv_done + model.decode_step_s - work.arrival_s
    return {"ttft_s": ttft, "prefill_end_s": t_prefill_end, "kv_done_s": t_kv_done, "failed": failed,
            "flows": np.array(flow_log).reshape(-1, 3), "link_bytes": net.link_bytes, "end_s": ev.now,
            "throttled": net.throttled_by_class(lambda link: link_class(topo, link)), "rerouted_flows": rerouted, "dropped_requests": dropped,
            "workload": work, "config": cfg, "model": model, "topology": topo, "sim_wall_s": time.perf_counter() - wall}

