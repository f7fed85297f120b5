"""PD-disaggregated serving on a topology, coupled to the network: what the network does changes how much the
cluster serves.

A request queues at the prefill instance with the least queued work; a prefill needs the request's KV memory on the
instance (`prefill_kv_gb`) from its start until its KV transfer has ended, so a slow transfer stalls the next
prefill. Once prefilled it waits for a decode instance with a free batch slot and KV memory (`decode_batch`,
`decode_kv_gb`); then its KV crosses the network (`kv_split`: by default from one random DP rank of the prefill
instance to one of the decode instance, so most transfers cross rails; sliced over `nic_slices` NICs of each
server, as Mooncake's transfer engine slices large transfers; `qps` flows each), and it joins the decode batch at
the next step. A decode step takes `step_s(batch)` of compute and, with `traffic="kv+ep"`, cannot end before its
expert-parallel all-to-all between the instance's servers has (per-step flows on the same rail, sized from the
model's MoE); a prefill likewise (`classes="separate"` puts that all-to-all on a priority class above KV). The
all-to-all is cut into `ep_rounds` rounds of equal shares (one per MoE layer at most), run one after another: each
round's all-to-all beside its share of the compute (`ep_overlap`, as two-batch overlap hides it) or after it (a
layer's experts wait for its dispatch, DeepEP's low-latency kernels without overlap). TTFT = queue + prefill +
decode admission + KV transfer + first step.

With `prefix_cache`, a prompt's leading blocks (the trace's `hash_ids`, 512 tokens each) already in the KV store
when its prefill starts are not computed (at least one token is): they are fetched from the store, which keeps each
block in the host memory of the server whose GPU first computed it (Mooncake's store), on the KV class, overlapped
with the prefill of the rest (layer by layer). A block is in the store from its first prefill's start; the store
never evicts.

Flows share links max-min fairly (flowsim.py); PFC's pauses are pfc.py's, for hot windows.
Without EP traffic, decode steps between batch changes are simulated as one stretch (the same step time), so an
hour-long trace costs a few events per request.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

import numpy as np

from ..errors import ConfigError
from .flowsim import EventQueue, Flow, FlowNetwork
from .routing import Router, link_class, mix
from .simconfig import PHASES, SimConfig, check_config, roles
from .topology import Topology
from .workload import BLOCK_TOKENS, ModelProfile, Workload

__all__ = ["simulate"]

def simulate(topo: Topology, work: Workload, model: ModelProfile | None = None, cfg: SimConfig | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Runs the whole workload; returns per-request stage times, decode steps and network statistics (see
    `summarize`)."""
    import time
    wall = time.perf_counter()
    model, cfg = model or ModelProfile(), cfg or SimConfig()
    model.check()
    check_config(topo, cfg)
    prefill_ids, decode_ids = roles(topo, cfg)
    g, gps = cfg.gpus_per_instance, topo.gpus_per_server
    servers = max(g // gps, 1)
    ep = cfg.traffic == "kv+ep" and servers > 1 and model.top_k > 0
    router = Router(topo, cfg.port_policy)
    ev = EventQueue()
    n = len(work)
    rng = np.random.default_rng(cfg.seed)
    src_rank, dst_rank = rng.integers(0, g, n), rng.integers(0, g, n)
    tokens_in, tokens_out = work.input_tokens, work.output_tokens
    kv_bytes = tokens_in.astype(np.float64) * model.kv_bytes_per_token
    if cfg.prefix_cache and work.hash_ids is None:
        raise ConfigError(f"{work.source}: prefix_cache needs the trace's hash_ids (prefix blocks); it has none")
    hits = np.zeros(n, dtype=np.int64)  # cached leading blocks, set when the prefill starts
    stored_at: dict[int, int] = {}  # a prefix block -> the GPU whose server's host memory holds it
    need = (tokens_in + tokens_out).astype(np.float64) * model.kv_bytes_per_token  # its decode-side reservation
    times = {k: np.full(n, np.nan) for k in ("prefill_start", "prefill_end", "admitted", "kv_done", "first_token",
                                             "finish")}
    failed = np.zeros(n, dtype=bool)
    prefill_of = np.full(n, -1)
    kv_pair = np.full((n, 2), -1)  # the GPUs of each request's (first) KV slice
    decode_of = np.full(n, -1)
    p_queue = [deque() for _ in prefill_ids]
    p_work = np.zeros(len(prefill_ids))  # queued prompt tokens (where an arrival goes)
    p_busy = np.zeros(len(prefill_ids), dtype=bool)
    p_mem = np.zeros(len(prefill_ids))
    d_reserved = np.zeros(len(decode_ids), dtype=np.int64)
    d_mem = np.zeros(len(decode_ids))
    admission: deque = deque()
    decoders = [{"running": {}, "joining": [], "version": 0, "start": 0.0, "step": 0.0, "steps": 0, "busy": False}
                for _ in decode_ids]
    steps_log: list[tuple[float, int, int, float]] = []  # (step seconds, steps, batch, start) per stretch
    flow_log: list[tuple[float, float, float, int]] = []  # (size, start, end, priority)
    flow_paths: list[list[int]] = []  # each logged flow's (last) path, for hot-window replays
    waits: dict[Any, list] = {}  # a phase -> [flows and timers left, what to do when none are]
    state = {"done": 0, "rerouted": 0, "dropped": 0, "ep_bytes": 0.0, "fetch_bytes": 0.0, "flush": False}
    prefill_cap, decode_cap = cfg.prefill_kv_gb * 1e9, cfg.decode_kv_gb * 1e9

    def on_rates(f: Flow, eta: float) -> None:
        ev.at(eta, finish_flow, f, f.version)

    net = FlowNetwork(np.repeat(topo.link_gbps * 1e9 / 8, 2), on_rates)

    def finish_flow(f: Flow, version: int) -> None:
        if f.version != version or f.id not in net.flows:
            return
        net.remove(f, ev.now, defer=True)  # flows ending at this instant share one recomputation
        if not state["flush"]:
            state["flush"] = True
            ev.at(ev.now, flush)
        flow_log.append((f.size, f.start, ev.now, f.priority))
        flow_paths.append(f.path)
        tick(f.tag)

    def flush() -> None:
        state["flush"] = False
        net.flush(ev.now)

    def tick(phase: Any) -> None:
        wait = waits[phase]
        wait[0] -= 1
        if wait[0] == 0:
            del waits[phase]
            wait[1]()

    def phase(key: Any, compute_s: float, flows: list[tuple[int, int, float, str]], then: Callable[[], None]) -> bool:
        """Runs `then` once compute_s has passed and every (src GPU, dst GPU, bytes, "ep" | "kv") flow has arrived;
        False if a flow has no path (a failure cut it off)."""
        ids = (PHASES.index(key[0]), *key[1:])
        paths = [router.path(a, b, key=mix(*ids, a, b, k)) for k, (a, b, _, _) in enumerate(flows)]
        if any(p is None for p in paths):
            return False
        waits[key] = [1 + len(flows), then]
        ev.at(ev.now + compute_s, tick, key)
        separate = cfg.classes == "separate"
        net.add_many([(path, size, key, int(separate and kind == "kv"))  # EP at priority 0
                      for path, (_, _, size, kind) in zip(paths, flows)], ev.now)
        return True

    def staged(key: Any, compute_s: float, ep_share: list[tuple[int, int, float, str]],
               extra: list[tuple[int, int, float, str]], then: Callable[[], None]) -> bool:
        """Runs `then` after `cfg.ep_rounds` rounds, each 1/rounds of compute_s and of the EP flows `ep_share`
        (see the module's docstring); `extra` flows start with the first round. False if that round has no path;
        a later round without one keeps its compute only."""
        rounds = cfg.ep_rounds if ep_share else 1
        share = [(a, b, size / rounds, kind) for a, b, size, kind in ep_share]
        compute = compute_s / rounds

        def run(j: int) -> bool:
            after = then if j == rounds - 1 else (lambda: run(j + 1))
            name = key if j == 0 else (*key, j)
            first = extra if j == 0 else []
            if cfg.ep_overlap:
                started = phase(name, compute, share + first, after)
            else:
                started = phase(name, compute, first, lambda: phase((*name, rounds), 0.0, share, after) or after())
            if not started and j > 0:
                ev.at(ev.now + compute, after)
                return True
            return started
        return run(0)

    def done(req: int) -> None:
        state["done"] += 1
        if progress and state["done"] % 256 == 0:
            progress(state["done"])

    def fail(req: int) -> None:
        if not failed[req]:
            failed[req] = True
            state["dropped"] += 1
            done(req)

    def ep_flows(base: int, tokens: float, prefill: bool) -> list[tuple[int, int, float, str]]:
        """The all-to-all of `tokens` spread over an instance's GPUs: each GPU to the GPU of its rail on every other
        server of the instance."""
        if not ep:
            return []
        per_gpu = tokens / g * model.moe_layers * model.ep_copies(servers, prefill) * model.ep_bytes_per_copy
        state["ep_bytes"] += per_gpu * g
        return [(base + s * gps + r, base + t * gps + r, per_gpu / (servers - 1), "ep")
                for s in range(servers) for t in range(servers) if t != s for r in range(gps)]

    def fetch_flows(req: int, gpu: int) -> list[tuple[int, int, float, str]]:
        """The request's cached blocks from the servers that hold them to `gpu`, one flow per server; its other
        blocks are stored at `gpu`'s server."""
        ids = work.hash_ids[req] if cfg.prefix_cache else []
        k = 0
        while k < len(ids) and ids[k] in stored_at:
            k += 1
        hits[req] = min(k, (int(tokens_in[req]) - 1) // BLOCK_TOKENS)
        held: dict[int, int] = {}
        for block in ids[:hits[req]]:
            src = stored_at[block]
            if src // gps != gpu // gps:
                held[src] = held.get(src, 0) + 1
        for block in ids[hits[req]:]:
            stored_at.setdefault(block, gpu)
        flows = [(src, gpu, k * BLOCK_TOKENS * model.kv_bytes_per_token, "kv") for src, k in held.items()]
        state["fetch_bytes"] += sum(f[2] for f in flows)
        return flows

    # prefill: least queued work; one request at a time; its KV held on the instance until sent
    def arrive(req: int) -> None:
        i = int(np.argmin(p_work))
        p_work[i] += tokens_in[req]
        p_queue[i].append(req)
        start_prefill(i)

    def start_prefill(i: int) -> None:
        if p_busy[i] or not p_queue[i]:
            return
        req = p_queue[i][0]
        if p_mem[i] > 0 and p_mem[i] + kv_bytes[req] > prefill_cap:
            return  # waits for a KV transfer to end
        p_queue[i].popleft()
        p_busy[i] = True
        p_mem[i] += kv_bytes[req]
        prefill_of[req] = i
        times["prefill_start"][req] = ev.now
        base = prefill_ids[i] * g
        fetch = fetch_flows(req, base + int(src_rank[req]))
        computed = int(tokens_in[req] - hits[req] * BLOCK_TOKENS)
        compute = model.prefill_s(computed) / servers  # prefill_tok_s is per server
        if not staged(("prefill", req), compute, ep_flows(base, float(computed), prefill=True), fetch,
                      lambda: prefilled(req, i)):
            p_busy[i] = False
            p_mem[i] -= kv_bytes[req]
            p_work[i] -= tokens_in[req]
            fail(req)
            start_prefill(i)

    def prefilled(req: int, i: int) -> None:
        p_busy[i] = False
        p_work[i] -= tokens_in[req]
        times["prefill_end"][req] = ev.now
        admission.append(req)
        admit()
        start_prefill(i)

    # decode admission: a batch slot and KV memory on the least loaded decode instance, then the KV transfer
    def admit() -> None:
        while admission:
            req = admission[0]
            room = (d_reserved < cfg.decode_batch) & ((d_mem == 0) | (d_mem + need[req] <= decode_cap))
            if not room.any():
                return
            admission.popleft()
            d = int(np.argmin(np.where(room, d_reserved, np.iinfo(np.int64).max)))
            d_reserved[d] += 1
            d_mem[d] += need[req]
            decode_of[req] = d
            times["admitted"][req] = ev.now
            if not phase(("kv", req), 0.0, kv_flows(req, d), lambda req=req: kv_done(req)):
                release(req)
                p_mem[prefill_of[req]] -= kv_bytes[req]
                fail(req)
                start_prefill(prefill_of[req])

    def kv_flows(req: int, d: int) -> list[tuple[int, int, float, str]]:
        src0, dst0 = prefill_ids[prefill_of[req]] * g, decode_ids[d] * g
        if cfg.kv_split == "striped":
            ends = [(r, r) for r in range(g)]
        else:
            a, b = (int(src_rank[req]), int(dst_rank[req])) if cfg.kv_split == "dp" else (0, 0)
            ends = [(a // gps * gps + (a % gps + j) % gps, b // gps * gps + (b % gps + j) % gps)
                    for j in range(cfg.nic_slices)]
        share = kv_bytes[req] / len(ends) / cfg.qps
        kv_pair[req] = (src0 + ends[0][0], dst0 + ends[0][1])
        return [(src0 + a, dst0 + b, share, "kv") for a, b in ends for _ in range(cfg.qps)]

    def kv_done(req: int) -> None:
        i = prefill_of[req]
        p_mem[i] -= kv_bytes[req]
        start_prefill(i)
        if failed[req]:  # a failure cut part of its transfer off
            release(req)
            admit()
            return
        times["kv_done"][req] = ev.now
        join(int(decode_of[req]), req)

    def release(req: int) -> None:
        d = decode_of[req]
        d_reserved[d] -= 1
        d_mem[d] -= need[req]

    # decode: every running request gets a token per step; without EP a run of equal steps is one stretch
    def join(d: int, req: int) -> None:
        dec = decoders[d]
        dec["joining"].append(req)
        if not dec["busy"]:
            return next_stretch(d)
        if not ep and dec["steps"] > 1:  # cut the stretch at the next step boundary, so that req joins there
            k = max(1, math.ceil((ev.now - dec["start"]) / dec["step"] - 1e-12))
            if k < dec["steps"]:
                dec["steps"] = k
                dec["version"] += 1
                v = dec["version"]
                ev.at(dec["start"] + k * dec["step"], lambda: end_stretch(d, v))

    def next_stretch(d: int) -> None:
        dec = decoders[d]
        dec["running"].update({req: int(tokens_out[req]) for req in dec["joining"]})
        dec["joining"] = []
        if not dec["running"]:
            dec["busy"] = False
            return
        batch = len(dec["running"])
        dec.update(busy=True, start=ev.now, step=model.step_s(batch))
        dec["steps"] = 1 if ep else min(dec["running"].values())
        dec["version"] += 1
        v = dec["version"]
        if ep:  # the step ends when its compute and its all-to-all have
            flows = ep_flows(decode_ids[d] * g, float(batch), prefill=False)
            if not staged(("step", d, v), dec["step"], flows, [], lambda: end_stretch(d, v)):
                ev.at(ev.now + dec["step"], lambda: end_stretch(d, v))  # a failure cut it: compute only
        else:
            ev.at(ev.now + dec["steps"] * dec["step"], lambda: end_stretch(d, v))

    def end_stretch(d: int, version: int) -> None:
        dec = decoders[d]
        if version != dec["version"]:
            return
        k, step = dec["steps"], ev.now - dec["start"]
        steps_log.append((step / k, k, len(dec["running"]), dec["start"]))
        for req in list(dec["running"]):
            if np.isnan(times["first_token"][req]):
                times["first_token"][req] = dec["start"] + step / k
            dec["running"][req] -= k
            if dec["running"][req] <= 0:
                del dec["running"][req]
                times["finish"][req] = ev.now
                release(req)
                done(req)
        admit()
        next_stretch(d)

    def inject() -> None:
        nonlocal router
        kind, ident, _ = cfg.failure
        limit = topo.num_links if kind == "link" else topo.num_switches
        if not 0 <= ident < limit:
            raise ConfigError(f"failure: {kind} {ident} is not in 0..{limit - 1}")
        if kind == "link":
            cables = {ident}
        else:
            node = topo.num_gpus + ident
            cables = set(np.nonzero((topo.link_a == node) | (topo.link_b == node))[0].tolist())
        router = Router(topo, cfg.port_policy, cables | router.failed)
        dead = {2 * c for c in cables} | {2 * c + 1 for c in cables}
        for f in [f for f in net.flows.values() if dead & set(f.path)]:
            src, dst = int(topo.link_a[f.path[0] // 2]), int(topo.link_a[f.path[-1] // 2])
            path = router.path(src, dst, key=f.id)
            if path is None:  # cut off: the flow is lost and so is what waited for it
                net.remove(f, ev.now)
                if f.tag[0] == "kv":
                    fail(f.tag[1])
                tick(f.tag)
            else:
                net.reroute(f, path, ev.now)
                state["rerouted"] += 1

    for req in range(n):
        ev.at(float(work.arrival_s[req]), arrive, req)
    if cfg.failure:
        ev.at(cfg.failure[2], inject)
    ev.run()
    net.close(ev.now)
    return {**{f"{k}_s": v for k, v in times.items()}, "arrival_s": work.arrival_s, "util_seconds": net.util_seconds,
            "ttft_s": times["first_token"] - work.arrival_s, "failed": failed,
            "steps": np.array(steps_log).reshape(-1, 4), "flows": np.array(flow_log).reshape(-1, 4),
            "flow_paths": flow_paths, "kv_pairs": kv_pair,
            "link_bytes": net.link_bytes, "end_s": ev.now, "ep_bytes": state["ep_bytes"],
            "fetch_bytes": state["fetch_bytes"], "prefix_hit_blocks": hits,
            "throttled": net.throttled_by_class(lambda link: link_class(topo, link)),
            "rerouted_flows": state["rerouted"], "dropped_requests": state["dropped"], "workload": work,
            "config": cfg, "model": model, "topology": topo, "sim_wall_s": time.perf_counter() - wall}
