"""Topology builders: ZCube(n, 2) (SIGCOMM'25 "From ATOP to ZCube"), rail-optimized fat-tree (ROFT), leaf–spine.

Counts follow `network.md` §1.4: ZCube(n,2) on radix-2n switches holds n² GPUs with 2n switches, N copper +
2N fiber links and 4N optics; a 2-tier ROFT on radix R holds ≤ R²/2 GPUs with 3N/R switches and 2N links, a 3-tier
one ≤ R³/4 GPUs with 5N/R switches and 3N links (all fiber, 2 optics each).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError
from .graph import COPPER, FIBER, Topology

__all__ = ["zcube", "roft", "fattree"]


def _assemble(kind: str, params: dict[str, Any], num_gpus: int, nic_ports: int, nic_gbps: int,
              gpus_per_server: int, switches: np.ndarray, gpu_links: np.ndarray, switch_links: np.ndarray,
              tier_names: tuple[str, ...]) -> Topology:
    """switches: [S, 3] (radix, gbps, tier); gpu_links: [., 5] (gpu, port, switch, gbps, medium);
    switch_links: [., 4] (switch, switch, gbps, medium)."""
    N = num_gpus
    gl, sl = gpu_links.reshape(-1, 5), switch_links.reshape(-1, 4)
    t = Topology(kind=kind, params=params, num_gpus=N, nic_ports=nic_ports, nic_gbps=nic_gbps,
                 gpus_per_server=gpus_per_server, switch_radix=switches[:, 0].copy(),
                 switch_gbps=switches[:, 1].copy(), switch_tier=switches[:, 2].copy(),
                 link_a=np.concatenate([gl[:, 0], sl[:, 0] + N]), link_b=np.concatenate([gl[:, 2], sl[:, 1]]) + N,
                 link_gbps=np.concatenate([gl[:, 3], sl[:, 2]]), link_medium=np.concatenate([gl[:, 4], sl[:, 3]]),
                 link_port=np.concatenate([gl[:, 1], np.full(len(sl), -1, dtype=np.int64)]), tier_names=tier_names)
    t.check(kind)
    return t


def _positive(**values: Any) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"parameter '{name}' must be a positive integer, got {v!r}")


def zcube(n: int | None = None, k: int = 2, port_gbps: int = 200, links_per_pair: int = 1,
          num_gpus: int | None = None, gpus_per_switch: int | None = None, switch_radix: int | None = None,
          gpus_per_server: int = 8) -> Topology:
    """ZCube(n, 2): GPU g -> block switch g // n (port A, copper) and residue switch g % n (port B, fiber);
    one link (or `links_per_pair`) between every block and residue switch, none inside a group.

    The blog's form: `num_gpus=N, gpus_per_switch=k` gives m = N / k switches per group, GPU i -> block i // k,
    residue i % m; oversubscription k / (m · links_per_pair). With k > m some GPU pairs share both switches (the
    blog's ~1k-GPU case k = 128, m = 8 needs 16 links per pair). `switch_radix` checks that the ports fit.

    >>> t = zcube(4)
    >>> t.num_gpus, t.num_switches, t.attachments()[5].tolist()
    (16, 8, [1, 5])
    """
    if k != 2:
        raise ConfigError(f"parameter 'k': only ZCube(n, 2), the deployed form, is built (got k={k})")
    _positive(port_gbps=port_gbps, links_per_pair=links_per_pair, gpus_per_server=gpus_per_server)
    if n is not None:
        _positive(n=n)
        if num_gpus not in (None, n * n) or gpus_per_switch not in (None, n):
            raise ConfigError("give either n (paper form) or num_gpus and gpus_per_switch (blog form)")
        num_gpus, per_switch = n * n, n
    else:
        if num_gpus is None or gpus_per_switch is None:
            raise ConfigError("zcube needs n, or num_gpus and gpus_per_switch")
        _positive(num_gpus=num_gpus, gpus_per_switch=gpus_per_switch)
        per_switch = gpus_per_switch
        if num_gpus % per_switch:
            raise ConfigError(f"parameter 'num_gpus' ({num_gpus}) must be a multiple of gpus_per_switch "
                              f"({per_switch})")
    m = num_gpus // per_switch
    radix = per_switch + m * links_per_pair
    if switch_radix is not None and radix > switch_radix:
        largest = (switch_radix // 2) ** 2
        raise ConfigError(f"ZCube with {per_switch} GPUs and {m}x{links_per_pair} inter-group links per switch needs "
                          f"radix {radix} > {switch_radix}; the largest that fits is ZCube({switch_radix // 2}, 2) "
                          f"= {largest} GPUs")
    radix = switch_radix or radix
    g = np.arange(num_gpus)
    block, residue = g // per_switch, m + g % m
    switches = np.array([[radix, port_gbps, t] for t in (0, 1) for _ in range(m)], dtype=np.int64)
    gpu_links = np.concatenate([
        np.stack([g, np.zeros_like(g), block, np.full_like(g, port_gbps), np.full_like(g, COPPER)], 1),
        np.stack([g, np.ones_like(g), residue, np.full_like(g, port_gbps), np.full_like(g, FIBER)], 1)])
    b, r = np.meshgrid(np.arange(m), np.arange(m, 2 * m), indexing="ij")
    pairs = np.repeat(np.stack([b.ravel(), r.ravel()], 1), links_per_pair, axis=0)
    switch_links = np.concatenate([pairs, np.full((len(pairs), 1), port_gbps), np.full((len(pairs), 1), FIBER)], 1)
    params = {"n": n, "k": k, "port_gbps": port_gbps, "links_per_pair": links_per_pair, "num_gpus": num_gpus,
              "gpus_per_switch": per_switch, "switches_per_group": m,
              "oversubscription": per_switch / (m * links_per_pair)}
    return _assemble("zcube", params, num_gpus, 2, port_gbps, gpus_per_server, switches, gpu_links,
                     switch_links, ("block", "residue"))


def roft(num_gpus: int, switch_radix: int, nic_gbps: int = 400, tiers: int = 2, gpus_per_server: int = 8,
         oversubscription: float = 1.0) -> Topology:
    """Rail-optimized fat-tree: the GPU of local rank r in scalable unit u plugs into rail leaf (u, r); leaves
    form a Clos with spines (and cores at 3 tiers). A scalable unit is as many servers as a leaf has down ports.

    >>> t = roft(1024, 32, tiers=3)
    >>> t.num_switches, t.counts()["optics"]
    (160, 6144)
    """
    return _clos("roft", num_gpus, switch_radix, nic_gbps, tiers, gpus_per_server, oversubscription, rails=True)


def fattree(num_gpus: int, switch_radix: int, nic_gbps: int = 400, tiers: int = 2, gpus_per_server: int = 8,
            oversubscription: float = 1.0) -> Topology:
    """Plain leaf–spine fat-tree for reference: all GPUs of a server plug into the same leaf (no rails).

    >>> fattree(512, 32).num_switches
    48
    """
    return _clos("fattree", num_gpus, switch_radix, nic_gbps, tiers, gpus_per_server, oversubscription, rails=False)


def _smallest_divisor_at_least(n: int, lower: float) -> int:
    return next(d for d in range(1, n + 1) if n % d == 0 and d >= lower)


def _clos(kind: str, N: int, R: int, nic_gbps: int, tiers: int, gps: int, oversubscription: float,
          rails: bool) -> Topology:
    _positive(num_gpus=N, switch_radix=R, nic_gbps=nic_gbps, gpus_per_server=gps)
    if tiers not in (2, 3):
        raise ConfigError(f"parameter 'tiers' must be 2 or 3, got {tiers}")
    if not oversubscription >= 1.0:
        raise ConfigError(f"parameter 'oversubscription' must be >= 1.0, got {oversubscription}")
    if N % gps:
        raise ConfigError(f"parameter 'num_gpus' ({N}) must be a multiple of gpus_per_server ({gps})")
    down = int(round(R * oversubscription / (1 + oversubscription)))
    up = R - down
    if up < 1 or down < 1 or R % 2:
        raise ConfigError(f"parameter 'switch_radix' ({R}) must be even and leave up- and down-ports")
    cap = down * R if tiers == 2 else down * (R // 2) * R
    if N > cap:
        more = f"; tiers=3 holds up to {down * (R // 2) * R}" if tiers == 2 else ""
        raise ConfigError(f"a {tiers}-tier {kind} with radix {R} holds at most {cap} GPUs (asked {N}){more}")
    g = np.arange(N)
    if rails:
        leaf = (g // (down * gps)) * gps + g % gps  # rail leaf r of scalable unit u (down servers per unit)
    else:
        leaf = g // down
    leaves = int(leaf.max()) + 1
    switches = [[R, nic_gbps, 0]] * leaves
    gpu_links = np.stack([g, np.zeros_like(g), leaf, np.full_like(g, nic_gbps), np.full_like(g, FIBER)], 1)
    upper, links = _clos_upper_tiers(leaves, R, up, tiers)
    switches += [[R, nic_gbps, tier] for tier in upper]
    sl = np.array(links, dtype=np.int64).reshape(-1, 2)
    switch_links = np.concatenate([sl, np.full((len(sl), 1), nic_gbps), np.full((len(sl), 1), FIBER)], 1)
    params = {"num_gpus": N, "switch_radix": R, "nic_gbps": nic_gbps, "tiers": tiers, "gpus_per_server": gps,
              "oversubscription": down / up}
    if rails:
        params["servers_per_unit"] = down
    return _assemble(kind, params, N, 1, nic_gbps, gps, np.array(switches, dtype=np.int64), gpu_links,
                     switch_links, ("leaf", "spine", "core"))


def _clos_upper_tiers(leaves: int, R: int, up: int, tiers: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The switches above `leaves` leaves of `up` up-ports (their tiers, numbered from switch `leaves` on) and the
    links between tiers: spines at 2 tiers; pods of R/2 leaves with their aggregation switches, then cores, at 3."""
    links = []
    if tiers == 2:
        spines = _smallest_divisor_at_least(up, leaves * up / R)
        for lf in range(leaves):
            for j in range(up):
                links.append((lf, leaves + j % spines))
        return [1] * spines, links
    per_pod = R // 2  # leaves per pod = aggregation switches per pod; each agg has R/2 up-ports
    pods = -(-leaves // per_pod)
    aggs_per_pod = _smallest_divisor_at_least(up, min(leaves, per_pod) * up / (R // 2))
    agg0 = leaves
    for lf in range(leaves):
        pod = lf // per_pod
        for j in range(up):
            links.append((lf, agg0 + pod * aggs_per_pod + j % aggs_per_pod))
    agg_up = R // 2
    cores_per_group = _smallest_divisor_at_least(agg_up, pods * agg_up / R)
    core0 = agg0 + pods * aggs_per_pod
    for pod in range(pods):
        for a in range(aggs_per_pod):
            for j in range(agg_up):
                links.append((agg0 + pod * aggs_per_pod + a, core0 + a * cores_per_group + j % cores_per_group))
    return [1] * (pods * aggs_per_pod) + [2] * (aggs_per_pod * cores_per_group), links
