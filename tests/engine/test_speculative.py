"""Speculative decoding: greedy output identical to plain decoding for every draft source and k = 1..4 (forced
all-rejected and all-accepted runs too), caches after rollback equal to a run that never saw the rejected tokens,
the sampling rule's distribution (chi-square), and the config's errors."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.drafts import NgramDrafter, SuffixDrafter
from hyperdecode.engine.sampling import SamplingParams
from hyperdecode.engine.sequence import Sequence
from hyperdecode.engine.speculative import accept, parse_speculative
from hyperdecode.errors import ConfigError

MAX_TOKENS = 24
# index_topk is 16 on the tiny GLM-5 / DeepSeek presets: these contexts cross it
PROMPTS = [[7, 8, 9, 10, 11, 7, 8, 9], list(range(20, 40)) + list(range(20, 30)), [3, 1, 4, 1, 5, 9, 2, 6]]


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-glm5", "tiny-dsv32"])
def model(request):
    llm = hd.LLM(request.param, device="cpu", seed=0)
    plain = [g.token_ids for g in llm.generate_batch(PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True)]
    return llm, plain


def methods(llm):
    return ["mtp"] if llm.model.cfg.num_nextn_predict_layers else ["ngram", "suffix"]


def run(llm, spec, **kw):
    return llm.generate_batch(PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True, speculative=spec, **kw)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_greedy_speculative_equals_plain(model, k):
    llm, plain = model
    for method in methods(llm):
        # n-gram lookups from one token on: the most drafts (and rejections) these short outputs can give
        spec = dict(method=method, num_speculative_tokens=k, **({"prompt_lookup_min": 1} if method == "ngram" else {}))
        gens = run(llm, spec)
        assert [g.token_ids for g in gens] == plain, (method, k)
        for g in gens:
            s = g.stats.speculative
            assert s.num_drafts > 0 and s.num_draft_tokens <= k * s.num_drafts
            assert sum(s.accepted_per_pos) == s.num_accepted_tokens and len(s.accepted_per_pos) <= k


def patch_drafts(llm, spec, replace):
    """Runs the real drafter, then replaces each draft (same length) by replace(seq, draft)."""
    run(llm, spec)  # builds the drafter for this config
    drafter = llm.core.drafter
    original = drafter.propose

    def propose(seqs, limits):
        original(seqs, limits)
        for seq, limit in zip(seqs, limits):
            length = max(len(seq.draft), limit)  # the replayed drafts use all the room they have
            seq.draft = replace(seq, length)
            seq.draft_probs = None
    drafter.propose = propose
    return lambda: setattr(drafter, "propose", original)


@pytest.mark.parametrize("forced", ["all-rejected", "all-accepted"])
def test_forced_drafts_keep_greedy_output(model, forced):
    llm, plain = model
    vocab = llm.config.vocab_size
    by_prompt = {tuple(p): out for p, out in zip(PROMPTS, plain)}
    for method in methods(llm):
        k = 3
        spec = f"{method}:{k}"

        def replace(seq, length):
            truth = by_prompt[tuple(seq.prompt_ids)][seq.num_output:seq.num_output + length]
            return [(t + 1) % vocab for t in truth] if forced == "all-rejected" else truth
        restore = patch_drafts(llm, spec, replace)
        try:
            gens = run(llm, spec)
        finally:
            restore()
        assert [g.token_ids for g in gens] == plain
        for g in gens:
            s = g.stats.speculative
            if forced == "all-rejected":
                assert s.num_accepted_tokens == 0 and s.num_drafts == MAX_TOKENS - 2  # the last token: no room
            else:
                assert s.num_accepted_tokens == s.num_draft_tokens and s.num_drafts < MAX_TOKENS / 2
                assert s.accepted_per_pos[0] == s.num_drafts


def fresh_caches(llm):
    """Zeroed caches and slots handed out from row 0 again, so that two runs put each prompt in the same row."""
    for t in llm.model.cache_tensors().values():
        t.zero_()
    s = llm.core.scheduler
    s.resize(s.max_batch, s.max_seq)
    llm.reset_prefix_cache()  # the zeroed rows hold nothing to reuse


def test_rollback_leaves_the_caches_of_a_run_without_the_rejected_tokens(model):
    llm, plain = model
    vocab = llm.config.vocab_size
    by_prompt = {tuple(p): out for p, out in zip(PROMPTS, plain)}
    method = methods(llm)[0]

    def replace(seq, length):  # the first token right, the rest wrong: every step rolls back
        truth = by_prompt[tuple(seq.prompt_ids)][seq.num_output:seq.num_output + length]
        return truth[:1] + [(t + 1) % vocab for t in truth[1:]]
    restore = patch_drafts(llm, f"{method}:4", replace)
    try:
        fresh_caches(llm)
        gens = run(llm, f"{method}:4")
    finally:
        restore()
    speculative = {name: t.clone() for name, t in llm.model.cache_tensors().items()}
    fresh_caches(llm)
    llm.generate_batch(PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True)
    assert [g.token_ids for g in gens] == plain
    assert all(g.stats.speculative.num_accepted_tokens > 0 for g in gens)
    rejected = sum(g.stats.speculative.num_draft_tokens - g.stats.speculative.num_accepted_tokens for g in gens)
    assert rejected > 20
    for name, t in llm.model.cache_tensors().items():
        torch.testing.assert_close(speculative[name], t, rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(speculative[name] == 0, t == 0), name  # cleared exactly where never written


def test_drafts_within_a_token_budget_and_chunked_prefill(model):
    llm, plain = model
    core_budget = llm.core.scheduler.max_num_batched_tokens
    llm.core.scheduler.max_num_batched_tokens = 7  # prompt chunks share steps with verify rows, drafts cut short
    try:
        gens = run(llm, f"{methods(llm)[0]}:4")
    finally:
        llm.core.scheduler.max_num_batched_tokens = core_budget
    assert [g.token_ids for g in gens] == plain


def test_sampling_with_drafts_is_seeded_and_valid(model):
    llm, _ = model
    method = methods(llm)[0]
    a = run(llm, f"{method}:3", temperature=0.9, top_p=0.9, seed=3)
    b = run(llm, f"{method}:3", temperature=0.9, top_p=0.9, seed=3)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert all(len(g.token_ids) == MAX_TOKENS and max(g.token_ids) < llm.config.vocab_size for g in a)


# --- the acceptance rule's distribution -------------------------------------------------------------------------

CHI2_999 = {5: 20.515}  # chi-square critical values at p = 0.001 (df: value), e.g. NIST/SEMATECH table 1.3.6.7.4


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("quality", ["close", "far", "one-hot"])
def test_speculative_sampling_keeps_the_models_distribution(quality):
    """Two positions of a 6-token vocabulary: the first emitted token must follow p[0]; given that draft token 0
    was kept, the second must follow p[1]; for a draft q close to p, one far from it, and a fixed (one-hot)
    draft."""
    g = torch.Generator().manual_seed(0)
    V, trials = 6, 12000
    logits = torch.randn(3, V, generator=g) * 1.5
    params = SamplingParams(temperature=1.0)
    p = torch.softmax(logits, -1)
    if quality == "close":
        q = torch.softmax(logits[:2] + 0.3 * torch.randn(2, V, generator=g), -1)
    elif quality == "far":
        q = torch.softmax(-logits[:2], -1)
    else:
        q = None
    first = torch.zeros(V)
    second = torch.zeros(V)
    gen = torch.Generator().manual_seed(1)
    for _ in range(trials):
        if q is None:
            draft = [int(p[0].argsort()[-2]), int(p[1].argmax())]  # the second likeliest first token
        else:
            draft = [int(torch.multinomial(q[i], 1, generator=gen)) for i in range(2)]
        out = accept(logits, draft, q, params, gen)
        first[out[0]] += 1
        if out[0] == draft[0]:
            second[out[1]] += 1
    assert chi_square(first, p[0]) < CHI2_999[5]
    assert second.sum() > 500
    assert chi_square(second, p[1]) < CHI2_999[5]


# --- drafters and config ----------------------------------------------------------------------------------------

def test_ngram_takes_the_longest_recurring_ngram():
    seq = Sequence([1, 2, 3, 9, 9, 2, 3, 7, 1, 2, 3], SamplingParams())
    NgramDrafter(2, 1, 3).propose([seq], [4])
    assert seq.draft == [9, 9]  # "1 2 3" recurs at 0..2 (the 2-gram "2 3" also at 5..6, followed by 7)
    NgramDrafter(4, 1, 2).propose([seq], [4])
    assert seq.draft == [7, 1, 2, 3]  # n <= 2: the latest "2 3" wins
    seq2 = Sequence([1, 2, 3, 4], SamplingParams())
    NgramDrafter(4).propose([seq2], [4])
    assert seq2.draft == []


def test_suffix_walks_the_most_frequent_continuation_and_remembers_outputs():
    drafter = SuffixDrafter(4, max_cached_requests=2)
    seq = Sequence([5, 6, 1, 5, 6, 2, 5, 6, 2, 5, 6], SamplingParams())
    drafter.propose([seq], [4])
    assert seq.draft[:2] == [2, 5]  # after "5 6": 2 twice, 1 once
    done = Sequence([40], SamplingParams())
    done.token_ids += [41, 42, 43, 44]
    done.spec_state = object()
    drafter.retire(done)
    fresh = Sequence([99, 41, 42], SamplingParams())
    drafter.propose([fresh], [4])
    assert fresh.draft == [43, 44]  # found in an earlier request's output
    drafter.retire(done)  # a second retire adds nothing
    assert len(drafter.earlier) == 1


@pytest.mark.parametrize("bad, words", [
    ("ngram", "METHOD:K"), ("eagle:3", "not available"), ("ngram:0", "num_speculative_tokens"),
    ({"method": "ngram"}, "needs 'num_speculative_tokens'"), ({"method": "mtp", "num_speculative_tokens": 2,
                                                               "draft_model": "x"}, "unknown field"),
    ('{"method": "mtp", ', "not valid JSON")])
def test_bad_speculative_configs_name_the_problem(bad, words):
    with pytest.raises(ConfigError, match=words):
        parse_speculative(bad)


def test_mtp_needs_an_mtp_layer():
    llm = hd.LLM("tiny-llama", device="cpu", seed=0)
    with pytest.raises(ConfigError, match="MTP layer"):
        llm.generate("hi", max_tokens=2, speculative="mtp:2")
    assert llm.generate("hi", max_tokens=2).finish_reason in ("length", "stop")  # nothing was left behind


def test_mtp_drafts_equal_the_uncached_mtp_layer():
    """Oracle: the MTP layer over the whole sequence without a cache (`mtp_logits`). The first draft reads the main
    model's hidden states and the true next tokens; the second, chained, its own output and the first draft."""
    llm = hd.LLM("tiny-glm5", device="cpu", seed=0)
    prompt = list(range(30, 50)) + [31, 32]  # longer than index_topk = 16
    llm.generate(prompt, max_tokens=6, ignore_eos=True, speculative="mtp:2")
    drafter = llm.core.drafter
    seen = []
    original = drafter.propose

    def propose(seqs, limits):
        original(seqs, limits)
        seen.append((list(seqs[0].token_ids), list(seqs[0].draft), drafter.last[seqs[0]].clone()))
    drafter.propose = propose
    llm.generate(prompt, max_tokens=6, ignore_eos=True, speculative="mtp:2")
    m = llm.model
    seen = [entry for entry in seen if entry[1]]  # the last steps have no room left for a draft
    assert len(seen) >= 2  # after the prefill, and after at least one verify step (the catch-up over its positions)
    with torch.inference_mode():
        for tokens, draft, x_last in seen:
            n = len(tokens) - 1
            ids = torch.tensor([tokens[:n]])
            pos = torch.arange(n)[None]
            hidden = m(ids, pos, use_cache=False)
            first = m.mtp_logits(hidden, torch.tensor([tokens[1:]]), pos)[0, -1]
            assert draft[0] == int(first.argmax())
        tokens, draft, x_last = seen[0]
        n = len(tokens) - 1
        hidden = m(torch.tensor([tokens[:n]]), torch.arange(n)[None], use_cache=False)
        chained_hidden = torch.cat([hidden, x_last[None, None]], dim=1)
        chained = m.mtp_logits(chained_hidden, torch.tensor([tokens[1:] + [draft[0]]]), torch.arange(n + 1)[None])
        assert draft[1] == int(chained[0, -1].argmax())


def test_eos_inside_an_accepted_draft_ends_the_sequence_there():
    """An EOS among the accepted tokens ends the sequence at it, as plain decoding would (nothing after it is
    appended); and a stop string cuts the speculative text where it cuts the plain text."""
    from hyperdecode.engine.core import EngineCore
    from hyperdecode.engine.runner import ReferenceRunner
    llm = hd.LLM("tiny-llama", device="cpu", seed=0)
    plain = llm.generate_batch(PROMPTS, max_tokens=MAX_TOKENS, ignore_eos=True)
    outputs = {}
    for spec in (None, "suffix:4"):
        core = EngineCore(ReferenceRunner(llm.model))
        core.reserve(len(PROMPTS), 128)
        core.speculate(spec)
        seqs = [Sequence(p, SamplingParams(max_tokens=MAX_TOKENS), eos_ids=frozenset({g.token_ids[9]}))
                for p, g in zip(PROMPTS, plain)]
        for s in seqs:
            core.add(s)
        while core.has_unfinished:
            core.step()
        outputs[spec] = [(s.output_ids, s.finish_reason) for s in seqs]
    assert outputs[None] == outputs["suffix:4"]
    assert all(reason == "stop" and len(ids) <= 9 for ids, reason in outputs[None])
    text = llm.generate("abc abc abc", max_tokens=40, ignore_eos=True).text
    stop = text[12:14]
    cut = [llm.generate("abc abc abc", max_tokens=40, ignore_eos=True, stop=[stop], speculative=spec)
           for spec in (None, "ngram:3", "suffix:6")]
    assert len({(g.text, g.finish_reason, tuple(g.token_ids)) for g in cut}) == 1 and cut[0].finish_reason == "stop"
