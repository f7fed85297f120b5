"""`hyperdecode fabric build | describe | compare | draw | simulate | study`."""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..flags import check_at_least, check_output_dir, check_output_file, check_positive
from .builders import fattree, roft, zcube
from .cost import load_prices
from .report import compare, describe
from .topology import Topology
from .workload import ModelProfile

__all__ = ["add_parser", "run"]

# smallest value of each count flag (a command checks the ones it has, when set) and the flags that must be > 0
AT_LEAST = {"n": 1, "gpus": 1, "gpus_per_switch": 1, "links_per_pair": 1, "port_gbps": 1, "switch_radix": 1,
            "nic_gbps": 1, "gpus_per_server": 1, "oversubscription": 1, "max_requests": 1, "gpus_per_instance": 1,
            "qps": 1, "seed": 0, "senders": 1, "nic_slices": 1, "decode_batch": 1, "ep_rounds": 1}
POSITIVE = ("switch_tbps", "ttft_slo", "tpot_slo", "pfc_window_s", "prefill_tok_s", "decode_step_s", "rate_scale",
            "gbps", "ms", "prefill_kv_gb", "decode_kv_gb")
# the builders' parameter names and the flags that set them (build, describe, draw)
BUILDER_FLAGS = {"num_gpus": "--gpus", "gpus_per_switch": "--gpus-per-switch", "gpus_per_server": "--gpus-per-server",
                 "switch_radix": "--switch-radix", "links_per_pair": "--links-per-pair", "port_gbps": "--port-gbps",
                 "nic_gbps": "--nic-gbps", "oversubscription": "--oversubscription", "tiers": "--tiers"}
# compare, simulate, study: the radix comes from --switch-tbps and servers hold 8 GPUs
DERIVED_FLAGS = {"num_gpus": "--gpus", "gpus_per_server": "the GPUs per server"}
SIM_FLAGS = {"gpus_per_instance": "--gpus-per-instance", "failure": "--fail", "nic_slices": "--nic-slices",
             "prefix_cache": "--prefix-cache"}


def with_flags(message: str, names: dict[str, str]) -> str:
    """A builder's message with its parameter names replaced by what the user set.

    >>> with_flags("parameter 'num_gpus' (6) must be a multiple of gpus_per_server (4)", BUILDER_FLAGS)
    '--gpus (6) must be a multiple of --gpus-per-server (4)'
    """
    for name, shown in names.items():
        message = re.sub(rf"parameter '{name}'|\b{name}\b", shown, message)
    return message


def check_args(args: argparse.Namespace) -> None:
    """The numeric flags and output paths of a fabric command, before any work."""
    check_at_least(args, AT_LEAST)
    check_positive(args, POSITIVE)
    for name in ("out", "json", "plot"):
        if isinstance(getattr(args, name, None), str):
            check_output_file(getattr(args, name), name)


def add_topology_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("topology", help="zcube, roft, fattree, or a topology .json file")
    p.add_argument("--n", type=int, help="zcube: ZCube(n, 2), n² GPUs")
    p.add_argument("--gpus", type=int, help="number of GPUs (roft, fattree; zcube blog form with --gpus-per-switch)")
    p.add_argument("--gpus-per-switch", type=int, help="zcube blog form: k GPUs per switch")
    p.add_argument("--links-per-pair", type=int, default=1, help="zcube: links between each block/residue pair")
    p.add_argument("--port-gbps", type=int, default=200, help="zcube port speed (default 200)")
    p.add_argument("--switch-radix", type=int, help="ports per switch (roft, fattree; zcube: check it fits)")
    p.add_argument("--nic-gbps", type=int, default=400, help="roft/fattree NIC speed (default 400)")
    p.add_argument("--tiers", type=int, default=2, choices=[2, 3])
    p.add_argument("--gpus-per-server", type=int, default=8)
    p.add_argument("--oversubscription", type=float, default=1.0)


def add_parser(sub: Any, parser_class: type) -> None:
    f = sub.add_parser("fabric", help="cluster networks: build, describe, compare, draw ZCube / ROFT / fat-tree; "
                                      "simulate and study PD-disaggregated KV traffic on them",
                       description="Cluster networks: build, describe, compare and draw ZCube / ROFT / fat-tree "
                                   "topologies; simulate a request trace's KV-cache traffic on one (simulate) or on "
                                   "ZCube and ROFT across load levels (study).")
    fs = f.add_subparsers(dest="fabric_command", required=True, parser_class=parser_class)
    b = fs.add_parser("build", help="build a topology, print its counts, optionally save it as JSON")
    add_topology_args(b)
    b.add_argument("--out", help="write the topology JSON here")
    d = fs.add_parser("describe", help="counts, diameter, path multiplicity, bisection and cost of a topology")
    add_topology_args(d)
    d.add_argument("--prices", help="price table (JSON or YAML) overriding the defaults")
    d.add_argument("--json", action="store_true")
    c = fs.add_parser("compare", help="ZCube vs ROFT vs leaf-spine for N GPUs at a switch capacity")
    c.add_argument("--gpus", type=int, required=True)
    c.add_argument("--switch-tbps", type=float, required=True, help="switch capacity, e.g. 12.8, 25.6, 51.2")
    c.add_argument("--nic-gbps", type=int, default=400)
    c.add_argument("--prices", help="price table (JSON or YAML) overriding the defaults")
    c.add_argument("--json", action="store_true")
    for name, doc in (("simulate", "replay a request trace as PD-disaggregated KV-cache traffic on a topology"),
                      ("study", "the same workload on ZCube and ROFT across load levels: markdown table + plots")):
        sp = fs.add_parser(name, help=doc)
        if name == "simulate":
            sp.add_argument("--topology", default="zcube", help="zcube, roft, fattree, or a topology .json file")
        sp.add_argument("--gpus", type=int, default=1024)
        sp.add_argument("--switch-tbps", type=float, default=51.2, help="switch capacity (default 51.2)")
        if name == "simulate":
            sp.add_argument("--nic-gbps", type=int, default=400, help="per-GPU NIC speed (ZCube: 2 ports of half)")
        else:
            sp.add_argument("--nic-gbps", default="400", help="per-GPU NIC speeds, comma-separated: several make a "
                                                              "NIC ablation (ZCube: 2 ports of half; default 400)")
        sp.add_argument("--trace", required=True, help="Mooncake .jsonl or Azure .csv trace")
        sp.add_argument("--synthetic", action="store_true", help="replay a Poisson/log-normal fit of the trace")
        sp.add_argument("--max-requests", type=int, default=None)
        sp.add_argument("--pd-ratio", default="1:1", help="prefill:decode instances (default 1:1)")
        sp.add_argument("--placement", default="interleaved", choices=["contiguous", "interleaved", "random"])
        sp.add_argument("--gpus-per-instance", type=int, default=8)
        sp.add_argument("--kv-split", default="dp", choices=["dp", "striped", "single"],
                        help="dp: one random rank at each end (most transfers cross rails); striped: every rank to "
                             "the same rank; single: rank 0 to rank 0 (default dp)")
        sp.add_argument("--nic-slices", type=int, default=1, help="NICs per server a KV transfer is sliced over")
        sp.add_argument("--traffic", default="kv", choices=None if name == "study" else ["kv", "kv+ep"],
                        help="kv+ep: also each prefill's and decode step's expert-parallel all-to-all between the "
                             "servers of an instance (give --gpus-per-instance above a server's GPUs); study: kv, "
                             "kv+ep or both comma-separated")
        sp.add_argument("--traffic-classes", default="same", choices=["same", "separate"],
                        help="same: EP and KV share one lossless class; separate: EP on its own class, served "
                             "before KV at every port (strict priority; default same)")
        sp.add_argument("--ep-rounds", type=int, default=1,
                        help="all-to-alls per prefill or decode step, in sequence (the MoE layers' count, 75 for "
                             "GLM-5: one per layer; default 1, the step's whole EP traffic at once)")
        sp.add_argument("--ep-overlap", default="on", choices=["on", "off"],
                        help="on: each round's all-to-all runs beside its compute (two-batch overlap); off: after "
                             "it (a layer's experts wait for its dispatch)")
        sp.add_argument("--prefix-cache", default="off", choices=["on", "off"],
                        help="on: prompts' cached leading blocks (the trace's hash_ids) are fetched from the KV store "
                             "(host memory of the server that first computed them) instead of computed")
        sp.add_argument("--decode-batch", type=int, default=128, help="running requests per decode instance")
        sp.add_argument("--prefill-kv-gb", type=float, default=64.0, help="KV memory per prefill instance")
        sp.add_argument("--decode-kv-gb", type=float, default=320.0, help="KV memory per decode instance")
        sp.add_argument("--tpot-slo", type=float, default=0.1, help="TPOT SLO for goodput, seconds")
        sp.add_argument("--pfc", default="off", choices=["on", "off"],
                        help="on: also replay the run's hottest window packet by packet with PFC (pause time, "
                             "slowdowns, victims); the serving run itself stays max-min")
        sp.add_argument("--dcqcn", default="off", choices=["on", "off"],
                        help="on: that replay also marks ECN at switches and runs DCQCN at the senders")
        sp.add_argument("--pfc-window-s", type=float, default=0.01,
                        help="that window's length, seconds (default 0.01; the replay costs in proportion)")
        sp.add_argument("--port-policy", default="balanced", choices=["fixed", "balanced", "hashed"])
        sp.add_argument("--qps", type=int, default=2, help="flows (QPs) per GPU pair; ECMP hashes each, ZCube "
                        "alternates them over its two cross-port pairings (default 2)")
        sp.add_argument("--ttft-slo", type=float, default=2.0, help="TTFT SLO for goodput, seconds")
        sp.add_argument("--model", default="glm-5", help="model preset whose KV bytes/token are sent")
        sp.add_argument("--kv-dtype", default="bf16", choices=["bf16", "fp8"])
        sp.add_argument("--prefill-tok-s", type=float, default=ModelProfile.prefill_tok_s,
                        help="computed prompt tokens/s per server of a prefill instance (default: DeepSeek's 73.7k "
                             "per H800 node less its 56.3 %% prefix-cache hits; no prefix cache here)")
        sp.add_argument("--decode-step-s", type=float, default=ModelProfile.decode_step_s,
                        help="decode step compute at batch 1, seconds")
        sp.add_argument("--decode-step-per-seq-s", type=float, default=ModelProfile.decode_step_per_seq_s,
                        help="added per running sequence, seconds")
        sp.add_argument("--seed", type=int, default=0)
        if name == "simulate":
            sp.add_argument("--rate-scale", type=float, default=1.0, help="arrivals this many times faster")
            sp.add_argument("--fail", default=None, help="link:ID@T or switch:ID@T (seconds)")
            sp.add_argument("--json", help="write the summary JSON here")
            sp.add_argument("--plot", help="write TTFT/KV CDFs and utilisation as PNG here")
        else:
            sp.add_argument("--scales", default="1,8,32", help="comma-separated load multipliers")
            sp.add_argument("--out-dir", required=True, help="writes study.md, study.json and PNG plots here")
            sp.add_argument("--json", help="also write the runs' summaries (study.json's rows) to this file")
    pd = fs.add_parser("pfc-demo", help="PFC's victim flow: H1 and N incast senders to R, a victim V to an idle "
                                        "host; each flow's rate with PFC next to max-min's",
                       description="The textbook PFC case: H1 and an upstream switch T (N incast senders and a victim "
                                   "V, uplink 2C) feed switch S; H1 and the senders send to R, V to an idle host. "
                                   "With PFC: H1 C/2, each sender and V C/(2N); max-min: C/(N+1) and C.")
    pd.add_argument("--senders", type=int, required=True, help="incast senders behind T (N)")
    pd.add_argument("--gbps", type=float, required=True, help="link speed C (T's uplink is 2C)")
    pd.add_argument("--pfc", default="on", choices=["on", "off"], help="off: senders paced at max-min (ideal CC)")
    pd.add_argument("--dcqcn", default="off", choices=["on", "off"],
                    help="on: ECN marking at the switches and DCQCN rate control at the senders (give --ms 50: it "
                         "converges in tens of ms)")
    pd.add_argument("--ms", type=float, default=4.0, help="simulated milliseconds (rates over the second half)")
    pd.add_argument("--json", action="store_true")
    w = fs.add_parser("draw", help="a PNG of a small topology")
    add_topology_args(w)
    w.add_argument("--out", required=True, help="PNG file")


def topology_from(args: argparse.Namespace) -> Topology:
    kind = args.topology
    if kind.endswith(".json"):
        return Topology.load(kind)
    if kind == "zcube":
        if args.n is None and (args.gpus is None or args.gpus_per_switch is None):
            raise ConfigError("zcube needs --n, or --gpus and --gpus-per-switch")
        if args.n is not None and (args.gpus not in (None, args.n ** 2) or args.gpus_per_switch not in (None, args.n)):
            raise ConfigError("zcube takes either --n (paper form) or --gpus and --gpus-per-switch (blog form)")
        return flagged(BUILDER_FLAGS, zcube, args.n, port_gbps=args.port_gbps, links_per_pair=args.links_per_pair,
                       num_gpus=args.gpus, gpus_per_switch=args.gpus_per_switch, switch_radix=args.switch_radix,
                       gpus_per_server=args.gpus_per_server)
    if kind in ("roft", "fattree"):
        if args.gpus is None or args.switch_radix is None:
            raise ConfigError(f"{kind} needs --gpus and --switch-radix")
        return flagged(BUILDER_FLAGS, roft if kind == "roft" else fattree, args.gpus, args.switch_radix,
                       nic_gbps=args.nic_gbps, tiers=args.tiers, gpus_per_server=args.gpus_per_server,
                       oversubscription=args.oversubscription)
    raise ConfigError(f"topology '{kind}' is not zcube, roft, fattree or a .json file")


def flagged(names: dict[str, str], fn: Any, *args: Any, prefix: str = "", **kwargs: Any) -> Any:
    """fn(*args, **kwargs), its ConfigError messages naming flags instead of parameters (`with_flags`), after
    `prefix` when given."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        message = with_flags(str(e), names)
        raise ConfigError(f"{prefix}: {message}" if prefix else message) from None


def print_counts(t: Topology) -> None:
    c = t.counts()
    radix = ", ".join(f"{n} x {r}" for r, n in c["switches_by_radix"].items())
    print(f"{t.kind} {json.dumps(t.params)}")
    print(f"  GPUs {c['gpus']} ({c['servers']} servers, {t.nic_ports} NIC port(s) of {t.nic_gbps}G each)")
    print(f"  switches {c['switches']} ({radix})")
    print(f"  links {c['links']}: {c['copper_links']} copper + {c['fiber_links']} fiber; optics {c['optics']}")


def switch_radix(args: argparse.Namespace, port_gbps: int) -> int:
    """Ports of a --switch-tbps switch at `port_gbps` per port (compare, simulate, study). A study's slower NICs run
    on the switches of its fastest (`ports_at_gbps`): as many ports, each slower, so only the speed changes."""
    speedup = getattr(args, "ports_at_gbps", args.nic_gbps) / args.nic_gbps
    radix = int(args.switch_tbps * 1000 // (port_gbps * speedup))
    if radix < 2:
        raise ConfigError(f"--switch-tbps {args.switch_tbps:g} gives switches of {radix} port(s) at {port_gbps}G "
                          "(at least 2 are needed)")
    return radix


def named_topology(name: str, args: argparse.Namespace) -> Topology:
    from .report import zcube_for
    if name.endswith(".json"):
        return Topology.load(name)
    if name == "zcube":
        port = args.nic_gbps // 2
        if port < 1:
            raise ConfigError(f"--nic-gbps {args.nic_gbps} is too slow for ZCube's two NIC ports (at least 2)")
        return flagged(DERIVED_FLAGS, zcube_for, args.gpus, switch_radix(args, port), port)
    if name in ("roft", "fattree"):
        radix = switch_radix(args, args.nic_gbps)
        tiers = 2 if args.gpus <= radix * radix // 2 else 3
        return flagged(DERIVED_FLAGS, roft if name == "roft" else fattree, args.gpus, radix, nic_gbps=args.nic_gbps,
                       tiers=tiers)
    raise ConfigError(f"topology '{name}' is not zcube, roft, fattree or a .json file")


def sim_inputs(args: argparse.Namespace):
    from .simconfig import SimConfig, parse_failure, parse_pd_ratio
    from .workload import load_trace, synthetic
    work = load_trace(args.trace)
    if args.synthetic:
        work = synthetic(work, seed=args.seed)
    if args.max_requests is not None:
        work = work.head(args.max_requests)
    model = ModelProfile.from_model(args.model, args.kv_dtype, prefill_tok_s=args.prefill_tok_s,
                                    decode_step_s=args.decode_step_s, decode_step_per_seq_s=args.decode_step_per_seq_s)
    pd_ratio = flagged({}, parse_pd_ratio, args.pd_ratio, prefix="--pd-ratio")
    failure = flagged({}, parse_failure, args.fail, prefix="--fail") if getattr(args, "fail", None) else None
    cfg = SimConfig(gpus_per_instance=args.gpus_per_instance, pd_ratio=pd_ratio, placement=args.placement,
                    kv_split=args.kv_split, nic_slices=args.nic_slices, traffic=args.traffic,
                    classes=args.traffic_classes, prefix_cache=args.prefix_cache == "on", ep_rounds=args.ep_rounds,
                    ep_overlap=args.ep_overlap == "on",
                    decode_batch=args.decode_batch, prefill_kv_gb=args.prefill_kv_gb, decode_kv_gb=args.decode_kv_gb,
                    port_policy=args.port_policy, qps=args.qps, ttft_slo_s=args.ttft_slo, tpot_slo_s=args.tpot_slo,
                    seed=args.seed, failure=failure)
    return work, model, cfg


def run_simulate(args: argparse.Namespace) -> None:
    from tqdm import tqdm
    from .simreport import plot_run, summarize, with_pfc
    from .simulate import simulate
    work, model, cfg = sim_inputs(args)
    work = work.scaled(args.rate_scale) if args.rate_scale != 1.0 else work
    topo = named_topology(args.topology, args)
    with tqdm(total=len(work), unit="req", desc=f"simulating {topo.kind}", disable=None, leave=False) as bar:
        def progress(done: int) -> None:
            bar.update(done - bar.n)
        r = flagged(SIM_FLAGS, simulate, topo, work, model, cfg, progress)
    s = summarize(r)
    if args.pfc == "on":
        s = with_pfc(s, r, args.pfc_window_s, args.dcqcn == "on")
    print(json.dumps({k: s[k] for k in ("topology", "gpus", "requests_completed", "throughput_tok_s",
                                        "goodput_per_gpu", "ttft_p50_s", "ttft_p99_s", "kv_fct_p99_s", "tpot_p99_s",
                                        "max_link_util", "pause_s_total", "sim_wall_s")}, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=2)
    if args.plot:
        plot_run({topo.kind: r}, args.plot)


def run_study(args: argparse.Namespace) -> None:
    from .report import compare
    from .simconfig import TRAFFIC
    from .study import form_of, knee, study, write_report
    scales = number_list(args.scales, "--scales", float)
    nics = number_list(args.nic_gbps, "--nic-gbps", int)
    traffics = args.traffic.split(",")
    if any(t not in TRAFFIC for t in traffics):
        raise ConfigError(f"--traffic '{args.traffic}' must be {' or '.join(TRAFFIC)}, or both comma-separated")
    out = check_output_dir(args.out_dir, "--out-dir")
    rows, runs, forms, knees = [], {}, [], []
    for nic in nics:
        for traffic in traffics:
            v = argparse.Namespace(**{**vars(args), "nic_gbps": nic, "traffic": traffic, "ports_at_gbps": max(nics)})
            variant = f"{nic}G {traffic}"
            work, model, cfg = sim_inputs(v)
            topologies = study_topologies(v)
            forms += [f"- {variant}, {name}: {form_of(t)}\n" for name, t in topologies.items()]
            got, runs[variant] = flagged(SIM_FLAGS, study, topologies, work, scales, model, cfg,
                                         progress=lambda m: print(f"running {variant} {m}", file=sys.stderr),
                                         pfc_window_s=args.pfc_window_s if args.pfc == "on" else None,
                                         dcqcn=args.dcqcn == "on")
            rows += [{"variant": variant, "nic_gbps": nic, **r} for r in got]
            knees += [f"{variant} {name} x{k:g}" if (k := knee([r for r in got if r["name"] == name])) else
                      f"{variant} {name}: none within the loads run" for name in topologies]
    counts = {r["topology"]: r for r in flagged(DERIVED_FLAGS, compare, args.gpus, args.switch_tbps, max(nics),
                                                               zcube_port_gbps=max(nics) // 2)}
    header = (f"# ZCube vs ROFT: {args.gpus} GPUs, {args.switch_tbps}T switches, {work.source}\n\n{''.join(forms)}\n"
              + (f"Slower NICs run on the switches of the fastest ({max(nics)}G), their ports slower.\n\n"
                 if len(nics) > 1 else "")
              + f"P:D {args.pd_ratio}, {args.gpus_per_instance} GPUs per instance, placement {args.placement}, "
              f"KV split {args.kv_split} over {args.nic_slices} NIC(s), traffic classes {args.traffic_classes}, "
              f"prefix cache {args.prefix_cache}, port policy {args.port_policy}, model {args.model} "
              f"({model.kv_bytes_per_token:,} B/token KV), prefill "
              f"{model.prefill_tok_s:,.0f} tok/s per server, decode batch {args.decode_batch}, TTFT SLO "
              f"{args.ttft_slo} s, TPOT SLO {args.tpot_slo} s; max-min flows"
              + (f", each run's hottest {args.pfc_window_s:g} s replayed with PFC" if args.pfc == "on" else ", PFC off")
              + (" and DCQCN" if args.pfc == "on" and args.dcqcn == "on" else "")
              + ".\n\n")
    print(write_report(out, header, rows, runs, counts, knees))
    if args.json:
        Path(args.json).write_text((out / "study.json").read_text())


def number_list(text: str, flag: str, kind: type) -> list:
    """A comma-separated list of positive numbers, or a ConfigError naming the flag."""
    try:
        values = [kind(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} '{text}' must be comma-separated numbers") from None
    if not all(math.isfinite(x) and x > 0 for x in values):
        raise ConfigError(f"{flag} '{text}' must be positive")
    return values


def study_topologies(args: argparse.Namespace) -> dict[str, Topology]:
    """ZCube in the form that fills the switches (the blog's, with parallel links, when N > (radix / 2)²) and, when
    N is a square, the paper's single-path ZCube(√N, 2) too; ROFT with the fewest tiers and with 3 tiers."""
    out = {"zcube": named_topology("zcube", args)}
    n = math.isqrt(args.gpus)
    if n * n == args.gpus and out["zcube"].params.get("links_per_pair", 1) > 1:
        out["zcube-single-path"] = flagged(DERIVED_FLAGS, zcube, n, port_gbps=args.nic_gbps // 2)
    out["roft"] = named_topology("roft", args)
    if out["roft"].params["tiers"] == 2:
        out["roft-3-tier"] = flagged(DERIVED_FLAGS, roft, args.gpus, switch_radix(args, args.nic_gbps),
                                     nic_gbps=args.nic_gbps, tiers=3)
    return out


def run_pfc_demo(args: argparse.Namespace) -> None:
    from .dcqcn import Dcqcn
    from .pfc import PfcConfig
    from .pfccases import pfc_demo
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


def run(args: argparse.Namespace) -> None:
    cmd = args.fabric_command
    check_args(args)
    if cmd == "simulate":
        return run_simulate(args)
    if cmd == "study":
        return run_study(args)
    if cmd == "pfc-demo":
        return run_pfc_demo(args)
    if cmd == "compare":
        switch_radix(args, args.nic_gbps)
        rows = flagged(DERIVED_FLAGS, compare, args.gpus, args.switch_tbps, args.nic_gbps,
                       prices=load_prices(args.prices))
        if args.json:
            print(json.dumps(rows, indent=2))
            return
        print(f"{args.gpus} GPUs, {args.switch_tbps}T switches")
        print(f"{'topology':<9}{'switches':>9}{'copper':>8}{'fiber':>8}{'optics':>8}{'diam':>6}"
              f"{'paths/pairing':>15}{'cost $M':>9}{'$/GPU':>8}")
        for r in rows:
            m = r["multiplicity"].get("paths_per_best_pairing", ["-", "-"])
            print(f"{r['topology']:<9}{r['switches']:>9}{r['copper_links']:>8}{r['fiber_links']:>8}{r['optics']:>8}"
                  f"{r['diameter']:>6}{f'{m[0]}-{m[1]}':>15}{r['cost_total'] / 1e6:>9.2f}{r['cost_per_gpu']:>8.0f}")
        z, rf = rows[0], rows[1]
        print(f"zcube vs roft: switches {100 * (z['switches'] / rf['switches'] - 1):+.1f} %, optics "
              f"{100 * (z['optics'] / rf['optics'] - 1):+.1f} %, switches+optics cost "
              f"{100 * (z['switches_and_optics_cost'] / rf['switches_and_optics_cost'] - 1):+.1f} % (default prices "
              "are assumptions: see --prices)")
        return
    topo = topology_from(args)
    if cmd == "build":
        print_counts(topo)
        if args.out:
            topo.save(args.out)
            print(f"wrote {args.out}", file=sys.stderr)
    elif cmd == "describe":
        d = describe(topo, load_prices(args.prices))
        if args.json:
            print(json.dumps(d, indent=2, default=float))
            return
        print_counts(topo)
        dm, m = d["diameter"], d["multiplicity"]
        print(f"  diameter {dm['diameter']} switches, mean {dm['mean_hops']:.3f} "
              f"({'exact over' if dm['exact'] else 'sampled'} {dm['pairs']} GPU pairs)")
        if m.get("pairs"):
            print(f"  pairs sharing no switch: {m['best_pairings'][0]}-{m['best_pairings'][1]} best port pairing(s), "
                  f"{m['paths_per_best_pairing'][0]}-{m['paths_per_best_pairing'][1]} shortest path(s) each")
        if "bisection" in d:
            b = d["bisection"]
            print(f"  bisection (worst of 3 cuts, max-flow) {b['ratio']:.3f}; local up/down ratio {b['local_ratio']}")
        print(f"  cost ${d['cost']['total']:,.0f} (${d['cost']['per_gpu']:,.0f} per GPU)")
    elif cmd == "draw":
        from .draw import draw
        print(f"wrote {draw(topo, args.out)}", file=sys.stderr)
