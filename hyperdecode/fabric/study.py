"""The ZCube-vs-ROFT study: the same workload on each topology at each load, for each (NIC speed, traffic) variant;
where each topology's throughput stops following the load (its knee); the seed's claims checked against the runs;
a markdown report and its plots.

A claim counts as reproduced at a load when the model's change has the claim's sign and at least half its size
(the rule is fixed here, before any run, and is not tuned: `reproduced`).

>>> reproduced(+0.15, +0.09), reproduced(-0.406, -0.1), reproduced(+0.15, -0.02)
(True, False, False)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .simreport import link_util_p99, stages_markdown, study_markdown, summarize, with_pfc
from .simconfig import SimConfig
from .simulate import simulate
from .topology import Topology
from .workload import ModelProfile, Workload

__all__ = ["study", "slim", "knee", "reproduced", "claims", "nic_ablation", "plot_study", "write_report", "form_of",
           "CLAIMS"]

# the seed's claims for ZCube over ROFT (seed-article.txt; network.md)
CLAIMS = {"throughput": 0.15, "ttft_p99": -0.406, "switches": -1 / 3, "optics": -1 / 3}


def slim(r: dict[str, Any]) -> dict[str, Any]:
    """What the plots need from a run, without its per-flow logs (a long kv+ep run logs millions of flows)."""
    keep = ("topology", "failed", "ttft_s", "kv_done_s", "admitted_s", "link_bytes", "end_s")
    return {k: r[k] for k in keep} | {"link_util_p99": link_util_p99(r["util_seconds"])}


def study(topologies: dict[str, Topology], work: Workload, scales: list[float], model: ModelProfile | None = None,
          cfg: SimConfig | None = None, progress: Callable[[str], None] | None = None,
          pfc_window_s: float | None = None, dcqcn: bool = False) -> tuple[list[dict[str, Any]], dict[float, dict[str, dict]]]:
    """The same workload at each load level on each topology: one summary row per (topology, scale), and the slim
    runs by scale and name (for plots); with `pfc_window_s`, each run's hottest window replayed with PFC (and
    DCQCN with `dcqcn`)."""
    rows, runs = [], {}
    for scale in scales:
        for name, topo in topologies.items():
            if progress:
                progress(f"{name} x{scale:g}")
            r = simulate(topo, work.scaled(scale), model, cfg)
            summary = summarize(r)
            if pfc_window_s:
                summary = with_pfc(summary, r, pfc_window_s, dcqcn)
            runs.setdefault(scale, {})[name] = slim(r)
            rows.append({"name": name, "rate_scale": scale, **summary})
    return rows, runs


def knee(rows: list[dict[str, Any]]) -> float | None:
    """The first load at which one topology's throughput per unit of load falls below 90 % of its value at the
    lowest load (throughput stops following the offered load); None if it never does."""
    rows = sorted(rows, key=lambda r: r["rate_scale"])
    base = rows[0]["throughput_tok_s"] / rows[0]["rate_scale"]
    for r in rows[1:]:
        if r["throughput_tok_s"] / r["rate_scale"] < 0.9 * base:
            return r["rate_scale"]
    return None


def reproduced(claim: float, model: float) -> bool:
    """The model's change has the claim's sign and at least half its size."""
    return bool(np.sign(model) == np.sign(claim) and abs(model) >= abs(claim) / 2)


def claims(rows: list[dict[str, Any]], counts: dict[str, dict[str, int]], zcube: str = "zcube",
           roft: str = "roft") -> list[str]:
    """Markdown lines: for each variant, ZCube's throughput and TTFT P99 change over ROFT at every load, and the
    claim's verdict; then the switch and optics counts at equal GPUs and switch capacity."""
    out = []
    for variant in sorted({r["variant"] for r in rows}):
        mine = [r for r in rows if r["variant"] == variant]
        by = {(r["name"], r["rate_scale"]): r for r in mine}
        loads = sorted({s for _, s in by if (zcube, s) in by and (roft, s) in by})
        if not loads:
            continue
        thr = {s: by[zcube, s]["throughput_tok_s"] / by[roft, s]["throughput_tok_s"] - 1 for s in loads}
        ttft = {s: by[zcube, s]["ttft_p99_s"] / by[roft, s]["ttft_p99_s"] - 1 for s in loads}
        out.append(f"- **{variant}**, {zcube} over {roft}: throughput "
                   + ", ".join(f"x{s:g} {100 * thr[s]:+.1f} %" for s in loads)
                   + "; TTFT P99 " + ", ".join(f"x{s:g} {100 * ttft[s]:+.1f} %" for s in loads) + ".")
        for label, key, values in (("+15 % throughput", "throughput", thr), ("-40.6 % TTFT P99", "ttft_p99", ttft)):
            hits = [s for s in loads if reproduced(CLAIMS[key], values[s])]
            verdict = ("reproduced at " + ", ".join(f"x{s:g}" for s in hits)) if hits else "not reproduced at any load"
            out.append(f"  - {label}: {verdict}.")
    z, f = counts[zcube], counts[roft]
    for key, word in (("switches", "switches"), ("optics", "optics")):
        change = z[key] / f[key] - 1
        verdict = "reproduced" if reproduced(CLAIMS[key], change) else "not reproduced"
        out.append(f"- **-1/3 {word}**: {z[key]:,} vs {f[key]:,} ({100 * change:+.1f} %): {verdict}.")
    return out


def nic_ablation(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: for each traffic kind and topology, throughput and TTFT P99 at each faster NIC over the
    slowest one, at every load, and the loads where both move in Z.ai's direction (throughput up, TTFT down)."""
    speeds = sorted({r["nic_gbps"] for r in rows})
    if len(speeds) < 2:
        return []
    by = {(r["variant"].split(" ", 1)[1], r["name"], r["nic_gbps"], r["rate_scale"]): r for r in rows}
    out = ["Z.ai's one controlled result: 100 -> 200 Gb/s NICs on a 512-GPU cluster gave +19 % throughput and -22 % "
           "TTFT (network.md)."]
    low = speeds[0]
    for traffic, name in dict.fromkeys((k[0], k[1]) for k in by):
        for fast in speeds[1:]:
            loads = sorted(k[3] for k in by if k[:3] == (traffic, name, fast) and (traffic, name, low, k[3]) in by)
            if not loads:
                continue
            pairs = {s: (by[traffic, name, fast, s], by[traffic, name, low, s]) for s in loads}
            thr = {s: f["throughput_tok_s"] / b["throughput_tok_s"] - 1 for s, (f, b) in pairs.items()}
            ttft = {s: f["ttft_p99_s"] / b["ttft_p99_s"] - 1 for s, (f, b) in pairs.items()}
            both = [f"x{s:g}" for s in loads if thr[s] > 0 and ttft[s] < 0]
            out.append(f"- {traffic}, {name}, {low}G -> {fast}G: throughput "
                       + ", ".join(f"x{s:g} {100 * thr[s]:+.1f} %" for s in loads) + "; TTFT P99 "
                       + ", ".join(f"x{s:g} {100 * ttft[s]:+.1f} %" for s in loads) + "; Z.ai's direction at "
                       + (", ".join(both) if both else "no load") + ".")
    return out


def plot_study(rows: list[dict[str, Any]], runs: dict[str, dict[float, dict[str, dict]]], out: Path) -> list[Path]:
    """ttft_vs_load.png (TTFT P99 and throughput, steady throughput dashed, against load, per variant and topology),
    util_cdf.png (the CDF over fabric links of each link's P99 utilisation, at each variant's highest load) and, when
    PFC replays ran,
    pause_by_tier.png (pause seconds per switch tier in each run's hottest window)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    variants = sorted({r["variant"] for r in rows})
    names = list(dict.fromkeys(r["name"] for r in rows))
    written = []
    fig, axes = plt.subplots(2, len(variants), figsize=(5.5 * len(variants), 8), dpi=100, squeeze=False)
    for j, v in enumerate(variants):
        for name in names:
            mine = sorted((r for r in rows if r["variant"] == v and r["name"] == name), key=lambda r: r["rate_scale"])
            loads = [r["rate_scale"] for r in mine]
            axes[0, j].plot(loads, [r["ttft_p99_s"] for r in mine], marker="o", label=name)
            line = axes[1, j].plot(loads, [r["throughput_tok_s"] for r in mine], marker="o", label=name)[0]
            axes[1, j].plot(loads, [r["steady_tok_s"] for r in mine], ls="--", color=line.get_color())
        axes[0, j].set(title=v, xlabel="load (x trace rate)", ylabel="TTFT P99 (s)", yscale="log")
        axes[1, j].set(xlabel="load (x trace rate)", ylabel="throughput (tok/s; dashed: steady)")
    written.append(_save(fig, axes, out / "ttft_vs_load.png"))
    fig, axes = plt.subplots(1, len(variants), figsize=(5.5 * len(variants), 4), dpi=100, squeeze=False)
    for j, v in enumerate(variants):
        top = max(runs[v])
        for name, r in runs[v][top].items():
            topo = r["topology"]
            fabric = np.repeat(~topo.is_gpu_link, 2)
            u = np.sort(r["link_util_p99"][fabric])
            axes[0, j].plot(u, np.arange(1, len(u) + 1) / max(len(u), 1), label=name)
        axes[0, j].set(title=f"{v}, x{top:g}", xlabel="link's P99 utilisation (fabric links)", ylabel="CDF")
    written.append(_save(fig, axes, out / "util_cdf.png"))
    paused = [r for r in rows if "pfc_window" in r]
    if paused:
        tiers = sorted({t for r in paused for t in r["pfc_window"]["pause_s_by_tier"]})
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(paused)), 4), dpi=100)
        labels = [f"{r['variant']}\n{r['name']} x{r['rate_scale']:g}" for r in paused]
        bottom = np.zeros(len(paused))
        for t in tiers:
            ms = np.array([1e3 * r["pfc_window"]["pause_s_by_tier"].get(t, 0.0) for r in paused])
            ax.bar(range(len(paused)), ms, bottom=bottom, label=f"tier {t}")
            bottom += ms
        ax.set_xticks(range(len(paused)), labels, rotation=90, fontsize=6)
        ax.set(ylabel="pause time in the hottest window (ms)", title="PFC pause by switch tier")
        written.append(_save(fig, np.array([[ax]]), out / "pause_by_tier.png"))
    return written


def form_of(t: Topology) -> str:
    """Which form a study topology is, in words."""
    if t.kind == "zcube":
        p = t.params
        form = "paper form, one path per port pairing" if p["links_per_pair"] == 1 else \
            f"blog form, {p['links_per_pair']} parallel links per switch pair (as many equal paths)"
        return (f"ZCube, {p['gpus_per_switch']} GPUs per switch, {p['switches_per_group']} switches per group, "
                f"{t.num_switches} switches; {form}")
    return f"{t.kind.upper()}, {t.params['tiers']} tiers, {t.num_switches} switches"


def write_report(out: Path, header: str, rows: list[dict[str, Any]], runs: dict[str, dict[float, dict[str, dict]]],
                 counts: dict[str, dict[str, int]], knees: list[str]) -> str:
    """study.md (the header, the claims' verdicts, the knees, the table of runs and the plots) and study.json (the
    rows) in `out`; returns the report's text without the plots."""
    verdicts = ("## The seed's claims\n\nA claim is reproduced at a load when the model's change has its sign and at "
                "least half its size.\n\n" + "\n".join(claims(rows, counts)) + "\n\nKnees (throughput per unit "
                "of load below 90 % of the lowest load's): " + "; ".join(knees) + ".\n\n")
    ablation = nic_ablation(rows)
    if ablation:
        verdicts += "## NIC ablation\n\n" + "\n".join(ablation) + "\n\n"
    plots = plot_study(rows, runs, out)
    figures = "".join(f"![{p.stem}]({p.name})\n\n" for p in plots)
    loads = sorted({r["rate_scale"] for r in rows})
    middle = loads[(len(loads) - 1) // 2]
    table = (study_markdown(rows) + f"\n## TTFT by stage at x{middle:g}\n\n" + stages_markdown(rows, middle))
    (out / "study.md").write_text(header + verdicts + "## Runs\n\n" + table + "\n" + figures)
    (out / "study.json").write_text(json.dumps(rows, indent=2, default=str))
    return header + verdicts + table


def _save(fig: Any, axes: np.ndarray, path: Path) -> Path:
    import matplotlib.pyplot as plt
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path
