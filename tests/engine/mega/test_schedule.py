"""The schedule model on schedules computed by hand, and its byte counts on a compiled program."""
import pytest

import hyperdecode as hd
from hyperdecode.engine.mega.isa import Instr, Op
from hyperdecode.engine.mega.program_llama import compile_program as compile_llama
from hyperdecode.engine.mega.schedule import Hardware, instruction_bytes, main, predict, simulate

US = 1e-6
# 2 SMs streaming 1000 bytes per microsecond each; a hop of 0.5 us, a fill of 0.2 us, an overhead of 0.1 us
HW = Hardware(sms=2, bandwidth=2e9, hop_s=0.5 * US, latency_s=0.2 * US, overhead_s=0.1 * US, launch_s=1 * US)


def gemv(waits=(), signal=0):
    return Instr(Op.GEMV, dict(x=0, k=1, w=0, out=0, n=1, c0=0, c1=1, flags=0, norm=-1, scale=-1), list(waits),
                 signal)


def test_two_workers_one_dependent_instruction():
    # w0: i0 0 -> 1.3 (0.1 + 0.2 + 1.0); w1: i1 0 -> 3.3; w0: i2 waits for both: ready 3.3 + 0.5 = 3.8, its fill is
    # hidden by 2.5 us of waiting, so 3.8 + 0.1 + 0.5 = 4.4; the step adds the 1 us launch
    instrs = [gemv(), gemv(), gemv([(0, 2)], signal=1)]
    p = simulate(instrs, [1000, 3000, 500], workers=2, hw=HW)
    assert p.step_s == pytest.approx(5.4 * US)
    assert p.mbu == pytest.approx(4500 / (5.4e-6 * 2e9))
    assert p.busy_s == pytest.approx(5.2 * US)
    assert p.wait_s == pytest.approx((2.5 + 1.1) * US)  # i2's wait, and w1 idle from 3.3 to 4.4
    assert [(i, how) for i, _, how in p.critical] == [(1, "queue"), (2, "wait")]
    assert simulate(instrs, [1000, 3000, 500], workers=2, hw=HW, prefetch=False).step_s == pytest.approx(5.6 * US)


def test_a_wait_the_worker_already_saw_costs_no_hop():
    hw = Hardware(sms=1, bandwidth=1e9, hop_s=0.5 * US, latency_s=0.0, overhead_s=0.0, launch_s=0.0)
    instrs = [gemv(), gemv([(0, 1)], signal=1), gemv([(0, 1)], signal=1)]
    # i0 0 -> 1; i1 waits: 1.5 -> 2.5; i2 waits for what i1 already saw: 2.5 -> 3.5
    p = simulate(instrs, [1000] * 3, workers=1, hw=hw, batch=2)
    assert p.step_s == pytest.approx(3.5 * US)
    assert p.tokens_per_s == pytest.approx(2 / 3.5e-6)
    assert [how for _, _, how in p.critical] == ["queue", "wait", "queue"]


def test_stage_chain_is_bound_by_hops_when_the_tiles_are_small():
    # 4 stages of 2 one-byte tiles on 2 workers, every stage waiting for the whole previous one
    hw = Hardware(sms=2, bandwidth=2e9, hop_s=1 * US, latency_s=0.2 * US, overhead_s=0.1 * US, launch_s=0.0)
    instrs = []
    for s in range(4):
        instrs += [gemv([(s - 1, 2)] if s else [], signal=s)] * 2
    p = simulate(instrs, [1] * 8, workers=2, hw=hw)
    # stage 0: 0.3 + 0.001; stages 1-3 each: a 1 us hop (the fill hides in it), then 0.1 + 0.001
    assert p.step_s == pytest.approx((0.301 + 3 * (1 + 0.101)) * US)
    assert sum(how == "wait" for _, _, how in p.critical) == 3


def test_an_unsatisfiable_wait_is_an_error():
    with pytest.raises(ValueError, match="instruction 0 waits for counter 3 to reach 1"):
        simulate([gemv([(3, 1)])], [1.0], workers=1, hw=HW)


def test_bytes_of_a_compiled_program():
    llm = hd.LLM("tiny-llama", device="cpu")
    cfg = llm.config
    prog = compile_llama(llm.model, 1, 64, tile=16, kv_split=16)
    gemv_bytes = sum(instruction_bytes(prog, i, 40) for i in prog.instrs if i.op == Op.GEMV)
    h, hd_, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_width = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * hd_
    per_layer = q_width * h + h * cfg.num_attention_heads * hd_ + 2 * inter * h + h * inter  # all widths % 16 == 0
    assert gemv_bytes == 4 * (cfg.num_hidden_layers * per_layer + cfg.vocab_size * h)  # fp32 weights
    attn = sum(instruction_bytes(prog, i, 40) for i in prog.instrs if i.op == Op.ATTN)
    assert attn == cfg.num_hidden_layers * cfg.num_key_value_heads * 40 * hd_ * 2 * 4  # splits add up to 40
    p = predict(prog, 40)
    assert 0 < p.mbu < 1 and p.critical[-1][1] in ("ARGMAX", "GEMV")


def test_cli_prints_one_row_per_tile(capsys):
    rows = main(["tiny-llama", "--context", "100", "--tiles", "16,64"])
    assert [r["tile"] for r in rows] == [16, 64] and rows[0]["instructions"] > rows[1]["instructions"]
    assert rows[0]["hbm_mb"] == pytest.approx(rows[1]["hbm_mb"], rel=0.02)
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_prefetch_hides_the_next_tiles_fill_behind_the_current_one():
    hw = Hardware(sms=1, bandwidth=1e9, hop_s=0.5 * US, latency_s=0.2 * US, overhead_s=0.1 * US, launch_s=0.0)
    # i0: 0.1 + 0.2 + 1.0 = 1.3; i1 was prefetched while i0 ran: 1.3 + 0.1 + 1.0 = 2.4 (2.6 without)
    assert simulate([gemv(), gemv()], [1000, 1000], workers=1, hw=hw).step_s == pytest.approx(2.4 * US)
    assert simulate([gemv(), gemv()], [1000, 1000], workers=1, hw=hw, prefetch=False).step_s == \
        pytest.approx(2.6 * US)
