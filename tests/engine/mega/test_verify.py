"""The (k + 1)-token verify program: each row feeds its newest token and a draft (causal inside the draft; shorter
rows padded at the spare position). The VM against the reference's [B, S] forward, and the megakernel under the
interpreter against the VM, for both families."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # no GPU here: Triton's interpreter runs the kernel's programs in order

import pytest  # noqa: E402
import torch  # noqa: E402

import hyperdecode as hd  # noqa: E402
from hyperdecode.engine.mega.kernel import run_megakernel  # noqa: E402
from hyperdecode.engine.mega.program import check_program  # noqa: E402
from hyperdecode.engine.mega.runner import compile_model  # noqa: E402
from hyperdecode.engine.mega.vm import VM  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.engine.mega.test_vm import prefill  # noqa: E402

MODELS = ["tiny-llama", "tiny-qwen3", "tiny-glm5", "tiny-dsv32"]
MAX_SEQ = 40  # the last position is the spare one that padding writes to
pytestmark = pytest.mark.filterwarnings("ignore:backend 'mega' without a GPU")


def verify_step(llm, prompt_lengths, fed, queries, seed):
    """Reference prefill of random prompts; then each row feeds `fed[b]` tokens (its newest and a draft) from its
    prompt's end. Returns the program, its VM (cache loaded, step not run), the flat tokens and positions, the
    [B, S] tokens and positions (pos -1: padding), and the real (row, token) pairs."""
    vocab = llm.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab, (n,), generator=g).tolist() for n in prompt_lengths]
    prefill(llm.model, prompts, MAX_SEQ)
    prog = compile_model(llm.model, len(prompts), MAX_SEQ, queries=queries, tile=64)
    check_program(prog, workers=132)
    vm = VM(prog)
    vm.load_cache(llm.model)
    tokens = torch.randint(0, vocab, (len(prompts), queries), generator=g)
    pos = torch.full((len(prompts), queries), -1)
    for b, (n, p) in enumerate(zip(fed, prompts)):
        pos[b, :n] = torch.arange(len(p), len(p) + n)
    flat_pos = pos.masked_fill(pos < 0, MAX_SEQ - 1).reshape(-1)
    real = [(b, t) for b in range(len(prompts)) for t in range(fed[b])]
    return prog, vm, tokens.reshape(-1), flat_pos, tokens, pos, real


# the kernel under the interpreter once per program (Llama, Qwen3's norms, MLA): tiny-dsv32 runs the MLA program as
# tiny-glm5 does, so its verify step is checked in the VM only (CI time)
KERNEL = {"tiny-llama", "tiny-qwen3", "tiny-glm5"}


@pytest.mark.parametrize("name", MODELS)
def test_verify_program_vm_equals_reference_and_kernel_equals_vm(name):
    llm = hd.LLM(name, device="cpu", seed=3)
    queries = 4
    # contexts cross index_topk = 16 inside the draft; rows feed 4, 1 and 3 tokens
    prog, vm, flat_tok, flat_pos, tokens, pos, real = verify_step(llm, (14, 5, 20), (4, 1, 3), queries, seed=2)
    C = vm.C.clone()
    got = vm.step(flat_tok.tolist(), flat_pos.tolist()).view(-1, queries, llm.config.vocab_size)
    with torch.inference_mode():
        ref = llm.model.logits(llm.model(tokens, pos))
    rows, cols = zip(*real)
    assert rel_err(got[rows, cols], ref[rows, cols]) <= 1e-5
    views = prog.cache_views(vm.C)
    for cache_name, t in llm.model.cache_tensors().items():  # what the draft appended, at the same positions
        assert rel_err(views[cache_name][:, :MAX_SEQ - 1], t[:3, :MAX_SEQ - 1]) <= 1e-5, cache_name
    if name not in KERNEL:
        return
    A = torch.zeros(prog.a_size)
    run_megakernel(prog, A, C, flat_tok, flat_pos)
    assert rel_err(prog.logits(A), vm.prog.logits(vm.A)) <= 1e-4
    assert torch.allclose(C, vm.C, atol=1e-5)
    assert prog.next_tokens(A).tolist() == vm.next.tolist()


def test_verify_program_shares_the_decode_programs_cache_and_weights():
    llm = hd.LLM("tiny-glm5", device="cpu", seed=3)
    one = compile_model(llm.model, 2, MAX_SEQ)
    four = compile_model(llm.model, 2, MAX_SEQ, queries=4)
    assert one.cache == four.cache and one.c_size == four.c_size  # the runner keeps one cache arena for both
    assert torch.equal(one.W, four.W) and torch.equal(one.W32, four.W32)
    assert four.batch == 8 and four.cache_rows == 2


@pytest.mark.parametrize("name, spec", [("tiny-llama", {"method": "ngram", "num_speculative_tokens": 3,
                                                        "prompt_lookup_min": 1}), ("tiny-glm5", "mtp:2")])
def test_mega_backend_speculative_greedy_equals_reference(name, spec):
    """Speculative decoding on the mega backend: verify steps in the (1 + k)-token program, drafts of every length
    (and rows without one) mixed in a batch; the greedy tokens of the plain reference."""
    ref = hd.LLM(name, device="cpu", seed=4)
    mega = hd.LLM(name, device="cpu", seed=4, backend="mega")
    g = torch.Generator().manual_seed(5)
    prompts = [(torch.randint(0, 30, (n,), generator=g).tolist() * 3)[:3 * n] for n in (6, 2)]
    kw = dict(max_tokens=7 if name == "tiny-llama" else 5, ignore_eos=True)  # MTP drafts from the first step
    expected = [r.token_ids for r in ref.generate_batch(prompts, **kw)]
    drafted = ref.generate_batch(prompts, speculative=spec, **kw)
    got = mega.generate_batch(prompts, speculative=spec, **kw)
    assert [r.token_ids for r in got] == expected
    # the same drafts were made and accepted: the MTP drafter read the same hidden states from the arena
    assert [r.stats.speculative for r in got] == [r.stats.speculative for r in drafted]
    assert mega.runner.verify_progs  # the verify program ran
    assert sum(r.stats.speculative.num_drafts for r in got) > 0
