"""The compiled decode step run by the Python VM against the reference forward (Llama family)."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.mega.isa import NORM_INPUT, Instr, Op
from hyperdecode.engine.mega.program import check_program
from hyperdecode.engine.mega.program_llama import compile_program as compile_llama
from hyperdecode.engine.mega.vm import VM, DependencyError
from tests.conftest import rel_err


def prefill(model, prompts, max_seq):
    model.setup_caches(len(prompts), max_seq)
    with torch.inference_mode():
        for b, p in enumerate(prompts):
            model(torch.tensor([p]), torch.arange(len(p))[None], slots=torch.tensor([b]))


def plant_unsatisfiable_wait(prog, at):
    """Inserts a copy of the ARGMAX instruction at `at` that waits for the last stage, which only later ones
    signal."""
    argmax = next(ins for ins in prog.instrs if ins.op == Op.ARGMAX)
    prog.instrs.insert(at, Instr(Op.ARGMAX, argmax.args, [(prog.num_counters - 1, 1)], 0))


def check_decode_step(llm, compile_fn, lengths, vocab, seed, max_seq=48, **kw):
    """Prefills random prompts with the reference, then one decode step in the VM vs the reference."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    prefill(llm.model, prompts, max_seq)
    prog = compile_fn(llm.model, len(prompts), max_seq, **kw)
    vm = VM(prog)
    vm.load_cache(llm.model)
    toks = torch.randint(0, vocab, (len(prompts),), generator=g).tolist()
    pos = [len(p) for p in prompts]
    got = vm.step(toks, pos)
    with torch.inference_mode():
        ref = llm.model.logits(llm.model(torch.tensor(toks)[:, None], torch.tensor(pos)[:, None]))[:, 0]
    assert rel_err(got, ref) <= 1e-5
    assert vm.next.tolist() == ref.argmax(-1).tolist()
    return prog


def check_residual_stream(llm, compile_fn, lengths, vocab, seed, max_seq=48):
    """Through the layers: the residual stream where the VM normalises it (after the embedding, each attention and
    each MLP) equals the reference's at the same point, caught by pre-hooks on the reference's norms."""
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    prefill(llm.model, prompts, max_seq)
    vm = VM(compile_fn(llm.model, len(prompts), max_seq))
    vm.load_cache(llm.model)
    toks, pos = torch.randint(0, vocab, (len(prompts),), generator=g), torch.tensor([len(p) for p in prompts])
    seen, stages = [], set()

    def before(ins):  # the first GEMV of each stage that normalises the residual stream
        if ins.op == Op.GEMV and ins.args["flags"] & NORM_INPUT and ins.signal not in stages:
            stages.add(ins.signal)
            seen.append(vm.rows(vm.prog.buf["x"], vm.prog.dims.hidden).clone())

    vm.step(toks.tolist(), pos.tolist(), before=before)
    expected = []
    norms = [n for layer in llm.model.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
    def seen_by(norm, inputs):  # the norms see the step's tokens flat, [rows * 1, hidden]
        expected.append(inputs[0].reshape(len(prompts), -1, inputs[0].shape[-1])[:, 0].float())

    hooks = [n.register_forward_pre_hook(seen_by) for n in norms + [llm.model.norm]]
    with torch.inference_mode():
        llm.model(toks[:, None], pos[:, None])
    for h in hooks:
        h.remove()
    assert len(seen) == len(expected) == 2 * len(llm.model.layers) + 1
    for got, ref in zip(seen, expected):
        assert rel_err(got, ref) <= 1e-5


def check_greedy(llm, compile_fn, prompt, steps=16, max_seq=64):
    """Greedy tokens: reference prefill + `steps` VM decode steps == the reference's own generation."""
    expected = llm.generate(prompt, max_tokens=steps + 1, ignore_eos=True).token_ids
    prefill(llm.model, [prompt], max_seq)
    with torch.inference_mode():
        first = llm.model.logits(llm.model(torch.tensor([prompt]), torch.arange(len(prompt))[None]))[0, -1]
    vm = VM(compile_fn(llm.model, 1, max_seq))
    vm.load_cache(llm.model)
    tokens = [int(first.argmax())]
    for step in range(steps):
        vm.step([tokens[-1]], [len(prompt) + step])
        tokens.append(int(vm.next[0]))
    assert tokens == expected


def test_residual_stream_equals_reference_op_by_op():
    check_residual_stream(hd.LLM("tiny-llama", device="cpu", seed=8), compile_llama, (4, 13), 259, 2)


@pytest.mark.parametrize("batch, tile", [(1, 64), (3, 29)])
def test_decode_step_equals_reference(batch, tile):
    check_decode_step(hd.LLM("tiny-llama", device="cpu", seed=3), compile_llama, (5, 11, 2)[:batch], 259, batch,
                      tile=tile)


def test_greedy_tokens_equal_reference_for_16_steps():
    check_greedy(hd.LLM("tiny-llama", device="cpu", seed=5), compile_llama, [3, 40, 41, 42, 43, 44])


def test_program_dependencies_are_checked():
    llm = hd.LLM("tiny-llama", device="cpu")
    prog = compile_llama(llm.model, 2, 16)
    queues = check_program(prog, workers=5)
    assert sorted(i for q in queues for i in q) == list(range(len(prog.instrs)))
    assert {ins.op for ins in prog.instrs} == {Op.EMBED, Op.GEMV, Op.ATTN, Op.ARGMAX}
    plant_unsatisfiable_wait(prog, 3)
    with pytest.raises(ValueError, match="instruction 3 \\(ARGMAX\\) waits for counter"):
        check_program(prog, workers=2)
    with pytest.raises(DependencyError, match="instruction 3"):
        VM(prog).step([1, 2], [0, 0])
