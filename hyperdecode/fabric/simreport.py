"""Metrics of a simulation run, the study's table of them (study.py runs it), and a run's plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .cost import network_cost
from .routing import link_class
from .simconfig import SimConfig
from .topology import Topology
from .workload import BLOCK_TOKENS, Workload

__all__ = ["summarize", "with_pfc", "link_util_p99", "plot_run", "study_markdown", "stages_markdown"]


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


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary: throughput and goodput, TTFT by stage, TPOT and decode-step time, KV transfers, link
    utilisation by class, hotspots, per-NIC imbalance inside servers (and bytes sent by local rank, relative to
    their mean), the share of prompt tokens the prefix cache served and the KV store's fetched bytes, leaf
    imbalance, where flows were throttled, failure effects, and cost.

    Throughput is the completed requests' output tokens over the time from the first arrival to the last
    completion, so a network that delays completions lowers it; goodput counts only the requests within both the
    TTFT and the TPOT SLO. `steady_tok_s` is the output tokens generated while requests were still arriving, over
    that window: what a long run's throughput tends to (a short run's throughput also counts the drain after the
    last arrival, which its longest outputs set). `link_util` is averaged over the whole simulated time;
    `link_util_p99` is, per link, the utilisation it stays at or below 99 % of the time (max-min rates are piecewise
    constant, so this is the instantaneous level, which bounds a 100 µs window's average from above), then its max
    and mean per class.
    `pause_s_total` is 0: max-min flows have no PFC (pfc.py models it)."""
    topo: Topology = r["topology"]
    work: Workload = r["workload"]
    cfg: SimConfig = r["config"]
    ttft = r["ttft_s"]
    ok = ~r["failed"] & np.isfinite(r["finish_s"])
    out_tokens = work.output_tokens
    tpot = np.where(out_tokens > 1, (r["finish_s"] - r["first_token_s"]) / np.maximum(out_tokens - 1, 1), 0.0)
    span = max(float(np.nanmax(r["finish_s"][ok])) - float(work.arrival_s[0]) if ok.any() else 0.0, 1e-9)
    good = ok & (ttft <= cfg.ttft_slo_s) & (tpot <= cfg.tpot_slo_s)
    stages = {"queue": r["prefill_start_s"] - work.arrival_s, "prefill": r["prefill_end_s"] - r["prefill_start_s"],
              "admission": r["admitted_s"] - r["prefill_end_s"], "kv_transfer": r["kv_done_s"] - r["admitted_s"],
              "first_step": r["first_token_s"] - r["kv_done_s"]}
    steps = r["steps"]
    end = max(r["end_s"], 1e-9)
    util = r["link_bytes"] / (np.repeat(topo.link_gbps * 1e9 / 8, 2) * end)
    classes = np.array([link_class(topo, i) for i in range(len(util))])
    by_class = {c: {"max": float(util[classes == c].max()), "mean": float(util[classes == c].mean())}
                for c in ("nic_up", "nic_down", "fabric") if (classes == c).any()}
    p99 = link_util_p99(r["util_seconds"])
    p99_by_class = {c: {"max": float(p99[classes == c].max()), "mean": float(p99[classes == c].mean())}
                    for c in ("nic_up", "nic_down", "fabric") if (classes == c).any()}
    top = np.argsort(util)[::-1][:5]
    sent = r["link_bytes"][0::2][topo.is_gpu_link]  # bytes each NIC port sent
    server = topo.link_a[topo.is_gpu_link] // topo.gpus_per_server
    per_server = [sent[server == s] for s in np.unique(server)]
    imbalance = [float(v.max() / v.mean()) for v in per_server if v.sum() > 0]
    rank = topo.link_a[topo.is_gpu_link] % topo.gpus_per_server
    by_rank = np.bincount(rank, weights=sent, minlength=topo.gpus_per_server)
    leaf = _leaf_imbalance(topo, r["link_bytes"])
    throttled = r["throttled"]
    total_throttled = sum(throttled.values())
    flows = r["flows"]
    kv_fct = stages["kv_transfer"]
    out = {
        "topology": topo.kind, "gpus": topo.num_gpus, "requests": len(work), "trace": work.source,
        "requests_completed": int(ok.sum()), "requests_failed": int(r["failed"].sum()),
        "throughput_tok_s": float(out_tokens[ok].sum() / span), "span_s": span,
        "steady_tok_s": _steady(steps, float(work.arrival_s[0]), float(work.arrival_s[-1])),
        "goodput_tok_s": float(out_tokens[good].sum() / span), "goodput_req_s": float(good.sum() / span),
        "goodput_per_gpu": float(out_tokens[good].sum() / span / topo.num_gpus),
        "ttft_p50_s": _pct(ttft[ok])["p50"], "ttft_p90_s": _pct(ttft[ok])["p90"], "ttft_p99_s": _pct(ttft[ok])["p99"],
        "ttft_stages": {k: {"p50": _pct(v[ok])["p50"], "p99": _pct(v[ok])["p99"]} for k, v in stages.items()},
        "tpot_p50_s": _pct(tpot[ok & (out_tokens > 1)])["p50"], "tpot_p99_s": _pct(tpot[ok & (out_tokens > 1)])["p99"],
        "decode_step_p99_s": _weighted_pct(steps[:, 0], steps[:, 1], 99) if len(steps) else float("nan"),
        "decode_batch_mean": float((steps[:, 2] * steps[:, 1]).sum() / steps[:, 1].sum()) if len(steps) else 0.0,
        "kv_fct_p50_s": _pct(kv_fct[ok])["p50"], "kv_fct_p99_s": _pct(kv_fct[ok])["p99"],
        "flow_fct_p99_s": _pct(flows[:, 2] - flows[:, 1])["p99"] if len(flows) else float("nan"),
        "kv_cross_rail_share": _cross_rail(topo, r["kv_pairs"][ok]), "ep_bytes": r["ep_bytes"], "pause_s_total": 0.0,
        "prefix_cached_share": float((r["prefix_hit_blocks"] * BLOCK_TOKENS)[ok].sum() / work.input_tokens[ok].sum())
        if ok.any() else 0.0, "kv_store_fetch_bytes": r["fetch_bytes"],
        "ttft_slo_s": cfg.ttft_slo_s, "tpot_slo_s": cfg.tpot_slo_s,
        "max_link_util": float(util.max()), "link_util": by_class, "link_util_p99": p99_by_class,
        "hotspots": [{"link": int(i // 2), "direction": "a->b" if i % 2 == 0 else "b->a", "class": str(classes[i]),
                      "util": float(util[i])} for i in top],
        "nic_imbalance_mean": float(np.mean(imbalance)) if imbalance else None,
        "nic_imbalance_max": float(np.max(imbalance)) if imbalance else None,
        "nic_bytes_by_rank": (by_rank / by_rank.mean()).tolist() if by_rank.sum() > 0 else None,
        "leaf_imbalance": leaf,
        "throttled_share": {k: v / total_throttled for k, v in throttled.items()} if total_throttled else {},
        "throttled_flow_s": total_throttled, "rerouted_flows": r["rerouted_flows"],
        "dropped_requests": r["dropped_requests"], "sim_end_s": float(r["end_s"]), "sim_wall_s": r["sim_wall_s"],
        **cost_of(topo),
        "config": {"pd_ratio": f"{cfg.pd_ratio[0]}:{cfg.pd_ratio[1]}", "placement": cfg.placement,
                   "kv_split": cfg.kv_split, "nic_slices": cfg.nic_slices, "traffic": cfg.traffic,
                   "classes": cfg.classes, "prefix_cache": cfg.prefix_cache,
                   "port_policy": cfg.port_policy, "qps": cfg.qps, "gpus_per_instance": cfg.gpus_per_instance,
                   "decode_batch": cfg.decode_batch, "prefill_kv_gb": cfg.prefill_kv_gb,
                   "decode_kv_gb": cfg.decode_kv_gb,
                   "failure": None if cfg.failure is None else list(cfg.failure)},
    }
    return out


def with_pfc(summary: dict[str, Any], r: dict[str, Any], window_s: float, dcqcn: bool = False) -> dict[str, Any]:
    """The summary plus its hottest `window_s` seconds replayed with PFC (hotwindow.py; DCQCN at the senders with
    `dcqcn`): `pfc_window`, and `pause_s_total` from that replay."""
    from .hotwindow import hot_window, replay_window
    replay = replay_window(r, hot_window(r, window_s), dcqcn=dcqcn)
    return summary | {"pfc_window": replay, "pause_s_total": replay["pause_s_total"]}


def study_markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| variant | load | topology | TTFT p50 s | TTFT p99 s | KV FCT p99 ms | step p99 ms | throughput tok/s | "
            "steady tok/s | goodput tok/s/GPU | max link util | throttled (nic_down/fabric/nic_up) | PFC pause s | "
            "cost $M |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        t = r["throttled_share"]
        cost = "-" if r["cost_total"] is None else f"{r['cost_total'] / 1e6:.2f}"
        cells = [r.get("variant", "-"), f"x{r['rate_scale']:g}", r["name"], f"{r['ttft_p50_s']:.3f}",
                 f"{r['ttft_p99_s']:.3f}", f"{1e3 * r['kv_fct_p99_s']:.1f}", f"{1e3 * r['decode_step_p99_s']:.1f}",
                 f"{r['throughput_tok_s']:,.0f}", f"{r['steady_tok_s']:,.0f}", f"{r['goodput_per_gpu']:.1f}",
                 f"{r['max_link_util']:.3f}",
                 f"{t.get('nic_down', 0):.2f}/{t.get('fabric', 0):.2f}/{t.get('nic_up', 0):.2f}",
                 f"{r['pause_s_total']:.4f}", cost]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def stages_markdown(rows: list[dict[str, Any]], load: float) -> str:
    """TTFT by stage (P50 / P99, ms) of each variant and topology at one load: where the time to first token goes."""
    stages = ("queue", "prefill", "admission", "kv_transfer", "first_step")
    head = ("| variant | topology | " + " | ".join(f"{k} p50 / p99 ms" for k in stages) + " |\n"
            + "|---|---|" + "---|" * len(stages) + "\n")
    lines = []
    for r in rows:
        if r["rate_scale"] == load:
            cells = [f"{1e3 * r['ttft_stages'][k]['p50']:.1f} / {1e3 * r['ttft_stages'][k]['p99']:.1f}" for k in stages]
            lines.append(f"| {r.get('variant', '-')} | {r['name']} | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot_run(results: dict[str, dict[str, Any]], out: str | Path) -> Path:
    """TTFT and KV-transfer CDFs of one or more runs (by name), and their link-utilisation distributions."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), dpi=100)
    for name, r in results.items():
        topo = r["topology"]
        ok = ~r["failed"] & np.isfinite(r["ttft_s"])
        for ax, values in ((axes[0], r["ttft_s"][ok]), (axes[1], (r["kv_done_s"] - r["admitted_s"])[ok] * 1e3)):
            v = np.sort(values)
            ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=name)
        util = r["link_bytes"] / (np.repeat(topo.link_gbps * 1e9 / 8, 2) * max(r["end_s"], 1e-9))
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
