"""A fault is one sequence's: when its forward row, its seed or its sampler raises, that sequence ends with
finish_reason "error" and a message, its slot is free, and every other sequence of the batch produces exactly
the tokens it produces in a clean run."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine import core as core_module
from hyperdecode.engine.sampling import SamplingParams

MARK = 200  # a prompt token that makes the faulty runner raise


def run(core, inputs, prompts, params):
    """Drives the core to the end; returns the sequences."""
    seqs = [inputs.process(p, q)[0] for p, q in zip(prompts, params)]
    core.reserve(len(seqs), 64)
    for seq in seqs:
        core.add(seq)
    for _ in range(200):
        if not core.has_unfinished:
            break
        core.step()
    assert not core.has_unfinished
    return seqs


@pytest.fixture
def llm():
    # no prefix cache: the second run must feed the marked prompt again for its fault to fire
    return hd.LLM("tiny-llama", device="cpu", seed=0, enable_prefix_caching=False)


def prompts_and_params():
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13], [MARK, 3, 4, 8], [14, 15]]
    params = [SamplingParams(max_tokens=6, temperature=1.0, seed=11), SamplingParams(max_tokens=5),
              SamplingParams(max_tokens=6, temperature=1.0, seed=13), SamplingParams(max_tokens=4, ignore_eos=True)]
    return prompts, params


def test_a_forward_fault_ends_only_its_row(llm, monkeypatch):
    prompts, params = prompts_and_params()
    clean = [s.output_ids for s in run(llm.core, llm.inputs, prompts, params)]
    forward = llm.core.runner.forward

    def faulty(tokens, pos, slots, want):
        if (tokens == MARK).any():
            raise RuntimeError("injected forward fault")
        return forward(tokens, pos, slots, want)
    monkeypatch.setattr(llm.core.runner, "forward", faulty)
    seqs = run(llm.core, llm.inputs, prompts, params)
    assert seqs[2].finish_reason == "error" and "injected forward fault" in seqs[2].error
    assert [s.output_ids for i, s in enumerate(seqs) if i != 2] == [c for i, c in enumerate(clean) if i != 2]
    assert llm.core.scheduler.num_free == llm.core.max_batch


def test_a_sampler_fault_ends_only_its_sequence(llm, monkeypatch):
    prompts, params = prompts_and_params()
    clean = [s.output_ids for s in run(llm.core, llm.inputs, prompts, params)]
    sample = core_module.sample

    def faulty(logits, p, generators):
        if p.seed == 13:
            raise FloatingPointError("injected sampler fault")
        return sample(logits, p, generators)
    monkeypatch.setattr(core_module, "sample", faulty)
    seqs = run(llm.core, llm.inputs, prompts, params)
    assert seqs[2].finish_reason == "error" and "FloatingPointError" in seqs[2].error
    assert [s.output_ids for i, s in enumerate(seqs) if i != 2] == [c for i, c in enumerate(clean) if i != 2]
    assert llm.core.scheduler.num_free == llm.core.max_batch


def test_a_seed_the_generator_refuses_raises_before_taking_a_slot(llm):
    seq, _ = llm.inputs.process([1, 2], SamplingParams(max_tokens=2))
    seq.params.seed = 2 ** 64  # past validation (as a bug would let it through)
    llm.core.reserve(2, 16)
    with pytest.raises((RuntimeError, ValueError)):
        llm.core.add(seq)
    assert not llm.core.has_unfinished and llm.core.scheduler.num_free == 2


def test_hd_llm_names_the_failed_sequence(llm, monkeypatch):
    monkeypatch.setattr(core_module, "sample", lambda *a: (_ for _ in ()).throw(ValueError("bad row")))
    with pytest.raises(hd.HyperdecodeError, match="bad row"):
        llm.generate("hello", max_tokens=3, temperature=1.0, seed=1)
    assert llm.generate("hello", max_tokens=3).finish_reason == "length"  # and the LLM still works
    assert torch.is_tensor(llm.logits([1, 2, 3]))
