"""A serving run's busiest window replayed with PFC: every flow still completes, none is dropped, a lone flow
is as fast as max-min says (up to the chunks' store-and-forward), and an incast burst pauses and slows flows."""
import numpy as np
import pytest

from hyperdecode.fabric import roft
from hyperdecode.fabric.flow.config import SimConfig
from hyperdecode.fabric.flow.model import ModelProfile
from hyperdecode.fabric.flow.serving import simulate
from hyperdecode.fabric.flow.workload import Workload
from hyperdecode.fabric.packet.hotwindow import hot_windows, replay_window


def burst(n, spacing):
    rng = np.random.default_rng(4)
    return Workload(np.arange(n) * spacing, rng.integers(9000, 11000, n), np.full(n, 2), "burst")


def test_a_lone_flow_replays_at_its_max_min_speed():
    m = ModelProfile(kv_bytes_per_token=5000, prefill_tok_s=1e6)
    r = simulate(roft(64, 16), burst(1, 1.0), m, SimConfig(qps=1))
    out = replay_window(r, hot_windows(r, 0.05)[0])
    assert out["flows"] == 1 and out["unfinished"] == 0 and out["drops"] == 0
    assert out["pause_frames"] == 0 and out["slowdown_p50"] == pytest.approx(1.0, abs=0.02)


def test_a_burst_replayed_with_pfc_pauses_and_slows():
    """Prefills finishing together send their KV at once; PFC pauses where they converge (and nothing is lost)."""
    m = ModelProfile(kv_bytes_per_token=5000, prefill_tok_s=1e7)
    cfg = SimConfig(gpus_per_instance=8, pd_ratio=(3, 1), qps=1)
    r = simulate(roft(64, 16), burst(24, 0.0005), m, cfg)
    window = hot_windows(r, 0.05)[0]
    out = replay_window(r, window)
    assert out["flows"] > 8 and out["unfinished"] == 0 and out["drops"] == 0
    assert out["pause_frames"] > 0 and out["pause_s_total"] > 0
    assert out["slowdown_p99"] >= 1.0
    assert window[1] - window[0] == pytest.approx(0.05)
    assert out["link_util_p99_100us"]["max"] == pytest.approx(1.0, abs=0.02)  # the burst's links run at line rate
    assert out["queue_bytes_p99_100us"]["max"] > 64 << 10
    controlled = replay_window(r, window, dcqcn=True)  # DCQCN slows the senders before the buffers fill
    assert controlled["ecn_marks"] > 0 and controlled["cnps"] > 0
    assert controlled["pause_frames"] < out["pause_frames"] and controlled["drops"] == 0
    assert controlled["unfinished"] == 0


def test_an_empty_window_is_refused():
    r = simulate(roft(64, 16), burst(1, 1.0), ModelProfile(kv_bytes_per_token=5000), SimConfig(qps=1))
    with pytest.raises(ValueError, match="no transfer starts"):
        replay_window(r, (100.0, 101.0))
