"""The model protocol every runner uses, for every family: a forward over [B, S] equals S single-token steps,
and the cache row operations (rollback, prefix copy) leave a cache equal to one built directly."""
import pytest
import torch

import hyperdecode as hd
from tests.conftest import rel_err

FAMILIES = ["tiny-llama", "tiny-qwen3", "tiny-glm5", "tiny-dsv32"]


def random_prompts(vocab, lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, vocab, (lengths,), generator=g) for _ in range(3)])


def fill(model, tokens, rows, start=0):
    """Feeds tokens [B, S] at positions start.. into cache rows `rows` in one forward."""
    pos = torch.arange(start, start + tokens.shape[1])[None].expand(tokens.shape[0], -1)
    with torch.inference_mode():
        return model(tokens, pos, slots=torch.tensor(rows))


@pytest.mark.parametrize("name", FAMILIES)
def test_forward_over_s_tokens_equals_s_single_steps(name):
    llm = hd.LLM(name, device="cpu", seed=2)
    model = llm.model
    tokens = random_prompts(llm.config.vocab_size, 20, 1)  # 20 > index_topk 16: DSA selects during the steps
    model.setup_caches(6, 32)
    fill(model, tokens[:, :4], [3, 4, 5])  # a common prefix, then S = 16 at once vs 16 steps of one
    at_once = fill(model, tokens[:, 4:], [3, 4, 5], start=4)
    fill(model, tokens[:, :4], [0, 1, 2])
    steps = torch.cat([fill(model, tokens[:, i:i + 1], [0, 1, 2], start=i) for i in range(4, 20)], dim=1)
    assert rel_err(at_once, steps) <= 1e-5
    with torch.inference_mode():
        assert torch.equal(model.logits(at_once).argmax(-1), model.logits(steps).argmax(-1))
    for key, t in model.cache_tensors().items():
        assert torch.allclose(t[3:6, :20], t[0:3, :20], atol=1e-5), key


@pytest.mark.parametrize("name", FAMILIES)
def test_rollback_and_row_copy_equal_a_cache_built_directly(name):
    llm = hd.LLM(name, device="cpu", seed=3)
    model = llm.model
    tokens = random_prompts(llm.config.vocab_size, 24, 2)
    model.setup_caches(4, 32)
    fill(model, tokens[:1, :10], [0])  # the reference: row 0 holds exactly 10 tokens
    fill(model, tokens[:1], [1])  # 24 tokens, rolled back to 10
    model.keep_cache(1, 10)
    fill(model, tokens[1:2], [2])  # another sequence, then row 0's 10 tokens copied over it
    model.copy_cache(0, 2, 10)
    cache = model.cache_tensors()
    for key, t in cache.items():
        assert t[0, :10].abs().sum() > 0 and t[0, 10:].abs().sum() == 0, key
        assert t[1, 10:].abs().sum() == 0 and rel_err(t[1], t[0]) <= 1e-6, key  # the same values from other shapes
        assert torch.equal(t[2], t[0]), key  # copied
    # and decoding on from the rolled-back and the copied rows continues the 10-token sequence
    nxt = tokens[:1, 10:11]
    expected = fill(model, nxt, [0], start=10)
    assert rel_err(fill(model, nxt, [1], start=10), expected) <= 1e-6
    assert torch.equal(fill(model, nxt, [2], start=10), expected)


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_has_the_protocol(name):
    model = hd.LLM(name, device="cpu").model
    assert model.device == torch.device("cpu")
    assert all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])  # nothing left on meta
    model.setup_caches(2, 8)
    assert model.max_batch == 2 and model.max_seq == 8
    shapes = {tuple(t.shape[:2]) for t in model.cache_tensors().values()}
    assert shapes == {(2, 8)}  # every cache tensor is [rows, max_seq, ...]
