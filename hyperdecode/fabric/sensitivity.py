"""The sensitivity table: ZCube against ROFT at the calibrated point with one modelling choice changed per row —
port splitting, placement, hash model, ROFT tiers, optics counting, NIC speed — and each claim's verdict per row,
with the reason where a verdict differs from the baseline row's.

A row's runs are the baseline's except on the side its change touches (a ROFT-only change reuses the baseline's
ZCube run). The reason names the change's mechanism and the measured figure that moved most between the row and the
baseline (the TTFT stages, the KV transfer time, the fabric's and the leaves' utilisation, NIC imbalance).

>>> [v.key for v in VARIANTS][:3]
['S0', 'S1', 'S2']
>>> verdicts({"throughput": 0.2, "ttft_p99": -0.1, "switches": -0.4, "optics": 0.0})
{'throughput': True, 'ttft_p99': False, 'switches': True, 'optics': False}
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Variant", "VARIANTS", "verdicts", "variant_runs", "sensitivity_rows", "sensitivity_markdown", "CLAIMS",
           "reproduced"]

# the seed's claims for ZCube over ROFT (seed-article.txt; network.md)
CLAIMS = {"throughput": 0.15, "ttft_p99": -0.406, "switches": -1 / 3, "optics": -1 / 3}
CLAIM_NAMES = {"throughput": "+15 % throughput", "ttft_p99": "−40.6 % TTFT P99", "switches": "−1/3 switches",
               "optics": "−1/3 optics"}


def reproduced(claim: float, model: float) -> bool:
    """The model's change has the claim's sign and at least half its size.

    >>> reproduced(+0.15, +0.09), reproduced(-0.406, -0.1), reproduced(+0.15, -0.02)
    (True, False, False)
    """
    return bool(np.sign(model) == np.sign(claim) and abs(model) >= abs(claim) / 2)


def verdicts(changes: dict[str, float]) -> dict[str, bool]:
    """Each claim's verdict for ZCube's changes over ROFT (`reproduced`)."""
    return {claim: reproduced(CLAIMS[claim], changes[claim]) for claim in CLAIMS}


@dataclass
class Variant:
    """One sensitivity row: the modelling choice it changes, on which side, and why it could matter."""
    key: str
    axis: str
    label: str
    zcube: dict = field(default_factory=dict)  # SimConfig fields changed on the ZCube side
    roft: dict = field(default_factory=dict)  # and on the ROFT side
    nic_gbps: int | None = None  # both sides at this NIC speed
    roft_name: str = "roft"  # "roft-3-tier": three tiers
    optics: tuple[str, int] = ("per_link", 4)  # (convention, servers copper reaches)
    mechanism: str = ""


VARIANTS = [
    Variant("S0", "baseline", "calibrated point", mechanism="the calibrated operating point"),
    Variant("S1", "port splitting", "ZCube QPs alternate per sender (not split per transfer)",
            zcube={"port_policy": "balanced"},
            mechanism="a transfer's QPs no longer use both NIC ports at both ends, so receivers' ports load unevenly"),
    Variant("S2", "port splitting", "ZCube QPs pinned to one port pairing", zcube={"port_policy": "fixed"},
            mechanism="every flow on one half-speed port: half the NIC idle"),
    Variant("S3", "placement", "ZCube instances packed (one block each)", zcube={"layout": "packed"},
            mechanism="an instance's rail peers share their block switch, so its all-to-all uses port A only"),
    Variant("S4", "placement", "ROFT instances spread over scalable units", roft={"layout": "spread"},
            mechanism="rail peers in different scalable units: the all-to-all crosses the spine"),
    Variant("S5", "hash model", "polarized ECMP (one hash at every tier)", zcube={"hashing": "polarized"},
            roft={"hashing": "polarized"}, mechanism="correlated choices at successive tiers concentrate flows"),
    Variant("S6", "hash model", "low-entropy RoCE source ports", zcube={"hashing": "low-entropy"},
            roft={"hashing": "low-entropy"}, mechanism="every QP of a GPU pair hashes alike: a transfer on one path"),
    Variant("S7", "hash model", "packet spraying / DLB (optimistic bound)", zcube={"hashing": "spray"},
            roft={"hashing": "spray"}, mechanism="bytes split evenly over every equal path: no collisions"),
    Variant("S8", "ROFT tiers", "3-tier ROFT", roft_name="roft-3-tier",
            mechanism="more switches and a longer path for cross-rail traffic"),
    Variant("S9", "optics counting", "optics: 2 per fibre link, no copper", optics=("per_link", 0),
            mechanism="block links beyond DAC reach need optics"),
    Variant("S10", "optics counting", "optics: switch-side modules with breakout", optics=("switch_modules", 4),
            mechanism="a module serves several ports; NIC ends not counted"),
    Variant("S11", "optics counting", "optics: switch-side modules, no copper", optics=("switch_modules", 0),
            mechanism="every switch port on fibre, counted as modules"),
    Variant("S12", "NIC speed", "NICs at 200 Gb/s", nic_gbps=200, mechanism="half the bandwidth per GPU"),
    Variant("S13", "NIC speed", "NICs at 100 Gb/s", nic_gbps=100, mechanism="a quarter of the bandwidth per GPU"),
]


def variant_runs(v: Variant, nic_gbps: int) -> tuple[tuple, tuple]:
    """The (topology name, NIC, sorted config changes) of a row's ZCube and ROFT runs: rows that agree share runs."""
    nic = v.nic_gbps or nic_gbps
    return ("zcube", nic, tuple(sorted(v.zcube.items()))), (v.roft_name, nic, tuple(sorted(v.roft.items())))


EXPLAIN = {"prefill stage P50": lambda s: s["ttft_stages"]["prefill"]["p50"],
           "queue P99": lambda s: s["ttft_stages"]["queue"]["p99"],
           "KV transfer P99": lambda s: s["kv_fct_p99_s"],
           "fabric link P99 utilisation (max)": lambda s: s["link_util_p99"].get("fabric", {}).get("max", 0.0),
           "leaf utilisation imbalance": lambda s: s["symptoms"]["leaf_util_p99"]["imbalance"] or 0.0,
           "NIC imbalance in a server": lambda s: s["symptoms"]["nic_imbalance_mean"] or 0.0}


def _moved_most(base: dict, row: dict) -> str:
    best, text = 0.0, ""
    for name, get in EXPLAIN.items():
        a, b = get(base), get(row)
        change = abs(b - a) / max(abs(a), 1e-12)
        if change > best:
            best, text = change, f"{name} {a:.3g} → {b:.3g}"
    return text


def sensitivity_rows(runs: dict[tuple, dict], counts: dict[tuple, dict], nic_gbps: int,
                     metric: str = "steady_tok_s") -> list[dict[str, Any]]:
    """One row per variant: ZCube's change over ROFT in throughput (`metric`), TTFT P99, switches and optics, the
    verdicts and, where a verdict differs from the baseline's, why. `runs` maps variant_runs keys to summaries;
    `counts` maps (topology name, convention, reach) to {"switches", "optics"}."""
    rows, base = [], None
    for v in VARIANTS:
        zkey, rkey = variant_runs(v, nic_gbps)
        z, r = runs[zkey], runs[rkey]
        convention, reach = v.optics
        zc, rc = counts[("zcube", convention, reach)], counts[(v.roft_name, convention, reach)]
        changes = {"throughput": z[metric] / r[metric] - 1, "ttft_p99": z["ttft_p99_s"] / r["ttft_p99_s"] - 1,
                   "switches": zc["switches"] / rc["switches"] - 1, "optics": zc["optics"] / rc["optics"] - 1}
        row = {"key": v.key, "axis": v.axis, "label": v.label, "changes": changes, "verdicts": verdicts(changes),
               "zcube": z, "roft": r, "counts": (zc, rc), "reason": ""}
        if base is None:
            base = row
        else:
            flipped = [c for c in CLAIMS if row["verdicts"][c] != base["verdicts"][c]]
            if flipped:
                side = "roft" if v.roft or v.roft_name != "roft" else "zcube"
                moved = _moved_most(base[side], row[side]) if v.axis != "optics counting" else ""
                row["reason"] = (", ".join(CLAIM_NAMES[c] for c in flipped) + f" flips: {v.mechanism}"
                                 + (f" ({side}: {moved})" if moved else "") + ".")
        rows.append(row)
    return rows


def sensitivity_markdown(rows: list[dict[str, Any]]) -> str:
    """The sensitivity table as Markdown: one row per variant, its changes and verdicts."""
    head = ("| row | axis | change | throughput | TTFT P99 | switches | optics | verdicts (thr / TTFT / sw / opt) | "
            "why a verdict flips |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        c, v = r["changes"], r["verdicts"]
        marks = " / ".join("yes" if v[k] else "no" for k in CLAIMS)
        zc, rc = r["counts"]
        lines.append(f"| {r['key']} | {r['axis']} | {r['label']} | {100 * c['throughput']:+.1f} % | "
                     f"{100 * c['ttft_p99']:+.1f} % | {zc['switches']} vs {rc['switches']} | "
                     f"{zc['optics']:,} vs {rc['optics']:,} | {marks} | {r['reason'] or '-'} |")
    return head + "\n".join(lines) + "\n"
