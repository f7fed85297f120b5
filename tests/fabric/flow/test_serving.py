"""PD serving coupled to the network against hand-computed answers: a request's stages, steady throughput, prefill
memory held until the KV is sent, a decode step waiting for its all-to-all, EP above KV, failures, the NIC
ablation's direction; end to end on the Mooncake trace (shipped in data/traces)."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric import roft, zcube
from hyperdecode.fabric.flow.config import SimConfig, parse_failure, parse_pd_ratio
from hyperdecode.fabric.flow.model import ModelProfile
from hyperdecode.fabric.flow.placement import place
from hyperdecode.fabric.flow.serving import simulate
from hyperdecode.fabric.flow.summary import summarize
from hyperdecode.fabric.flow.workload import Workload, load_trace
from tests.conftest import run_main

MOONCAKE = "mooncake-conversation"


def test_separate_classes_put_the_all_to_all_above_kv():
    """With EP and KV on one class every logged flow is class 0; with separate classes KV flows are class 1 and,
    yielding to the all-to-all on shared NIC links, take longer."""
    t = roft(64, 16)
    w = small_work(200, rate=20.0)
    m = ModelProfile(kv_bytes_per_token=500_000, ep_bytes_per_copy=200_000)
    runs = {c: simulate(t, w, m, SimConfig(gpus_per_instance=16, traffic="kv+ep", classes=c))
            for c in ("same", "separate")}
    assert set(runs["same"].flows[:, 3]) == {0}
    assert set(runs["separate"].flows[:, 3]) == {0, 1}
    same, separate = (summarize(runs[c]) for c in ("same", "separate"))
    assert separate["kv_fct_p99_s"] > 2 * same["kv_fct_p99_s"]
    assert separate["requests_completed"] == same["requests_completed"] == 200


def small_work(n=400, rate=50.0, seed=0):
    rng = np.random.default_rng(seed)
    return Workload(np.cumsum(rng.exponential(1 / rate, n)) - 0, rng.integers(500, 20000, n),
                    rng.integers(1, 500, n), "test")


def test_pd_simulation_by_hand():
    """One request: TTFT = prefill + KV transfer at one NIC's line rate + one decode step at batch 1; every stage
    where it should be; with the transfer sliced over 8 NICs it takes an eighth of the time."""
    t = roft(64, 16)  # 400G NICs: 50 GB/s
    w = Workload(np.array([0.0]), np.array([10_000]), np.array([5]), "one")
    m = ModelProfile(kv_bytes_per_token=1000, prefill_tok_s=100_000.0, decode_step_s=0.02,
                     decode_step_per_seq_s=0.001)
    for slices in (1, 8):
        r = simulate(t, w, m, SimConfig(qps=1, nic_slices=slices))
        s = summarize(r)
        kv = 10_000 * 1000 / (50e9 * slices)
        st = s["ttft_stages"]
        assert st["queue"]["p50"] == 0 and st["admission"]["p50"] == 0
        assert st["prefill"]["p50"] == pytest.approx(0.1) and st["kv_transfer"]["p50"] == pytest.approx(kv, rel=1e-9)
        assert st["first_step"]["p50"] == pytest.approx(0.021)
        assert s["ttft_p50_s"] == pytest.approx(0.1 + kv + 0.021, rel=1e-9)
        assert s["tpot_p50_s"] == pytest.approx(0.021)  # five steps at batch 1, one stretch
        assert r.finish_s[0] == pytest.approx(0.1 + kv + 5 * 0.021)
        assert s["throughput_tok_s"] == pytest.approx(5 / r.finish_s[0])


def test_steady_throughput_counts_the_tokens_made_while_requests_arrive():
    """Two requests, at 0 s and 1 s: in [0, 1] only the first decodes, one token per 21 ms step from the end of its
    prefill and KV transfer; the run's throughput also counts the second's decode after 1 s."""
    t = roft(64, 16)
    w = Workload(np.array([0.0, 1.0]), np.array([10_000, 10_000]), np.array([100, 100]), "two")
    m = ModelProfile(kv_bytes_per_token=1000, prefill_tok_s=100_000.0, decode_step_s=0.02,
                     decode_step_per_seq_s=0.001)
    r = simulate(t, w, m, SimConfig(qps=1))
    s = summarize(r)
    assert s["steady_tok_s"] == pytest.approx((1.0 - r.kv_done_s[0]) / 0.021, rel=1e-9)
    assert s["throughput_tok_s"] == pytest.approx(200 / r.finish_s.max())


def one_server_pd(kv_gb):
    """Two 8-GPU instances (1 prefill, 1 decode) and two requests at t = 0 whose KV takes 0.4 s to send."""
    t = roft(16, 16)
    w = Workload(np.array([0.0, 0.0]), np.array([10_000, 10_000]), np.array([2, 2]), "two")
    m = ModelProfile(kv_bytes_per_token=2_000_000, prefill_tok_s=100_000.0)  # 20 GB each: 0.4 s at 50 GB/s
    return simulate(t, w, m, SimConfig(qps=1, prefill_kv_gb=kv_gb))


def test_a_prefill_slot_stays_busy_until_its_kv_transfer_ends():
    held = one_server_pd(kv_gb=25)  # room for one request's 20 GB: the second prefill waits for the first's send
    assert held.prefill_start_s[1] == pytest.approx(held.kv_done_s[0])
    assert held.kv_done_s[0] == pytest.approx(0.1 + 0.4)
    roomy = one_server_pd(kv_gb=64)  # room for both: the second starts when the first's compute ends
    assert roomy.prefill_start_s[1] == pytest.approx(roomy.prefill_end_s[0]) == pytest.approx(0.1)


def test_a_decode_step_waits_for_its_expert_parallel_all_to_all():
    """A 16-GPU decode instance over two servers: each GPU sends its rail peer on the other server
    1/16 · 75 layers · 8 · (1 − 1/2) copies · bytes per copy; at 50 GB/s that, not the 20 ms compute, sets the
    step."""
    t = roft(64, 16)
    w = Workload(np.array([0.0]), np.array([1000]), np.array([3]), "one")
    m = ModelProfile(kv_bytes_per_token=1000, prefill_tok_s=1e6, ep_bytes_per_copy=1_000_000_000)
    cfg = SimConfig(gpus_per_instance=16, qps=1, traffic="kv+ep")
    s = summarize(simulate(t, w, m, cfg))
    per_gpu = 1 / 16 * 75 * 4 * 1_000_000_000
    assert s["decode_step_p99_s"] == pytest.approx(per_gpu / 50e9, rel=1e-6)
    assert s["decode_step_p99_s"] > 10 * m.step_s(1)
    kv_only = summarize(simulate(t, w, m, SimConfig(gpus_per_instance=16, qps=1)))
    assert kv_only["decode_step_p99_s"] == pytest.approx(m.step_s(1)) and kv_only["ep_bytes"] == 0


def halved(topo):
    import dataclasses
    return dataclasses.replace(topo, link_gbps=topo.link_gbps // 2, nic_gbps=topo.nic_gbps // 2)


def test_throughput_falls_when_every_link_is_halved():
    """KV-heavy load past saturation on 64 GPUs (a request's KV ≈ 20 GB, room for one on a prefill instance):
    with every link at half speed, transfers hold prefill memory twice as long, so prefill stalls, completions
    come later and throughput falls (TTFT rises)."""
    w = small_work(300, rate=40.0)
    m = ModelProfile(kv_bytes_per_token=2_000_000)
    cfg = SimConfig(prefill_kv_gb=24)
    rows = {}
    for name, topo in (("full", roft(64, 16)), ("half", halved(roft(64, 16)))):
        rows[name] = summarize(simulate(topo, w, m, cfg))
    assert rows["half"]["requests_completed"] == rows["full"]["requests_completed"] == 300
    assert rows["half"]["throughput_tok_s"] < 0.95 * rows["full"]["throughput_tok_s"]
    assert rows["half"]["ttft_p99_s"] > rows["full"]["ttft_p99_s"]


def test_kv_goes_between_random_ranks_so_most_transfers_cross_rails():
    s = summarize(simulate(roft(64, 16), small_work(400, rate=20.0), cfg=SimConfig()))
    assert s["kv_cross_rail_share"] == pytest.approx(7 / 8, abs=0.05)
    striped = summarize(simulate(roft(64, 16), small_work(100, rate=20.0), cfg=SimConfig(kv_split="striped")))
    assert striped["kv_cross_rail_share"] == 0


def test_summary_and_failure_injection():
    t = zcube(16)
    w = small_work(600, rate=400.0)
    base = simulate(t, w, cfg=SimConfig(pd_ratio=(1, 1)))
    s = summarize(base)
    for key in ("ttft_p50_s", "ttft_p99_s", "kv_fct_p99_s", "goodput_tok_s", "requests_completed",
                "max_link_util", "sim_wall_s"):
        assert key in s
    assert s["requests_completed"] == 600 and s["ttft_p99_s"] >= s["ttft_p50_s"] > 0
    # a block switch dies mid-run while (large) transfers cross it: its GPUs fall back to their residue port
    heavy = ModelProfile(kv_bytes_per_token=2_000_000)
    mid = float(w.arrival_s[300])
    f = summarize(simulate(t, w, heavy, SimConfig(failure=("switch", 0, mid))))
    assert f["rerouted_flows"] > 0 and f["requests_failed"] == 0 and f["requests_completed"] == 600
    assert f["config"]["failure"] == ["switch", 0, mid]
    r = summarize(simulate(roft(256, 32), w, heavy, SimConfig(failure=("switch", 0, mid))))
    assert r["requests_failed"] > 0  # a ROFT leaf takes its GPUs' only NIC with it


def test_bad_cluster_parameters():
    with pytest.raises(ConfigError, match="does not fit 2 instances"):
        place(zcube(4), SimConfig(pd_ratio=(2, 1)))
    with pytest.raises(ConfigError, match="must divide"):
        place(zcube(4), SimConfig(gpus_per_instance=5))
    with pytest.raises(ConfigError, match="look like 1:2"):
        parse_pd_ratio("one-to-two")
    with pytest.raises(ConfigError, match="link:12@30"):
        parse_failure("router:1")
    with pytest.raises(ConfigError, match="classes 'two'"):
        simulate(zcube(4), small_work(2), cfg=SimConfig(gpus_per_instance=4, classes="two"))


def test_mooncake_1024_gpus_runs_to_completion_on_both(tmp_path):
    w = load_trace(MOONCAKE)
    rows = {}
    for name, topo in (("zcube", zcube(32)), ("roft", roft(1024, 32, tiers=3))):
        rows[name] = summarize(simulate(topo, w))
        assert rows[name]["requests_completed"] == 12031 and rows[name]["requests_failed"] == 0
    assert rows["zcube"]["cost_total"] < rows["roft"]["cost_total"]


def test_simulate_cli(tmp_path, capsys):
    out = tmp_path / "s.json"
    code, _, err = run_main(["fabric", "simulate", "--topology", "roft", "--gpus", "128", "--switch-tbps", "12.8",
                             "--trace", MOONCAKE, "--max-requests", "300", "--fail", "switch:1@5", "--json", str(out),
                             "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    s = json.loads(out.read_text())
    assert s["requests_completed"] + s["requests_failed"] == 300
    code, _, err = run_main(["fabric", "simulate", "--gpus", "16", "--trace", MOONCAKE, "--pd-ratio", "3:1",
                             "--gpus-per-instance", "8", "--decode-gpus", "8"], capsys)
    assert code == 1 and "does not fit" in err and "Traceback" not in err


def test_model_profile_counts_indexer_keys_and_computed_prefill():
    from hyperdecode.fabric.flow.model import ModelProfile
    glm5 = ModelProfile.from_model("glm-5")
    assert glm5.kv_bytes_per_token == 89_856 + 78 * (128 + 4)  # latent + DSA indexer keys (FP8 + fp32 scale)
    assert ModelProfile().kv_bytes_per_token == glm5.kv_bytes_per_token
    assert ModelProfile().prefill_tok_s == pytest.approx(73_700 * (1 - 0.563), rel=1e-3)  # no prefix cache here
    assert ModelProfile.from_model("deepseek-v3.2").kv_bytes_per_token == 61 * (576 * 2 + 128 + 4)


def test_a_summary_survives_a_port_speed_without_a_price():
    from hyperdecode.fabric import zcube
    from hyperdecode.fabric.flow.summary import cost_of
    assert cost_of(zcube(2))["cost_total"] > 0
    c = cost_of(zcube(2, port_gbps=300))
    assert c["cost_total"] is None and "300G" in c["cost_missing"]


def test_nic_ablation_moves_in_zai_direction():
    """100 -> 200 Gb/s NICs on a 64-GPU ROFT with DeepSeek's prefill unit (4 servers, EP32) under load past the
    prefill knee, KV + EP traffic: a prefill's all-to-all (1/32 of the prompt's tokens per GPU · 75 layers · 2.7
    remote servers · 18.6 KB) outlasts its compute at 100 Gb/s and not at 200, so throughput rises and TTFT falls
    (Z.ai's direction: +19 % / −22 % on 512 GPUs). Defaults otherwise; short outputs keep the decode steps (each
    a set of EP flows) few."""
    rng = np.random.default_rng(1)
    n = 100
    w = Workload(np.cumsum(rng.exponential(1 / 15.0, n)), rng.integers(500, 20000, n), rng.integers(1, 40, n), "short")
    cfg = SimConfig(gpus_per_instance=32, traffic="kv+ep", decode_batch=512)
    rows = {gbps: summarize(simulate(roft(64, 16, nic_gbps=gbps), w, ModelProfile.from_model("glm-5"), cfg))
            for gbps in (100, 200)}
    assert rows[100]["requests_completed"] == rows[200]["requests_completed"] == n
    assert rows[200]["throughput_tok_s"] > 1.05 * rows[100]["throughput_tok_s"]
    assert rows[200]["ttft_p99_s"] < rows[100]["ttft_p99_s"]
    assert rows[200]["ttft_stages"]["prefill"]["p50"] < rows[100]["ttft_stages"]["prefill"]["p50"]


def test_simulate_cli_with_pfc_replays_the_hot_windows(tmp_path):
    """Open loop (--sessions 0) at 16x the trace's rate on 64 GPUs, its two hottest 5 ms windows replayed with PFC
    and their pause delays fed back into a second run."""
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", "simulate", "--topology", "roft",
                        "--gpus", "64", "--switch-tbps", "12.8", "--trace", MOONCAKE, "--max-requests", "200",
                        "--sessions", "0", "--rate-scale", "16", "--decode-plan", "affine", "--pfc", "on",
                        "--pfc-window-s", "0.005", "--pfc-windows", "2", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    windows = s["pfc_windows"]
    assert len(windows) == 2 and windows[0]["window"][0] != windows[1]["window"][0]
    for w in windows:
        assert w["flows"] >= 1 and w["drops"] == 0 and 0 < w["replayed_s"] <= 0.01 + 1e-9  # bounded by time
    assert s["pause_s_total"] == pytest.approx(sum(w["pause_s_total"] for w in windows))
    assert s["pfc_feedback"]["ttft_p99_s_without"] > 0 and "leaf_port_pause_s" in s["symptoms"]
    assert "pause_s_total" in json.loads(r.stdout)


def test_bytes_by_local_rank_and_leaf_imbalance():
    """KV from rank 0 only (`single`, MLA's replicated latent sent once): rank 0's NIC carries everything, 8× the
    mean over a server's 8 ranks; random DP ranks spread it."""
    w = small_work(200, rate=20.0)
    single = summarize(simulate(roft(64, 16), w, cfg=SimConfig(kv_split="single")))
    assert single["nic_bytes_by_rank"] == pytest.approx([8.0] + [0.0] * 7)
    spread = summarize(simulate(roft(64, 16), w, cfg=SimConfig()))
    assert max(spread["nic_bytes_by_rank"]) < 2.0
    assert spread["leaf_imbalance"] >= 1.0 and single["leaf_imbalance"] > spread["leaf_imbalance"]


@pytest.mark.parametrize("overlap", [True, False])
def test_an_all_to_all_beside_the_compute_or_after_it(overlap):
    """The decode step of the test above with an all-to-all of 10 ms at line rate against 20.04 ms of compute:
    beside the compute (two-batch overlap) the step stays max(compute, all-to-all); after it (a layer's experts
    wait for its dispatch) it is their sum. (Issue 33: the all-to-all is one lasting flow whose demand follows the
    compute, so per-layer rounds, which changed neither figure, are gone.)"""
    t = roft(64, 16)
    w = Workload(np.array([0.0]), np.array([1000]), np.array([3]), "one")
    per_gpu = 0.010 * 50e9
    m = ModelProfile(kv_bytes_per_token=1000, prefill_tok_s=1e6, ep_bytes_per_copy=per_gpu / (1 / 16 * 75 * 4))
    cfg = SimConfig(gpus_per_instance=16, qps=1, traffic="kv+ep", ep_overlap=overlap)
    r = simulate(t, w, m, cfg)
    s = summarize(r)
    expected = m.step_s(1) + 0.010 if not overlap else m.step_s(1)
    assert s["decode_step_p99_s"] == pytest.approx(expected, rel=1e-6)
    steps = r.steps[:, 1].sum()
    prefill_bytes = 1000 * 75 * m.ep_copies(2, prefill=True) * m.ep_bytes_per_copy
    assert r.ep_bytes == pytest.approx(prefill_bytes + steps * 16 * per_gpu)
    carried = r.flows[r.flows[:, 4] == 2, 0].sum()  # what the all-to-alls' flows carried
    if overlap:
        assert carried == pytest.approx(r.ep_bytes, rel=1e-6)
    else:  # it takes its max-min share through the compute too: the fluid model's upper bound on its load
        assert carried > r.ep_bytes


def test_prefills_in_flight_share_the_instance_equally():
    """Two 10k-token prompts at t = 0 on one 8-GPU prefill instance at 100k tok/s: with one slot the second starts
    when the first ends (0.1 s, 0.2 s); with two they share it and both end at 0.2 s."""
    t = roft(16, 16)
    w = Workload(np.array([0.0, 0.0]), np.array([10_000, 10_000]), np.array([2, 2]), "two")
    m = ModelProfile(kv_bytes_per_token=10, prefill_tok_s=100_000.0)
    one = simulate(t, w, m, SimConfig(qps=1))
    assert one.prefill_end_s.tolist() == pytest.approx([0.1, 0.2])
    two = simulate(t, w, m, SimConfig(qps=1, prefill_slots=2))
    assert two.prefill_start_s.tolist() == [0.0, 0.0] and two.prefill_end_s.tolist() == pytest.approx([0.2, 0.2])


def test_a_closed_loop_client_sends_its_next_request_when_one_ends():
    w = small_work(5, rate=1000.0)
    r = simulate(roft(64, 16), w, ModelProfile(kv_bytes_per_token=1000), SimConfig(qps=1, sessions=1))
    assert r.arrival_s[0] == 0 and r.arrival_s[1:].tolist() == pytest.approx(r.finish_s[:-1].tolist())
    two = simulate(roft(64, 16), w, ModelProfile(kv_bytes_per_token=1000), SimConfig(qps=1, sessions=2))
    assert two.arrival_s[:2].tolist() == [0.0, 0.0] and two.completed.all()


def test_a_prefill_all_to_all_slows_the_instance_to_what_its_nics_carry():
    """A 16-GPU prefill instance over two servers at 100 Gb/s (12.5 GB/s per NIC): each GPU sends its rail peer
    1/16 of the tokens' copies; at full compute speed that is 3x what a NIC carries, so the prefill takes 3x its
    compute (two-batch overlap) or compute + all-to-all (without), and the all-to-all carries what the compute
    needs."""
    t = dataclasses.replace(roft(64, 16), link_gbps=roft(64, 16).link_gbps // 4, nic_gbps=100)
    w = Workload(np.array([0.0]), np.array([16_000]), np.array([1]), "one")
    m = ModelProfile(kv_bytes_per_token=1, prefill_tok_s=100_000.0)
    per_token = 3 * 12.5e9 * 16 / (2 * 100_000.0)  # bytes a token sends so that the demand is 3 NICs' worth
    m = dataclasses.replace(m, ep_bytes_per_copy=per_token / (75 * m.ep_copies(2, prefill=True)))
    compute = 16_000 / (2 * 100_000.0)
    for overlap, expected in ((True, 3 * compute), (False, compute + 3 * compute)):
        r = simulate(t, w, m, SimConfig(gpus_per_instance=16, qps=1, traffic="kv+ep", ep_overlap=overlap))
        assert r.prefill_end_s[0] - r.prefill_start_s[0] == pytest.approx(expected, rel=1e-9), overlap
        decode = (r.steps[:, 1] * r.steps[:, 2]).sum() * m.ep_bytes_per_token(2, prefill=False)
        assert r.ep_bytes - decode == pytest.approx(16_000 * per_token)


def test_a_hold_delays_a_transfer_s_end_by_that_much():
    w = Workload(np.array([0.0, 0.5]), np.array([10_000, 10_000]), np.array([3, 3]), "two")
    m = ModelProfile(kv_bytes_per_token=1000)
    plain = simulate(roft(64, 16), w, m, SimConfig(qps=1))
    held = simulate(roft(64, 16), w, m, SimConfig(qps=1), holds={("kv", 1): 0.25})
    assert held.kv_done_s[0] == plain.kv_done_s[0]
    assert held.kv_done_s[1] == pytest.approx(plain.kv_done_s[1] + 0.25)
    assert held.holds == {("kv", 1): 0.25}


def test_a_transfer_sliced_over_eight_nics_and_split_over_zcube_ports():
    """One KV transfer on ZCube(8, 2) sliced over a server's 8 NICs with 2 QPs each, split over both ports: 16 QPs,
    every NIC port of both servers used, 1 GB at 16 x 200 Gb/s."""
    w = Workload(np.array([0.0]), np.array([10_000]), np.array([2]), "one")
    m = ModelProfile(kv_bytes_per_token=100_000, prefill_tok_s=1e6)
    r = simulate(zcube(8), w, m, SimConfig(qps=2, nic_slices=8, port_policy="split"))
    kv = r.flows[r.flows[:, 4] == 0]
    assert len(kv) == 1 and kv[0, 6] == 16
    ports = {(path[0], path[-1]) for path, _ in r.flow_routes[0]}
    assert len({a for a, _ in ports}) == 16 and len({b for _, b in ports}) == 16  # 8 NICs x 2 ports at each end
    assert r.kv_done_s[0] - r.admitted_s[0] == pytest.approx(1e9 / (16 * 25e9), rel=1e-9)


def test_a_transfer_cut_by_a_failure_frees_its_memory_at_both_ends():
    """A ROFT leaf dies while KV transfers cross it: those requests fail and the prefill and decode memory they held
    comes back, so every later request still completes."""
    w = small_work(300, rate=200.0)
    heavy = ModelProfile(kv_bytes_per_token=2_000_000)
    r = simulate(roft(256, 32), w, heavy, SimConfig(failure=("switch", 0, float(w.arrival_s[100]))))
    assert r.failed.sum() > 0 and (r.completed | r.failed).all()
