"""Counting optics two ways, with the reach assumption that decides copper against fibre.

Where a cable may be copper: the builders mark the links that can be (ZCube's block links: a block switch's GPUs
are meant to sit beside it, the paper's App. L). Whether they really can depends on how far the switch's GPUs
spread: a DAC cable at 200–400 Gb/s reaches ~2–3 m, about one rack, so a copper-capable link stays copper only when
the switch's GPUs sit on at most `reach_servers` servers (default 4 eight-GPU servers, one rack). ZCube(32, 2)'s
block is 4 servers (copper); the blog form's 128-GPU block on 51.2T switches spans 16 (fibre).

Two conventions:

- `per_link`: 2 transceivers per fibre link (one at each end), what `Topology.counts()["optics"]` reports when
  every copper-capable link is copper;
- `switch_modules`: transceiver modules in the switches' cages, with breakout: a module of `module_gbps` serves
  module_gbps / port_gbps fibre ports (an 800G OSFP: 2 x 400G or 4 x 200G; 800G at 51.2T switches, 400G below).
  The NIC ends are counted apart (`nic_side`, one per fibre GPU link).

>>> from hyperdecode.fabric import roft, zcube
>>> z, r = optics_counts(zcube(32)), optics_counts(roft(1024, 32, tiers=3))
>>> z["per_link"], r["per_link"], z["copper_links"]
(4096, 6144, 1024)
>>> from hyperdecode.fabric.topology.report import zcube_for
>>> blog = optics_counts(zcube_for(1024, 256))  # 128 GPUs per block switch: 16 servers, beyond copper's reach
>>> blog["per_link"], blog["switch_modules"], optics_counts(roft(1024, 128))["switch_modules"]
(6144, 1024, 1536)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError
from .graph import COPPER, Topology

__all__ = ["optics_counts", "link_media", "REACH_SERVERS", "module_gbps"]

REACH_SERVERS = 4  # servers a switch's copper (DAC) links can reach: about one rack of eight-GPU servers


def link_media(topo: Topology, reach_servers: int = REACH_SERVERS) -> np.ndarray:
    """[L] the medium of each link under the reach assumption: a copper-capable GPU link becomes fibre when its
    switch's GPUs sit on more than `reach_servers` servers."""
    if reach_servers < 0:
        raise ConfigError(f"reach_servers must be >= 0, got {reach_servers}")
    media = topo.link_medium.copy()
    gpu = np.nonzero(topo.is_gpu_link & (topo.link_medium == COPPER))[0]
    switch = topo.link_b[gpu] - topo.num_gpus
    server = topo.link_a[gpu] // topo.gpus_per_server
    spread = {int(s): len(set(server[switch == s].tolist())) for s in np.unique(switch)}
    too_far = np.array([spread[int(s)] > reach_servers for s in switch], dtype=bool)
    media[gpu[too_far]] = 1 - COPPER
    return media


def module_gbps(switch_gbps_total: float) -> int:
    """A switch cage's module speed: 800G OSFP on 51.2T switches, 400G below."""
    return 800 if switch_gbps_total >= 51_200 else 400


def optics_counts(topo: Topology, reach_servers: int = REACH_SERVERS) -> dict[str, Any]:
    """Optics under both conventions (module docstring) with the links' media under `reach_servers`."""
    media = link_media(topo, reach_servers)
    fibre = media != COPPER
    N = topo.num_gpus
    ports = np.zeros(topo.num_switches, dtype=np.int64)  # fibre ports in use per switch
    np.add.at(ports, topo.link_b[fibre] - N, 1)
    between = fibre & ~topo.is_gpu_link
    np.add.at(ports, topo.link_a[between] - N, 1)
    capacity = topo.switch_radix * topo.switch_gbps
    per_module = np.array([max(1, module_gbps(c) // g) for c, g in zip(capacity.tolist(), topo.switch_gbps.tolist())])
    modules = int(np.ceil(ports / per_module).sum())
    return {"per_link": int(2 * fibre.sum()), "switch_modules": modules,
            "nic_side": int((fibre & topo.is_gpu_link).sum()), "fibre_links": int(fibre.sum()),
            "copper_links": int((~fibre).sum()), "reach_servers": reach_servers}
