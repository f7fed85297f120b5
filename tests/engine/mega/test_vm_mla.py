"""The compiled GLM-5 / DeepSeek-V3.2 decode step (absorbed MLA, DSA top-k, MoE) in the VM against the reference."""
import pytest

import hyperdecode as hd
from hyperdecode.engine.mega.isa import Op
from hyperdecode.engine.mega.program import check_program
from hyperdecode.engine.mega.program_mla import compile_program as compile_deepseek
from tests.engine.mega.test_vm import check_decode_step, check_greedy, check_residual_stream


@pytest.mark.parametrize("name", ["tiny-glm5", "tiny-dsv32"])
@pytest.mark.parametrize("lengths", [(21,), (20, 5, 33)])  # beyond index_topk = 16: the indexer selects
def test_decode_step_equals_reference(name, lengths):
    llm = hd.LLM(name, device="cpu", seed=len(lengths))
    prog = check_decode_step(llm, compile_deepseek, lengths, 512, sum(lengths), tile=48)
    check_program(prog, workers=7)
    assert {Op.MLA_ATTN, Op.INDEX_TOPK, Op.ROUTE, Op.EXPERT_UP, Op.EXPERT_DOWN} <= {i.op for i in prog.instrs}


def test_greedy_16_steps_equal_reference():  # crosses index_topk = 16 while decoding
    check_greedy(hd.LLM("tiny-glm5", device="cpu", seed=9), compile_deepseek, list(range(30, 44)), max_seq=40)


@pytest.mark.parametrize("name", ["tiny-glm5", "tiny-dsv32"])
def test_residual_stream_equals_reference_op_by_op(name):
    check_residual_stream(hd.LLM(name, device="cpu", seed=3), compile_deepseek, (25, 7), 512, 4)
