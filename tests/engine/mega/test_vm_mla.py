"""The compiled GLM-5 / DeepSeek-V3.2 decode step (absorbed MLA, DSA top-k, MoE) in the VM against the reference."""
import pytest
import torch

import hyperdecode as hd
from hyperdecode.engine.mega.isa import Op
from hyperdecode.engine.mega.kernel import encode
from hyperdecode.engine.mega.program import check_program
from hyperdecode.engine.mega.program_mla import compile_deepseek
from hyperdecode.engine.mega.vm import VM
from tests.conftest import rel_err
from tests.engine.mega.test_vm import prefill


@pytest.mark.parametrize("name", ["tiny-glm5", "tiny-dsv32"])
@pytest.mark.parametrize("lengths", [(21,), (20, 5, 33)])  # beyond index_topk = 16: the indexer selects
def test_decode_step_equals_reference(name, lengths):
    llm = hd.LLM(name, device="cpu", seed=len(lengths))
    g = torch.Generator().manual_seed(sum(lengths))
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in lengths]
    prefill(llm.model, prompts, 48)
    prog = compile_deepseek(llm.model, len(prompts), 48, tile=48)
    check_program(prog, workers=7)
    assert {Op.MLA_ATTN, Op.INDEX_TOPK, Op.ROUTE, Op.EXPERT} <= {i.op for i in prog.instrs}
    vm = VM(prog)
    vm.load_cache(llm.model)
    toks = torch.randint(0, 512, (len(prompts),), generator=g).tolist()
    pos = [len(p) for p in prompts]
    got = vm.step(toks, pos)
    with torch.inference_mode():
        ref = llm.model.logits(llm.model(torch.tensor(toks)[:, None], torch.tensor(pos)[:, None]))[:, 0]
    assert rel_err(got, ref) <= 1e-5
    assert vm.next.tolist() == ref.argmax(-1).tolist()


def test_greedy_16_steps_equal_reference():
    llm = hd.LLM("tiny-glm5", device="cpu", seed=9)
    prompt = list(range(30, 44))
    expected = llm.generate(prompt, max_tokens=17, ignore_eos=True).token_ids
    prefill(llm.model, [prompt], 40)
    with torch.inference_mode():
        first = llm.model.logits(llm.model(torch.tensor([prompt]), torch.arange(len(prompt))[None]))[0, -1]
    vm = VM(compile_deepseek(llm.model, 1, 40))
    vm.load_cache(llm.model)
    tokens = [int(first.argmax())]
    for step in range(16):  # crosses index_topk = 16 while decoding
        vm.step([tokens[-1]], [len(prompt) + step])
        tokens.append(int(vm.next[0]))
    assert tokens == expected


def test_kernel_names_what_it_cannot_run_yet():
    llm = hd.LLM("tiny-glm5", device="cpu")
    with pytest.raises(ValueError, match="does not implement NORM_SLICE yet"):
        encode(compile_deepseek(llm.model, 1, 8))
