"""The NIXL connector in one process: two engine cores, each with its own NIXL agent (UCX on CPU memory), one holds a
prefill for the other, which pulls it and decodes. The oracle is the same model generating alone."""
import os
import time

import pytest
import torch

from .conftest import need_pd  # noqa: E402

need_pd()
os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU here: the mega test runs Triton's interpreter

from hyperdecode import LLM  # noqa: E402
from hyperdecode.disagg.config import KVTransferConfig  # noqa: E402
from hyperdecode.disagg.layout import expected_bytes  # noqa: E402
from hyperdecode.disagg.nixl import NixlConnector  # noqa: E402
from hyperdecode.engine.kv_connector import KvTransfer  # noqa: E402
from hyperdecode.engine.sampling import SamplingParams  # noqa: E402

ROWS, CONTEXT = 3, 160


def instance(model: str, role: str, backend: str = "reference", **config) -> tuple[LLM, NixlConnector]:
    llm = LLM(model, device="cpu", backend=backend)
    llm.core.reserve(ROWS, CONTEXT)
    kv = KVTransferConfig(kv_role=role, kv_port=0, **config)
    connector = NixlConnector(kv, llm.core.runner.model, model)
    llm.core.connector = connector
    return llm, connector


def drive(llm: LLM, seqs: list, bound_s: float = 60.0) -> None:
    """Steps the core until every sequence ended and no transfer is pending (a bound on the wait)."""
    deadline = time.monotonic() + bound_s
    while not all(s.done for s in seqs) or llm.core.transfers_pending:
        assert time.monotonic() < deadline, "the engine did not finish within its bound"
        if llm.core.step_sequences() == [] and llm.core.transfers_pending:
            time.sleep(0.001)


def prefill(llm: LLM, prompt: list[int]):
    seq, _ = llm.inputs.process(prompt, SamplingParams(max_tokens=1, temperature=0))
    seq.kv = KvTransfer(send=True)
    llm.core.add(seq)
    deadline = time.monotonic() + 60
    while not seq.done:
        assert time.monotonic() < deadline
        llm.core.step_sequences()
    return seq


def decode(llm: LLM, prompt: list[int], params: dict, max_tokens: int = 12):
    seq, _ = llm.inputs.process(prompt, SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True))
    seq.kv = KvTransfer(remote=params)
    llm.core.add(seq)
    drive(llm, [seq])
    return seq


def prompt_of(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 250, (n,), generator=g).tolist()


@pytest.fixture(scope="module")
def llama_pair():
    made = instance("tiny-llama", "kv_producer"), instance("tiny-llama", "kv_consumer", backend="native")
    yield made
    for _, connector in made:
        connector.close()


def alone(model: str, prompt: list[int], max_tokens: int = 12) -> list[int]:
    llm = LLM(model, device="cpu", backend="reference", enable_prefix_caching=False)
    return llm.generate(prompt, max_tokens=max_tokens, temperature=0, ignore_eos=True).token_ids


def test_pulled_prefill_decodes_as_one_instance_and_frees_the_row(llama_pair):
    (p_llm, p_conn), (d_llm, d_conn) = llama_pair
    prompt = prompt_of(70, seed=1)
    held = prefill(p_llm, prompt)
    params = held.kv.params_out
    assert params["remote_block_ids"] == [held.slot] and params["remote_num_tokens"] == len(prompt)
    assert p_llm.core.num_held == 1 and p_llm.core.num_free == ROWS - 1
    seq = decode(d_llm, prompt, params)
    assert seq.finish_reason == "length" and seq.output_ids == alone("tiny-llama", prompt)
    # bytes: the config's per-token cache size (the function inspect and the fabric workload use) x prompt tokens
    assert seq.kv.stats["bytes"] == expected_bytes(p_llm.model, len(prompt)) == 512 * len(prompt)
    drive(p_llm, [held], bound_s=10)  # the peer's notification frees the producer's row
    assert p_llm.core.num_held == 0 and p_llm.core.num_free == ROWS


def test_a_local_prefix_pulls_only_the_rest(llama_pair):
    (p_llm, _), (d_llm, _) = llama_pair
    prompt = prompt_of(60, seed=2)
    decode(d_llm, prompt[:40], prefill(p_llm, prompt[:40]).kv.params_out, max_tokens=2)  # leaves 40 cached
    seq = decode(d_llm, prompt, prefill(p_llm, prompt).kv.params_out)
    assert seq.num_cached == 40 and seq.kv.stats["bytes"] == expected_bytes(d_llm.model, len(prompt) - 40)
    assert seq.output_ids == alone("tiny-llama", prompt)


def test_glm5_decode_selects_over_transferred_indexer_keys():
    p_llm, p_conn = instance("tiny-glm5", "kv_producer")
    d_llm, d_conn = instance("tiny-glm5", "kv_consumer")
    try:
        prompt = prompt_of(48, seed=3)  # longer than index_topk = 16: DSA selects among transferred keys
        assert len(prompt) > p_llm.config.index_topk
        seq = decode(d_llm, prompt, prefill(p_llm, prompt).kv.params_out)
        assert seq.output_ids == alone("tiny-glm5", prompt)
        names = [t.name for t in d_conn.layout.tensors]
        assert {"0.lat", "0.pe", "0.ik"} <= set(names)
        assert seq.kv.stats["bytes"] == expected_bytes(d_llm.model, len(prompt))
    finally:
        p_conn.close()
        d_conn.close()


def test_an_unread_prefill_is_freed_after_the_abort_timeout():
    p_llm, p_conn = instance("tiny-llama", "kv_producer", abort_timeout_s=0.5)
    try:
        held = prefill(p_llm, prompt_of(20, seed=4))
        assert p_llm.core.num_held == 1
        started = time.monotonic()
        drive(p_llm, [held], bound_s=5)
        assert 0.4 < time.monotonic() - started < 3 and p_llm.core.num_free == ROWS
        assert int(p_conn.tags[held.slot]) == 0  # a late reader finds the row is no longer its
    finally:
        p_conn.close()


def test_a_late_pull_of_an_expired_row_fails_instead_of_reading_another_prompt(llama_pair):
    (_, _), (d_llm, _) = llama_pair
    p_llm, p_conn = instance("tiny-llama", "kv_producer", abort_timeout_s=0.3)
    try:
        prompt = prompt_of(30, seed=5)
        held = prefill(p_llm, prompt)
        drive(p_llm, [held], bound_s=5)  # expired and freed
        prefill(p_llm, prompt_of(30, seed=6))  # another prompt takes a row
        seq = decode(d_llm, prompt, held.kv.params_out)
        assert seq.finish_reason == "error" and "gave row" in seq.error
        assert d_llm.core.num_free == ROWS  # the consumer's row is back too
    finally:
        p_conn.close()


def test_a_dead_peer_fails_the_request_within_the_bound_or_recomputes():
    d_llm, d_conn = instance("tiny-llama", "kv_consumer", transfer_timeout_s=2.0)
    p_llm, p_conn = instance("tiny-llama", "kv_producer")
    prompt = prompt_of(25, seed=7)
    params = prefill(p_llm, prompt).kv.params_out
    p_conn.close()  # the side channel is gone: the handshake cannot happen
    try:
        started = time.monotonic()
        seq = decode(d_llm, prompt, params)
        assert seq.finish_reason == "error" and "handshake" in seq.error and time.monotonic() - started < 5
        d_conn.recompute = True  # kv_load_failure_policy "recompute": prefill here instead
        seq = decode(d_llm, prompt, params)
        assert seq.finish_reason == "length" and seq.output_ids == alone("tiny-llama", prompt)
    finally:
        d_conn.close()


def test_a_peer_with_another_model_is_refused_naming_both():
    p_llm, p_conn = instance("tiny-qwen3", "kv_producer")
    d_llm, d_conn = instance("tiny-llama", "kv_consumer")
    try:
        prompt = prompt_of(20, seed=8)
        seq = decode(d_llm, prompt, prefill(p_llm, prompt).kv.params_out)
        assert seq.finish_reason == "error"
        assert "refusing the KV handshake" in seq.error and "'tiny-llama'" in seq.error and "'tiny-qwen3'" in seq.error
    finally:
        p_conn.close()
        d_conn.close()


def test_mega_arena_rows_round_trip():
    p_llm, p_conn = instance("tiny-llama", "kv_producer", backend="mega")
    d_llm, d_conn = instance("tiny-llama", "kv_consumer", backend="mega")
    try:
        prompt = prompt_of(9, seed=9)
        seq = decode(d_llm, prompt, prefill(p_llm, prompt).kv.params_out, max_tokens=4)
        assert seq.finish_reason == "length", seq.error
        assert seq.output_ids == alone("tiny-llama", prompt, max_tokens=4)
    finally:
        p_conn.close()
        d_conn.close()
