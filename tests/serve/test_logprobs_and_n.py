"""Logprobs, n and batched prompts through the server with the official client: chat and completion logprobs are
log_softmax of the reference logits at each position (bytes and top alternatives too); echo returns the prompt with
its logprobs; n = 3 returns three choices; a batch of prompts on /v1/completions returns one choice per prompt and
sample, indexed as OpenAI does."""
import httpx
import openai
import pytest
import torch


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def reference(offline, ids):
    return torch.log_softmax(offline.logits(ids).double(), dim=-1)


def test_chat_logprobs_match_the_reference(client, server, offline):
    messages = [{"role": "user", "content": "count: one two three"}]
    r = client.chat.completions.create(model="tiny-llama", messages=messages, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=4, extra_body={"ignore_eos": True})
    prompt = httpx.post(server.url + "/tokenize", json={"messages": messages}).json()["tokens"]
    ids = offline.generate(prompt, max_tokens=6, ignore_eos=True).token_ids
    full = reference(offline, prompt + ids)
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    tok = offline.tokenizer
    for j, (entry, token) in enumerate(zip(content, ids)):
        row = full[len(prompt) - 1 + j]
        assert bytes(entry.bytes) == tok.token_bytes(token)
        assert entry.logprob == pytest.approx(row[token].item(), abs=1e-4)
        best = torch.topk(row, 4)
        assert [bytes(t.bytes) for t in entry.top_logprobs] == [tok.token_bytes(i) for i in best.indices.tolist()]
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_streamed_chat_logprobs_equal_the_whole(client):
    kwargs = dict(model="tiny-llama", messages=[{"role": "user", "content": "go"}], max_tokens=7, temperature=0,
                  logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs).choices[0].logprobs.content
    streamed = [e for c in client.chat.completions.create(stream=True, **kwargs)
                if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.bytes, round(e.logprob, 5)) for e in streamed] == [(e.bytes, round(e.logprob, 5)) for e in whole]


def test_completion_echo_logprobs_score_the_prompt(client, offline):
    prompt = [7, 8, 9, 10, 11, 12]
    r = client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=3, temperature=0, echo=True,
                                  logprobs=2, extra_body={"ignore_eos": True})
    choice = r.choices[0]
    plain = offline.generate(prompt, max_tokens=3, ignore_eos=True)
    ids = plain.token_ids
    full = reference(offline, prompt + ids)
    lp = choice.logprobs
    assert len(lp.tokens) == len(prompt) + 3 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for p in range(1, len(prompt) + 3):
        assert lp.token_logprobs[p] == pytest.approx(full[p - 1, (prompt + ids)[p]].item(), abs=1e-4)
    assert choice.text == offline.tokenizer.decode(prompt) + plain.text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0


def test_n_returns_three_choices_that_share_the_prompt(client, server):
    r = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "pick " * 30}],
                                       max_tokens=5, temperature=1.0, seed=3, n=3, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1
    assert r.usage.completion_tokens == 15
    again = client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "pick " * 30}],
                                           max_tokens=5, temperature=1.0, seed=3, n=3,
                                           extra_body={"ignore_eos": True})
    # seeded: the j-th sample draws with seed + j, so the same request gives the same three
    assert [c.message.content for c in again.choices] == [c.message.content for c in r.choices]
    streamed = {}
    for c in client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "pick " * 30}],
                                            max_tokens=5, temperature=1.0, seed=3, n=3, stream=True,
                                            extra_body={"ignore_eos": True}):
        for choice in c.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + (choice.delta.content or "")
    assert [streamed[i] for i in range(3)] == [c.message.content for c in r.choices]


def test_batched_completion_prompts(client, offline):
    prompts = ["first prompt", "a second one", "third"]
    r = client.completions.create(model="tiny-llama", prompt=prompts, max_tokens=4, temperature=0, n=2,
                                  extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == list(range(6))
    for i, p in enumerate(prompts):
        want = offline.generate(p, max_tokens=4, ignore_eos=True).text
        assert [r.choices[2 * i + j].text for j in range(2)] == [want, want]
    assert r.usage.prompt_tokens == sum(len(offline.tokenizer.encode(p)) for p in prompts)


def test_bad_values_are_400s_naming_the_field(server):
    cases = [({"top_logprobs": 21, "logprobs": True}, "top_logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
             ({"n": 0}, "n"), ({"n": 17}, "n"), ({"logprobs": 3}, "logprobs")]
    for extra, param in cases:
        body = {"model": "tiny-llama", "messages": [{"role": "user", "content": "x"}], **extra}
        r = httpx.post(server.url + "/v1/chat/completions", json=body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)
    r = httpx.post(server.url + "/v1/completions", json={"model": "tiny-llama", "prompt": "x", "logprobs": 6})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
