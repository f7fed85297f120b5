"""Chunked prefill through the step plan: prompts fed in chunks of 1, 7 or whole, next to decoding rows, give the
same first-token logits and the same greedy tokens for every family and backend."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.core import EngineCore
from hyperdecode.engine.graph import GraphRunner
from hyperdecode.engine.mega.runner import MegaRunner
from hyperdecode.engine.runner import ReferenceRunner
from hyperdecode.engine.sampling import SamplingParams
from hyperdecode.engine.sequence import Sequence
from tests.conftest import rel_err

FAMILIES = ["tiny-llama", "tiny-qwen3", "tiny-glm5", "tiny-dsv32"]


class Recording:
    """Wraps a runner: records the shapes it ran and the logits it returned."""

    def __init__(self, runner):
        self.runner = runner
        self.device = runner.device
        self.shapes = []
        self.logits = []

    def setup(self, max_batch, max_seq):
        self.runner.setup(max_batch, max_seq)

    def forward(self, tokens, pos, slots, want):
        out = self.runner.forward(tokens, pos, slots, want)
        self.shapes.append(tuple(tokens.shape))
        self.logits.append(out)
        return out

    def confirm(self):
        self.runner.confirm()


def run(runner, prompts, budget, max_tokens=8):
    """Generates greedily for all prompts on one engine core; returns (tokens, first-token logits) per prompt."""
    core = EngineCore(Recording(runner), max_num_batched_tokens=budget)
    core.reserve(len(prompts), 64)
    seqs = [Sequence(p, SamplingParams(max_tokens=max_tokens, ignore_eos=True)) for p in prompts]
    firsts = {}
    for s in seqs:
        core.add(s)
    while core.has_unfinished:
        before = {s: s.num_output for s in seqs}
        step_logits = len(core.runner.logits)
        sampled = [out.seq for out in core.step()]
        rows = torch.cat(core.runner.logits[step_logits:]) if sampled else None
        for s in sampled:
            if before[s] == 0:  # its first token: find its row among this step's logits (in sampling order)
                firsts[s] = rows[sampled.index(s)]
    return [s.output_ids for s in seqs], [firsts[s] for s in seqs], core.runner.shapes


def prompts_for(llm, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, llm.config.vocab_size, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("name", FAMILIES)
def test_chunks_of_1_and_7_equal_a_whole_prefill(name):
    llm = hd.LLM(name, device="cpu", seed=5)
    single = prompts_for(llm, [19])
    whole_tokens, whole_logits, shapes = run(ReferenceRunner(llm.model), single, None)
    assert shapes[0] == (1, 19)
    for budget in (1, 7):
        tokens, logits, shapes = run(ReferenceRunner(llm.model), single, budget)
        assert tokens == whole_tokens
        assert rel_err(logits[0], whole_logits[0]) <= 1e-5
        assert max(s[1] for s in shapes) == budget
    batch = prompts_for(llm, [19, 3, 11], seed=1)  # chunks next to decoding rows
    whole_tokens, whole_logits, _ = run(ReferenceRunner(llm.model), batch, None)
    tokens, logits, shapes = run(ReferenceRunner(llm.model), batch, 7)
    assert tokens == whole_tokens
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(logits, whole_logits))
    assert {s[1] for s in shapes} > {1}  # some steps fed prompt chunks and decode rows together


def test_budget_below_the_batch_is_refused():
    llm = hd.LLM("tiny-llama", device="cpu")
    core = EngineCore(ReferenceRunner(llm.model), max_num_batched_tokens=2)
    with pytest.raises(hd.ConfigError, match="max_num_batched_tokens \\(2\\) must be at least the batch size"):
        core.reserve(3, 64)


@pytest.mark.parametrize("name", ["tiny-qwen3", "tiny-glm5"])
def test_graph_static_step_with_chunked_prefill(name):
    llm = hd.LLM(name, device="cpu", seed=2)
    prompts = prompts_for(llm, [13, 2, 9], seed=3)
    expected, _, _ = run(ReferenceRunner(llm.model), prompts, None)
    tokens, _, _ = run(GraphRunner(llm.model, capture=False), prompts, 4)
    assert tokens == expected


@pytest.mark.filterwarnings("ignore:backend 'mega' without a GPU")
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_mega_with_chunked_prefill_keeps_both_caches_consistent(name):
    """Prompt chunks of 3 run on the reference, one-token steps in the megakernel (decode rows and, when the
    budget leaves one token, a one-token chunk): each side copies what the other wrote before it runs."""
    llm = hd.LLM(name, device="cpu", seed=4)
    prompts = prompts_for(llm, [8, 2], seed=5)
    expected, _, _ = run(ReferenceRunner(llm.model), prompts, None, max_tokens=5)
    tokens, _, shapes = run(MegaRunner(llm.model), prompts, 3, max_tokens=5)
    assert tokens == expected
    assert (2, 1) in shapes or (1, 1) in shapes
    assert any(s[1] > 1 for s in shapes)
