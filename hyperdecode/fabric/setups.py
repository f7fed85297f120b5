"""The topologies and model a serving run compares, built from what the commands take: GPUs, a switch capacity, a
NIC speed (ZCube: two ports of half of it), and the model on a decode plan.

A study's slower NICs run on the switches of its fastest (`fastest_gbps`): as many ports, each slower, so only the
speed changes between NIC variants.

>>> build("zcube", 1024, 51.2, 400).params["gpus_per_switch"], build("roft", 1024, 51.2, 400).params["tiers"]
(128, 2)
>>> build("roft", 512, 25.6, 100, fastest_gbps=400).params["switch_radix"]  # 64 ports at 100G
64
"""
from __future__ import annotations

import math

from ..errors import ConfigError
from .flow.workload import Workload
from .topology.builders import fattree, roft, zcube
from .topology.graph import Topology
from .topology.report import zcube_for

__all__ = ["switch_radix", "build", "study_topologies", "decode_context", "NAMES"]

NAMES = ("zcube", "zcube-single-path", "roft", "roft-3-tier", "fattree")


def switch_radix(switch_tbps: float, port_gbps: int, speedup: float = 1.0) -> int:
    """Ports of a `switch_tbps` switch at `port_gbps` per port, or at `speedup` times that speed."""
    radix = int(switch_tbps * 1000 // (port_gbps * speedup))
    if radix < 2:
        raise ConfigError(f"--switch-tbps {switch_tbps:g} gives switches of {radix} port(s) at {port_gbps}G "
                          "(at least 2 are needed)")
    return radix


def build(name: str, gpus: int, switch_tbps: float, nic_gbps: int, fastest_gbps: int | None = None) -> Topology:
    """One of NAMES: ZCube in the form that fills the switches (the blog's, with parallel links, when N > (radix /
    2)²) or the paper's single-path ZCube(√N, 2); ROFT with the fewest tiers that hold N, or with 3; a leaf-spine.
    A topology .json file is loaded."""
    if name.endswith(".json"):
        return Topology.load(name)
    speedup = (fastest_gbps or nic_gbps) / nic_gbps
    if name.startswith("zcube"):
        port = nic_gbps // 2
        if port < 1:
            raise ConfigError(f"--nic-gbps {nic_gbps} is too slow for ZCube's two NIC ports (at least 2)")
        if name == "zcube":
            return zcube_for(gpus, switch_radix(switch_tbps, port, speedup), port)
        n = math.isqrt(gpus)
        if n * n != gpus:
            raise ConfigError(f"zcube-single-path needs a square GPU count (ZCube(n, 2) has n² GPUs), got {gpus}")
        return zcube(n, port_gbps=port)
    if name in ("roft", "roft-3-tier", "fattree"):
        radix = switch_radix(switch_tbps, nic_gbps, speedup)
        tiers = 3 if name == "roft-3-tier" or gpus > radix * radix // 2 else 2
        return (fattree if name == "fattree" else roft)(gpus, radix, nic_gbps=nic_gbps, tiers=tiers)
    raise ConfigError(f"topology '{name}' is not one of {', '.join(NAMES)} or a .json file")


def study_topologies(gpus: int, switch_tbps: float, nic_gbps: int, fastest_gbps: int | None = None
                     ) -> dict[str, Topology]:
    """ZCube in the form that fills the switches and, when it has parallel links and N is a square, the paper's
    single-path form too; ROFT with the fewest tiers and, when that is 2, with 3."""
    out = {"zcube": build("zcube", gpus, switch_tbps, nic_gbps, fastest_gbps)}
    if math.isqrt(gpus) ** 2 == gpus and out["zcube"].params.get("links_per_pair", 1) > 1:
        out["zcube-single-path"] = build("zcube-single-path", gpus, switch_tbps, nic_gbps, fastest_gbps)
    out["roft"] = build("roft", gpus, switch_tbps, nic_gbps, fastest_gbps)
    if out["roft"].params["tiers"] == 2:
        out["roft-3-tier"] = build("roft-3-tier", gpus, switch_tbps, nic_gbps, fastest_gbps)
    return out


def decode_context(work: Workload) -> int:
    """The context a decode step sees on average: the trace's mean prompt plus half its mean output."""
    return max(int(round(float(work.input_tokens.mean()) + float(work.output_tokens.mean()) / 2)), 1)
