"""The Triton megakernel under the interpreter (one worker) against the VM and the reference."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # no GPU here: Triton's interpreter runs the kernel's programs in order

import pytest  # noqa: E402
import torch  # noqa: E402

import hyperdecode as hd  # noqa: E402
from hyperdecode.engine.mega.isa import Instr, Op  # noqa: E402
from hyperdecode.engine.mega.kernel import MegakernelTimeout, run_megakernel  # noqa: E402
from hyperdecode.engine.mega.program import compile_llama  # noqa: E402
from hyperdecode.engine.mega.vm import VM  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.engine.mega.test_vm import prefill  # noqa: E402


def kernel_step(prog, A, C, toks, pos):
    run_megakernel(prog, A, C, torch.tensor(toks), torch.tensor(pos))
    d = prog.dims
    B = prog.batch
    logits = A[prog.buf["logits"]:prog.buf["logits"] + B * d["vocab"]].view(B, -1).clone()
    return logits, A[prog.buf["next"]:prog.buf["next"] + B].long().tolist()


@pytest.mark.parametrize("batch", [1, 3])
def test_megakernel_equals_vm(batch):
    llm = hd.LLM("tiny-llama", device="cpu", seed=7)
    g = torch.Generator().manual_seed(10 + batch)
    prompts = [torch.randint(0, 259, (n,), generator=g).tolist() for n in (4, 9, 1)[:batch]]
    prefill(llm.model, prompts, 32)
    prog = compile_llama(llm.model, batch, 32, tile=32)
    vm = VM(prog)
    vm.load_cache(llm.model)
    C = vm.C.clone()
    toks, pos = torch.randint(0, 259, (batch,), generator=g).tolist(), [len(p) for p in prompts]
    expected = vm.step(toks, pos)
    A = torch.zeros(prog.a_size)
    logits, nxt = kernel_step(prog, A, C, toks, pos)
    assert rel_err(logits, expected) <= 1e-4
    assert torch.allclose(C, vm.C, atol=1e-6)
    assert nxt == vm.next.tolist()


def test_megakernel_greedy_16_steps_equal_reference():
    llm = hd.LLM("tiny-llama", device="cpu", seed=2)
    prompt = [7, 70, 71, 72]
    expected = llm.generate(prompt, max_tokens=17, ignore_eos=True).token_ids
    prefill(llm.model, [prompt], 32)
    with torch.inference_mode():
        first = llm.model.logits(llm.model(torch.tensor([prompt]), torch.arange(len(prompt))[None]))[0, -1]
    prog = compile_llama(llm.model, 1, 32)
    vm = VM(prog)
    vm.load_cache(llm.model)
    A, C = torch.zeros(prog.a_size), vm.C.clone()
    tokens = [int(first.argmax())]
    for step in range(16):
        tokens.append(kernel_step(prog, A, C, [tokens[-1]], [len(prompt) + step])[1][0])
    assert tokens == expected


def test_unsatisfiable_dependency_times_out_instead_of_hanging():
    llm = hd.LLM("tiny-llama", device="cpu")
    prog = compile_llama(llm.model, 1, 8)
    prog.instrs.insert(2, Instr(Op.SWIGLU, prog.instrs[-3].args, [(prog.num_counters - 1, 1)], 0))
    with pytest.raises(MegakernelTimeout, match="instruction 2 \\(SWIGLU\\) waited 200 spins"):
        run_megakernel(prog, torch.zeros(prog.a_size), torch.zeros(prog.c_size), torch.tensor([1]),
                       torch.tensor([0]), max_spin=200)


def test_llm_backend_mega_generates_like_reference():
    ref = hd.LLM("tiny-llama", device="cpu", seed=4)
    mega = hd.LLM("tiny-llama", device="cpu", seed=4, backend="mega")
    assert mega.backend == "mega"
    prompts = ["hello", "a longer prompt here"]
    kw = dict(max_tokens=8, ignore_eos=True, temperature=0.9, seed=3)
    assert [g.token_ids for g in mega.generate_batch(prompts, **kw)] == \
        [g.token_ids for g in ref.generate_batch(prompts, **kw)]


def test_auto_backend_and_unsupported_models():
    assert hd.LLM("tiny-llama", device="cpu", backend="auto").backend == "reference"  # no GPU here
    with pytest.raises(hd.ConfigError, match="backend 'mega' supports Llama-family"):
        hd.LLM("tiny-glm5", device="cpu", backend="mega")
