"""`hyperdecode fabric build | describe | compare | draw | simulate | study | pfc-demo`: the parser and the topology
commands (the serving commands are in cli_serving.py).

>>> sorted(AT_LEAST)[:3]
['decode_batch', 'decode_context', 'decode_gpus']
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError
from ..flags import check_at_least, check_positive, check_output_file
from .cli_serving import add_serving_args, run_pfc_demo, run_simulate, run_study
from .cliflags import BUILDER_FLAGS, DERIVED_FLAGS, flagged
from .topology.builders import fattree, roft, zcube
from .topology.cost import load_prices
from .topology.graph import Topology
from .topology.optics import REACH_SERVERS
from .topology.report import compare, describe

__all__ = ["add_parser", "run"]

# smallest value of each count flag (a command checks the ones it has, when set) and the flags that must be > 0
AT_LEAST = {"n": 1, "gpus": 1, "gpus_per_switch": 1, "links_per_pair": 1, "port_gbps": 1, "switch_radix": 1,
            "nic_gbps": 1, "gpus_per_server": 1, "oversubscription": 1, "max_requests": 1, "gpus_per_instance": 1,
            "decode_gpus": 0, "qps": 1, "seed": 0, "senders": 1, "nic_slices": 1, "decode_batch": 1,
            "prefill_slots": 1, "sessions": 0, "pfc_windows": 1, "reach_servers": 0, "jobs": 1,
            "decode_context": 1}
POSITIVE = ("switch_tbps", "ttft_slo", "tpot_slo", "pfc_window_s", "prefill_tok_s", "decode_step_s", "rate_scale",
            "gbps", "ms", "prefill_kv_gb", "decode_kv_gb")


def check_args(args: argparse.Namespace) -> None:
    """The numeric flags and output paths of a fabric command, before any work."""
    check_at_least(args, AT_LEAST)
    check_positive(args, POSITIVE)
    for name in ("out", "json", "plot"):
        if isinstance(getattr(args, name, None), str):
            check_output_file(getattr(args, name), name)


def add_topology_args(p: argparse.ArgumentParser) -> None:
    """A topology named by kind and builder flags, or a .json file (build, describe, draw)."""
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
    """`hyperdecode fabric` and its subcommands on the top-level command's subparsers `sub`."""
    f = sub.add_parser("fabric", help="cluster networks: build, describe, compare, draw ZCube / ROFT / fat-tree; "
                                      "simulate and study PD-disaggregated serving on them",
                       description="Cluster networks: build, describe, compare and draw ZCube / ROFT / fat-tree "
                                   "topologies; simulate PD-disaggregated serving of a request trace on one "
                                   "(simulate) or on ZCube and ROFT at the calibrated point (study).")
    fs = f.add_subparsers(dest="fabric_command", required=True, parser_class=parser_class)
    b = fs.add_parser("build", help="build a topology, print its counts, optionally save it as JSON")
    add_topology_args(b)
    b.add_argument("--out", help="write the topology JSON here")
    d = fs.add_parser("describe", help="counts, diameter, path multiplicity, bisection and cost of a topology")
    add_topology_args(d)
    d.add_argument("--prices", help="price table (JSON or YAML) overriding the defaults")
    d.add_argument("--json", action="store_true")
    c = fs.add_parser("compare", help="ZCube vs ROFT vs leaf-spine for N GPUs at a switch capacity, with optics "
                                      "under both counting conventions")
    c.add_argument("--gpus", type=int, required=True)
    c.add_argument("--switch-tbps", type=float, required=True, help="switch capacity, e.g. 12.8, 25.6, 51.2")
    c.add_argument("--nic-gbps", type=int, default=400)
    c.add_argument("--reach-servers", type=int, default=REACH_SERVERS,
                   help=f"servers a switch's copper (DAC) links reach; beyond, its links need optics (default "
                        f"{REACH_SERVERS}: one rack)")
    c.add_argument("--prices", help="price table (JSON or YAML) overriding the defaults")
    c.add_argument("--json", action="store_true")
    add_serving_args(fs)
    w = fs.add_parser("draw", help="a PNG of a small topology")
    add_topology_args(w)
    w.add_argument("--out", required=True, help="PNG file")


def topology_from(args: argparse.Namespace) -> Topology:
    """The topology the flags name: a saved .json or one built by kind."""
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


def print_counts(t: Topology) -> None:
    """GPUs, switches, links and optics of `t`, as `build` and `describe` print them."""
    c = t.counts()
    radix = ", ".join(f"{n} x {r}" for r, n in c["switches_by_radix"].items())
    print(f"{t.kind} {json.dumps(t.params)}")
    print(f"  GPUs {c['gpus']} ({c['servers']} servers, {t.nic_ports} NIC port(s) of {t.nic_gbps}G each)")
    print(f"  switches {c['switches']} ({radix})")
    print(f"  links {c['links']}: {c['copper_links']} copper + {c['fiber_links']} fiber; optics {c['optics']}")


def run_compare(args: argparse.Namespace) -> None:
    """`fabric compare`: ZCube, ROFT and leaf-spine side by side, optics under both conventions."""
    if int(args.switch_tbps * 1000 // args.nic_gbps) < 2:
        raise ConfigError(f"--switch-tbps {args.switch_tbps:g} gives switches of fewer than 2 ports at "
                          f"{args.nic_gbps}G")
    rows = flagged(DERIVED_FLAGS, compare, args.gpus, args.switch_tbps, args.nic_gbps, prices=load_prices(args.prices),
                   reach_servers=args.reach_servers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.gpus} GPUs, {args.switch_tbps}T switches; optics per fibre link (2 each) and as switch-side "
          f"modules with breakout; copper reaches {args.reach_servers} servers")
    print(f"{'topology':<9}{'switches':>9}{'copper':>8}{'fiber':>8}{'optics':>8}{'modules':>9}{'diam':>6}"
          f"{'paths/pairing':>15}{'cost $M':>9}{'$/GPU':>8}")
    for r in rows:
        m = r["multiplicity"].get("paths_per_best_pairing", ["-", "-"])
        o = r["optics_counts"]
        print(f"{r['topology']:<9}{r['switches']:>9}{o['copper_links']:>8}{o['fibre_links']:>8}{o['per_link']:>8}"
              f"{o['switch_modules']:>9}{r['diameter']:>6}{f'{m[0]}-{m[1]}':>15}{r['cost_total'] / 1e6:>9.2f}"
              f"{r['cost_per_gpu']:>8.0f}")
    z, rf = rows[0]["optics_counts"], rows[1]["optics_counts"]
    print(f"zcube vs roft: switches {100 * (rows[0]['switches'] / rows[1]['switches'] - 1):+.1f} %, optics "
          f"{100 * (rows[0]['optics'] / rows[1]['optics'] - 1):+.1f} % (2 per fibre link, copper where the builder "
          f"allows it), {100 * (z['per_link'] / rf['per_link'] - 1):+.1f} % (2 per fibre link, copper within "
          f"{args.reach_servers} servers), {100 * (z['switch_modules'] / rf['switch_modules'] - 1):+.1f} % (switch "
          f"modules); switches+optics cost "
          f"{100 * (rows[0]['switches_and_optics_cost'] / rows[1]['switches_and_optics_cost'] - 1):+.1f} % "
          "(default prices are assumptions: see --prices)")


def run(args: argparse.Namespace) -> None:
    """Runs the parsed `hyperdecode fabric` command."""
    cmd = args.fabric_command
    check_args(args)
    commands = {"simulate": run_simulate, "study": run_study, "pfc-demo": run_pfc_demo, "compare": run_compare}
    if cmd in commands:
        return commands[cmd](args)
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
        from .topology.draw import draw
        print(f"wrote {draw(topo, args.out)}", file=sys.stderr)
