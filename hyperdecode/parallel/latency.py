"""A batch-1 decode latency model for one step of a GLM-5 / DeepSeek-family model over W GPUs, under two plans:

- `tp`: every rank runs the DSA indexer itself (replicated weights, every index key read on every rank), the
  attention heads are split over all W ranks (padded: ceil(heads / W) each), the MoE is expert-sliced (each rank
  holds 1/W of every expert's intermediate columns).
- `hetero` (TileRT's roles): rank 0 runs the indexer alone and writes the top-k positions into the others' receive
  buffers (one hop); ranks 1..W-1 run MLA with the heads split over W-1; every rank runs the expert-sliced MoE.
  While the others attend, rank 0 has nothing of the layer left but to wait for the output projection's
  all-reduce (its MoE slice needs the new residual): the model counts that as idle.

Per layer and rank it counts bytes read (weights at `weight_bytes`, latents of the selected positions, indexer
keys), the indexer's work (positions scored and selected), and the dependent steps: intra-GPU stages (each a grid
synchronisation) and cross-GPU hops (one-sided writes + a flag; an all-reduce is one hop that pushes a partial to
each peer). Time = bytes / (HBM bandwidth x efficiency) per phase, on the slowest rank, + stages x stage cost +
hops x (hop latency + bytes x peers / NVLink bandwidth) + the indexer's selection. MTP: a verify step of 1 + k
tokens (the experts the tokens route to, uniform routing: E x (1 - (1 - top_k / E) ^ S) distinct), plus k steps of
the MTP layer; tokens per step = the mean accepted length.

>>> from hyperdecode.model.loader import preset_config
>>> est = estimate(preset_config("glm-5"), 8, HARDWARE["b200"], context=32768, strategy="hetero")
>>> est.hops_per_step == 3 * 78 + 1  # per layer: the positions' hand-off and two all-reduces; the LM head's gather
True
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError
from ..hardware import GPUS, TABLE, Machine
from ..model.registry import ModelConfig, family_of

__all__ = ["Hardware", "HARDWARE", "LayerCost", "Estimate", "estimate", "load_hardware", "parse_context",
           "STRATEGIES", "STAGES"]

STRATEGIES = ("tp", "hetero")
# dependent intra-GPU stages per layer part, as the megakernel compiles them (engine/mega/program_mla.py):
# projections, latent norms, q_b, RoPE + cache append, top-k, attention, W_UV, o_proj | router, routing, up, down
STAGES = {"attention": 8, "moe": 4, "mlp": 2}


Hardware = Machine  # one GPU and its links: a row of the hardware table (hyperdecode/hardware.py)
HARDWARE = {name: TABLE[name] for name in GPUS}  # h100, h200, b200


def load_hardware(name: str, path: str | None = None) -> Hardware:
    """The table's entry `name`, with the fields a JSON file gives for it (`{"b200": {"hop_us": 3.0}}`)."""
    table = dict(HARDWARE)
    if path is not None:
        try:
            given = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"--hw-file {path}: {e}") from None
        for key, fields in given.items():
            base = table.get(key, HARDWARE["h200"])
            try:
                table[key] = replace(base, name=key, **fields)
            except TypeError as e:
                raise ConfigError(f"--hw-file {path}: entry '{key}': {e}") from None
    if name not in table:
        raise ConfigError(f"hardware '{name}' is not in the table (known: {', '.join(sorted(table))})")
    return table[name]


def parse_context(text: str | int) -> int:
    """Tokens: 1024, "1k" (= 1024), "192K".

    >>> parse_context("192k"), parse_context("4096")
    (196608, 4096)
    """
    m = re.fullmatch(r"\s*(\d+)\s*([kK]?)\s*", str(text))
    if not m or int(m.group(1)) < 1:
        raise ConfigError(f"--context must be a positive number of tokens, e.g. 1024 or 1k; got {text!r}")
    return int(m.group(1)) * (1024 if m.group(2) else 1)


@dataclass
class LayerCost:
    """One layer on the slowest rank: bytes by kind (per rank), and its time by term."""
    layer: int
    kind: str  # "dense" or "moe"
    weight_bytes: float
    latent_bytes: float
    index_key_bytes: float
    indexer_positions: int  # positions the indexer scores (on each rank that runs it)
    hops: int
    hop_bytes: float  # summed over the layer's hops, per sender
    hbm_us: float
    stage_us: float
    hop_us: float
    select_us: float
    idle_us: float = 0.0  # hetero: rank 0's wait while the others attend

    @property
    def total_us(self) -> float:
        return self.hbm_us + self.stage_us + self.hop_us + self.select_us


@dataclass
class Estimate:
    strategy: str
    gpus: int
    hardware: str
    context: int
    tokens_per_step: int  # 1, or 1 + k with MTP
    layers: list[LayerCost] = field(default_factory=list)
    head_us: float = 0.0
    mtp_us: float = 0.0  # the MTP layer's k steps
    launch_us: float = 0.0
    mean_accepted: float = 1.0
    bytes_total: float = 0.0  # every rank together, one step
    aggregate_tbps: float = 0.0

    @property
    def step_us(self) -> float:
        return sum(c.total_us for c in self.layers) + self.head_us + self.mtp_us + self.launch_us

    @property
    def tpot_ms(self) -> float:
        return self.step_us / 1e3 / self.mean_accepted

    @property
    def tokens_per_s(self) -> float:
        return 1e6 * self.mean_accepted / self.step_us

    @property
    def hops_per_step(self) -> int:
        return sum(c.hops for c in self.layers) + 1  # + the LM head's top-1 gather

    @property
    def bandwidth_bound_tok_s(self) -> float:
        """Bytes alone: every rank's bytes over the aggregate HBM bandwidth (no latency, no hops)."""
        return self.mean_accepted * self.aggregate_tbps * 1e12 / self.bytes_total

    def summary(self) -> dict:
        terms = {t: round(sum(getattr(c, t) for c in self.layers), 1) for t in ("hbm_us", "stage_us", "hop_us",
                                                                                 "select_us", "idle_us")}
        return dict(strategy=self.strategy, gpus=self.gpus, hardware=self.hardware, context=self.context,
                    tokens_per_step=self.tokens_per_step, mean_accepted=self.mean_accepted,
                    step_us=round(self.step_us, 1), tpot_ms=round(self.tpot_ms, 4),
                    tokens_per_s=round(self.tokens_per_s, 1), hops_per_step=self.hops_per_step,
                    head_us=round(self.head_us, 1), mtp_us=round(self.mtp_us, 1), launch_us=self.launch_us,
                    bytes_per_step_gb=round(self.bytes_total / 1e9, 3),
                    bandwidth_bound_tok_s=round(self.bandwidth_bound_tok_s, 1),
                    aggregate_hbm_share=round(self.tokens_per_s / self.bandwidth_bound_tok_s, 4), **terms)

    def table(self) -> list[dict]:
        return [dict(asdict(c), total_us=round(c.total_us, 2)) for c in self.layers]


def _groups(cfg: ModelConfig) -> dict[int, dict[str, float]]:
    """Parameter counts per layer by role: attn_rep (replicated: q_a, kv_a, norms), attn_heads (q_b, kv_b: split
    by heads), o_proj (split by heads), indexer, router, expert (one routed expert), mlp (dense MLP or shared
    experts: split by columns)."""
    out: dict[int, dict[str, float]] = {}
    for name, shape in family_of(cfg).shapes(cfg, False).items():
        m = re.match(r"layers\.(\d+)\.(.*)", name)
        if not m:
            continue
        layer, rest = int(m.group(1)), m.group(2)
        n = math.prod(shape)
        if ".indexer." in rest:
            role = "indexer"
        elif rest.startswith("self_attn.o_proj"):
            role = "o_proj"
        elif re.match(r"self_attn\.(q_b_proj|kv_b_proj|q_proj)", rest):
            role = "attn_heads"
        elif rest.startswith("self_attn."):
            role = "attn_rep"
        elif rest.startswith("mlp.gate."):
            role = "router"
        elif re.match(r"mlp\.experts\.\d+\.", rest):
            if not rest.startswith("mlp.experts.0."):
                continue  # every routed expert has the same size: count one
            role = "expert"
        elif rest.startswith("mlp."):
            role = "mlp"
        else:
            continue  # the layer norms: a few KB
        out.setdefault(layer, {}).setdefault(role, 0.0)
        out[layer][role] += n
    return out


def _hop(hw: Hardware, nbytes: float, peers: int) -> float:
    """One dependent exchange that pushes `nbytes` to each of `peers` ranks (µs)."""
    return hw.hop_us + nbytes * peers / (hw.nvlink_gbps * 1e9) * 1e6 if peers > 0 else 0.0


def estimate(cfg: ModelConfig, gpus: int, hw: Hardware, context: int, strategy: str = "hetero", mtp: int = 0,
             mean_accepted: float | None = None, weight_bytes: float = 1.0, kv_bytes: int = 1,
             act_bytes: int = 2) -> Estimate:
    """The predicted step of batch-1 decode. weight_bytes 1 = FP8 checkpoints (GLM-5-FP8, DeepSeek-V3.2), kv_bytes
    1 = the FP8 latent layout; mtp: draft tokens per step (mean_accepted: tokens a step yields, default
    1 + 0.7 x mtp)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy '{strategy}' is not available (available: {', '.join(STRATEGIES)})")
    if not getattr(cfg, "has_indexer", False):
        raise ConfigError("the latency model covers the GLM-5 / DeepSeek family (MLA with a DSA indexer)")
    if gpus < (2 if strategy == "hetero" else 1):
        raise ConfigError(f"strategy '{strategy}' needs at least {2 if strategy == 'hetero' else 1} GPUs, got {gpus}")
    est = Estimate(strategy, gpus, hw.name, context, 1 + mtp, launch_us=hw.launch_us)
    est.mean_accepted = 1.0 if mtp == 0 else (mean_accepted if mean_accepted is not None else 1 + 0.7 * mtp)
    est.aggregate_tbps = gpus * hw.hbm_tbps
    plan = _Plan(cfg, gpus, hw, context, strategy, weight_bytes, kv_bytes, act_bytes)
    groups = _groups(cfg)
    for i, kind in enumerate(cfg.mlp_layer_types):
        cost, total = plan.layer(i, groups[i], kind == "sparse", cfg.layer_indexers[i] == "full", 1 + mtp)
        est.layers.append(cost)
        est.bytes_total += total
    head_us, head_bytes = plan.head(1 + mtp)
    est.head_us = head_us
    est.bytes_total += head_bytes
    if mtp:  # k steps of the MTP layer (a MoE layer with its own indexer) and the shared LM head, one token each
        mtp_layer, _ = plan.layer(len(cfg.mlp_layer_types), groups[len(cfg.mlp_layer_types) - 1], True, True, 1)
        est.mtp_us = mtp * (mtp_layer.total_us + plan.head(1)[0])
    return est


class _Plan:
    """What one layer costs on the slowest rank under a plan (see the module's docstring)."""

    def __init__(self, cfg: ModelConfig, gpus: int, hw: Hardware, context: int, strategy: str, weight_bytes: float,
                 kv_bytes: int, act_bytes: int):
        self.cfg, self.gpus, self.hw, self.context, self.strategy = cfg, gpus, hw, context, strategy
        self.weight_bytes, self.act_bytes = weight_bytes, act_bytes
        self.attention_ranks = gpus - 1 if strategy == "hetero" else gpus
        heads = cfg.num_attention_heads
        self.head_share = math.ceil(heads / self.attention_ranks) / heads  # padded heads per attention rank
        self.latent_row = cfg.kv_bytes_per_token(kv_bytes, fp8=kv_bytes == 1) / cfg.num_hidden_layers
        self.key_row = cfg.index_head_dim + 4  # FP8 key + fp32 scale
        self.attended = min(context, cfg.index_topk)
        self.bps = hw.stream_bps / 1e6  # bytes per µs

    def hop(self, nbytes: float) -> float:
        """One dependent exchange that pushes `nbytes` to every other rank (µs)."""
        peers = self.gpus - 1
        return self.hw.hop_us + nbytes * peers / (self.hw.nvlink_gbps * 1e9) * 1e6 if peers else 0.0

    def layer(self, i: int, g: dict[str, float], moe: bool, has_indexer: bool, S: int) -> tuple[LayerCost, float]:
        """One layer for S tokens per step: its cost, and the bytes every rank together reads."""
        c, wb, hw, bps = self.cfg, self.weight_bytes, self.hw, self.bps
        E, k = c.n_routed_experts, c.num_experts_per_tok
        distinct = E * (1 - (1 - k / E) ** S)  # experts S uniformly routed tokens touch
        # within index_topk positions DSA keeps them all: no scoring, no selection, no hand-off
        selects = has_indexer and self.context > c.index_topk
        idx_w = g.get("indexer", 0.0) * wb if selects else 0.0
        keys = self.context * self.key_row if selects else 0.0
        select = hw.select_fixed_us + self.context * S / (hw.select_gpos_s * 1e3) if selects else 0.0  # µs
        rep = g.get("attn_rep", 0.0) * wb
        split = g.get("attn_heads", 0.0) * wb * self.head_share
        o = g.get("o_proj", 0.0) * wb * self.head_share
        latents = self.attended * self.latent_row * S
        if moe:
            ffn = g.get("router", 0.0) * 4 + (g.get("expert", 0.0) * distinct + g.get("mlp", 0.0)) * wb / self.gpus
        else:
            ffn = g.get("mlp", 0.0) * wb / self.gpus
        hidden_msg = c.hidden_size * self.act_bytes * S
        stages = (STAGES["attention"] + STAGES["moe" if moe else "mlp"]) * hw.stage_us
        hop_us, hops, idle = 2 * self.hop(hidden_msg), 2, 0.0  # the o_proj and the MLP / MoE all-reduces
        if self.strategy == "tp":
            hbm_us = (rep + idx_w + keys + split + latents + o + ffn) / bps
            select_us = select
            weights = rep + idx_w + split + o + ffn
            total = self.gpus * (rep + idx_w + keys + latents + split + o + ffn)
        else:  # rank 0 scores and selects, then writes the positions to the others, which project meanwhile
            handoff = self.hop(self.attended * 4 * S) if selects else 0.0
            indexer_us = (rep + idx_w + keys) / bps + select + handoff
            proj_us = (rep + split) / bps
            if indexer_us > proj_us:  # the hand-off is on the critical path
                hbm_us, select_us, hop_us, hops = (rep + idx_w + keys) / bps, select, hop_us + handoff, 3
            else:
                hbm_us, select_us = proj_us, 0.0
            hbm_us += (latents + o + ffn) / bps
            idle = max(indexer_us, proj_us) + (latents + o) / bps - indexer_us  # rank 0 waits for the o all-reduce
            weights = max(rep + idx_w, rep + split + o) + ffn
            total = (rep + idx_w + keys) + self.attention_ranks * (rep + split + latents + o) + self.gpus * ffn
        cost = LayerCost(i, "moe" if moe else "dense", weights, latents, keys, self.context if selects else 0,
                         hops, hops * hidden_msg if hops == 2 else 2 * hidden_msg + self.attended * 4 * S, hbm_us,
                         stages, hop_us, select_us, idle)
        return cost, total

    def head(self, S: int) -> tuple[float, float]:
        """The LM head (bf16, split by vocabulary) and the top-1 gather: (µs, bytes every rank reads)."""
        nbytes = self.cfg.hidden_size * self.cfg.vocab_size * 2
        return nbytes / self.gpus / self.bps + self.hw.stage_us + self.hop(8 * S), nbytes
