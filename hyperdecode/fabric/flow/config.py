"""How a PD-disaggregated serving simulation is set up (serving.py runs it): instances and their roles, how KV and
expert-parallel traffic are laid out and routed, the capacities that couple the network to serving, the load, and
the SLOs. `SimConfig()` is the plain model the known-answer tests pin down; `calibrated()` is the operating point
checked against Z.ai's NIC ablation (bench/fabric_calibrate.py), the default of `fabric simulate` and `fabric study`.

>>> parse_pd_ratio("1:2"), SimConfig().kv_split, calibrated().port_policy
((1, 2), 'dp', 'split')
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import ConfigError
from ..topology.graph import Topology
from .routing import HASH_MODELS, PORT_POLICIES

__all__ = ["SimConfig", "calibrated", "check_config", "parse_pd_ratio", "parse_failure", "PLACEMENTS", "LAYOUTS",
           "KV_SPLITS", "TRAFFIC", "CLASSES", "CALIBRATED", "SESSIONS_PER_GPU"]

PLACEMENTS = ("contiguous", "interleaved", "random")  # how prefill and decode instances alternate
LAYOUTS = ("auto", "packed", "spread")  # which servers make an instance (placement.py)
KV_SPLITS = ("dp", "striped", "single")
TRAFFIC = ("kv", "kv+ep")
CLASSES = ("same", "separate")  # one lossless class for all traffic, or EP strictly above KV


@dataclass
class SimConfig:
    """A serving simulation's setup: instances, traffic layout and routing, capacities, load and SLOs."""
    gpus_per_instance: int = 8  # a prefill instance's GPUs (and a decode instance's, unless decode_gpus is set)
    decode_gpus: int = 0  # a decode instance's GPUs; 0: gpus_per_instance
    pd_ratio: tuple[int, int] = (1, 1)  # prefill : decode GPUs
    placement: str = "interleaved"
    layout: str = "packed"
    kv_split: str = "dp"  # "dp": the request's rank to a random rank; "striped": every rank to the same rank;
    #                       "single": rank 0 to rank 0
    nic_slices: int = 1  # NICs per server a KV transfer is sliced over (at both ends)
    port_policy: str = "balanced"
    hashing: str = "ideal"  # ECMP hash model (routing.py)
    qps: int = 2
    traffic: str = "kv"  # or "kv+ep": with the MoE's expert-parallel all-to-all of instances over several servers
    classes: str = "same"  # or "separate": EP on its own class, served before KV at every port
    ep_overlap: bool = True  # the all-to-all beside the compute (two-batch overlap), or after it
    prefill_slots: int = 1  # prefills in flight per instance, sharing its compute (chunked prefill)
    prefill_kv_gb: float = 64.0  # KV memory of a prefill instance (requests being prefilled or sent) [assumption]
    decode_batch: int = 128  # running requests per decode instance [assumption]
    decode_kv_gb: float = 320.0  # KV memory of a decode instance [assumption]
    sessions: int = 0  # > 0: a closed loop of that many clients (each sends its next request when one ends)
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    failure: tuple[str, int, float] | None = None  # ("link" | "switch", id, time in s)
    prefix_cache: bool = False  # prompts' cached prefix blocks (the trace's hash_ids) fetched from the KV store
    seed: int = 0

    @property
    def decode_instance_gpus(self) -> int:
        return self.decode_gpus or self.gpus_per_instance


# the operating point checked against Z.ai's ablation on 512 GPUs (bench/fabric_calibrate.py,
# bench/NOTES.md, "Fabric, issue 33"); its load is 2 closed-loop clients per GPU
SESSIONS_PER_GPU = 2
CALIBRATED = dict(gpus_per_instance=24, decode_gpus=8, pd_ratio=(1, 1), layout="auto", kv_split="dp",
                  nic_slices=2, port_policy="split", hashing="ideal", qps=2, traffic="kv+ep", classes="same",
                  ep_overlap=True, prefill_slots=8, decode_batch=128, prefix_cache=True,
                  sessions=SESSIONS_PER_GPU * 512)


def calibrated(**overrides) -> SimConfig:
    """The calibrated operating point, with any field replaced."""
    return dataclasses.replace(SimConfig(**CALIBRATED), **overrides)


def parse_pd_ratio(text: str) -> tuple[int, int]:
    """'P:D' (prefill : decode GPUs) as two positive integers."""
    try:
        p, d = (int(x) for x in text.split(":"))
    except ValueError:
        raise ConfigError(f"P:D ratio '{text}' must look like 1:2") from None
    if p < 1 or d < 1:
        raise ConfigError(f"P:D ratio '{text}' needs at least one of each")
    return p, d


def parse_failure(text: str) -> tuple[str, int, float]:
    """'link:ID@T' or 'switch:ID@T' (T in seconds of simulated time)."""
    try:
        what, rest = text.split(":", 1)
        ident, at = rest.split("@", 1)
        out = (what, int(ident), float(at))
    except ValueError:
        raise ConfigError(f"failure '{text}' must look like link:12@30 or switch:3@30") from None
    if what not in ("link", "switch") or out[2] < 0:
        raise ConfigError(f"failure '{text}' must name a link or a switch and a time >= 0")
    return out


def check_config(topo: Topology, cfg: SimConfig) -> None:
    """Every field's choice and range against the topology (the instance sizes are checked by placement.place)."""
    choices = {"kv_split": KV_SPLITS, "traffic": TRAFFIC, "classes": CLASSES, "placement": PLACEMENTS,
               "layout": LAYOUTS, "port_policy": PORT_POLICIES, "hashing": HASH_MODELS}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} '{getattr(cfg, name)}' is not one of {allowed}")
    for name in ("qps", "nic_slices", "decode_batch", "prefill_slots"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.decode_gpus < 0 or cfg.sessions < 0:
        raise ConfigError("decode_gpus and sessions must be >= 0")
    if cfg.nic_slices > topo.gpus_per_server:
        raise ConfigError(f"nic_slices {cfg.nic_slices} exceeds the {topo.gpus_per_server} NICs of a server")
    for name in ("prefill_kv_gb", "decode_kv_gb", "ttft_slo_s", "tpot_slo_s"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
