"""The multi-GPU latency model against TileRT's published GLM-5.1-FP8 figures on 8 x B200 (batch 1, v0.1.5,
`assets/glm5_tilert_mtp.png` @a8368a6, as ../shared/reference/engine-anchors.md transcribes them).

Three of the hardware table's assumptions are calibrated here, each on one published point without MTP: the
cross-GPU hop latency on 1K (within index_topk = 2048 no selection runs), the selection's fixed cost on 16K, its
per-position rate on 192K (bisection, alternated; the other terms are data-sheet bandwidths and the model's own
counts). Every other point — 32K to 160K, and all seven with MTP at TileRT's mean accepted length 3.2 — is a check,
printed with its error. Then the seed's arithmetic on 8 x H200.

    python bench/plan_tilert.py [--json OUT]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

from hyperdecode.model.loader import preset_config
from hyperdecode.parallel.latency import HARDWARE, estimate

CONTEXTS = [1024, 16384, 32768, 65536, 131072, 163840, 196608]
TILERT = [301, 202, 197, 184, 176, 173, 169]  # tok/s, no MTP
TILERT_MTP = [618, 451, 429, 406, 378, 368, 352]  # tok/s, MTP, mean accepted length 3.2
ACCEPTED = 3.2


def tok_s(cfg, hw, context: int, strategy: str = "hetero", mtp: int = 0) -> float:
    return estimate(cfg, 8, hw, context, strategy, mtp, ACCEPTED if mtp else None).tokens_per_s


def bisect(f, lo: float, hi: float, target: float, steps: int = 60) -> float:
    """x in [lo, hi] with f(x) = target, f monotone."""
    rising = f(hi) > f(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if (f(mid) < target) == rising:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cfg = preset_config("glm-5")  # GLM-5.1 has GLM-5's shape
    hw = HARDWARE["b200"]
    print(f"table as shipped: hop {hw.hop_us} us, select {hw.select_fixed_us} us + {hw.select_gpos_s} G positions/s")
    for _ in range(6):  # the fits barely interact; alternate until all three hold
        hw = replace(hw, hop_us=bisect(lambda h: tok_s(cfg, replace(hw, hop_us=h), CONTEXTS[0]), 0.0, 20.0,
                                       TILERT[0]))
        hw = replace(hw, select_fixed_us=bisect(lambda f: tok_s(cfg, replace(hw, select_fixed_us=f), CONTEXTS[1]),
                                                0.0, 200.0, TILERT[1]))
        hw = replace(hw, select_gpos_s=bisect(lambda r: tok_s(cfg, replace(hw, select_gpos_s=r), CONTEXTS[-1]),
                                              0.5, 1000.0, TILERT[-1]))
    print(f"calibrated: hop {hw.hop_us:.3f} us (on 1K), select {hw.select_fixed_us:.3f} us (on 16K) + "
          f"{hw.select_gpos_s:.3f} G positions/s (on 192K)")
    rows = []
    print(f"{'context':>8} {'TileRT':>7} {'hetero':>7} {'err':>7} {'tp':>7} | {'TileRT+MTP':>10} {'hetero+MTP':>10} "
          f"{'err':>7} {'tp+MTP':>7}")
    for ctx, plain, with_mtp in zip(CONTEXTS, TILERT, TILERT_MTP):
        het, tp = tok_s(cfg, hw, ctx), tok_s(cfg, hw, ctx, "tp")
        het_m, tp_m = tok_s(cfg, hw, ctx, mtp=3), tok_s(cfg, hw, ctx, "tp", mtp=3)
        rows.append(dict(context=ctx, tilert=plain, hetero=round(het, 1), tp=round(tp, 1),
                         err=round(het / plain - 1, 4),
                         tilert_mtp=with_mtp, hetero_mtp=round(het_m, 1), tp_mtp=round(tp_m, 1),
                         err_mtp=round(het_m / with_mtp - 1, 4)))
        r = rows[-1]
        print(f"{ctx:8d} {plain:7d} {het:7.1f} {r['err']:+7.1%} {tp:7.1f} | {with_mtp:10d} {het_m:10.1f} "
              f"{r['err_mtp']:+7.1%} {tp_m:7.1f}")
    checks = [abs(r["err"]) for r in rows[2:-1]] + [abs(r["err_mtp"]) for r in rows]
    print(f"checks (not fitted): mean |error| {sum(checks) / len(checks):.1%}, worst {max(checks):.1%}")
    h200 = replace(HARDWARE["h200"], hop_us=hw.hop_us, select_fixed_us=hw.select_fixed_us,
                   select_gpos_s=hw.select_gpos_s)
    seed = estimate(cfg, 8, h200, 1024, "hetero")
    print(f"seed arithmetic, 8 x H200 at 1K: bytes alone {8 * h200.hbm_tbps * 1e12 / 42e9:.0f} tok/s at 42 GB/token; "
          f"the model (B200's calibrated hop and select) {seed.tokens_per_s:.0f} tok/s, TPOT {seed.tpot_ms:.2f} ms "
          f"({seed.hops_per_step} dependent hops)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(hop_us=hw.hop_us, select_gpos_s=hw.select_gpos_s, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
