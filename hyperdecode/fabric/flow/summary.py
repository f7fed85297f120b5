"""Metrics of a serving run (result.py): throughput and goodput, TTFT by stage, KV transfers, link utilisation,
hotspots and the ROFT symptoms Z.ai reports (leaf hotspots, uneven NICs), and a run's plots.

>>> link_util_p99(np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])).tolist()  # levels 0, 1/3, 2/3: P99 at the top edge
[1.0, 1.0]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..topology.cost import network_cost
from ..topology.graph import Topology
from .config import SimConfig
from .result import ServingRun
from .routing import link_class
from .workload import BLOCK_TOKENS

__all__ = ["summarize", "link_util_p99", "leaf_utilisation", "kv_nic_imbalance", "plot_run", "cost_of"]


def _pct(x: np.ndarray, qs=(50, 90, 99)) -> dict[str, float]:
    x = x[np.isfinite(x)]
    return {f"p{q}": float(np.percentile(x, q)) if len(x) else float("nan") for q in qs}


def cost_of(topo: Topology) -> dict[str, Any]:
    """{"cost_total": $} at the default prices, or None and the price that is missing (a summary never fails on
    a port speed the price table lacks: the simulation's figures are kept)."""
    try:
        return {"cost_total": network_cost(topo)["total"]}
    except ConfigError as e:
        return {"cost_total": None, "cost_missing": str(e)}


def _weighted_pct(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    if not len(values):
        return float("nan")
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, q / 100 * cum[-1])])


def link_util_p99(util_seconds: np.ndarray) -> np.ndarray:
    """Per link, the utilisation it stayed at or below 99 % of the time (the upper edge of its level bin)."""
    bins = util_seconds.shape[1]
    cum = np.cumsum(util_seconds, axis=1)
    total = np.maximum(cum[:, -1:], 1e-300)
    return ((cum / total < 0.99).sum(axis=1) + 1) / bins


def first_tier(topo: Topology) -> np.ndarray:
    """The switches GPUs plug into (ROFT leaves; every ZCube switch)."""
    return np.unique(topo.link_b[topo.is_gpu_link] - topo.num_gpus)


def leaf_utilisation(topo: Topology, p99: np.ndarray) -> dict[str, Any]:
    """Per first-tier switch, the highest P99 utilisation among its uplinks (its ports to other switches: where Z.ai
    saw single leaf uplinks saturate while the aggregate looked fine; all its ports if it has none): the max and
    mean over switches and their ratio, each switch's value, and the five busiest (the leaf hotspots of Fig. 3)."""
    directed = np.arange(2 * topo.num_links)
    cable = directed // 2
    sender = np.where(directed % 2 == 0, topo.link_a[cable], topo.link_b[cable]) - topo.num_gpus
    uplink = topo.link_port[cable] < 0
    leaves = first_tier(topo)
    per_leaf = np.array([p99[(sender == leaf) & uplink].max() if ((sender == leaf) & uplink).any()
                         else p99[sender == leaf].max() for leaf in leaves])
    busiest = np.argsort(per_leaf)[::-1][:5]
    mean = float(per_leaf.mean())
    return {"max": float(per_leaf.max()), "mean": mean, "imbalance": float(per_leaf.max() / mean) if mean else None,
            "busiest": [{"switch": int(leaves[k]), "util_p99": float(per_leaf[k])} for k in busiest],
            "per_leaf": [float(x) for x in per_leaf]}


def kv_nic_imbalance(run: ServingRun, window: float = 0.1) -> dict[str, float] | None:
    """Z.ai's Fig. 4 as a figure: in each `window` of time, each server's busiest NIC port against the mean of its
    ports in KV bytes sent (each transfer's bytes in the window it started), P50 and P99 over the (server,
    window) pairs that sent KV."""
    topo = run.topology
    flows = run.flows
    if not len(flows):
        return None
    ports = topo.gpus_per_server * topo.nic_ports
    sent: dict[tuple[int, int], np.ndarray] = {}
    for i in np.nonzero(flows[:, 4] == 0)[0]:
        per_qp = flows[i, 0] / flows[i, 6]
        key_window = int(flows[i, 1] // window)
        for path, share in run.flow_routes[i]:
            cable = path[0] // 2
            gpu = int(topo.link_a[cable])
            key = (gpu // topo.gpus_per_server, key_window)
            if key not in sent:
                sent[key] = np.zeros(ports)
            sent[key][gpu % topo.gpus_per_server * topo.nic_ports + int(topo.link_port[cable])] += per_qp * share
    if not sent:
        return None
    ratios = np.array([v.max() / v.mean() for v in sent.values()])
    return {"p50": float(np.percentile(ratios, 50)), "p99": float(np.percentile(ratios, 99)), "window_s": window}


def _leaf_imbalance(topo: Topology, link_bytes: np.ndarray) -> float | None:
    """Busiest over mean bytes delivered to GPUs by the first-tier switches (ROFT leaves, ZCube block and residue
    switches alike: every switch a GPU plugs into)."""
    g = np.nonzero(topo.is_gpu_link)[0]
    down = link_bytes[2 * g + 1]  # switch -> GPU
    per_switch = np.bincount(topo.link_b[g] - topo.num_gpus, weights=down, minlength=topo.num_switches)
    attached = np.unique(topo.link_b[g] - topo.num_gpus)
    values = per_switch[attached]
    return float(values.max() / values.mean()) if values.sum() > 0 else None


def _cross_rail(topo: Topology, pairs: np.ndarray) -> float:
    """The share of KV transfers whose two GPUs sit at different local ranks (on different rails in ROFT)."""
    pairs = pairs[(pairs >= 0).all(axis=1)]
    if not len(pairs):
        return float("nan")
    return float((pairs[:, 0] % topo.gpus_per_server != pairs[:, 1] % topo.gpus_per_server).mean())


def _steady(steps: np.ndarray, t0: float, t1: float) -> float:
    """Output tokens per second generated in [t0, t1], each decode stretch's tokens spread evenly over it."""
    if not t1 > t0 or not len(steps):
        return float("nan")
    step, k, batch, start = steps.T
    end = start + step * k
    inside = np.clip(np.minimum(end, t1) - np.maximum(start, t0), 0.0, None)
    return float((k * batch * inside / np.maximum(end - start, 1e-300)).sum() / (t1 - t0))


def summarize(run: ServingRun) -> dict[str, Any]:
    """The JSON summary: throughput and goodput, TTFT by stage, TPOT and decode-step time, KV transfers, link
    utilisation by class, hotspots, the ROFT symptoms (`symptoms`: per-leaf utilisation P99, NIC imbalance inside
    servers and bytes sent by local rank relative to their mean; the PFC replays add queue and pause figures), the
    prefix cache's share and the KV store's fetched bytes, where flows were throttled, failure effects, and cost.

    Throughput is the completed requests' output tokens over the time from the first arrival to the last
    completion, so a network that delays completions lowers it; goodput counts only the requests within both the
    TTFT and the TPOT SLO. `steady_tok_s` is the output tokens generated while requests were still arriving, over
    that window: what a long run's throughput tends to. `link_util` is averaged over the whole simulated time;
    `link_util_p99` is, per link, the utilisation it stays at or below 99 % of the time (max-min rates are piecewise
    constant, so this is the instantaneous level, which bounds a 100 µs window's average from above), then its max
    and mean per class. `pause_s_total` is 0 unless PFC replays ran (coupled.py)."""
    topo: Topology = run.topology
    return {"topology": topo.kind, "gpus": topo.num_gpus, "requests": len(run.workload), "trace": run.workload.source,
            **_serving_figures(run), **_link_figures(run),
            "rerouted_flows": run.rerouted_flows, "dropped_requests": run.dropped_requests,
            "sim_end_s": float(run.end_s), "sim_wall_s": run.sim_wall_s, "events": run.events,
            "recomputations": run.recomputations, **cost_of(topo), "config": _config(run.config)}


def _serving_figures(run: ServingRun) -> dict[str, Any]:
    """summarize's request-side figures: throughput, goodput, TTFT by stage, TPOT, decode steps, KV transfers, the
    prefix cache."""
    topo, work, cfg = run.topology, run.workload, run.config
    ttft, arrival = run.ttft_s, run.arrival_s
    ok = run.completed
    out_tokens = work.output_tokens
    tpot = np.where(out_tokens > 1, (run.finish_s - run.first_token_s) / np.maximum(out_tokens - 1, 1), 0.0)
    first_arrival = float(np.nanmin(arrival)) if np.isfinite(arrival).any() else 0.0
    last_arrival = float(np.nanmax(arrival)) if np.isfinite(arrival).any() else 0.0
    span = max(float(np.nanmax(run.finish_s[ok])) - first_arrival if ok.any() else 0.0, 1e-9)
    good = ok & (ttft <= cfg.ttft_slo_s) & (tpot <= cfg.tpot_slo_s)
    stages = {"queue": run.prefill_start_s - arrival, "prefill": run.prefill_end_s - run.prefill_start_s,
              "admission": run.admitted_s - run.prefill_end_s, "kv_transfer": run.kv_done_s - run.admitted_s,
              "first_step": run.first_token_s - run.kv_done_s}
    steps, flows = run.steps, run.flows
    kv = flows[flows[:, 4] == 0] if len(flows) else flows
    return {
        "requests_completed": int(ok.sum()), "requests_failed": int(run.failed.sum()),
        "throughput_tok_s": float(out_tokens[ok].sum() / span), "span_s": span,
        "steady_tok_s": _steady(steps, first_arrival, last_arrival),
        "goodput_tok_s": float(out_tokens[good].sum() / span), "goodput_req_s": float(good.sum() / span),
        "goodput_per_gpu": float(out_tokens[good].sum() / span / topo.num_gpus),
        **{f"ttft_{k}_s": v for k, v in _pct(ttft[ok]).items()},
        "ttft_stages": {k: {"p50": _pct(v[ok])["p50"], "p99": _pct(v[ok])["p99"]} for k, v in stages.items()},
        "tpot_p50_s": _pct(tpot[ok & (out_tokens > 1)])["p50"], "tpot_p99_s": _pct(tpot[ok & (out_tokens > 1)])["p99"],
        "decode_step_p99_s": _weighted_pct(steps[:, 0], steps[:, 1], 99) if len(steps) else float("nan"),
        "decode_batch_mean": float((steps[:, 2] * steps[:, 1]).sum() / steps[:, 1].sum()) if len(steps) else 0.0,
        "kv_fct_p50_s": _pct(stages["kv_transfer"][ok])["p50"], "kv_fct_p99_s": _pct(stages["kv_transfer"][ok])["p99"],
        "flow_fct_p99_s": _pct(kv[:, 2] - kv[:, 1])["p99"] if len(kv) else float("nan"),
        "kv_cross_rail_share": _cross_rail(topo, run.kv_pairs[ok]), "ep_bytes": run.ep_bytes,
        "pause_s_total": 0.0,
        "prefix_cached_share": float((run.prefix_hit_blocks * BLOCK_TOKENS)[ok].sum() / work.input_tokens[ok].sum())
        if ok.any() else 0.0, "kv_store_fetch_bytes": run.fetch_bytes,
        "ttft_slo_s": cfg.ttft_slo_s, "tpot_slo_s": cfg.tpot_slo_s,
    }


def _link_figures(run: ServingRun) -> dict[str, Any]:
    """summarize's network-side figures: utilisation by class (mean and P99), hotspots, the ROFT symptoms, bytes by
    local rank, leaf imbalance, where flows were throttled."""
    topo = run.topology
    capacity = np.repeat(topo.link_gbps * 1e9 / 8, 2)
    util = run.link_bytes / (capacity * max(run.end_s, 1e-9))
    classes = np.array([link_class(topo, i) for i in range(len(util))])
    kinds = [c for c in ("nic_up", "nic_down", "fabric") if (classes == c).any()]
    by_class = {c: {"max": float(util[classes == c].max()), "mean": float(util[classes == c].mean())} for c in kinds}
    p99 = link_util_p99(run.util_seconds)
    p99_by_class = {c: {"max": float(p99[classes == c].max()), "mean": float(p99[classes == c].mean())} for c in kinds}
    top = np.argsort(util)[::-1][:5]
    sent = run.link_bytes[0::2][topo.is_gpu_link]  # bytes each NIC port sent
    server = topo.link_a[topo.is_gpu_link] // topo.gpus_per_server
    imbalance = [float(v.max() / v.mean()) for v in (sent[server == s] for s in np.unique(server)) if v.sum() > 0]
    rank = topo.link_a[topo.is_gpu_link] % topo.gpus_per_server
    by_rank = np.bincount(rank, weights=sent, minlength=topo.gpus_per_server)
    rank_share = (by_rank / by_rank.mean()).tolist() if by_rank.sum() > 0 else None
    total_throttled = sum(run.throttled.values())
    return {
        "max_link_util": float(util.max()), "link_util": by_class, "link_util_p99": p99_by_class,
        "hotspots": [{"link": int(i // 2), "direction": "a->b" if i % 2 == 0 else "b->a", "class": str(classes[i]),
                      "util": float(util[i])} for i in top],
        "symptoms": {"leaf_util_p99": leaf_utilisation(topo, p99), "kv_nic_imbalance": kv_nic_imbalance(run),
                     "nic_imbalance_mean": float(np.mean(imbalance)) if imbalance else None,
                     "nic_imbalance_max": float(np.max(imbalance)) if imbalance else None,
                     "nic_bytes_by_rank": rank_share},
        "nic_bytes_by_rank": rank_share,
        "leaf_imbalance": _leaf_imbalance(topo, run.link_bytes),
        "throttled_share": {k: v / total_throttled for k, v in run.throttled.items()} if total_throttled else {},
        "throttled_flow_s": total_throttled,
    }


def _config(cfg: SimConfig) -> dict[str, Any]:
    out = {k: v for k, v in vars(cfg).items() if k not in ("pd_ratio", "failure")}
    return out | {"pd_ratio": f"{cfg.pd_ratio[0]}:{cfg.pd_ratio[1]}",
                  "failure": None if cfg.failure is None else list(cfg.failure)}


def plot_run(runs: dict[str, ServingRun], out: str | Path) -> Path:
    """TTFT and KV-transfer CDFs of one or more runs (by name), and their link-utilisation distributions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    for name, run in runs.items():
        topo = run.topology
        ok = ~run.failed & np.isfinite(run.ttft_s)
        for ax, values in ((axes[0], run.ttft_s[ok]), (axes[1], (run.kv_done_s - run.admitted_s)[ok] * 1e3)):
            v = np.sort(values)
            ax.plot(v, np.arange(1, len(v) + 1) / max(len(v), 1), label=name)
        util = run.link_bytes / (np.repeat(topo.link_gbps * 1e9 / 8, 2) * max(run.end_s, 1e-9))
        axes[2].plot(np.sort(util[util > 0])[::-1], label=name)
    axes[0].set(xlabel="TTFT (s)", ylabel="CDF", xscale="log", title="TTFT")
    axes[1].set(xlabel="KV transfer time (ms)", ylabel="CDF", xscale="log", title="KV transfer completion")
    axes[2].set(xlabel="directed links, busiest first", ylabel="mean utilisation", yscale="log",
                title="link utilisation")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    out = Path(out)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out
