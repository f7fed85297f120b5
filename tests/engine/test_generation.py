"""Stop strings, EOS, max tokens, streaming and stats on the random tiny preset (byte-level tokenizer)."""
import pytest

import hyperdecode as hd


@pytest.fixture(scope="module")
def llm():
    return hd.LLM("tiny-llama", device="cpu", seed=0)


def test_max_tokens_and_stats(llm):
    g = llm.generate("hello", max_tokens=9, ignore_eos=True)
    assert len(g.token_ids) == 9 and g.finish_reason == "length"
    s = g.stats
    assert s.prompt_tokens == 5 and s.output_tokens == 9
    assert 0 < s.ttft_s <= s.e2e_s and s.tpot_s > 0
    assert s.tokens_per_s == pytest.approx(1 / s.tpot_s)


def test_stream_pieces_join_to_text(llm):
    kw = dict(max_tokens=40, temperature=1.0, seed=5, ignore_eos=True)
    pieces = list(llm.stream("stream me", **kw))
    assert "".join(pieces) == llm.last_generation.text == llm.generate("stream me", **kw).text


def test_stop_string_truncates_and_is_never_streamed(llm):
    kw = dict(max_tokens=60, temperature=1.0, seed=11, ignore_eos=True)
    full = llm.generate("abc", **kw)
    stop = full.text[10:13]
    assert len(stop) == 3 and full.text.find(stop) == 10
    g = llm.generate("abc", stop=[stop], **kw)
    assert g.finish_reason == "stop" and g.text == full.text[:10]
    assert "".join(llm.stream("abc", stop=[stop], **kw)) == full.text[:10]


def test_eos_ends_generation(llm):
    # pick a seed where the model emits an EOS id; without ignore_eos the text ends there
    eos = set(llm.config.eos_token_ids)
    for seed in range(200):
        free = llm.generate("x", max_tokens=40, temperature=1.5, seed=seed, ignore_eos=True)
        hits = [i for i, t in enumerate(free.token_ids) if t in eos]
        if hits:
            g = llm.generate("x", max_tokens=40, temperature=1.5, seed=seed)
            assert g.finish_reason == "stop" and g.token_ids == free.token_ids[:hits[0]]
            return
    pytest.fail("no seed produced an EOS token")


def test_chat_uses_template(llm):
    ids = llm.chat_prompt([{"role": "user", "content": "hi"}])
    assert llm.tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert llm.chat([{"role": "user", "content": "hi"}], max_tokens=3).stats.prompt_tokens == len(ids)


def test_text_roundtrip_of_byte_tokenizer(llm):
    text = "héllo ∑ 日本 <|im_end|>"
    assert llm.tokenizer.decode(llm.tokenizer.encode(text)) == text
