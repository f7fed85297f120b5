"""The Triton megakernel under the interpreter (one worker) against the VM and the reference, for both families."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # no GPU here: Triton's interpreter runs the kernel's programs in order

import pytest  # noqa: E402
import torch  # noqa: E402

import hyperdecode as hd  # noqa: E402
from hyperdecode.engine.mega.kernel import MegakernelTimeout, run_megakernel  # noqa: E402
from hyperdecode.engine.mega.program import check_program  # noqa: E402
from hyperdecode.engine.mega.program_llama import compile_program as compile_llama  # noqa: E402
from hyperdecode.engine.mega.runner import compile_model  # noqa: E402
from hyperdecode.engine.mega.vm import VM  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.engine.mega.test_vm import plant_unsatisfiable_wait, prefill  # noqa: E402

MODELS = ["tiny-llama", "tiny-glm5", "tiny-dsv32"]
pytestmark = pytest.mark.filterwarnings("ignore:backend 'mega' without a GPU")


def check_kernel_step(llm, lengths, max_seq, seed, compile_fn=compile_model, **compile_kw):
    """Reference prefill of random prompts, then one decode step in the megakernel (interpreter) == in the VM:
    logits within 1e-4, the same cache and the same greedy tokens. Returns the program."""
    vocab = llm.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
    prefill(llm.model, prompts, max_seq)
    prog = compile_fn(llm.model, len(prompts), max_seq, **compile_kw)
    check_program(prog, workers=132)
    vm = VM(prog)
    vm.load_cache(llm.model)
    C = vm.C.clone()
    toks, pos = torch.randint(0, vocab, (len(prompts),), generator=g), torch.tensor([len(p) for p in prompts])
    expected = vm.step(toks.tolist(), pos.tolist())
    A = torch.zeros(prog.a_size)
    run_megakernel(prog, A, C, toks, pos)
    assert rel_err(prog.logits(A), expected) <= 1e-4
    assert torch.allclose(C, vm.C, atol=1e-5)
    assert prog.next_tokens(A).tolist() == vm.next.tolist() == expected.argmax(-1).tolist()
    return prog


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 3])
def test_megakernel_equals_vm(name, batch):
    # past top-16 (the indexer selects); 64-row tiles: several tiles per projection and expert
    check_kernel_step(hd.LLM(name, device="cpu", seed=7), (21, 6, 33)[:batch], 40, 10 + batch, tile=64)


# one row of the MLA models is test_megakernel_equals_vm's (kernel = VM); here a 3-row batch of tiny-glm5 (CI time:
# tiny-dsv32 runs the same MLA program, checked against the VM one step at a time above)
@pytest.mark.parametrize("name, batch", [("tiny-llama", 1), ("tiny-llama", 3), ("tiny-glm5", 3)])
def test_mega_backend_greedy_steps_equal_reference(name, batch):
    """Prefill on the reference, then decode steps in the megakernel: the same greedy tokens."""
    ref = hd.LLM(name, device="cpu", seed=4)
    mega = hd.LLM(name, device="cpu", seed=4, backend="mega")
    assert mega.backend == "mega"
    g = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(0, ref.config.vocab_size, (n,), generator=g).tolist() for n in (12, 3, 15)[:batch]]
    kw = dict(max_tokens=6, ignore_eos=True)  # rows 0 and 2 cross index_topk = 16 while decoding (CI time: 6 steps)
    assert [r.token_ids for r in mega.generate_batch(prompts, **kw)] == \
        [r.token_ids for r in ref.generate_batch(prompts, **kw)]


def test_unsatisfiable_dependency_times_out_instead_of_hanging():
    llm = hd.LLM("tiny-llama", device="cpu")
    prog = compile_llama(llm.model, 1, 8)
    plant_unsatisfiable_wait(prog, 2)
    with pytest.raises(MegakernelTimeout, match="instruction 2 \\(ARGMAX\\) waited 200 spins"):
        run_megakernel(prog, torch.zeros(prog.a_size), torch.zeros(prog.c_size), torch.tensor([1]),
                       torch.tensor([0]), max_spin=200)


def test_mega_backend_samples_like_reference():
    ref = hd.LLM("tiny-llama", device="cpu", seed=4)
    mega = hd.LLM("tiny-llama", device="cpu", seed=4, backend="mega")
    prompts = ["hello", "a longer prompt here"]
    kw = dict(max_tokens=8, ignore_eos=True, temperature=0.9, seed=3)
    assert [g.token_ids for g in mega.generate_batch(prompts, **kw)] == \
        [g.token_ids for g in ref.generate_batch(prompts, **kw)]


def test_auto_backend_and_unsupported_models():
    assert hd.LLM("tiny-llama", device="cpu", backend="auto").backend in ("reference", "native")  # no GPU: never mega
    llm = hd.LLM("tiny-glm5", device="cpu")
    llm.model.cfg.kv_lora_rank = 96
    with pytest.raises(hd.ConfigError, match="kv_lora_rank=96 must be powers of two; use backend='reference'"):
        compile_model(llm.model, 1, 8)
