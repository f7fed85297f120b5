"""Which GPUs make each prefill and decode instance.

The servers are put in a layout order and cut, in that order, into instances whose roles alternate as `placement`
says (`interleaved`: prefill instances spread evenly among the decode ones; `contiguous`: prefill first; `random`).
The P:D ratio counts GPUs, so instances of different sizes mix (prefill over 4 servers, decode on one).

Layouts: `packed` takes servers in index order, so an instance's servers are neighbours (one ROFT scalable unit;
in ZCube(32, 2) a 32-GPU instance fills one block, so its rail peers share the block switch and its all-to-all
uses port A only). `spread` takes them on a diagonal of the (group, position) grid, a group being the servers whose
first GPU plugs into the same switch (a ZCube block, a ROFT scalable unit): consecutive servers then differ in
group and in position, so in ZCube an instance spans blocks and residues and its all-to-all can use both port
sets. `auto`: spread on ZCube, packed on Clos networks (each fabric's own best practice).

>>> from hyperdecode.fabric import zcube
>>> from hyperdecode.fabric.flow.config import SimConfig
>>> p = place(zcube(32), SimConfig(gpus_per_instance=32, layout="spread"))
>>> len({int(g) // 32 for g in p.prefill[0]})  # the first prefill instance's blocks
4
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ConfigError
from ..topology.graph import Topology
from .config import SimConfig

__all__ = ["Placement", "place", "server_order"]


@dataclass
class Placement:
    """Which GPUs make each prefill and each decode instance."""
    prefill: list[np.ndarray]  # each prefill instance's GPUs, its ranks in order
    decode: list[np.ndarray]


def server_order(topo: Topology, layout: str) -> np.ndarray:
    """The servers in the layout's order (module docstring)."""
    servers = topo.num_gpus // topo.gpus_per_server
    if layout == "auto":
        layout = "spread" if topo.kind == "zcube" else "packed"
    if layout == "packed" or servers < 2:
        return np.arange(servers)
    first = topo.attachments()[np.arange(servers) * topo.gpus_per_server, 0]
    groups = [np.nonzero(first == switch)[0] for switch in np.unique(first)]
    size = len(groups[0])
    if any(len(g) != size for g in groups):
        return np.arange(servers)
    return np.array([groups[(shift + position) % len(groups)][position]
                     for shift in range(len(groups)) for position in range(size)])


def _roles(n_prefill: int, n_decode: int, placement: str, seed: int) -> np.ndarray:
    """True where the k-th instance in layout order is a prefill instance."""
    n = n_prefill + n_decode
    if placement == "contiguous":
        return np.arange(n) < n_prefill
    if placement == "interleaved":
        return np.diff(np.floor(np.arange(n + 1) * n_prefill / n)) > 0
    is_prefill = np.zeros(n, dtype=bool)
    is_prefill[np.random.default_rng(seed).permutation(n)[:n_prefill]] = True
    return is_prefill


def place(topo: Topology, cfg: SimConfig) -> Placement:
    """The instances of `cfg` on `topo` (module docstring)."""
    g, gd, N, per = cfg.gpus_per_instance, cfg.decode_instance_gpus, topo.num_gpus, topo.gpus_per_server
    for size, name in ((g, "gpus_per_instance"), (gd, "decode_gpus")):
        if size < 1 or (N % size if g == gd else size % per and per % size):
            need = f"divide the {N} GPUs" if g == gd else f"be a multiple or a divisor of a server's {per} GPUs"
            raise ConfigError(f"{name} {size} must {need}")
    p, d = cfg.pd_ratio
    n_prefill = N * p // (p + d) // g
    n_decode = (N - n_prefill * g) // gd
    if g == gd and (N // g < p + d or n_prefill < 1 or n_decode < 1):
        raise ConfigError(f"P:D {p}:{d} does not fit {N // g} instances of {g} GPUs ({N} GPUs): "
                          f"it needs at least {p + d} instances")
    if n_prefill < 1 or n_decode < 1:
        raise ConfigError(f"P:D {p}:{d} (GPUs) leaves no room for a {g}-GPU prefill and a {gd}-GPU decode instance "
                          f"on {N} GPUs")
    if N - n_prefill * g - n_decode * gd:
        raise ConfigError(f"P:D {p}:{d} on {N} GPUs leaves {N - n_prefill * g - n_decode * gd} GPUs out of "
                          f"{g}-GPU prefill and {gd}-GPU decode instances")
    gpus = (server_order(topo, cfg.layout)[:, None] * topo.gpus_per_server + np.arange(topo.gpus_per_server)).ravel()
    out = Placement([], [])
    at = 0
    for is_prefill in _roles(n_prefill, n_decode, cfg.placement, cfg.seed):
        size = g if is_prefill else gd
        (out.prefill if is_prefill else out.decode).append(gpus[at:at + size])
        at += size
    return out
