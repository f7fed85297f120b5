import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.sampling import SamplingParams, process_logits, sample


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


def test_penalties_bias_and_min_tokens_change_logits_as_their_formulas_say():
    """process_logits against the formulas written out token by token, on random logits: repetition (vLLM: prompt
    and output tokens, positive / r, negative * r), frequency (- f * count in the output), presence (- p once in the
    output), bias (+ b), min_tokens (EOS at -inf while fewer tokens are out)."""
    g = torch.Generator().manual_seed(0)
    V = 50
    logits = torch.randn(3, V, generator=g) * 3
    prompt = [1, 2, 3, 3]
    outputs = [[4, 4, 7], [4, 4, 7, 9], []]
    p = SamplingParams(repetition_penalty=1.7, frequency_penalty=0.6, presence_penalty=-0.3,
                       logit_bias={5: 2.5, 9: -100.0}, min_tokens=4)
    got = process_logits(logits, p, prompt, outputs, frozenset({0}))
    for i, out in enumerate(outputs):
        for t in range(V):
            x = float(logits[i, t])
            if t in prompt or t in out:
                x = x / 1.7 if x > 0 else x * 1.7
            x -= 0.6 * out.count(t) + (-0.3) * (t in out)
            x += {5: 2.5, 9: -100.0}.get(t, 0.0)
            if t == 0 and len(out) < 4:
                x = float("-inf")
            assert float(got[i, t]) == pytest.approx(x, rel=1e-6, abs=1e-6), (i, t)
    assert not SamplingParams().processes_logits and p.processes_logits


def test_logit_bias_and_min_tokens_steer_generation():
    llm = hd.LLM("tiny-llama", device="cpu", seed=0)
    forced = llm.generate([5, 6, 7], max_tokens=6, ignore_eos=True, temperature=0.0)
    tok = (forced.token_ids[0] + 11) % llm.config.vocab_size
    seq, stream = llm._requests([[5, 6, 7]], SamplingParams(max_tokens=6, ignore_eos=True, logit_bias={tok: 100.0}))[0]
    for _ in llm._run([(seq, stream)]):
        pass
    assert seq.output_ids == [tok] * 6
    eos = next(iter(llm.inputs.eos_ids))
    seq, stream = llm._requests([[5, 6, 7]], SamplingParams(max_tokens=20, logit_bias={eos: 100.0}, min_tokens=4))[0]
    for _ in llm._run([(seq, stream)]):
        pass
    assert len(seq.output_ids) == 4 and seq.finish_reason == "stop"  # EOS as soon as min_tokens allows


EXTREMES = {
    "temperature": [0.0, 1e-5, 1.0000001e-5, 1e-3, 1.0, 2.0],
    "top_p": [5e-324, 1e-45, 1e-8, 0.5, 1.0],
    "top_k": [0, 1, 2, 259, 10_000],
    "min_tokens": [0, 4],
    "repetition_penalty": [1e-300, 1e-8, 1.0, 1e8, 1e300],
    "frequency_penalty": [-2.0, 0.0, 2.0],
    "presence_penalty": [-2.0, 0.0, 2.0],
    "logit_bias": [None, {7: 100.0}, {t: -100.0 for t in range(259)}, {t: -100.0 for t in range(259) if t != 65},
                   {t: 100.0 for t in range(259)}],
    "structured": [None, {"choice": ["x"]}, {"regex": "[ab]{1,3}"}],
}


def test_every_extreme_of_every_sampling_field_yields_a_token():
    """A sampler that cannot fail on a valid request: each field's extremes alone (the others at their defaults),
    then 150 random combinations of them (a fixed seed), through the engine of tiny-llama; every output is a
    list of in-vocabulary tokens, the grammar's ones where a grammar is on."""
    import random
    llm = hd.LLM("tiny-llama", device="cpu", seed=0)
    cases = [{name: value} for name, values in EXTREMES.items() for value in values]
    rng = random.Random(31)
    cases += [{name: rng.choice(values) for name, values in EXTREMES.items()} for _ in range(150)]
    for i, fields in enumerate(cases):
        structured = fields.pop("structured", None)
        params = dict(max_tokens=4, seed=i, **fields)
        prompts = ["hello", [5, 6, 7]]
        if structured is not None:
            params["structured"] = structured
        outs = llm.generate_batch(prompts, **params)
        for g in outs:
            assert all(0 <= t < llm.config.vocab_size for t in g.token_ids), (fields, structured)
            if structured == {"choice": ["x"]}:
                assert g.text == "x", (fields, g.text)


def test_probabilities_are_a_distribution_whatever_the_logits():
    from hyperdecode.engine.sampling import probabilities
    rows = torch.tensor([[float("-inf")] * 4, [float("inf"), 1.0, float("inf"), 0.0], [float("nan"), 2.0, 1.0, 0.0],
                         [1e38, -1e38, 0.0, 3.0]])
    for params in (SamplingParams(temperature=1e-5), SamplingParams(temperature=2.0, top_p=5e-324),
                   SamplingParams(temperature=1.0, top_k=2, top_p=0.3)):
        p = probabilities(rows, params)
        assert torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(4)), params
    assert probabilities(rows, SamplingParams(temperature=1.0))[1].tolist() == [0.5, 0.0, 0.5, 0.0]
    assert int(sample(rows[:1], SamplingParams(temperature=1.0), [torch.Generator()])[0]) == 0
