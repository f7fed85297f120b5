"""Qwen3 in the megakernel: the Llama compiler with per-head q/k norms in ATTN. VM == reference, and the Triton
kernel under the interpreter == VM, and the mega backend's greedy tokens == the reference's."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU here: Triton's interpreter runs the kernel's programs

import pytest  # noqa: E402

import hyperdecode as hd  # noqa: E402
from hyperdecode.engine.mega.program_llama import compile_program  # noqa: E402
from tests.engine.mega.test_kernel import check_kernel_step  # noqa: E402
from tests.engine.mega.test_vm import check_decode_step, check_greedy, check_residual_stream  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:backend 'mega' without a GPU")


@pytest.mark.parametrize("lengths", [(9,), (5, 14, 2)])
def test_decode_step_equals_reference(lengths):
    llm = hd.LLM("tiny-qwen3", device="cpu", seed=len(lengths))
    prog = check_decode_step(llm, compile_program, lengths, 259, sum(lengths), tile=24)
    assert all(ins.args["q_norm"] >= 0 and ins.args["k_norm"] >= 0 for ins in prog.instrs if ins.op.name == "ATTN")


def test_residual_stream_and_greedy_equal_reference():
    check_residual_stream(hd.LLM("tiny-qwen3", device="cpu", seed=8), compile_program, (4, 13), 259, 2)
    check_greedy(hd.LLM("tiny-qwen3", device="cpu", seed=5), compile_program, [3, 40, 41, 42, 43, 44])


@pytest.mark.parametrize("batch", [1, 3])
def test_megakernel_equals_vm(batch):
    check_kernel_step(hd.LLM("tiny-qwen3", device="cpu", seed=7), (21, 6, 33)[:batch], 40, batch, compile_program,
                      tile=32)


def test_mega_backend_greedy_equals_reference():
    ref = hd.LLM("tiny-qwen3", device="cpu", seed=4)
    mega = hd.LLM("tiny-qwen3", device="cpu", seed=4, backend="mega")
    prompts = [[5, 6, 7, 8, 9], [200, 3]]
    kw = dict(max_tokens=9, ignore_eos=True)
    assert [g.token_ids for g in mega.generate_batch(prompts, **kw)] == \
        [g.token_ids for g in ref.generate_batch(prompts, **kw)]
