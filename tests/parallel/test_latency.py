"""The multi-GPU latency model: one layer's arithmetic by hand, the plans' hop counts, MTP, the shipped table
against TileRT's published points, and the `plan` command."""
import json
import math
from dataclasses import replace

import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.model.loader import preset_config
from hyperdecode.parallel.latency import HARDWARE, STAGES, estimate, load_hardware, parse_context
from tests.conftest import run_main

# round numbers: 1 B/µs of HBM per... 1e6 B/µs, NVLink 1 GB/s (1e3 B/µs), hops and stages of 1 µs, no select cost
UNIT = replace(HARDWARE["b200"], name="unit", hbm_tbps=1.0, hbm_efficiency=1.0, nvlink_gbps=1.0, hop_us=1.0,
               stage_us=1.0, select_fixed_us=0.0, select_gpos_s=1.0, launch_us=0.0)


def by_hand(c):
    """Parameter counts of one MoE layer of a GLM-5-family config, from its dimensions."""
    H, h, qk = c.hidden_size, c.num_attention_heads, c.qk_head_dim
    rep = H * c.q_lora_rank + c.q_lora_rank + H * (c.kv_lora_rank + c.qk_rope_head_dim) + c.kv_lora_rank
    heads = c.q_lora_rank * h * qk + c.kv_lora_rank * h * (c.qk_nope_head_dim + c.v_head_dim)
    o = h * c.v_head_dim * H
    D, n = c.index_head_dim, c.index_n_heads
    indexer = c.q_lora_rank * n * D + H * D + 2 * D + H * n
    expert = 3 * H * c.moe_intermediate_size
    shared = expert * c.n_shared_experts
    router = c.n_routed_experts * H + c.n_routed_experts
    return rep, heads, o, indexer, expert, shared, router


def test_one_moe_layer_by_hand_under_tp():
    c = preset_config("tiny-glm5")
    rep, heads, o, indexer, expert, shared, router = by_hand(c)
    W, context = 2, 100  # context > index_topk (16): the indexer scores and selects
    est = estimate(c, W, UNIT, context, "tp", weight_bytes=1.0, kv_bytes=2, act_bytes=2)
    layer = next(x for x in est.layers if x.kind == "moe")
    share = math.ceil(c.num_attention_heads / W) / c.num_attention_heads
    latents = c.index_topk * (c.kv_lora_rank + c.qk_rope_head_dim) * 2
    keys = context * (c.index_head_dim + 4)
    ffn = router * 4 + (expert * c.num_experts_per_tok + shared) / W
    assert layer.hbm_us == pytest.approx((rep + indexer + keys + share * (heads + o) + latents + ffn) / 1e6)
    assert layer.stage_us == STAGES["attention"] + STAGES["moe"]
    assert layer.hops == 2
    assert layer.hop_us == pytest.approx(2 * (1.0 + c.hidden_size * 2 * (W - 1) / 1e3))  # two one-shot all-reduces
    assert layer.select_us == pytest.approx(0.0 + context / 1e3)  # fixed 0 + 100 positions at 1 G/s
    assert layer.index_key_bytes == keys and layer.latent_bytes == latents


def test_hetero_hands_the_positions_over_only_beyond_index_topk():
    c = preset_config("tiny-glm5")
    short = estimate(c, 3, UNIT, c.index_topk, "hetero")  # DSA keeps everything: nothing to select or send
    long = estimate(c, 3, replace(UNIT, select_fixed_us=50.0), 200, "hetero")  # a slow indexer: on the path
    assert all(x.hops == 2 and x.select_us == 0 for x in short.layers)
    assert all(x.hops == 3 for x in long.layers)
    handoff = 1.0 + c.index_topk * 4 * 2 / 1e3  # int32 positions to the 2 attention ranks
    assert long.layers[0].hop_us == pytest.approx(2 * (1.0 + c.hidden_size * 2 * 2 / 1e3) + handoff)
    assert long.layers[0].idle_us > 0  # rank 0 waits while the others attend
    assert long.hops_per_step == 3 * c.num_hidden_layers + 1


def test_mtp_counts_distinct_experts_and_the_accepted_length():
    c = preset_config("glm-5")
    plain = estimate(c, 8, HARDWARE["b200"], 1024, "tp")
    mtp = estimate(c, 8, HARDWARE["b200"], 1024, "tp", mtp=3, mean_accepted=3.2)
    E, k = c.n_routed_experts, c.num_experts_per_tok
    expert = by_hand(c)[4]
    distinct = 256 * (1 - (1 - 8 / 256) ** 4)  # 4 uniformly routed tokens touch 30.5 of 256 experts, not 32
    moe_plain = next(x for x in plain.layers if x.kind == "moe")
    moe_mtp = next(x for x in mtp.layers if x.kind == "moe")
    assert (E, k) == (256, 8)
    assert moe_mtp.weight_bytes - moe_plain.weight_bytes == pytest.approx((distinct - 8) * expert / 8)
    assert mtp.tokens_per_s == pytest.approx(3.2e6 / mtp.step_us)
    assert mtp.mtp_us > 0 and mtp.step_us > plain.step_us
    assert 1.5 < mtp.tokens_per_s / plain.tokens_per_s < 3.2


def test_shipped_table_reproduces_tilert_within_the_stated_error():
    """The B200 entry holds the values bench/plan_tilert.py fitted on three points; the others check within 10 %."""
    c = preset_config("glm-5")
    hw = load_hardware("b200")
    fitted = {1024: 301, 16384: 202, 196608: 169}
    for ctx, tok_s in fitted.items():
        assert estimate(c, 8, hw, ctx).tokens_per_s == pytest.approx(tok_s, rel=0.01)
    for ctx, tok_s, with_mtp in ((65536, 184, 406), (131072, 176, 378), (1024, None, 618)):
        if tok_s:
            assert estimate(c, 8, hw, ctx).tokens_per_s == pytest.approx(tok_s, rel=0.10)
        assert estimate(c, 8, hw, ctx, mtp=3, mean_accepted=3.2).tokens_per_s == pytest.approx(with_mtp, rel=0.10)


def test_contexts_hardware_and_bad_input():
    assert parse_context("1k") == 1024 and parse_context(" 192K ") == 196608 and parse_context(4096) == 4096
    for bad in ("0", "-3", "1m", "k"):
        with pytest.raises(ConfigError, match="--context"):
            parse_context(bad)
    with pytest.raises(ConfigError, match="not in the table"):
        load_hardware("a100")
    with pytest.raises(ConfigError, match="GLM-5 / DeepSeek family"):
        estimate(preset_config("tiny-llama"), 2, UNIT, 10)
    with pytest.raises(ConfigError, match="at least 2 GPUs"):
        estimate(preset_config("tiny-glm5"), 1, UNIT, 10, "hetero")


def test_plan_command(tmp_path, capsys):
    hw_file = tmp_path / "hw.json"
    hw_file.write_text(json.dumps({"b200": {"hop_us": 2.0}, "mine": {"hbm_tbps": 3.0}}))
    code, out, err = run_main(["plan", "--model", "glm-5", "--gpus", "8", "--hw", "b200", "--context", "1k",
                               "--mtp", "3", "--acceptance", "3.2", "--json", "--hw-file", str(hw_file)], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["hardware"]["hop_us"] == 2.0 and set(got["plans"]) == {"tp", "tp+mtp3", "hetero", "hetero+mtp3"}
    assert got["seed_arithmetic"]["bandwidth_only_tok_s"] > got["plans"]["hetero"]["tokens_per_s"]
    code, out, err = run_main(["plan", "--hw", "mine", "--hw-file", str(hw_file), "--context", "32k"], capsys)
    assert code == 0 and "hetero" in out and "dependent hops" in out
    code, _, err = run_main(["plan", "--model", "tiny-llama"], capsys)
    assert code == 1 and "GLM-5 / DeepSeek family" in err
