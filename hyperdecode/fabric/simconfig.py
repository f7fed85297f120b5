"""How a PD-disaggregated serving simulation is set up (simulate.py runs it): instances and their roles, how KV
and expert-parallel traffic are laid out, the capacities that couple the network to serving, and the SLOs.

>>> parse_pd_ratio("1:2"), SimConfig().kv_split
((1, 2), 'dp')
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from .topology import Topology

__all__ = ["SimConfig", "check_config", "parse_pd_ratio", "parse_failure", "roles", "PLACEMENTS", "KV_SPLITS",
           "TRAFFIC", "CLASSES", "PHASES"]

PLACEMENTS = ("contiguous", "interleaved", "random")
KV_SPLITS = ("dp", "striped", "single")
TRAFFIC = ("kv", "kv+ep")
CLASSES = ("same", "separate")  # one lossless class for all traffic, or EP strictly above KV
PHASES = ("prefill", "kv", "step")  # what waits for flows: a prefill, a KV transfer, a decode step


@dataclass
class SimConfig:
    gpus_per_instance: int = 8
    pd_ratio: tuple[int, int] = (1, 1)
    placement: str = "interleaved"
    kv_split: str = "dp"  # "dp": one random rank at each end; "striped": every rank to the same rank; "single": rank 0
    nic_slices: int = 1  # NICs per server a KV transfer is sliced over (at both ends)
    port_policy: str = "balanced"
    qps: int = 2
    traffic: str = "kv"  # or "kv+ep": with the MoE's expert-parallel all-to-all
    classes: str = "same"  # or "separate": EP on its own class, served before KV at every port
    ep_rounds: int = 1  # all-to-alls per prefill or decode step (the MoE layers' count: one per layer)
    ep_overlap: bool = True  # a round's all-to-all beside its compute (two-batch overlap), or after it
    prefill_kv_gb: float = 64.0  # KV memory of a prefill instance (requests being prefilled or sent) [assumption]
    decode_batch: int = 128  # running requests per decode instance [assumption]
    decode_kv_gb: float = 320.0  # KV memory of a decode instance [assumption]
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    failure: tuple[str, int, float] | None = None  # ("link" | "switch", id, time in s)
    prefix_cache: bool = False  # prompts' cached prefix blocks (the trace's hash_ids) fetched from the KV store
    seed: int = 0


def parse_pd_ratio(text: str) -> tuple[int, int]:
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


def roles(topo: Topology, cfg: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids of prefill and decode instances (instance i = GPUs i*g .. i*g+g-1)."""
    g = cfg.gpus_per_instance
    if g < 1 or topo.num_gpus % g:
        raise ConfigError(f"gpus_per_instance {g} must divide the {topo.num_gpus} GPUs")
    n = topo.num_gpus // g
    p, d = cfg.pd_ratio
    n_p = n * p // (p + d)
    if n < p + d or n_p < 1 or n - n_p < 1:
        raise ConfigError(f"P:D {p}:{d} does not fit {n} instances of {g} GPUs ({topo.num_gpus} GPUs): "
                          f"it needs at least {p + d} instances")
    if cfg.placement == "contiguous":
        is_p = np.arange(n) < n_p
    elif cfg.placement == "interleaved":
        is_p = np.diff(np.floor(np.arange(n + 1) * n_p / n)) > 0
    elif cfg.placement == "random":
        is_p = np.zeros(n, dtype=bool)
        is_p[np.random.default_rng(cfg.seed).permutation(n)[:n_p]] = True
    else:
        raise ConfigError(f"placement '{cfg.placement}' is not one of {PLACEMENTS}")
    return np.nonzero(is_p)[0], np.nonzero(~is_p)[0]


def check_config(topo: Topology, cfg: SimConfig) -> None:
    if cfg.kv_split not in KV_SPLITS:
        raise ConfigError(f"kv_split '{cfg.kv_split}' is not one of {KV_SPLITS}")
    if cfg.traffic not in TRAFFIC:
        raise ConfigError(f"traffic '{cfg.traffic}' is not one of {TRAFFIC}")
    if cfg.classes not in CLASSES:
        raise ConfigError(f"classes '{cfg.classes}' is not one of {CLASSES}")
    for name in ("qps", "nic_slices", "decode_batch", "ep_rounds"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.nic_slices > topo.gpus_per_server:
        raise ConfigError(f"nic_slices {cfg.nic_slices} exceeds the {topo.gpus_per_server} NICs of a server")
    for name in ("prefill_kv_gb", "decode_kv_gb", "ttft_slo_s", "tpot_slo_s"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"{name} must be positive, got {getattr(cfg, name)}")
