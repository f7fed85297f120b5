import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.sampling import SamplingParams, sample


@pytest.fixture(scope="module")
def llm():
    return hd.LLM("tiny-llama", device="cpu", seed=1)


def test_same_seed_same_text_different_seeds_differ(llm):
    kw = dict(max_tokens=32, temperature=1.0, ignore_eos=True)
    a = llm.generate("Once upon a time", seed=123, **kw)
    b = llm.generate("Once upon a time", seed=123, **kw)
    c = llm.generate("Once upon a time", seed=124, **kw)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.token_ids != c.token_ids


def test_seeded_batch_equals_one_by_one(llm):
    kw = dict(max_tokens=16, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    batch = llm.generate_batch(["ab", "a much longer prompt"], **kw)
    assert [g.token_ids for g in batch] == [llm.generate(p, **kw).token_ids for p in ["ab", "a much longer prompt"]]


def test_top_k_restricts_to_k_best():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    allowed = logits.topk(4, dim=-1).indices
    for _ in range(50):
        ids = sample(logits, SamplingParams(temperature=1.0, top_k=4), gens)
        assert all(int(i) in allowed[r].tolist() for r, i in enumerate(ids))


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    gens = [torch.Generator().manual_seed(1)]
    seen = {int(sample(probs.log(), SamplingParams(temperature=1.0, top_p=0.75), gens)) for _ in range(300)}
    assert seen == {0, 1}
    seen = {int(sample(probs.log(), SamplingParams(temperature=1.0, top_p=0.5), gens)) for _ in range(100)}
    assert seen == {0}


def test_temperature_sampling_follows_distribution():
    probs = torch.tensor([[0.6, 0.3, 0.1]])
    gens = [torch.Generator().manual_seed(2)]
    draws = torch.stack([sample(probs.log(), SamplingParams(temperature=1.0), gens) for _ in range(3000)])
    freq = torch.bincount(draws.flatten(), minlength=3).float() / 3000
    assert torch.allclose(freq, probs[0], atol=0.03)


def test_greedy_is_argmax():
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sample(logits, SamplingParams(), []), logits.argmax(-1))
