"""Logprobs (engine/core.py, sampling.token_logprobs): each output token's log-probability and top alternatives are
log_softmax of the reference forward's logits at its position (also with drafts verified in one step); prompt
logprobs score every prompt token after the first; parallel samples (n > 1) reuse the first one's cached prompt."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.sampling import SamplingParams


def reference_logprobs(llm, tokens):
    """log_softmax of one full causal forward without the cache: row p scores token p + 1."""
    return torch.log_softmax(llm.logits(tokens).double(), dim=-1)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-glm5"])
def test_output_logprobs_match_log_softmax_of_the_reference_logits(name):
    llm = hd.LLM(name, device="cpu", seed=1)
    g = torch.Generator().manual_seed(11)
    prompt = torch.randint(0, llm.config.vocab_size, (23,), generator=g).tolist()
    r = llm.generate_batch([prompt], max_tokens=8, temperature=1.0, seed=5, ignore_eos=True, logprobs=5)[0]
    full = reference_logprobs(llm, prompt + r.token_ids)
    assert [t for t, _, _ in r.logprobs] == r.token_ids
    for j, (token, lp, top) in enumerate(r.logprobs):
        row = full[len(prompt) - 1 + j]
        assert lp == pytest.approx(row[token].item(), abs=1e-4)
        want = torch.topk(row, 5)
        assert [t for t, _ in top] == want.indices.tolist()
        assert [v for _, v in top] == pytest.approx(want.values.tolist(), abs=1e-4)


def test_logprobs_with_drafts_verified_in_one_step():
    llm = hd.LLM("tiny-llama", device="cpu", seed=2)
    prompt = [5, 6, 7, 8] * 6  # repeats: the n-gram drafter proposes, the greedy verifier accepts some
    plain = llm.generate_batch([prompt], max_tokens=12, ignore_eos=True, logprobs=2)[0]
    spec = llm.generate_batch([prompt], max_tokens=12, ignore_eos=True, logprobs=2, speculative="ngram:3")[0]
    assert spec.token_ids == plain.token_ids
    assert spec.stats.speculative.num_draft_tokens > 0
    for a, b in zip(spec.logprobs, plain.logprobs):
        assert a[0] == b[0] and a[1] == pytest.approx(b[1], abs=1e-4)


def test_prompt_logprobs_score_every_prompt_token_also_in_chunks():
    llm = hd.LLM("tiny-dsv32", device="cpu", seed=0, max_num_batched_tokens=8)
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, llm.config.vocab_size, (21,), generator=g).tolist()
    llm.generate(prompt, max_tokens=2)  # the same prompt cached: prompt logprobs must not reuse it
    r = llm.generate_batch([prompt], max_tokens=3, ignore_eos=True, logprobs=0, prompt_logprobs=3)[0]
    assert r.stats.cached_tokens == 0
    full = reference_logprobs(llm, prompt)
    assert [t for t, _, _ in r.prompt_logprobs] == prompt[1:]
    for p, (token, lp, top) in enumerate(r.prompt_logprobs):
        assert lp == pytest.approx(full[p, token].item(), abs=1e-4)
        assert [t for t, _ in top] == torch.topk(full[p], 3).indices.tolist()
    assert r.token_ids == llm.generate(prompt, max_tokens=3, ignore_eos=True).token_ids


def test_parallel_samples_reuse_the_first_ones_prompt():
    llm = hd.LLM("tiny-llama", device="cpu", seed=0)
    prompt = list(range(3, 40))
    core = llm.core
    core.reserve(3, 64)
    seqs = []
    for j in range(3):
        seq, _ = llm.inputs.process(prompt, SamplingParams(max_tokens=4, temperature=1.0, seed=1 + j,
                                                           ignore_eos=True))
        seq.after = seqs[0] if seqs else None
        seqs.append(seq)
        core.add(seq)
    core.step()
    assert core.scheduler.running == seqs[:1]  # the siblings waited while the first prompt was fed
    while core.has_unfinished:
        core.step()
    assert [s.num_cached for s in seqs] == [0] + [len(prompt) - 1] * 2
    assert all(s.num_output == 4 for s in seqs)
    assert len({tuple(s.output_ids) for s in seqs}) > 1  # their own seeds
