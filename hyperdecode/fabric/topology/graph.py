"""A cluster network as compact arrays: GPUs with NIC ports, switches, links (speed, medium), servers.

Nodes are numbered GPUs first (0..N-1), then switches (N..N+S-1). A GPU link joins a GPU's NIC `port` to a switch;
a switch link joins two switches (port -1). Parallel links between the same switches are separate rows.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError

__all__ = ["Topology", "COPPER", "FIBER", "MEDIA"]

COPPER, FIBER = 0, 1
MEDIA = ("copper", "fiber")


@dataclass
class Topology:
    """GPUs, switches and the links between them as arrays, with each GPU's NIC ports and each link's medium."""
    kind: str  # "zcube", "roft", "fattree"
    params: dict[str, Any]
    num_gpus: int
    nic_ports: int  # NIC ports per GPU
    nic_gbps: int  # per port
    gpus_per_server: int
    switch_radix: np.ndarray  # [S] ports per switch
    switch_gbps: np.ndarray  # [S] port speed
    switch_tier: np.ndarray  # [S] ZCube: 0 block / 1 residue group; Clos: 0 leaf, 1 spine, 2 core
    link_a: np.ndarray  # [L] node id
    link_b: np.ndarray  # [L] node id (a switch)
    link_gbps: np.ndarray  # [L]
    link_medium: np.ndarray  # [L] COPPER or FIBER
    link_port: np.ndarray  # [L] the GPU's NIC port for GPU links, -1 for switch links
    tier_names: tuple[str, ...] = ("leaf", "spine", "core")
    _attach: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def num_switches(self) -> int:
        return len(self.switch_radix)

    @property
    def num_links(self) -> int:
        return len(self.link_a)

    @property
    def is_gpu_link(self) -> np.ndarray:
        return self.link_port >= 0

    def attachments(self) -> np.ndarray:
        """[N, ports]: the switch (0-based switch index) each NIC port plugs into; -1 if unplugged."""
        if self._attach is None:
            att = np.full((self.num_gpus, self.nic_ports), -1, dtype=np.int64)
            g = self.is_gpu_link
            att[self.link_a[g], self.link_port[g]] = self.link_b[g] - self.num_gpus
            self._attach = att
        return self._attach

    def switch_adjacency(self) -> np.ndarray:
        """Dense [S, S] count of links between switches (parallel links counted)."""
        S, N = self.num_switches, self.num_gpus
        adj = np.zeros((S, S), dtype=np.int64)
        s = ~self.is_gpu_link
        np.add.at(adj, (self.link_a[s] - N, self.link_b[s] - N), 1)
        return adj + adj.T

    def counts(self) -> dict[str, Any]:
        """What to buy: switches by radix, links by medium, optics (2 per fiber link), NIC ports.

        >>> from hyperdecode.fabric import zcube
        >>> c = zcube(32).counts()
        >>> c["switches"], c["copper_links"], c["fiber_links"], c["optics"]
        (64, 1024, 2048, 4096)
        """
        fiber = int((self.link_medium == FIBER).sum())
        radix = {f"{r}x{g}G": int(n) for (r, g), n in
                 zip(*np.unique(np.stack([self.switch_radix, self.switch_gbps], 1), axis=0, return_counts=True))}
        return {"gpus": self.num_gpus, "switches": self.num_switches, "switches_by_radix": radix,
                "links": self.num_links, "gpu_links": int(self.is_gpu_link.sum()),
                "switch_links": int((~self.is_gpu_link).sum()),
                "copper_links": int((self.link_medium == COPPER).sum()), "fiber_links": fiber,
                "optics": 2 * fiber, "nic_ports": self.num_gpus * self.nic_ports,
                "servers": -(-self.num_gpus // self.gpus_per_server)}

    def to_networkx(self) -> Any:
        """A networkx MultiGraph: nodes ("gpu", i) / ("switch", j) with `kind`, ids, server/tier; edges carry
        `gbps`, `medium` and, for GPU links, the NIC `port`."""
        import networkx as nx
        G = nx.MultiGraph(kind=self.kind, **{k: v for k, v in self.params.items() if np.isscalar(v)})
        for g in range(self.num_gpus):
            G.add_node(("gpu", g), kind="gpu", id=g, server=g // self.gpus_per_server,
                       local_rank=g % self.gpus_per_server)
        for s in range(self.num_switches):
            G.add_node(("switch", s), kind="switch", id=s, tier=int(self.switch_tier[s]),
                       radix=int(self.switch_radix[s]), gbps=int(self.switch_gbps[s]))
        N = self.num_gpus
        for a, b, gbps, med, port in zip(self.link_a.tolist(), self.link_b.tolist(), self.link_gbps.tolist(),
                                         self.link_medium.tolist(), self.link_port.tolist()):
            u = ("gpu", a) if port >= 0 else ("switch", a - N)
            attrs = {"gbps": gbps, "medium": MEDIA[med]}
            if port >= 0:
                attrs["port"] = port
            G.add_edge(u, ("switch", b - N), **attrs)
        return G

    def to_dict(self) -> dict[str, Any]:
        arrays = ("switch_radix", "switch_gbps", "switch_tier", "link_a", "link_b", "link_gbps", "link_medium",
                  "link_port")
        return {"format": "hyperdecode.fabric/1", "kind": self.kind, "params": self.params,
                "num_gpus": self.num_gpus, "nic_ports": self.nic_ports, "nic_gbps": self.nic_gbps,
                "gpus_per_server": self.gpus_per_server, "tier_names": list(self.tier_names),
                **{k: getattr(self, k).tolist() for k in arrays}}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "topology") -> "Topology":
        if not isinstance(d, dict) or d.get("format") != "hyperdecode.fabric/1":
            raise ConfigError(f"{source}: not a hyperdecode.fabric/1 topology (field 'format')")
        try:
            t = cls(kind=d["kind"], params=d["params"], num_gpus=int(d["num_gpus"]), nic_ports=int(d["nic_ports"]),
                    nic_gbps=int(d["nic_gbps"]), gpus_per_server=int(d["gpus_per_server"]),
                    tier_names=tuple(d.get("tier_names", ("leaf", "spine", "core"))),
                    **{k: np.asarray(d[k], dtype=np.int64) for k in (
                        "switch_radix", "switch_gbps", "switch_tier", "link_a", "link_b", "link_gbps",
                        "link_medium", "link_port")})
        except KeyError as e:
            raise ConfigError(f"{source}: missing field {e}") from None
        t.check(source)
        return t

    @classmethod
    def load(cls, path: str | Path) -> "Topology":
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: topology file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))

    def check(self, source: str = "topology") -> None:
        """Consistency: array lengths, node ids in range, no switch port over its radix."""
        S, N, L = self.num_switches, self.num_gpus, self.num_links
        for k in ("switch_gbps", "switch_tier"):
            if len(getattr(self, k)) != S:
                raise ConfigError(f"{source}: field '{k}' has {len(getattr(self, k))} entries, expected {S}")
        for k in ("link_b", "link_gbps", "link_medium", "link_port"):
            if len(getattr(self, k)) != L:
                raise ConfigError(f"{source}: field '{k}' has {len(getattr(self, k))} entries, expected {L}")
        if L and (self.link_b.min() < N or self.link_b.max() >= N + S or self.link_a.min() < 0
                  or self.link_a.max() >= N + S):
            raise ConfigError(f"{source}: a link refers to a node outside 0..{N + S - 1}")
        gpu = self.is_gpu_link
        if (self.link_a[gpu] >= N).any() or (self.link_a[~gpu] < N).any() or (self.link_port >= self.nic_ports).any():
            raise ConfigError(f"{source}: 'link_port' must be a NIC port (< {self.nic_ports}) exactly on GPU links")
        used = np.bincount(self.link_b - N, minlength=S) + np.bincount(self.link_a[~gpu] - N, minlength=S)
        over = np.nonzero(used > self.switch_radix)[0]
        if len(over):
            raise ConfigError(f"{source}: switch {int(over[0])} uses {int(used[over[0]])} ports "
                              f"but has radix {int(self.switch_radix[over[0]])}")
