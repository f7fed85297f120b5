"""The engine core and its step plan: caches allocated once and grown only when a call needs more, decode rows and
prompt chunks within the token budget, one driver at a time."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.sampling import SamplingParams
from hyperdecode.engine.scheduler import Scheduler
from hyperdecode.engine.sequence import Sequence


def test_caches_are_allocated_once_and_grown_when_a_call_needs_more():
    llm = hd.LLM("tiny-llama", device="cpu", seed=1)
    llm.generate("hello", max_tokens=4)
    first = {k: t.data_ptr() for k, t in llm.model.cache_tensors().items()}
    llm.generate("hi", max_tokens=3)
    llm.generate_batch(["a"], max_tokens=2)
    assert {k: t.data_ptr() for k, t in llm.model.cache_tensors().items()} == first  # reused, not rebuilt
    size = (llm.core.max_batch, llm.core.max_seq)
    llm.generate_batch(["a", "b", "c"], max_tokens=2)  # more rows than before: grown once
    assert llm.core.max_batch == 3 and llm.core.max_seq >= size[1]
    grown = {k: t.data_ptr() for k, t in llm.model.cache_tensors().items()}
    llm.generate_batch(["x", "y"], max_tokens=2)
    assert {k: t.data_ptr() for k, t in llm.model.cache_tensors().items()} == grown


def test_plan_feeds_decode_rows_then_prompt_chunks_within_the_budget():
    s = Scheduler(max_batch=3, max_seq=64, max_num_batched_tokens=10)
    a, b, c = (Sequence(list(range(n)), SamplingParams(max_tokens=5)) for n in (4, 12, 30))
    for seq in (a, b, c):
        s.add(seq)
    assert [(seq, n) for seq, n in s.schedule()] == [(a, 4), (b, 6)]  # c waits: the budget is spent
    a.num_computed, b.num_computed = 4, 6
    s.append(a, 7)  # a sampled its first token and now decodes
    assert [(seq, n) for seq, n in s.schedule()] == [(a, 1), (b, 6), (c, 3)]
    b.num_computed, c.num_computed, a.num_computed = 12, 3, 5
    s.append(b, 9)  # b's prompt is in: it sampled and decodes from now on
    s.end(a, "abort")
    assert a.done and s.num_free == 1 and [(seq, n) for seq, n in s.schedule()] == [(b, 1), (c, 9)]


def test_without_a_budget_whole_prompts_are_fed():
    s = Scheduler(max_batch=2, max_seq=64)
    a, b, c = (Sequence(list(range(n)), SamplingParams(max_tokens=5)) for n in (40, 20, 3))
    for seq in (a, b, c):
        s.add(seq)
    assert [(seq, n) for seq, n in s.schedule()] == [(a, 40), (b, 20)]  # c waits for a slot
    assert s.num_free == -1


def test_one_driver_at_a_time():
    llm = hd.LLM("tiny-llama", device="cpu")
    seq, _ = llm.inputs.process("busy", SamplingParams(max_tokens=3))
    llm.core.reserve(1, 32)
    llm.core.add(seq)
    with pytest.raises(RuntimeError, match="engine core is busy"):
        llm.generate("another")
    while llm.core.has_unfinished:
        llm.core.step()
    assert seq.num_output == 3 and llm.generate("another", max_tokens=2, ignore_eos=True).stats.output_tokens == 2


def test_stop_string_keeps_tokens_up_to_the_stop():
    llm = hd.LLM("tiny-llama", device="cpu", seed=0)
    kw = dict(max_tokens=40, temperature=1.0, seed=3, ignore_eos=True)
    full = llm.generate("abc", **kw)
    stop = full.text[8:10]
    cut = llm.generate("abc", stop=[stop], **kw)
    assert cut.finish_reason == "stop" and cut.text == full.text[:full.text.find(stop)]
    assert cut.token_ids == full.token_ids[:len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)
    assert torch.tensor(cut.token_ids).numel() == cut.stats.output_tokens
