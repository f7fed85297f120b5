"""Prefix caching (engine/prefix.py): the same greedy tokens with the cache on and off, over multi-turn
conversations in both families, under eviction, across rows (a running row's prefix copied) and in the megakernel;
the cached-token counts are the shared prefixes."""
import pytest
import torch

import hyperdecode as hd

TURNS = 5
OUT = 6


def conversation(llm, seed, turns=TURNS, first=30, added=7):
    """A growing context: each turn's prompt is the last prompt, its greedy answer and `added` new random tokens.
    Returns the answers and each turn's cached-token count."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(0, llm.config.vocab_size, (first,), generator=g).tolist()
    answers, cached = [], []
    for _ in range(turns):
        r = llm.generate(ctx, max_tokens=OUT, ignore_eos=True)
        answers.append(r.token_ids)
        cached.append(r.stats.cached_tokens)
        ctx = ctx + r.token_ids + torch.randint(0, llm.config.vocab_size, (added,), generator=g).tolist()
    return answers, cached


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-glm5", "tiny-dsv32"])
def test_multi_turn_equals_no_cache_and_counts_the_shared_prefix(name):
    off = conversation(hd.LLM(name, device="cpu", seed=3, enable_prefix_caching=False), seed=0)
    llm = hd.LLM(name, device="cpu", seed=3)
    on = conversation(llm, seed=0)
    assert on[0] == off[0]
    assert off[1] == [0] * TURNS
    # each turn finds the last prompt and all but the last answer token (which was sampled, never fed)
    lengths = [30 + k * (OUT + 7) for k in range(TURNS)]
    assert on[1] == [0] + [n + OUT - 1 for n in lengths[:-1]]
    prefix = llm.core.scheduler.prefix
    assert prefix.queried == sum(lengths) and prefix.hits == sum(on[1])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-glm5"])
def test_eviction_under_two_rows_keeps_results_and_reuses_what_is_left(name):
    """Three conversations take turns on two cache rows: a turn finds its prefix only if its row was not
    taken since (least recently used first); every answer equals the run without a cache (both families: MLA's
    latent, roped-key and indexer-key caches are kept and evicted with the row)."""
    def interleaved(llm):
        gens = {c: torch.Generator().manual_seed(c) for c in range(3)}
        ctx = {c: torch.randint(0, llm.config.vocab_size, (20,), generator=gens[c]).tolist() for c in range(3)}
        out = []
        for c in (0, 1, 0, 2, 1, 0, 2, 2):
            r = llm.generate(ctx[c], max_tokens=4, ignore_eos=True)
            out.append((r.token_ids, r.stats.cached_tokens))
            ctx[c] = ctx[c] + r.token_ids + torch.randint(0, llm.config.vocab_size, (5,), generator=gens[c]).tolist()
        return out
    off = hd.LLM(name, device="cpu", seed=1, enable_prefix_caching=False)
    on = hd.LLM(name, device="cpu", seed=1)
    for llm in (off, on):
        llm.core.reserve(2, 256)
    a, b = interleaved(off), interleaved(on)
    assert [x[0] for x in a] == [x[0] for x in b]
    hit = [x[1] > 0 for x in b]
    # rows: 0 -> r0, 1 -> r1, 0 hits r0, 2 evicts r1 (LRU), 1 misses and evicts r0, 0 misses, 2 misses, 2 hits
    assert hit == [False, False, True, False, False, False, False, True]


def test_a_running_row_s_prefix_is_copied_into_a_free_row():
    """Two prompts sharing a cached prefix in one batch: the first takes the row holding it, the second gets it
    copied from that row before the step; both answer as without a cache."""
    base = list(range(3, 40))
    prompts = [base + [50, 51], base + [60, 61, 62]]
    runs = {}
    for on in (False, True):
        llm = hd.LLM("tiny-glm5", device="cpu", seed=2, enable_prefix_caching=on)
        llm.generate(base + [70], max_tokens=3, ignore_eos=True)
        gens = llm.generate_batch(prompts, max_tokens=5, ignore_eos=True)
        runs[on] = ([g.token_ids for g in gens], [g.stats.cached_tokens for g in gens])
    assert runs[True][0] == runs[False][0]
    assert runs[True][1] == [len(base), len(base)]


def test_chunked_prefill_starts_after_the_cached_prefix():
    kw = dict(max_num_batched_tokens=8)
    off = conversation(hd.LLM("tiny-llama", device="cpu", seed=5, enable_prefix_caching=False, **kw), seed=4, turns=3)
    on = conversation(hd.LLM("tiny-llama", device="cpu", seed=5, **kw), seed=4, turns=3)
    assert on[0] == off[0] and on[1][1:] == [30 + OUT - 1, 30 + OUT + 7 + OUT - 1]


def test_megakernel_reuses_prefixes_like_the_reference():
    pytest.importorskip("triton")
    ref = conversation(hd.LLM("tiny-llama", device="cpu", seed=6, enable_prefix_caching=False), seed=7, turns=3)
    with pytest.warns(UserWarning, match="interpreter"):
        mega = hd.LLM("tiny-llama", device="cpu", seed=6, backend="mega")
    got = conversation(mega, seed=7, turns=3)
    assert got[0] == ref[0] and got[1][1] > 0
