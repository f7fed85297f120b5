"""How ZCube and ROFT compare in a study's rows: the NIC ablation against Z.ai's (the calibration's check), each
claim's verdict over the loads, the knee of a load sweep, and a topology's form in words.

A claim counts as reproduced when the model's change has the claim's sign and at least half its size (the rule is
fixed before any run and is not tuned: sensitivity.reproduced).

>>> ablation_check(0.19, -0.22), ablation_check(0.05, -0.22)
(True, False)
"""
from __future__ import annotations

from typing import Any

from .sensitivity import CLAIMS, reproduced
from .topology.graph import Topology

__all__ = ["ZAI_ABLATION", "TOLERANCE", "ablation_check", "knee", "claims", "nic_ablation", "form_of"]

ZAI_ABLATION = {"throughput": 0.19, "ttft_p99": -0.22}  # 100 -> 200 Gb/s NICs (network.md)
TOLERANCE = 0.05  # the calibration's window: ±5 points around each


def ablation_check(throughput: float, ttft_p99: float) -> bool:
    """Both changes within ±5 points of Z.ai's +19 % / −22 %."""
    return (abs(throughput - ZAI_ABLATION["throughput"]) <= TOLERANCE + 1e-12
            and abs(ttft_p99 - ZAI_ABLATION["ttft_p99"]) <= TOLERANCE + 1e-12)


def knee(rows: list[dict[str, Any]]) -> float | None:
    """The first load at which one topology's throughput per unit of load falls below 90 % of its value at the
    lowest load (throughput stops following the offered load); None if it never does."""
    rows = sorted(rows, key=lambda r: r["rate_scale"])
    base = rows[0]["throughput_tok_s"] / rows[0]["rate_scale"]
    for r in rows[1:]:
        if r["throughput_tok_s"] / r["rate_scale"] < 0.9 * base:
            return r["rate_scale"]
    return None


def claims(rows: list[dict[str, Any]], counts: dict[str, dict[str, int]], zcube: str = "zcube",
           roft: str = "roft", metric: str = "throughput_tok_s") -> list[str]:
    """Markdown lines: for each variant, ZCube's throughput (`metric`) and TTFT P99 change over ROFT at every load,
    and the claim's verdict; then the switch and optics counts at equal GPUs and switch capacity."""
    out = []
    for variant in sorted({r["variant"] for r in rows}):
        by = {(r["name"], r["rate_scale"]): r for r in rows if r["variant"] == variant}
        loads = sorted({s for _, s in by if (zcube, s) in by and (roft, s) in by})
        if not loads:
            continue
        thr = {s: by[zcube, s][metric] / by[roft, s][metric] - 1 for s in loads}
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


def nic_ablation(rows: list[dict[str, Any]], metric: str = "throughput_tok_s") -> list[str]:
    """Markdown lines: for each traffic kind and topology, throughput (`metric`) and TTFT P99 at each faster NIC over
    the slowest one, at every load, and the loads where both move in Z.ai's direction (throughput up, TTFT down)."""
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
            thr = {s: f[metric] / b[metric] - 1 for s, (f, b) in pairs.items()}
            ttft = {s: f["ttft_p99_s"] / b["ttft_p99_s"] - 1 for s, (f, b) in pairs.items()}
            both = [f"x{s:g}" for s in loads if thr[s] > 0 and ttft[s] < 0]
            out.append(f"- {traffic}, {name}, {low}G -> {fast}G: throughput "
                       + ", ".join(f"x{s:g} {100 * thr[s]:+.1f} %" for s in loads) + "; TTFT P99 "
                       + ", ".join(f"x{s:g} {100 * ttft[s]:+.1f} %" for s in loads) + "; Z.ai's direction at "
                       + (", ".join(both) if both else "no load") + ".")
    return out


def form_of(t: Topology) -> str:
    """Which form a study topology is, in words."""
    if t.kind == "zcube":
        p = t.params
        form = "paper form, one path per port pairing" if p["links_per_pair"] == 1 else \
            f"blog form, {p['links_per_pair']} parallel links per switch pair (as many equal paths)"
        return (f"ZCube, {p['gpus_per_switch']} GPUs per switch, {p['switches_per_group']} switches per group, "
                f"{t.num_switches} switches; {form}")
    return f"{t.kind.upper()}, {t.params['tiers']} tiers, {t.num_switches} switches"
