"""The flow simulator against hand-computed answers; ECMP and ZCube load balance; PD simulation end to end."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric import roft, zcube
from hyperdecode.fabric.flowsim import EventQueue, FlowNetwork
from hyperdecode.fabric.routing import Router
from hyperdecode.fabric.simreport import summarize
from hyperdecode.fabric.simconfig import SimConfig, parse_failure, parse_pd_ratio, roles
from hyperdecode.fabric.simulate import simulate
from hyperdecode.fabric.workload import ModelProfile, Workload, load_trace, synthetic

# the project's shared/ folder sits beside the checkout (and beside CI's clone)
TRACES = Path(os.environ.get("HYPERDECODE_TRACES", Path(__file__).resolve().parents[3] / "shared" / "traces"))
MOONCAKE = TRACES / "mooncake_conversation_trace.jsonl"


def run_flows(capacity, flows):
    """flows: (start, path, size) -> finish times, with the simulator's own event loop."""
    ev, finish = EventQueue(), {}
    net = FlowNetwork(np.array(capacity, dtype=float), lambda f, eta: ev.at(eta, done, f, f.version))

    def done(f, version):
        if f.version == version and f.id in net.flows:
            net.remove(f, ev.now)
            finish[f.tag] = ev.now

    for i, (start, path, size) in enumerate(flows):
        ev.at(start, lambda p=path, s=size, i=i: net.add(p, s, ev.now, tag=i))
    ev.run()
    return [finish[i] for i in range(len(flows))], net


def test_one_flow_gets_line_rate():
    finish, net = run_flows([10.0, 5.0, 8.0], [(0.0, [0, 1, 2], 20.0)])
    assert finish == [pytest.approx(4.0)]  # 20 bytes at the 5 B/s bottleneck
    assert net.link_bytes.tolist() == pytest.approx([20.0, 20.0, 20.0])


@pytest.mark.parametrize("n", [2, 3, 7])
def test_n_flows_share_a_bottleneck_equally(n):
    finish, _ = run_flows([12.0], [(0.0, [0], 6.0)] * n)
    assert finish == [pytest.approx(6.0 * n / 12.0)] * n


def test_classic_max_min_two_bottlenecks():
    rates = {}
    net = FlowNetwork(np.array([10.0, 4.0]), lambda f, eta: rates.__setitem__(f.tag, f.rate))
    net.add([0], 1e9, 0.0, tag="A")
    net.add([0, 1], 1e9, 0.0, tag="B")
    net.add([1], 1e9, 0.0, tag="C")
    assert (rates["A"], rates["B"], rates["C"]) == (pytest.approx(8.0), pytest.approx(2.0), pytest.approx(2.0))


def test_strict_priority_classes_by_hand():
    """Two classes on a 10 B/s link: the high class (0) takes the line, the low class gets what is left, and moves
    only once the high flow is done (20 B at 10 B/s ends at 2 s; the low flow's 30 B then take 3 s more). A
    high-class flow that a narrower link holds to 4 B/s leaves the low class the other 6 B/s."""
    ev, finish = EventQueue(), {}
    net = FlowNetwork(np.array([10.0, 4.0]), lambda f, eta: ev.at(eta, done, f, f.version))

    def done(f, version):
        if f.version == version and f.id in net.flows:
            net.remove(f, ev.now)
            finish[f.tag] = ev.now

    ev.at(0.0, lambda: net.add([0], 20.0, ev.now, tag="high", priority=0))
    ev.at(0.0, lambda: net.add([0], 30.0, ev.now, tag="low", priority=1))
    ev.run()
    assert finish == {"high": pytest.approx(2.0), "low": pytest.approx(5.0)}
    rates = {}
    net = FlowNetwork(np.array([10.0, 4.0]), lambda f, eta: rates.__setitem__(f.tag, f.rate))
    net.add([0, 1], 1e9, 0.0, tag="high", priority=0)
    net.add([0], 1e9, 0.0, tag="low", priority=1)
    assert rates == {"high": pytest.approx(4.0), "low": pytest.approx(6.0)}


def test_separate_classes_put_the_all_to_all_above_kv():
    """With EP and KV on one class every logged flow is class 0; with separate classes KV flows are class 1 and,
    yielding to the all-to-all on shared NIC links, take longer."""
    t = roft(64, 16)
    w = small_work(200, rate=20.0)
    m = ModelProfile(kv_bytes_per_token=500_000, ep_bytes_per_copy=200_000)
    runs = {c: simulate(t, w, m, SimConfig(gpus_per_instance=16, traffic="kv+ep", classes=c))
            for c in ("same", "separate")}
    assert set(runs["same"]["flows"][:, 3]) == {0}
    assert set(runs["separate"]["flows"][:, 3]) == {0, 1}
    same, separate = (summarize(runs[c]) for c in ("same", "separate"))
    assert separate["kv_fct_p99_s"] > 2 * same["kv_fct_p99_s"]
    assert separate["requests_completed"] == same["requests_completed"] == 200


def test_flows_started_and_ended_together_give_the_rates_one_at_a_time_gives():
    """add_many and deferred removals (one recomputation per instant) against one flow at a time."""
    rng = np.random.default_rng(7)
    cap = rng.uniform(5, 15, 6)
    paths = [sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False).tolist()) for _ in range(12)]
    one = FlowNetwork(cap, lambda f, eta: None)
    flows_one = [one.add(p, 100.0, 0.0, tag=i) for i, p in enumerate(paths)]
    many = FlowNetwork(cap, lambda f, eta: None)
    flows_many = many.add_many([(p, 100.0, i, 0) for i, p in enumerate(paths)], 0.0)
    assert [f.rate for f in flows_many] == pytest.approx([f.rate for f in flows_one])
    for k in (0, 3, 5):
        one.remove(flows_one[k], 1.0)
        many.remove(flows_many[k], 1.0, defer=True)
    many.flush(1.0)
    left = [k for k in range(12) if k not in (0, 3, 5)]
    assert [flows_many[k].rate for k in left] == pytest.approx([flows_one[k].rate for k in left])
    assert many.link_rate == pytest.approx(one.link_rate)


def test_staggered_flows_complete_exactly():
    finish, _ = run_flows([10.0], [(0.0, [0], 10.0), (0.5, [0], 10.0)])
    assert finish == [pytest.approx(1.5), pytest.approx(2.0)]


def test_ecmp_matches_balls_in_bins():
    t = roft(512, 32)  # leaf uplinks: 16, one to each of 16 spines
    router = Router(t)
    up = 16
    expected = up * (1 - (1 - 1 / up) ** up)  # distinct uplinks used by `up` hashed flows
    used = []
    for trial in range(400):
        links = {router.path(0, 128, key=trial * 1000 + k)[1] for k in range(up)}  # unit 0 -> unit 1, rail 0
        used.append(len(links))
    se = np.std(used) / math.sqrt(len(used))
    assert abs(np.mean(used) - expected) < 4 * se + 0.05
    assert 0.60 < np.mean(used) / up < 0.68  # ~63 % of the paths, the balls-in-bins anchor


def test_zcube_cross_port_all_to_all_loads_every_inter_switch_link_equally():
    n = 8
    t = zcube(n)
    router = Router(t, "balanced")
    att = t.attachments()
    load = np.zeros(2 * t.num_links)
    for s in range(n * n):
        for d in range(n * n):
            if s != d and not set(att[s]) & set(att[d]):
                for _ in range(2):  # the two cross-port pairings
                    for link in router.path(s, d, key=0):
                        load[link] += 1
    fabric = np.concatenate([[2 * i, 2 * i + 1] for i in np.nonzero(t.link_port < 0)[0]])
    assert load[fabric].min() == load[fabric].max() > 0


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
        assert r["finish_s"][0] == pytest.approx(0.1 + kv + 5 * 0.021)
        assert s["throughput_tok_s"] == pytest.approx(5 / r["finish_s"][0])


def test_steady_throughput_counts_the_tokens_made_while_requests_arrive():
    """Two requests, at 0 s and 1 s: in [0, 1] only the first decodes, one token per 21 ms step from the end of its
    prefill and KV transfer; the run's throughput also counts the second's decode after 1 s."""
    t = roft(64, 16)
    w = Workload(np.array([0.0, 1.0]), np.array([10_000, 10_000]), np.array([100, 100]), "two")
    m = ModelProfile(kv_bytes_per_token=1000, prefill_tok_s=100_000.0, decode_step_s=0.02,
                     decode_step_per_seq_s=0.001)
    r = simulate(t, w, m, SimConfig(qps=1))
    s = summarize(r)
    assert s["steady_tok_s"] == pytest.approx((1.0 - r["kv_done_s"][0]) / 0.021, rel=1e-9)
    assert s["throughput_tok_s"] == pytest.approx(200 / r["finish_s"].max())


def one_server_pd(kv_gb):
    """Two 8-GPU instances (1 prefill, 1 decode) and two requests at t = 0 whose KV takes 0.4 s to send."""
    t = roft(16, 16)
    w = Workload(np.array([0.0, 0.0]), np.array([10_000, 10_000]), np.array([2, 2]), "two")
    m = ModelProfile(kv_bytes_per_token=2_000_000, prefill_tok_s=100_000.0)  # 20 GB each: 0.4 s at 50 GB/s
    return simulate(t, w, m, SimConfig(qps=1, prefill_kv_gb=kv_gb))


def test_a_prefill_slot_stays_busy_until_its_kv_transfer_ends():
    held = one_server_pd(kv_gb=25)  # room for one request's 20 GB: the second prefill waits for the first's send
    assert held["prefill_start_s"][1] == pytest.approx(held["kv_done_s"][0])
    assert held["kv_done_s"][0] == pytest.approx(0.1 + 0.4)
    roomy = one_server_pd(kv_gb=64)  # room for both: the second starts when the first's compute ends
    assert roomy["prefill_start_s"][1] == pytest.approx(roomy["prefill_end_s"][0]) == pytest.approx(0.1)


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


def test_reroute_keeps_what_was_sent():
    etas = []
    net = FlowNetwork(np.array([10.0, 5.0]), lambda f, eta: etas.append(eta))
    f = net.add([0], 20.0, 0.0)
    net.reroute(f, [1], 1.0)  # 10 bytes sent at 10 B/s, 10 left at 5 B/s
    assert f.remaining == pytest.approx(10.0) and f.rate == 5.0 and etas == [pytest.approx(2.0), pytest.approx(3.0)]


def test_synthetic_generator_fits_the_trace():
    w = load_trace(MOONCAKE)
    s = synthetic(w, num_requests=5000, seed=1)
    assert abs(np.log(s.input_tokens).mean() - np.log(w.input_tokens).mean()) < 0.1
    assert abs(s.rate - w.rate) / w.rate < 0.1


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("hello,world\n1,2\n"), "unknown trace format"),
    (lambda p: p.write_text('{"timestamp": 0, "input_length": -5, "output_length": 3}\n'), "input length -5"),
    (lambda p: p.write_text('{"timestamp": 0, "input_len": 5}\n'), "not a Mooncake trace row"),
    (lambda p: p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,x,3\n"),
     "not an Azure trace row"),
])
def test_bad_traces(tmp_path, make, message):
    p = tmp_path / "trace.txt"
    make(p)
    with pytest.raises(ConfigError, match=message):
        load_trace(p)


def test_bad_cluster_parameters():
    with pytest.raises(ConfigError, match="does not fit 2 instances"):
        roles(zcube(4), SimConfig(pd_ratio=(2, 1)))
    with pytest.raises(ConfigError, match="must divide"):
        roles(zcube(4), SimConfig(gpus_per_instance=5))
    with pytest.raises(ConfigError, match="look like 1:2"):
        parse_pd_ratio("one-to-two")
    with pytest.raises(ConfigError, match="link:12@30"):
        parse_failure("router:1")
    with pytest.raises(ConfigError, match="classes 'two'"):
        simulate(zcube(4), small_work(2), cfg=SimConfig(gpus_per_instance=4, classes="two"))


def test_azure_trace_reads():
    w = load_trace(TRACES / "azure_llm_2023_code.csv")
    assert len(w) == 8819 and w.arrival_s[0] == 0 and (np.diff(w.arrival_s) >= 0).all()


def test_mooncake_1024_gpus_runs_to_completion_on_both(tmp_path):
    w = load_trace(MOONCAKE)
    rows = {}
    for name, topo in (("zcube", zcube(32)), ("roft", roft(1024, 32, tiers=3))):
        rows[name] = summarize(simulate(topo, w))
        assert rows[name]["requests_completed"] == 12031 and rows[name]["requests_failed"] == 0
    assert rows["zcube"]["cost_total"] < rows["roft"]["cost_total"]


def test_simulate_cli(tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", "simulate", "--topology", "roft",
                        "--gpus", "128", "--switch-tbps", "12.8", "--trace", str(MOONCAKE), "--max-requests", "300",
                        "--fail", "switch:1@5", "--json", str(out), "--plot", str(tmp_path / "p.png")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    assert s["requests_completed"] + s["requests_failed"] == 300
    bad = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", "simulate", "--gpus", "16",
                          "--trace", str(MOONCAKE), "--pd-ratio", "3:1"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "does not fit" in bad.stderr and "Traceback" not in bad.stderr


def test_pairs_sharing_a_switch_take_the_one_switch_path():
    """A ZCube pair in the same block (or residue group) goes through that switch under every port policy, never
    on a two-switch pairing that ties with it in total (the paper form and the blog form with parallel links)."""
    from hyperdecode.fabric import zcube
    from hyperdecode.fabric.routing import Router
    for topo in (zcube(4), zcube(num_gpus=64, gpus_per_switch=16, links_per_pair=4)):
        att = topo.attachments()
        for policy in ("fixed", "balanced", "hashed"):
            router = Router(topo, policy)
            for src in range(topo.num_gpus):
                for dst in range(topo.num_gpus):
                    if src != dst and set(att[src]) & set(att[dst]):
                        for key in range(3):
                            assert len(router.path(src, dst, key)) == 2, (topo.params, policy, src, dst)


def test_flow_keys_stay_distinct_beyond_16_qps_and_64_ranks():
    from hyperdecode.fabric.routing import mix
    keys = {mix(req, r, qp) for req in range(8) for r in range(128) for qp in range(32)}
    assert len(keys) == 8 * 128 * 32


def test_model_profile_counts_indexer_keys_and_computed_prefill():
    from hyperdecode.fabric.workload import ModelProfile
    glm5 = ModelProfile.from_model("glm-5")
    assert glm5.kv_bytes_per_token == 89_856 + 78 * (128 + 4)  # latent + DSA indexer keys (FP8 + fp32 scale)
    assert ModelProfile().kv_bytes_per_token == glm5.kv_bytes_per_token
    assert ModelProfile().prefill_tok_s == pytest.approx(73_700 * (1 - 0.563), rel=1e-3)  # no prefix cache here
    assert ModelProfile.from_model("deepseek-v3.2").kv_bytes_per_token == 61 * (576 * 2 + 128 + 4)


def test_a_summary_survives_a_port_speed_without_a_price():
    from hyperdecode.fabric import zcube
    from hyperdecode.fabric.simreport import cost_of
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


def test_link_utilisation_p99_by_hand():
    """A link carrying one flow at half its capacity for 1 s, then idle for 1 s, spends half its time at 50 %; a
    second link at full rate for 1 s of 2; P99 is the level a link stays at or below 99 % of the time."""
    from hyperdecode.fabric.simreport import link_util_p99
    finish, net = run_flows([10.0, 5.0], [(0.0, [0, 1], 5.0), (1.0, [1], 0.0001)])
    net.close(2.0)
    seconds = net.util_seconds
    assert seconds.sum(axis=1) == pytest.approx([2.0, 2.0])
    assert seconds[0, 25] == pytest.approx(1.0) and seconds[1, -1] == pytest.approx(1.0, abs=1e-4)
    assert link_util_p99(seconds).tolist() == pytest.approx([0.52, 1.0])


def test_simulate_cli_with_pfc_replays_the_hot_window(tmp_path):
    out = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "hyperdecode.cli", "fabric", "simulate", "--topology", "roft",
                        "--gpus", "64", "--switch-tbps", "12.8", "--trace", str(MOONCAKE), "--max-requests", "200",
                        "--rate-scale", "16", "--pfc", "on", "--pfc-window-s", "0.05", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    s = json.loads(out.read_text())
    w = s["pfc_window"]
    assert w["flows"] >= 1 and w["drops"] == 0 and 0 < w["replayed_s"] <= 0.1 + 1e-9  # bounded by time
    assert s["pause_s_total"] == w["pause_s_total"] >= 0
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


@pytest.mark.parametrize("rounds,overlap", [(1, True), (5, True), (5, False), (75, False)])
def test_per_layer_all_to_alls_add_to_the_step_without_overlap(rounds, overlap):
    """The decode step of the test above with an all-to-all of 10 ms at line rate against 20.04 ms of compute: in
    rounds beside the compute (two-batch overlap) the step stays max(compute, all-to-all); in rounds after each
    layer's compute (per MoE layer: 75 rounds) it is their sum, whatever the number of rounds."""
    t = roft(64, 16)
    w = Workload(np.array([0.0]), np.array([1000]), np.array([3]), "one")
    per_gpu = 0.010 * 50e9
    m = ModelProfile(kv_bytes_per_token=1000, prefill_tok_s=1e6, ep_bytes_per_copy=per_gpu / (1 / 16 * 75 * 4))
    cfg = SimConfig(gpus_per_instance=16, qps=1, traffic="kv+ep", ep_rounds=rounds, ep_overlap=overlap)
    r = simulate(t, w, m, cfg)
    s = summarize(r)
    expected = m.step_s(1) + 0.010 if not overlap else m.step_s(1)
    assert s["decode_step_p99_s"] == pytest.approx(expected, rel=1e-6)
    steps = r["steps"][:, 1].sum()
    prefill_bytes = 1000 * 75 * m.ep_copies(2, prefill=True) * m.ep_bytes_per_copy
    assert r["ep_bytes"] == pytest.approx(prefill_bytes + steps * 16 * per_gpu)  # the same bytes in any rounds
    assert len(r["flows"]) >= rounds * 16 * 3  # each round its own all-to-all
