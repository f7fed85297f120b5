"""FP8-weight programs (both families) and split-KV attention (flash-decoding), in the VM against the reference
and in the megakernel (Triton's interpreter, one worker) against the VM."""
import os
import re

os.environ["TRITON_INTERPRET"] = "1"  # no GPU here: Triton's interpreter runs the kernel's programs in order

import pytest  # noqa: E402
import torch  # noqa: E402

import hyperdecode as hd  # noqa: E402
from hyperdecode.engine.mega.isa import FP8_WEIGHTS, Op  # noqa: E402
from hyperdecode.engine.mega.kernel import run_megakernel  # noqa: E402
from hyperdecode.engine.mega.program import check_program  # noqa: E402
from hyperdecode.engine.mega.program_llama import compile_program as compile_llama  # noqa: E402
from hyperdecode.engine.mega.runner import MegaRunner, compile_model  # noqa: E402
from hyperdecode.engine.mega.vm import VM  # noqa: E402
from hyperdecode.model.checkpoint import dequantize_fp8, quantize_fp8  # noqa: E402
from tests.engine.mega.test_kernel import check_kernel_step  # noqa: E402
from tests.engine.mega.test_vm import check_decode_step  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:backend 'mega' without a GPU")
# the weights an FP8 program quantizes (the LM head, embeddings, router, indexer weights and kv_b stay as they are)
QUANTIZED = re.compile(r"^layers\.\d+\.(self_attn\.(qkv_proj|o_proj|q_a_proj|q_b_proj|q_proj|kv_a_proj_with_mqa|"
                       r"indexer\.wq_b|indexer\.wk)\.weight|mlp\.(shared_experts\.)?(gate_up_proj|down_proj)\.weight|"
                       r"mlp\.experts_(gate_up|down))$")


def round_through_fp8(model: torch.nn.Module) -> int:
    """Replaces every weight an FP8 program quantizes by its block-FP8 round trip on the program's grid (128 x 128
    blocks of the [out, in] matrix), so the reference runs the very weights the program streams. Returns how many."""
    done = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not QUANTIZED.match(name):
                continue
            mats = p.data.reshape(-1, *p.shape[-2:])  # [in, out] per matrix (experts stacked)
            for m in mats:
                q, s = quantize_fp8(m.T.float())
                m.copy_(dequantize_fp8(q, s).T)
            done += 1
    return done


@pytest.mark.parametrize("name, lengths", [("tiny-llama", (13, 4)), ("tiny-glm5", (21,)), ("tiny-dsv32", (20, 5))])
def test_fp8_program_in_the_vm_equals_reference_on_the_dequantized_weights(name, lengths):
    llm = hd.LLM(name, device="cpu", seed=2)
    assert round_through_fp8(llm.model) >= 4
    def compile_fn(model, batch, max_seq, **kw):
        return compile_model(model, batch, max_seq, fp8=True, **kw)

    prog = check_decode_step(llm, compile_fn, lengths, llm.config.vocab_size, 11, tile=64)
    fp8 = [ins for ins in prog.instrs if ins.op == Op.GEMV and ins.args["flags"] & FP8_WEIGHTS]
    assert fp8 and prog.W8.dtype == torch.float8_e4m3fn and prog.W8.numel() > prog.W.numel() // 4
    if name != "tiny-llama":
        assert all(ins.args["scale"] >= 0 for ins in prog.instrs if ins.op in (Op.EXPERT_UP, Op.EXPERT_DOWN))


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-glm5"])
def test_fp8_megakernel_equals_vm(name):
    check_kernel_step(hd.LLM(name, device="cpu", seed=5), (19, 7), 40, 3, tile=64, fp8=True)


def test_fp8_mega_backend_greedy_equals_reference_on_the_dequantized_weights():
    ref = hd.LLM("tiny-llama", device="cpu", seed=6)
    round_through_fp8(ref.model)
    mega = hd.LLM("tiny-llama", device="cpu", seed=6, backend="mega")
    round_through_fp8(mega.model)
    mega.runner = mega.core.runner = MegaRunner(mega.model, fp8=True)
    prompts = [[5, 9, 200, 17], [1, 2, 3]]
    kw = dict(max_tokens=8, ignore_eos=True)
    assert [r.token_ids for r in mega.generate_batch(prompts, **kw)] == \
        [r.token_ids for r in ref.generate_batch(prompts, **kw)]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
@pytest.mark.parametrize("lengths", [(29,), (37, 3, 16)])  # several splits of 8, one split, and an empty one
def test_split_attention_in_the_vm_equals_reference(name, lengths):
    llm = hd.LLM(name, device="cpu", seed=len(lengths))
    prog = check_decode_step(llm, compile_llama, lengths, 259, 7, kv_split=8)
    assert prog.dims.splits == 6 and prog.dims.kv_split == 8
    ops = [ins.op for ins in prog.instrs]
    assert ops.count(Op.ATTN_MERGE) == len(lengths) * prog.dims.layers
    assert ops.count(Op.ATTN) == len(lengths) * prog.dims.n_kv * 6 * prog.dims.layers
    check_program(prog, workers=9)


def test_split_attention_in_the_megakernel_equals_vm():
    # 3 splits: row 0 spans all, row 1 only the first; 16-column tiles: attention waits for its kv head's tiles
    check_kernel_step(hd.LLM("tiny-qwen3", device="cpu", seed=1), (35, 2), 44, 4, tile=16, kv_split=16)


def test_split_mega_backend_greedy_equals_reference():
    ref = hd.LLM("tiny-llama", device="cpu", seed=8)
    mega = hd.LLM("tiny-llama", device="cpu", seed=8, backend="mega")
    mega.runner = mega.core.runner = MegaRunner(mega.model, kv_split=8)
    prompts = [list(range(40, 63)), [7, 7]]  # decoding (positions 23..32) crosses split boundaries at 24 and 32
    kw = dict(max_tokens=10, ignore_eos=True)
    assert [r.token_ids for r in mega.generate_batch(prompts, **kw)] == \
        [r.token_ids for r in ref.generate_batch(prompts, **kw)]


def test_argmax_in_slices_takes_the_lowest_index_among_equal_maxima(monkeypatch):
    from hyperdecode.engine.mega import program
    monkeypatch.setattr(program, "ARGMAX_SLICE", 64)  # tiny-llama's 259 logits in 5 slices per row
    llm = hd.LLM("tiny-llama", device="cpu", seed=3)
    prog = compile_llama(llm.model, 2, 16)
    argmax = [ins for ins in prog.instrs if ins.op == Op.ARGMAX]
    assert len(argmax) == 2 * 5
    vm = VM(prog)
    vm.step([1, 2], [0, 0])
    logits = prog.logits(vm.A)
    logits[0] = -1.0
    logits[0, [70, 200, 3 + 64 * 3]] = 2.5  # equal maxima in three slices: the lowest index wins
    logits[1] = -torch.arange(259.0)  # all negative: order keys of negative floats
    logits[1, 258] = -0.0
    vm._best(prog.buf["best"]).fill_(-(2 ** 63))
    for ins in prog.instrs:
        if ins.op == Op.ARGMAX:
            vm.argmax(**ins.args)
    assert prog.next_tokens(vm.A).tolist() == [70, 0]
    assert logits.argmax(-1).tolist() == [70, 0]


def test_argmax_slices_in_the_megakernel(monkeypatch):
    from hyperdecode.engine.mega import program
    monkeypatch.setattr(program, "ARGMAX_SLICE", 32)
    llm = hd.LLM("tiny-llama", device="cpu", seed=9)
    prog = compile_llama(llm.model, 3, 8)
    vm = VM(prog)
    expected = vm.step([5, 6, 7], [0, 0, 0])
    A = torch.zeros(prog.a_size)
    run_megakernel(prog, A, torch.zeros(prog.c_size), torch.tensor([5, 6, 7]), torch.tensor([0, 0, 0]))
    assert prog.next_tokens(A).tolist() == vm.next.tolist() == expected.argmax(-1).tolist()


@pytest.mark.parametrize("tile, groups", [(16, 2), (8, 2), (48, 1)])  # 48 spans two heads: one counter
def test_attention_waits_only_for_its_kv_heads_columns(tile, groups):
    llm = hd.LLM("tiny-llama", device="cpu", seed=4)  # 4 q heads, 2 kv heads of 16
    prog = check_decode_step(llm, compile_llama, (9, 30), 259, 5, tile=tile, kv_split=16)
    check_program(prog, workers=5)
    first_layer = [ins for ins in prog.instrs if ins.op == Op.ATTN][:2 * 2 * 2]  # rows x kv heads x splits
    assert len({ins.waits[0] for ins in first_layer}) == groups
    if groups == 2:
        qkv = [ins for ins in prog.instrs if ins.op == Op.GEMV and ins.signal in {w[0][0] for w in
                                                                                 (i.waits for i in first_layer)}]
        for ins in first_layer:
            head_cols = {ins.args["kv_head"] * 32 + c for c in range(32)} | \
                {64 + ins.args["kv_head"] * 16 + c for c in range(16)} | {96 + ins.args["kv_head"] * 16 + c
                                                                           for c in range(16)}
            covered = {c for t in qkv if t.signal == ins.waits[0][0] for c in range(t.args["c0"], t.args["c1"])}
            assert covered == head_cols
