"""`hyperdecode fabric build | describe | compare | draw`."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError
from .builders import fattree, roft, zcube
from .cost import load_prices
from .report import compare, describe
from .topology import Topology

__all__ = ["add_parser", "run"]


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
    f = sub.add_parser("fabric", help="cluster networks: build, describe, compare, draw ZCube / ROFT / fat-tree")
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
    w = fs.add_parser("draw", help="a PNG of a small topology")
    add_topology_args(w)
    w.add_argument("--out", required=True, help="PNG file")


def topology_from(args: argparse.Namespace) -> Topology:
    kind = args.topology
    if kind.endswith(".json"):
        return Topology.load(kind)
    if kind == "zcube":
        return zcube(args.n, port_gbps=args.port_gbps, links_per_pair=args.links_per_pair, num_gpus=args.gpus,
                     gpus_per_switch=args.gpus_per_switch, switch_radix=args.switch_radix,
                     gpus_per_server=args.gpus_per_server)
    if kind in ("roft", "fattree"):
        if args.gpus is None or args.switch_radix is None:
            raise ConfigError(f"{kind} needs --gpus and --switch-radix")
        return (roft if kind == "roft" else fattree)(args.gpus, args.switch_radix, nic_gbps=args.nic_gbps,
                                                     tiers=args.tiers, gpus_per_server=args.gpus_per_server,
                                                     oversubscription=args.oversubscription)
    raise ConfigError(f"topology '{kind}' is not zcube, roft, fattree or a .json file")


def print_counts(t: Topology) -> None:
    c = t.counts()
    radix = ", ".join(f"{n} x {r}" for r, n in c["switches_by_radix"].items())
    print(f"{t.kind} {json.dumps(t.params)}")
    print(f"  GPUs {c['gpus']} ({c['servers']} servers, {t.nic_ports} NIC port(s) of {t.nic_gbps}G each)")
    print(f"  switches {c['switches']} ({radix})")
    print(f"  links {c['links']}: {c['copper_links']} copper + {c['fiber_links']} fiber; optics {c['optics']}")


def run(args: argparse.Namespace) -> None:
    cmd = args.fabric_command
    if cmd == "compare":
        rows = compare(args.gpus, args.switch_tbps, args.nic_gbps, prices=load_prices(args.prices))
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
