"""The `graph` backend's static decode step (what gets captured into CUDA graphs), run eagerly on the CPU."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.core import EngineCore
from hyperdecode.engine.graph import GraphRunner
from hyperdecode.engine.runner import ReferenceRunner
from hyperdecode.engine.sampling import SamplingParams
from hyperdecode.engine.sequence import Sequence
from hyperdecode.model.static import static_shapes


def generate(runner, prompts, max_tokens):
    """Sequences of different lengths, so the decode batch shrinks 5, 4, 3, 2, 1 as they finish."""
    seqs = [Sequence(p, SamplingParams(max_tokens=m, temperature=0.8, seed=i, ignore_eos=True))
            for i, (p, m) in enumerate(zip(prompts, max_tokens))]
    core = EngineCore(runner)
    core.reserve(len(seqs), 4096)
    for s in seqs:
        core.add(s)
    while core.has_unfinished:
        core.step()
    return [s.output_ids for s in seqs]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3", "tiny-glm5", "tiny-dsv32"])
def test_static_step_generates_like_reference(name):
    llm = hd.LLM(name, device="cpu", seed=6)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, llm.config.vocab_size, (n,), generator=g).tolist() for n in (12, 2, 19, 7, 1)]
    lengths = [12, 10, 8, 6, 4]  # contexts pass index_topk = 16
    expected = generate(ReferenceRunner(llm.model), prompts, lengths)
    runner = GraphRunner(llm.model, capture=False)
    assert generate(runner, prompts, lengths) == expected
    assert sorted(runner.steps) == [(1, 1), (2, 1), (4, 1), (5, 1)]  # batch 3 ran padded to 4, on the spare row
    assert llm.model.max_batch == 6 and runner.spare == 5


def test_static_moe_equals_the_expert_loop():
    llm = hd.LLM("tiny-dsv32", device="cpu", seed=2)
    moe = next(layer.mlp for layer in llm.model.layers if hasattr(layer.mlp, "gate"))
    x = torch.randn(5, 3, llm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        looped = moe(x)
        with static_shapes():
            gathered = moe(x)
    assert torch.allclose(gathered, looped, rtol=1e-5, atol=1e-5)


def test_graph_backend_needs_cuda():
    with pytest.raises(hd.ConfigError, match="backend 'graph' captures CUDA graphs and needs a CUDA device"):
        hd.LLM("tiny-llama", device="cpu", backend="graph")


NGRAM_1 = {"method": "ngram", "prompt_lookup_min": 1}  # n-gram lookups from one token on: the most drafts


@pytest.mark.parametrize("name, spec", [("tiny-llama", dict(NGRAM_1, num_speculative_tokens=3)), ("tiny-glm5", "mtp:2"),
                                        ("tiny-dsv32", dict(NGRAM_1, num_speculative_tokens=4))])
def test_static_verify_step_decodes_like_plain_greedy(name, spec):
    """Speculative decoding on the static step: verify rows of 1 + k tokens (shorter rows padded at the spare
    position) replay the (bucket, 1 + k) step; greedy output equals the plain reference's."""
    from hyperdecode.engine.speculative import parse_speculative
    llm = hd.LLM(name, device="cpu", seed=6)
    g = torch.Generator().manual_seed(1)
    prompts = [(torch.randint(0, 40, (n,), generator=g).tolist() * 3)[:3 * n] for n in (6, 2, 7)]
    params = dict(max_tokens=14, ignore_eos=True)
    expected = [x.token_ids for x in llm.generate_batch(prompts, **params)]
    runner = GraphRunner(llm.model, capture=False)
    core = EngineCore(runner)
    core.reserve(3, 256)
    core.speculate(spec)
    seqs = [Sequence(p, SamplingParams(**params)) for p in prompts]
    for s in seqs:
        core.add(s)
    while core.has_unfinished:
        core.step()
    assert [s.output_ids for s in seqs] == expected
    drafted = llm.generate_batch(prompts, speculative=spec, **params)  # the reference's own speculative run
    assert [s.spec for s in seqs] == [g.stats.speculative for g in drafted]
    width = 1 + parse_speculative(spec).num_speculative_tokens
    assert any(w == width for _, w in runner.steps)  # verification ran in the static step
    assert sum(s.spec.num_accepted_tokens for s in seqs) > 0 or parse_speculative(spec).method == "mtp"
