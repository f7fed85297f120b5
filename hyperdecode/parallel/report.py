"""`hyperdecode plan`: the latency model's predictions for TP and hetero side by side, with the breakdown.

    hyperdecode plan --model glm-5 --gpus 8 --hw b200 --context 1k [--mtp 3 --acceptance 3.2] [--json]
"""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import ConfigError
from ..model.loader import read_config
from ..model.sizing import size_model
from .latency import STRATEGIES, Estimate, estimate, load_hardware, parse_context

__all__ = ["add_plan_args", "run_plan", "plan_rows"]

TERMS = ("hbm_us", "stage_us", "hop_us", "select_us")


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="glm-5", help="a GLM-5 / DeepSeek preset or checkpoint directory (default glm-5)")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--hw", default="h200", help="a hardware table entry: h100, h200, b200 (or one --hw-file adds)")
    p.add_argument("--hw-file", default=None, help='JSON overriding table fields, e.g. {"b200": {"hop_us": 3}}')
    p.add_argument("--context", default="1k", help="tokens in the cache, e.g. 1024 or 1k (up to 192k)")
    p.add_argument("--strategy", default="both", choices=["both", *STRATEGIES])
    p.add_argument("--mtp", type=int, default=0, help="MTP draft tokens per step (0: off)")
    p.add_argument("--acceptance", type=float, default=None,
                   help="mean accepted length with --mtp (tokens per step; default 1 + 0.7 x mtp)")
    p.add_argument("--weight-dtype", choices=["fp8", "bf16"], default="fp8")
    p.add_argument("--layers", action="store_true", help="also print every layer's cost on the slowest rank")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def plan_rows(args: argparse.Namespace) -> dict[str, Any]:
    if args.gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {args.gpus}")
    if args.mtp < 0 or (args.acceptance is not None and not 1 <= args.acceptance <= 1 + args.mtp):
        raise ConfigError("--mtp must be >= 0 and --acceptance in [1, 1 + mtp]")
    cfg = read_config(args.model)
    hw = load_hardware(args.hw, args.hw_file)
    context = parse_context(args.context)
    strategies = STRATEGIES if args.strategy == "both" else (args.strategy,)
    wb = 1.0 if args.weight_dtype == "fp8" else 2.0
    rows: dict[str, Estimate] = {}
    for strategy in strategies:
        rows[strategy] = estimate(cfg, args.gpus, hw, context, strategy, weight_bytes=wb)
        if args.mtp:
            rows[f"{strategy}+mtp{args.mtp}"] = estimate(cfg, args.gpus, hw, context, strategy, args.mtp,
                                                         args.acceptance, weight_bytes=wb)
    # the seed's arithmetic: active bytes per token (no replication) over the aggregate bandwidth
    sizing = size_model(cfg, context, wb, hw.hbm_tbps, 1)
    seed = dict(active_gb_per_token=round(sizing.bytes_per_token / 1e9, 2),
                bandwidth_only_tok_s=round(args.gpus * hw.hbm_tbps * 1e12 / sizing.bytes_per_token, 1))
    return dict(model=args.model, gpus=args.gpus, hardware=hw.__dict__, context=context, seed_arithmetic=seed,
                plans={name: est for name, est in rows.items()})


def run_plan(args: argparse.Namespace) -> None:
    out = plan_rows(args)
    plans: dict[str, Estimate] = out.pop("plans")
    if args.json:
        out["plans"] = {name: dict(est.summary(), **({"layers": est.table()} if args.layers else {}))
                        for name, est in plans.items()}
        print(json.dumps(out, indent=1))
        return
    hw = out["hardware"]
    print(f"model {out['model']}, {out['gpus']} x {hw['name']} (HBM {hw['hbm_tbps']} TB/s x {hw['hbm_efficiency']}, "
          f"NVLink {hw['nvlink_gbps']} GB/s, hop {hw['hop_us']} us, stage {hw['stage_us']} us), "
          f"context {out['context']:,}")
    names = list(plans)
    print(f"{'':24}" + "".join(f"{n:>14}" for n in names))
    lines = [("tok/s", lambda e: f"{e.tokens_per_s:.1f}"), ("TPOT ms", lambda e: f"{e.tpot_ms:.3f}"),
             ("step us", lambda e: f"{e.step_us:.0f}"), ("tokens per step", lambda e: f"{e.mean_accepted:.2f}")]
    lines += [(f"  {t}", lambda e, t=t: f"{sum(getattr(c, t) for c in e.layers):.0f}") for t in TERMS]
    lines += [("  LM head us", lambda e: f"{e.head_us:.0f}"), ("  MTP layer us", lambda e: f"{e.mtp_us:.0f}"),
              ("  rank-0 idle us", lambda e: f"{sum(c.idle_us for c in e.layers):.0f}"),
              ("dependent hops", lambda e: f"{e.hops_per_step}"),
              ("GB read, all ranks", lambda e: f"{e.bytes_total / 1e9:.1f}"),
              ("bytes-only tok/s", lambda e: f"{e.bandwidth_bound_tok_s:.0f}"),
              ("share of aggregate HBM", lambda e: f"{e.tokens_per_s / e.bandwidth_bound_tok_s:.1%}")]
    for label, fmt in lines:
        print(f"{label:24}" + "".join(f"{fmt(plans[n]):>14}" for n in names))
    seed = out["seed_arithmetic"]
    print(f"seed arithmetic: {seed['active_gb_per_token']} GB of active weights + cache per token over "
          f"{out['gpus']} x {hw['hbm_tbps']} TB/s -> {seed['bandwidth_only_tok_s']:.0f} tok/s if bytes were all; "
          f"the latency model allows {max(e.tokens_per_s for e in plans.values()):.0f}")
    if args.layers:
        for name, est in plans.items():
            print(f"\n{name}: layer, kind, weight MB, latent MB, index-key MB, hops, total us")
            for c in est.layers:
                print(f"  {c.layer:3d} {c.kind:5} {c.weight_bytes / 1e6:9.1f} {c.latent_bytes / 1e6:7.2f} "
                      f"{c.index_key_bytes / 1e6:7.2f} {c.hops:2d} {c.total_us:8.1f}")
