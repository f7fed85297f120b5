"""The study's plots: the NIC ablation (throughput and TTFT P99 against NIC speed per topology), each run's TTFT
CDF, the fabric links' P99 utilisation CDF, the leaves' P99 utilisation (the leaf hotspots), and PFC pause time per
switch tier when windows were replayed.

>>> sorted(PLOTS)
['leaf_hotspots', 'nic_ablation', 'pause_by_tier', 'ttft_cdf', 'util_cdf']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_study", "PLOTS"]

PLOTS = ("nic_ablation", "ttft_cdf", "util_cdf", "leaf_hotspots", "pause_by_tier")


def _baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs at the fastest NIC, first traffic and first load."""
    fastest = max(r["nic_gbps"] for r in rows)
    first = rows[0]
    return [r for r in rows if r["nic_gbps"] == fastest and r["traffic"] == first["traffic"]
            and r["rate_scale"] == first["rate_scale"]]


def plot_study(rows: list[dict[str, Any]], out: Path, metric: str = "steady_tok_s") -> list[Path]:
    """The study's plots in `out`: the NIC ablation (`metric` and TTFT P99 against NIC speed), the baseline's TTFT and
    fabric-link CDFs and leaf hotspots, PFC pause by switch tier when replays ran; the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["name"] for r in rows))
    first = rows[0]
    same = [r for r in rows if r["traffic"] == first["traffic"] and r["rate_scale"] == first["rate_scale"]]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for name in names:
        mine = sorted((r for r in same if r["name"] == name), key=lambda r: r["nic_gbps"])
        nics = [r["nic_gbps"] for r in mine]
        axes[0].plot(nics, [r[metric] for r in mine], marker="o", label=name)
        axes[1].plot(nics, [r["ttft_p99_s"] for r in mine], marker="o", label=name)
    axes[0].set(xlabel="NIC Gb/s per GPU", ylabel=f"throughput ({metric}, tok/s)", xscale="log", title="NIC ablation")
    axes[1].set(xlabel="NIC Gb/s per GPU", ylabel="TTFT P99 (s)", xscale="log", yscale="log", title="NIC ablation")
    written.append(_save(fig, axes, out / "nic_ablation.png"))
    base = _baseline(rows)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4), dpi=100)
    for r in base:
        ttft = np.sort(r["plot"]["ttft_s"])
        axes[0].plot(ttft, np.arange(1, len(ttft) + 1) / max(len(ttft), 1), label=r["name"])
        util = np.sort(r["plot"]["fabric_util_p99"])
        axes[1].plot(util, np.arange(1, len(util) + 1) / max(len(util), 1), label=r["name"])
        leaves = np.sort(r["symptoms"]["leaf_util_p99"]["per_leaf"])[::-1]
        axes[2].plot(np.arange(1, len(leaves) + 1), leaves, marker=".", label=r["name"])
    axes[0].set(xlabel="TTFT (s)", ylabel="CDF", xscale="log", title="TTFT")
    axes[1].set(xlabel="a fabric link's P99 utilisation", ylabel="CDF", title="fabric links")
    axes[2].set(xlabel="first-tier switches, busiest first", ylabel="busiest port's P99 utilisation",
                title="leaf hotspots")
    for ax, name in zip(axes, ("ttft_cdf", "util_cdf", "leaf_hotspots")):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(out / "baseline.png", bbox_inches="tight")
    plt.close(fig)
    written.append(out / "baseline.png")
    paused = [r for r in rows if r.get("pfc_windows")]
    if paused:
        tiers = sorted({t for r in paused for w in r["pfc_windows"] for t in w["pause_s_by_tier"]})
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(paused)), 4), dpi=100)
        labels = [f"{r['variant']}\n{r['name']}" for r in paused]
        bottom = np.zeros(len(paused))
        for t in tiers:
            ms = np.array([1e3 * sum(w["pause_s_by_tier"].get(t, 0.0) for w in r["pfc_windows"]) for r in paused])
            ax.bar(range(len(paused)), ms, bottom=bottom, label=f"tier {t}")
            bottom += ms
        ax.set_xticks(range(len(paused)), labels, rotation=90, fontsize=6)
        ax.set(ylabel="pause time in the replayed windows (ms)", title="PFC pause by switch tier")
        written.append(_save(fig, np.array([ax]), out / "pause_by_tier.png"))
    return written


def _save(fig: Any, axes: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt
    for ax in np.ravel(axes):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
