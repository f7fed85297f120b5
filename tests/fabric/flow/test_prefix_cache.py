"""The KV store's prefix fetches (SimConfig.prefix_cache) against hand-computed cases, and on the Mooncake trace."""
import numpy as np
import pytest

from hyperdecode.errors import ConfigError
from hyperdecode.fabric import roft
from hyperdecode.fabric.flow.config import SimConfig
from hyperdecode.fabric.flow.model import ModelProfile
from hyperdecode.fabric.flow.serving import simulate
from hyperdecode.fabric.flow.summary import summarize
from hyperdecode.fabric.flow.workload import BLOCK_TOKENS, Workload, load_trace

MOONCAKE = "mooncake-conversation"

BYTES = 1_000_000  # KV bytes per token: a 3-block fetch is 1.536 GB, 30.72 ms alone on a 400G NIC
MODEL = ModelProfile(kv_bytes_per_token=BYTES, prefill_tok_s=100_000.0)


def three_requests(prefix_cache: bool):
    """A, then B on the other prefill instance sharing A's first 3 blocks, then C (after both) on A's instance
    sharing 2 of them: 32 GPUs of 8 per instance, P:D 1:1 (two prefill instances, each one server)."""
    w = Workload(np.array([0.0, 0.001, 1.0]), np.array([2048, 2048, 2048]), np.array([2, 2, 2]), "three",
                 [[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 5, 6]])
    r = simulate(roft(32, 16), w, MODEL, SimConfig(qps=1, prefix_cache=prefix_cache))
    return r, r.prefill_end_s - r.prefill_start_s


def test_cached_blocks_are_fetched_from_the_server_that_computed_them():
    r, prefill = three_requests(prefix_cache=True)
    assert r.prefix_hit_blocks.tolist() == [0, 3, 2]
    assert prefill[0] == pytest.approx(2048 / 1e5)  # nothing cached: all computed
    # B: 512 tokens computed (5.12 ms) while 3 blocks come from A's GPU's server, at 50 GB/s until A's prefill
    # ends and A's own KV transfer leaves on the same NIC, then at half of it
    fetch, a_end = 3 * BLOCK_TOKENS * BYTES, 2048 / 1e5
    alone = (a_end - 0.001) * 50e9
    assert prefill[1] == pytest.approx(a_end - 0.001 + (fetch - alone) / 25e9, rel=1e-6)
    # C: on A's server, whose host memory holds blocks 1 and 2: no fetch, 1,024 tokens computed
    assert prefill[2] == pytest.approx(1024 / 1e5)
    assert r.fetch_bytes == fetch
    s = summarize(r)
    assert s["prefix_cached_share"] == pytest.approx(5 * BLOCK_TOKENS / (3 * 2048))
    assert s["kv_store_fetch_bytes"] == r.fetch_bytes


def test_off_computes_every_prompt():
    r, prefill = three_requests(prefix_cache=False)
    assert prefill == pytest.approx(np.full(3, 2048 / 1e5))
    assert r.fetch_bytes == 0 and summarize(r)["prefix_cached_share"] == 0


def test_a_whole_prompt_in_the_cache_still_computes_its_last_block():
    w = Workload(np.array([0.0, 1.0]), np.array([1024, 1024]), np.array([2, 2]), "twice", [[7, 8], [7, 8]])
    r = simulate(roft(32, 16), w, MODEL, SimConfig(qps=1, prefix_cache=True))
    assert r.prefix_hit_blocks.tolist() == [0, 1]


def test_a_trace_without_hash_ids_is_refused():
    w = Workload(np.array([0.0]), np.array([100]), np.array([2]), "azure.csv")
    with pytest.raises(ConfigError, match="azure.csv: prefix_cache needs the trace's hash_ids"):
        simulate(roft(32, 16), w, MODEL, SimConfig(prefix_cache=True))


def test_mooncake_prefix_cache_serves_part_of_the_prompts_and_cuts_prefill():
    """The conversation trace repeats 36.6 % of its blocks (traces' README); a prefix cache can serve at most those
    that lead their prompt. With it, prefill stages shorten and the store's fetches cross the network."""
    w = load_trace(MOONCAKE).head(1500)
    runs = {on: summarize(simulate(roft(64, 16), w.scaled(8), cfg=SimConfig(prefix_cache=on))) for on in (False, True)}
    share = runs[True]["prefix_cached_share"]
    assert 0.05 < share < 0.366
    assert runs[True]["kv_store_fetch_bytes"] > 0
    assert runs[True]["ttft_stages"]["prefill"]["p50"] < runs[False]["ttft_stages"]["prefill"]["p50"]
