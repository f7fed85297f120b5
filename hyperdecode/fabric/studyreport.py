"""The study's report: README.md (the operating point, the calibration against Z.ai's NIC ablation with the ROFT
symptoms, the claims' verdicts citing the sensitivity table's rows, optics under both conventions, what is not
modelled), study.md (every run's table), study.json (the rows) and the plots.

>>> percent(0.1234), percent(-0.05)
('+12.3 %', '-5.0 %')
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .comparison import ZAI_ABLATION, ablation_check, claims, form_of, nic_ablation
from .plots import plot_study
from .sensitivity import CLAIM_NAMES, CLAIMS, reproduced, sensitivity_markdown
from .setups import study_topologies

__all__ = ["write_report", "study_markdown", "stages_markdown", "percent", "calibration_lines", "symptom_lines"]

NOT_MODELLED = """- GPUs' own timing: prefill speed is DeepSeek's published per-node rate scaled by active parameters,
  decode steps come from `hyperdecode plan`'s latency model; no device was used.
- Congestion control in the serving runs: flows share links max-min fairly per QP (an ideal end-to-end control);
  PFC and DCQCN act only through the replayed windows' pause delays (`--pfc on`).
- The all-to-all as a fluid: a lasting flow whose demand follows the compute (per-layer bursts are averaged); with
  two-batch overlap the instance runs at the speed its slowest QP allows.
- Z.ai's own cluster: its switch radix, NIC ports, placement, KV engine and load are not public (network.md §1.10);
  each is a flag here, and the sensitivity table shows which of them decide a verdict."""


def percent(x: float) -> str:
    """A change as a signed percentage."""
    return f"{100 * x:+.1f} %"


def study_markdown(rows: list[dict[str, Any]]) -> str:
    """Every run's figures as a Markdown table."""
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


def calibration_lines(rows: list[dict[str, Any]], metric: str, load: float, traffic: str) -> tuple[list[str], bool]:
    """The 100 -> 200 Gb/s ablation of each topology at one load, and whether ROFT's is within tolerance."""
    by = {(r["name"], r["nic_gbps"]): r for r in rows if r["rate_scale"] == load and r["traffic"] == traffic}
    lines = ["| topology | throughput 100 → 200G | TTFT P99 100 → 200G | within ±5 points of +19 % / −22 % |",
             "|---|---|---|---|"]
    ok = False
    for name in dict.fromkeys(n for n, _ in by):
        if (name, 100) in by and (name, 200) in by:
            slow, fast = by[name, 100], by[name, 200]
            thr, ttft = fast[metric] / slow[metric] - 1, fast["ttft_p99_s"] / slow["ttft_p99_s"] - 1
            hit = ablation_check(thr, ttft)
            ok |= hit and name == "roft"
            lines.append(f"| {name} | {percent(thr)} | {percent(ttft)} | {'yes' if hit else 'no'} |")
    target = f"Z.ai: {percent(ZAI_ABLATION['throughput'])} throughput, {percent(ZAI_ABLATION['ttft_p99'])} TTFT."
    return [target, ""] + lines, ok


def symptom_lines(rows: list[dict[str, Any]], load: float, traffic: str) -> list[str]:
    """Z.ai's ROFT symptoms, as measured in each run: leaf hotspots, uneven NICs, PFC pauses at leaf ports."""
    lines = ["| topology | NIC | leaf util P99 max / mean (imbalance) | NIC imbalance in a server mean / max | "
             "leaf queue P99 over 100 µs, max / mean | leaf-port PAUSE frames, pause s |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["rate_scale"] != load or r["traffic"] != traffic:
            continue
        s = r["symptoms"]
        leaf = s["leaf_util_p99"]
        queue = s.get("leaf_queue_bytes_p99_100us")
        queue_text = f"{queue['max'] / 1e3:,.0f} / {queue['mean'] / 1e3:,.0f} KB" if queue else "(no replay)"
        pause = (f"{s['leaf_port_pause_frames']:,}, {s['leaf_port_pause_s']:.4f}" if "leaf_port_pause_s" in s
                 else "(no replay)")
        lines.append(f"| {r['name']} | {r['nic_gbps']}G | {leaf['max']:.2f} / {leaf['mean']:.2f} "
                     f"({leaf['imbalance'] or 0:.2f}) | {s['nic_imbalance_mean'] or 0:.2f} / "
                     f"{s['nic_imbalance_max'] or 0:.2f} | {queue_text} | {pause} |")
    return lines


def _claims_table(sensitivity: list[dict], rows: list[dict], counts: dict, study: Any) -> list[str]:
    fastest, load, traffic = max(study.nics), study.loads[0], study.traffics[0]
    by = {r["name"]: r for r in rows if r["nic_gbps"] == fastest and r["rate_scale"] == load
          and r["traffic"] == traffic}
    z, f = by["zcube"], by["roft"]
    base = {"throughput": z[study.metric] / f[study.metric] - 1, "ttft_p99": z["ttft_p99_s"] / f["ttft_p99_s"] - 1,
            "switches": counts[("zcube", "per_link", 4)]["switches"] / counts[("roft", "per_link", 4)]["switches"] - 1,
            "optics": counts[("zcube", "per_link", 4)]["optics"] / counts[("roft", "per_link", 4)]["optics"] - 1}
    lines = ["| claim | ZCube over ROFT at the calibrated point | verdict | rows where it holds | rows where it does "
             "not |", "|---|---|---|---|---|"]
    for claim in CLAIMS:
        holds = [s["key"] for s in sensitivity if s["verdicts"][claim]]
        fails = [s["key"] for s in sensitivity if not s["verdicts"][claim]]
        verdict = "reproduced" if reproduced(CLAIMS[claim], base[claim]) else "not reproduced"
        lines.append(f"| {CLAIM_NAMES[claim]} | {percent(base[claim])} | {verdict} | {', '.join(holds) or '-'} | "
                     f"{', '.join(fails) or '-'} |")
    return lines


def _setup_lines(study: Any) -> list[str]:
    c, m = study.cfg, study.model
    load = (f"a closed loop of {c.sessions} clients (each sends its next request when its last ends)" if c.sessions
            else "the trace's arrival times")
    forms = study_topologies(study.gpus, study.switch_tbps, max(study.nics))
    plan = (f"`hyperdecode plan`'s latency model on {m.plan_gpus}-GPU replicas: {1e3 * m.step_s(1):.1f} ms at batch 1, "
            f"{1e3 * m.step_s(c.decode_batch):.1f} ms at {c.decode_batch}" if m.decode_steps_s else
            f"{1e3 * m.decode_step_s:.1f} ms + {1e6 * m.decode_step_per_seq_s:.0f} µs per sequence")
    return [f"- Trace: {study.work.source} ({len(study.work):,} requests), load: {load}.",
            f"- {study.gpus} GPUs on {study.switch_tbps:g}T switches: "
            + "; ".join(f"{name}: {form_of(t)}" for name, t in forms.items()) + ".",
            f"- Serving: P:D {c.pd_ratio[0]}:{c.pd_ratio[1]} (GPUs), {c.gpus_per_instance}-GPU prefill instances "
            f"({c.prefill_slots} prefills in flight each), {c.decode_instance_gpus}-GPU decode instances (batch up to "
            f"{c.decode_batch}), layout {c.layout}, KV {c.kv_split} sliced over {c.nic_slices} NICs, {c.qps} QPs per "
            f"GPU pair, ZCube ports {c.port_policy}, ECMP {c.hashing}, traffic {c.traffic} (all-to-all "
            f"{'beside' if c.ep_overlap else 'after'} the compute), prefix cache {'on' if c.prefix_cache else 'off'}.",
            f"- Model: {m.kv_bytes_per_token:,} KV bytes/token, prefill {m.prefill_tok_s:,.0f} computed tok/s per "
            f"server, decode step from {plan}.",
            "- PFC: " + (f"the {study.pfc_windows} hottest {1e3 * study.pfc_window_s:g} ms windows of each run "
                          "replayed packet by packet, their pause delays fed back into a second run"
                          if study.pfc_window_s else "not replayed (`--pfc on` adds it)") + "."]


def write_report(out: Path, study: Any, rows: list[dict], sensitivity: list[dict], counts: dict) -> str:
    """README.md, study.md, study.json and the plots in `out`; returns README.md's text."""
    load, traffic = study.loads[0], study.traffics[0]
    calibration, ok = calibration_lines(rows, study.metric, load, traffic)
    plots = plot_study(rows, out, study.metric)
    parts = [f"# ZCube vs ROFT at {study.gpus} GPUs: a calibrated serving model\n",
             f"Generated by `hyperdecode {study.command}`; every figure below comes from that run.\n",
             "## The operating point\n", "\n".join(_setup_lines(study)) + "\n",
             "## Calibration: Z.ai's NIC ablation\n",
             "\n".join(calibration) + "\n",
             ("The ROFT run reproduces the ablation within tolerance at this point.\n" if ok else
              "The ROFT run does **not** reproduce the ablation within tolerance at this point.\n"),
             "### ROFT's symptoms (Z.ai's Figs. 3–5), measured\n",
             "\n".join(symptom_lines(rows, load, traffic)) + "\n"]
    if sensitivity:
        parts += ["## The claims\n", "\n".join(_claims_table(sensitivity, rows, counts, study)) + "\n",
                  "A claim is reproduced when the model's change has its sign and at least half its size (fixed "
                  "before any run). The rows are the sensitivity table's.\n",
                  "## Sensitivity: one modelling choice at a time\n", sensitivity_markdown(sensitivity)]
    metric_note = f"throughput = `{study.metric}`"
    parts += ["## Every comparison run\n", f"({metric_note})\n",
              "\n".join(claims(rows, {n: counts[(n, "per_link", 4)] for n in ("zcube", "roft")},
                               metric=study.metric)) + "\n",
              "\n".join(nic_ablation(rows, study.metric)) + "\n",
              "## Optics, two conventions\n", _optics_text(counts) + "\n",
              "## Not modelled\n", NOT_MODELLED + "\n",
              "".join(f"![{p.stem}]({p.name})\n\n" for p in plots)]
    text = "\n".join(parts)
    (out / "README.md").write_text(text)
    (out / "study.md").write_text(study_markdown(rows) + f"\n## TTFT by stage at x{load:g}\n\n"
                                  + stages_markdown(rows, load))
    slim = [{k: v for k, v in r.items() if k != "plot"} for r in rows]
    (out / "study.json").write_text(json.dumps({"rows": slim, "sensitivity": [
        {k: v for k, v in s.items() if k not in ("zcube", "roft")} for s in sensitivity]}, indent=2, default=str))
    return text


def _optics_text(counts: dict) -> str:
    lines = ["| convention | copper reaches | ZCube | ROFT | change |", "|---|---|---|---|---|"]
    for convention, label in (("per_link", "2 per fibre link"), ("switch_modules", "switch-side modules")):
        for reach in (4, 0):
            z, r = counts[("zcube", convention, reach)]["optics"], counts[("roft", convention, reach)]["optics"]
            where = f"{reach} servers (one rack)" if reach else "nothing (all fibre)"
            lines.append(f"| {label} | {where} | {z:,} | {r:,} | {percent(z / r - 1)} |")
    return "\n".join(lines) + ("\n\nWhether ZCube's block links can be copper depends on how many servers a block "
                               "switch serves: a 200–400G DAC reaches about a rack. The verdict on optics follows "
                               "the convention and this reach, not the topology alone.")
