"""PNG drawings of small topologies (matplotlib, headless).

ZCube is drawn as its (block, residue) grid: block switches down the left, residue switches along the bottom, each
GPU at the crossing of its two switches with a line to each; the K_{m,m} switch links run between the two groups.
Clos networks are drawn in tiers: GPUs (coloured by local rank, i.e. rail) at the bottom, then leaves, spines, cores.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import ConfigError
from .graph import Topology

__all__ = ["draw"]

MAX_GPUS = 1024


def draw(topo: Topology, out: str | Path) -> Path:
    """A PNG of a small topology (ZCube as blocks and residues, a Clos by tiers); the path written."""
    if topo.num_gpus > MAX_GPUS:
        raise ConfigError(f"drawing is for small instances (<= {MAX_GPUS} GPUs); this one has {topo.num_gpus}")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 10) if topo.kind == "zcube" else (14, 7), dpi=110)
    (_zcube if topo.kind == "zcube" else _clos)(topo, ax)
    c = topo.counts()
    ax.set_title(f"\n{topo.kind}: {c['gpus']} GPUs, {c['switches']} switches, {c['copper_links']} copper + "
                 f"{c['fiber_links']} fiber links, {c['optics']} optics")
    ax.set_axis_off()
    out = Path(out)
    out = out if out.suffix else out.with_suffix(".png")  # what savefig writes for a name without a suffix
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def _zcube(topo: Topology, ax) -> None:
    att, N = topo.attachments(), topo.num_gpus
    blocks = np.unique(att[:, 0])
    residues = np.unique(att[:, 1])
    by, rx = {b: i for i, b in enumerate(blocks)}, {r: i for i, r in enumerate(residues)}
    for a, b in zip(topo.link_a[~topo.is_gpu_link] - N, topo.link_b[~topo.is_gpu_link] - N):
        ax.plot([-1.5, rx[b]], [by[a], len(blocks) + 0.5], color="0.85", lw=0.4, zorder=0)
    for g in range(N):
        x, y = rx[att[g, 1]], by[att[g, 0]]
        ax.plot([-1.5, x], [y, y], color="tab:orange", lw=0.5, alpha=0.5, zorder=1)  # port A, copper
        ax.plot([x, x], [y, len(blocks) + 0.5], color="tab:blue", lw=0.5, alpha=0.5, zorder=1)  # port B, fiber
    ax.scatter([rx[r] for r in att[:, 1]], [by[b] for b in att[:, 0]], s=18, c="black", zorder=3, label="GPU")
    ax.scatter([-1.5] * len(blocks), range(len(blocks)), marker="s", s=90, c="tab:orange", zorder=4,
               label="block switch (port A, copper)")
    ax.scatter(range(len(residues)), [len(blocks) + 0.5] * len(residues), marker="s", s=90, c="tab:blue",
               zorder=4, label="residue switch (port B, fiber)")
    ax.invert_yaxis()
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=3, fontsize=8)


def _clos(topo: Topology, ax) -> None:
    N = topo.num_gpus
    xs = np.zeros(N + topo.num_switches)
    ys = np.zeros_like(xs)
    xs[:N], ys[:N] = np.linspace(0, 1, N), 0
    for tier in np.unique(topo.switch_tier):
        idx = np.nonzero(topo.switch_tier == tier)[0]
        xs[N + idx] = np.linspace(0, 1, len(idx) + 2)[1:-1]
        ys[N + idx] = tier + 1
    for a, b in zip(topo.link_a, topo.link_b):
        ax.plot([xs[a], xs[b]], [ys[a], ys[b]], color="0.7", lw=0.3, zorder=0)
    rank = np.arange(N) % topo.gpus_per_server
    ax.scatter(xs[:N], ys[:N], s=10, c=rank, cmap="tab10", zorder=3, label="GPU (colour = rail)")
    for tier in np.unique(topo.switch_tier):
        idx = N + np.nonzero(topo.switch_tier == tier)[0]
        ax.scatter(xs[idx], ys[idx], marker="s", s=40, zorder=4, label=topo.tier_names[tier])
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=4, fontsize=8)
