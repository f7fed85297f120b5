"""PFC fed back into serving: a burst's replayed windows give each slowed transfer a hold, and the second run ends
those transfers exactly that much later; replays over processes give what one process gives."""
import numpy as np
import pytest

from hyperdecode.fabric import roft
from hyperdecode.fabric.coupled import merge_holds, replay_windows, run_with_pfc
from hyperdecode.fabric.flow.config import SimConfig
from hyperdecode.fabric.flow.model import ModelProfile
from hyperdecode.fabric.flow.serving import simulate
from hyperdecode.fabric.flow.workload import Workload

MODEL = ModelProfile(kv_bytes_per_token=5000, prefill_tok_s=1e7)
CFG = SimConfig(gpus_per_instance=8, pd_ratio=(3, 1), qps=1)


def burst():
    rng = np.random.default_rng(4)
    return Workload(np.arange(24) * 0.0005, rng.integers(9000, 11000, 24), np.full(24, 2), "burst")


def test_holds_are_the_largest_delay_over_a_transfer_s_routes():
    replays = [{"added_s": {"t0.0": 0.001, "t0.1": 0.003, "t2.0": 0.0}}, {"added_s": {"t5.0": 0.002}}]
    assert merge_holds(replays, {0: ("kv", 4), 2: ("kv", 6), 5: ("fetch", 4)}) == {("kv", 4): 0.003,
                                                                                  ("fetch", 4): 0.002}


def test_a_converging_burst_pauses_and_its_transfers_end_later():
    first = simulate(roft(64, 16), burst(), MODEL, CFG)
    second, summary = run_with_pfc(roft(64, 16), burst(), MODEL, CFG, width=0.05, count=1, processes=1)
    held = second.holds
    assert summary["pfc_windows"][0]["pause_frames"] > 0 and summary["pause_s_total"] > 0
    assert held and summary["pfc_feedback"]["transfers_held"] == len(held)
    assert summary["pfc_feedback"]["ttft_p99_s_without"] == pytest.approx(np.nanpercentile(first.ttft_s, 99))
    assert all(kind == "kv" for kind, _ in held)
    later = second.kv_done_s - first.kv_done_s
    assert (later >= -1e-9).all() and later.max() > 0
    assert summary["symptoms"]["leaf_port_pause_s"] >= 0 and "leaf_queue_bytes_p99_100us" in summary["symptoms"]


def test_replays_over_processes_match_one_process():
    run = simulate(roft(64, 16), burst(), MODEL, CFG)
    one = replay_windows(run, 0.004, count=2, processes=1)
    two = replay_windows(run, 0.004, count=2, processes=2)
    assert [r["window"] for r in one] == [r["window"] for r in two] and len(one) == 2
    assert [r["pause_frames"] for r in one] == [r["pause_frames"] for r in two]
    assert [r["added_s"] for r in one] == [r["added_s"] for r in two]
