"""`hyperdecode fabric simulate | study | pfc-demo`: serving runs on a topology, the ZCube-vs-ROFT study, PFC's
victim flow. Every flag's default is the calibrated operating point (flow/config.py's CALIBRATED), so the README's
command runs the point that was checked.

>>> number_list("100,200", "--nic-gbps", int)
[100, 200]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..flags import check_output_dir
from ..hardware import GPUS
from .cliflags import DERIVED_FLAGS, SIM_FLAGS, flagged
from .flow.config import (CALIBRATED, LAYOUTS, PLACEMENTS, SESSIONS_PER_GPU, TRAFFIC, SimConfig, parse_failure,
                          parse_pd_ratio)
from .flow.model import DecodePlan, ModelProfile
from .flow.routing import HASH_MODELS, PORT_POLICIES
from .flow.workload import Workload
from .setups import build, decode_context

__all__ = ["add_serving_args", "run_simulate", "run_study", "run_pfc_demo", "sim_inputs", "number_list"]

ON_OFF = ["on", "off"]


def _on(value: bool) -> str:
    return "on" if value else "off"


def add_serving_args(fs: Any) -> None:
    """The `simulate`, `study` and `pfc-demo` subcommands on the fabric command's subparsers `fs`."""
    for name, doc in (("simulate", "replay a request trace as PD-disaggregated serving on a topology"),
                      ("study", "ZCube against ROFT at the calibrated point: NIC ablation, symptoms, claims, "
                                "sensitivity table, report")):
        sp = fs.add_parser(name, help=doc)
        _add_common(sp, name)
    pd = fs.add_parser("pfc-demo", help="PFC's victim flow: H1 and N incast senders to R, a victim V to an idle "
                                        "host; each flow's rate with PFC next to max-min's",
                       description="The textbook PFC case: H1 and an upstream switch T (N incast senders and a victim "
                                   "V, uplink 2C) feed switch S; H1 and the senders send to R, V to an idle host. "
                                   "With PFC: H1 C/2, each sender and V C/(2N); max-min: C/(N+1) and C.")
    pd.add_argument("--senders", type=int, required=True, help="incast senders behind T (N)")
    pd.add_argument("--gbps", type=float, required=True, help="link speed C (T's uplink is 2C)")
    pd.add_argument("--pfc", default="on", choices=ON_OFF, help="off: senders paced at max-min (ideal CC)")
    pd.add_argument("--dcqcn", default="off", choices=ON_OFF,
                    help="on: ECN marking at the switches and DCQCN rate control at the senders (give --ms 50: it "
                         "converges in tens of ms)")
    pd.add_argument("--ms", type=float, default=4.0, help="simulated milliseconds (rates over the second half)")
    pd.add_argument("--json", action="store_true")


def _add_common(sp: argparse.ArgumentParser, name: str) -> None:
    """The flags `simulate` and `study` share (defaults: the calibrated point), then each one's own."""
    _add_cluster_args(sp, name)
    _add_serving_args(sp, name, SimConfig(**CALIBRATED))
    _add_model_args(sp)
    _add_command_args(sp, name)


def _add_cluster_args(sp: argparse.ArgumentParser, name: str) -> None:
    """The topology, its NICs and the trace."""
    if name == "simulate":
        sp.add_argument("--topology", default="roft", help="zcube, zcube-single-path, roft, roft-3-tier, fattree, or "
                                                           "a topology .json file (default roft)")
        sp.add_argument("--nic-gbps", type=int, default=400, help="per-GPU NIC speed (ZCube: 2 ports of half)")
    else:
        sp.add_argument("--nic-gbps", default="100,200,400", help="per-GPU NIC speeds, comma-separated (the NIC "
                        "ablation; slower NICs run on the fastest's switches, their ports slower)")
    sp.add_argument("--gpus", type=int, default=512)
    sp.add_argument("--switch-tbps", type=float, default=25.6, help="switch capacity (default 25.6: 64 x 400G)")
    sp.add_argument("--trace", required=True, help="a shipped trace's name (mooncake-conversation, "
                    "mooncake-synthetic, azure-code) or a Mooncake .jsonl / Azure .csv file")
    sp.add_argument("--synthetic", action="store_true", help="replay a Poisson/log-normal fit of the trace")
    sp.add_argument("--max-requests", type=int, default=None)
    sp.add_argument("--sessions", type=int, default=None, help="closed loop: clients that each send their next "
                    f"request when one ends (default {SESSIONS_PER_GPU} per GPU, the calibrated load); 0: open loop at "
                    "the trace's times")


def _add_serving_args(sp: argparse.ArgumentParser, name: str, c: SimConfig) -> None:
    """How instances are laid out and how their traffic is sliced, routed and served (SimConfig's fields)."""
    sp.add_argument("--pd-ratio", default=f"{c.pd_ratio[0]}:{c.pd_ratio[1]}", help="prefill:decode GPUs")
    sp.add_argument("--placement", default=c.placement, choices=PLACEMENTS, help="how prefill and decode alternate")
    sp.add_argument("--layout", default=c.layout, choices=LAYOUTS, help="an instance's servers: spread over ZCube's "
                    "blocks and residues, packed, or auto (spread on ZCube, packed on Clos)")
    sp.add_argument("--gpus-per-instance", type=int, default=c.gpus_per_instance, help="a prefill instance's GPUs")
    sp.add_argument("--decode-gpus", type=int, default=c.decode_gpus, help="a decode instance's GPUs")
    sp.add_argument("--prefill-slots", type=int, default=c.prefill_slots,
                    help="prefills in flight per instance, sharing its compute (chunked prefill)")
    sp.add_argument("--kv-split", default=c.kv_split, choices=["dp", "striped", "single"],
                    help="dp: from the request's DP rank to a random rank; striped: every rank to the same rank; "
                         "single: rank 0 to rank 0")
    sp.add_argument("--nic-slices", type=int, default=c.nic_slices, help="NICs a transfer is sliced over")
    sp.add_argument("--traffic", default=c.traffic, choices=None if name == "study" else TRAFFIC,
                    help="kv+ep: also the expert-parallel all-to-all of instances over several servers"
                         + (" (study: kv,kv+ep runs both)" if name == "study" else ""))
    sp.add_argument("--traffic-classes", default=c.classes, choices=["same", "separate"],
                    help="separate: EP on its own class, served before KV at every port")
    sp.add_argument("--ep-overlap", default=_on(c.ep_overlap), choices=ON_OFF,
                    help="on: the all-to-all beside the compute (two-batch overlap); off: after it")
    sp.add_argument("--prefix-cache", default="auto" if c.prefix_cache else "off", choices=["auto", *ON_OFF],
                    help="on: prompts' cached leading blocks (the trace's hash_ids) come from the KV store; auto: on "
                         "when the trace has hash_ids (Mooncake's), off otherwise")
    sp.add_argument("--decode-batch", type=int, default=c.decode_batch, help="running requests per decode instance")
    sp.add_argument("--prefill-kv-gb", type=float, default=c.prefill_kv_gb, help="KV memory per prefill instance")
    sp.add_argument("--decode-kv-gb", type=float, default=c.decode_kv_gb, help="KV memory per decode instance")
    sp.add_argument("--port-policy", default=c.port_policy, choices=PORT_POLICIES,
                    help="ZCube NIC ports: split spreads a transfer's QPs over both ports")
    sp.add_argument("--hashing", default=c.hashing, choices=HASH_MODELS, help="ECMP hash model")
    sp.add_argument("--qps", type=int, default=c.qps, help="QPs per GPU pair of a transfer or all-to-all")
    sp.add_argument("--ttft-slo", type=float, default=c.ttft_slo_s, help="TTFT SLO for goodput, seconds")
    sp.add_argument("--tpot-slo", type=float, default=c.tpot_slo_s, help="TPOT SLO for goodput, seconds")


def _add_model_args(sp: argparse.ArgumentParser) -> None:
    """PFC replays, the model preset, the decode step's source and the prefill rate."""
    sp.add_argument("--pfc", default="off", choices=ON_OFF,
                    help="on: replay the run's hottest windows packet by packet with PFC and run it again with the "
                         "pause delays they measured")
    sp.add_argument("--dcqcn", default="off", choices=ON_OFF, help="on: the replays also run ECN and DCQCN")
    sp.add_argument("--pfc-window-s", type=float, default=0.002, help="a replayed window's length (default 2 ms)")
    sp.add_argument("--pfc-windows", type=int, default=2, help="windows replayed (in parallel processes)")
    sp.add_argument("--model", default="glm-5", help="model preset: KV bytes/token, MoE shape, decode step")
    sp.add_argument("--kv-dtype", default="bf16", choices=["bf16", "fp8"])
    sp.add_argument("--hw", default="h200", help="decode GPU: a row of hyperdecode/hardware.py (h100, h200, b200)")
    sp.add_argument("--decode-plan", default="tp", choices=["tp", "hetero", "affine"],
                    help="decode step times from `hyperdecode plan`'s latency model (tp or hetero over a server's "
                         "GPUs), or affine: --decode-step-s + --decode-step-per-seq-s x batch")
    sp.add_argument("--decode-context", type=int, default=None,
                    help="tokens in a decode sequence's cache for the step model (default: the trace's mean prompt "
                         "+ half its mean output)")
    sp.add_argument("--prefill-tok-s", type=float, default=None,
                    help="computed prompt tokens/s per server (default: DeepSeek-V3's 73.7k per H800 node less its "
                         "56.3 %% prefix-cache hits, scaled by active parameters: 29.6k for glm-5)")
    sp.add_argument("--decode-step-s", type=float, default=ModelProfile.decode_step_s,
                    help="affine decode step at batch 1, seconds")
    sp.add_argument("--decode-step-per-seq-s", type=float, default=ModelProfile.decode_step_per_seq_s,
                    help="affine decode step: added per running sequence, seconds")
    sp.add_argument("--seed", type=int, default=0)


def _add_command_args(sp: argparse.ArgumentParser, name: str) -> None:
    """`simulate`'s load scale, failure and outputs; `study`'s loads, sensitivity table, jobs and outputs."""
    if name == "simulate":
        sp.add_argument("--rate-scale", type=float, default=1.0, help="open loop: arrivals this many times faster")
        sp.add_argument("--fail", default=None, help="link:ID@T or switch:ID@T (seconds)")
        sp.add_argument("--json", help="write the summary JSON here")
        sp.add_argument("--plot", help="write TTFT/KV CDFs and utilisation as PNG here")
    else:
        sp.add_argument("--loads", default="1", help="comma-separated multipliers of the load (sessions, or the "
                                                     "trace's rate in open loop)")
        sp.add_argument("--sensitivity", action="store_true",
                        help="also the sensitivity table: port splitting, placement, hash model, ROFT tiers, optics "
                             "counting, NIC speed; a verdict per claim per row")
        sp.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
        sp.add_argument("--out-dir", required=True, help="writes README.md, study.md, study.json and plots here")
        sp.add_argument("--json", help="also write the runs' summaries (study.json's rows) to this file")


def sim_inputs(args: argparse.Namespace) -> tuple[Workload, ModelProfile, SimConfig]:
    """(workload, model profile, SimConfig) from a serving command's flags."""
    from .flow.workload import load_trace, synthetic
    work = flagged({}, load_trace, args.trace, prefix="--trace")
    if args.synthetic:
        work = synthetic(work, seed=args.seed)
    if args.max_requests is not None:
        work = work.head(args.max_requests)
    plan = None
    if args.hw not in GPUS:
        raise ConfigError(f"--hw '{args.hw}' is not a GPU of the hardware table ({', '.join(GPUS)})")
    if args.decode_plan != "affine":
        plan = DecodePlan(hardware=args.hw, gpus=8, strategy=args.decode_plan,
                          context=args.decode_context or decode_context(work))
    rate = {"prefill_tok_s": args.prefill_tok_s} if args.prefill_tok_s else {}
    model = flagged({}, ModelProfile.from_model, args.model, args.kv_dtype, plan, args.decode_batch,
                    decode_step_s=args.decode_step_s, decode_step_per_seq_s=args.decode_step_per_seq_s, **rate)
    pd_ratio = flagged({}, parse_pd_ratio, args.pd_ratio, prefix="--pd-ratio")
    failure = flagged({}, parse_failure, args.fail, prefix="--fail") if getattr(args, "fail", None) else None
    cfg = SimConfig(gpus_per_instance=args.gpus_per_instance, decode_gpus=args.decode_gpus, pd_ratio=pd_ratio,
                    placement=args.placement, layout=args.layout, kv_split=args.kv_split, nic_slices=args.nic_slices,
                    port_policy=args.port_policy, hashing=args.hashing, qps=args.qps, traffic=args.traffic,
                    classes=args.traffic_classes, ep_overlap=args.ep_overlap == "on",
                    prefill_slots=args.prefill_slots, prefill_kv_gb=args.prefill_kv_gb,
                    decode_batch=args.decode_batch, decode_kv_gb=args.decode_kv_gb,
                    sessions=SESSIONS_PER_GPU * args.gpus if args.sessions is None else args.sessions,
                    ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo, failure=failure,
                    prefix_cache=args.prefix_cache == "on"
                    or (args.prefix_cache == "auto" and work.hash_ids is not None),
                    seed=args.seed)
    return work, model, cfg


SHOWN = ("topology", "gpus", "requests_completed", "throughput_tok_s", "steady_tok_s", "goodput_per_gpu",
         "ttft_p50_s", "ttft_p99_s", "kv_fct_p99_s", "tpot_p99_s", "max_link_util", "pause_s_total", "symptoms",
         "sim_wall_s")


def run_simulate(args: argparse.Namespace) -> None:
    """`fabric simulate`: one serving run (with PFC feedback when asked); prints its summary."""
    from tqdm import tqdm
    from .coupled import run_with_pfc
    from .flow.serving import simulate
    from .flow.summary import plot_run, summarize
    work, model, cfg = sim_inputs(args)
    if args.rate_scale != 1.0:
        work = work.scaled(args.rate_scale)
    topo = flagged(DERIVED_FLAGS, build, args.topology, args.gpus, args.switch_tbps, args.nic_gbps)
    with tqdm(total=len(work), unit="req", desc=f"simulating {topo.kind}", disable=None, leave=False) as bar:
        def progress(done: int) -> None:
            bar.update(done - bar.n)
        if args.pfc == "on":
            run, s = flagged(SIM_FLAGS, run_with_pfc, topo, work, model, cfg, args.pfc_window_s, args.pfc_windows,
                             dcqcn=args.dcqcn == "on", progress=progress)
        else:
            run = flagged(SIM_FLAGS, simulate, topo, work, model, cfg, progress)
            s = summarize(run)
    print(json.dumps({k: s[k] for k in SHOWN}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=2, default=str))
    if args.plot:
        plot_run({topo.kind: run}, args.plot)


def number_list(text: str, flag: str, kind: type) -> list:
    """A comma-separated list of positive numbers, or a ConfigError naming the flag."""
    try:
        values = [kind(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} '{text}' must be comma-separated numbers") from None
    if not all(math.isfinite(x) and x > 0 for x in values):
        raise ConfigError(f"{flag} '{text}' must be positive")
    return values


def run_study(args: argparse.Namespace) -> None:
    """`fabric study`: the comparison (and with --sensitivity the table) written to --out-dir; prints README.md."""
    from .study import Study, run_study as run
    loads = number_list(args.loads, "--loads", float)
    nics = number_list(args.nic_gbps, "--nic-gbps", int)
    traffics = args.traffic.split(",")
    if any(t not in TRAFFIC for t in traffics):
        raise ConfigError(f"--traffic '{args.traffic}' must be {' or '.join(TRAFFIC)}, or both comma-separated")
    out = check_output_dir(args.out_dir, "--out-dir")
    args.traffic, args.fail = traffics[0], None
    work, model, cfg = sim_inputs(args)
    study = Study(gpus=args.gpus, switch_tbps=args.switch_tbps, nics=nics, traffics=traffics, loads=loads,
                  work=work, model=model, cfg=cfg, pfc_window_s=args.pfc_window_s if args.pfc == "on" else None,
                  pfc_windows=args.pfc_windows, dcqcn=args.dcqcn == "on", sensitivity=args.sensitivity,
                  jobs=args.jobs, command=" ".join(sys.argv[1:]) or "fabric study")
    text = flagged(SIM_FLAGS | DERIVED_FLAGS, run, study, out,
                   progress=lambda m: print(f"running {m}", file=sys.stderr))
    print(text)
    if args.json:
        Path(args.json).write_text((out / "study.json").read_text())


def run_pfc_demo(args: argparse.Namespace) -> None:
    """`fabric pfc-demo`: the victim-flow case's rates with PFC next to max-min's."""
    from .packet.cases import pfc_demo
    from .packet.dcqcn import Dcqcn
    from .packet.pfc import PfcConfig
    d = pfc_demo(args.senders, args.gbps, pfc=args.pfc == "on", until=args.ms / 1e3,
                 config=PfcConfig(dcqcn=Dcqcn() if args.dcqcn == "on" else None))
    if args.json:
        print(json.dumps(d, indent=2))
        return
    print(f"victim-flow case, N = {args.senders}, C = {args.gbps:g} Gb/s, PFC {args.pfc}, DCQCN {args.dcqcn}: "
          f"{d['pause_frames']} pause frames, {d['drops']} drops, {100 * d['headroom_used']:.0f} % of the headroom "
          f"used, {d['ecn_marks']} ECN marks")
    print(f"{'flow':<12}{'Gb/s':>9}{'max-min':>9}")
    for r in d["flows"]:
        print(f"{r['name']:<12}{r['gbps']:>9.2f}{r['maxmin_gbps']:>9.2f}")
