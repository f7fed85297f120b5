"""One request path: `hd.LLM` and the server accept and reject the same inputs, naming the same field (a 400 with
`param` from the server, `RequestError.param` from `hd.LLM`). One table, run through both."""
import pytest

import hyperdecode as hd

M = [{"role": "user", "content": "hi"}]
CASES = [  # (API, fields, the field an error names, or None when accepted)
    ("completion", {"prompt": "hi"}, None),
    ("completion", {"prompt": [1, 2, 3]}, None),
    ("completion", {"prompt": ""}, "prompt"),
    ("completion", {"prompt": [1, "a"]}, "prompt"),
    ("completion", {"prompt": [999999]}, "prompt"),
    ("completion", {"prompt": [-1]}, "prompt"),
    ("completion", {"prompt": "x" * 1024}, "prompt"),  # no room left in the 1024-token context
    ("completion", {"prompt": "x" * 1000, "max_tokens": 25}, "prompt"),
    ("completion", {"prompt": "x" * 1000, "max_tokens": 24}, None),  # exactly the context
    ("completion", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("completion", {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("completion", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ("completion", {"prompt": "hi", "max_tokens": 2.5}, "max_tokens"),
    ("completion", {"prompt": "hi", "max_tokens": True}, "max_tokens"),
    ("completion", {"prompt": "hi", "temperature": 5}, "temperature"),
    ("completion", {"prompt": "hi", "temperature": -0.1}, "temperature"),
    ("completion", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("completion", {"prompt": "hi", "temperature": 2}, None),
    ("completion", {"prompt": "hi", "temperature": 1e-300}, None),  # greedy, not inf
    ("completion", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("completion", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("completion", {"prompt": "hi", "top_p": 0.5, "temperature": 1}, None),
    ("completion", {"prompt": "hi", "top_k": -5}, "top_k"),
    ("completion", {"prompt": "hi", "top_k": 2.5}, "top_k"),
    ("completion", {"prompt": "hi", "top_k": -1}, None),
    ("completion", {"prompt": "hi", "top_k": 3, "temperature": 1}, None),
    ("completion", {"prompt": "hi", "seed": 1.5}, "seed"),
    ("completion", {"prompt": "hi", "seed": 2 ** 64}, "seed"),
    ("completion", {"prompt": "hi", "seed": 2 ** 64 - 1, "temperature": 1}, None),
    ("completion", {"prompt": "hi", "seed": -1, "temperature": 1}, None),
    ("completion", {"prompt": "hi", "stop": [""]}, "stop"),
    ("completion", {"prompt": "hi", "stop": [1]}, "stop"),
    ("completion", {"prompt": "hi", "stop": ["a"] * 5}, "stop"),  # OpenAI's limit is 4
    ("completion", {"prompt": "hi", "stop": ["a", "b", "c", "d"]}, None),
    ("completion", {"prompt": "hi", "stop": "x"}, None),
    ("completion", {"prompt": "hi", "ignore_eos": "yes"}, "ignore_eos"),
    ("completion", {"prompt": "hi", "ignore_eos": True}, None),
    ("chat", {"messages": []}, "messages"),
    ("chat", {"messages": "hi"}, "messages"),
    ("chat", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("chat", {"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, None),
    ("chat", {"messages": M, "max_tokens": 10 ** 9}, "messages"),
    ("chat", {"messages": M, "temperature": 3}, "temperature"),
]


def with_defaults(fields):
    return {"max_tokens": 2, **fields}  # accepted cases stay short


def through_llm(llm, api, fields):
    """None when hd.LLM accepts the request, else the field its RequestError names."""
    fields = with_defaults(fields)
    try:
        if api == "chat":
            messages = fields.pop("messages")
            llm.chat(messages, **fields)
        else:
            llm.generate(fields.pop("prompt"), **fields)
    except hd.RequestError as e:
        return e.param
    return None


def through_server(http, api, fields):
    path = "/v1/chat/completions" if api == "chat" else "/v1/completions"
    r = http.post(path, json={"model": "tiny-llama", **with_defaults(fields)})
    if r.status_code == 200:
        return None
    assert r.status_code == 400, r.text
    return r.json()["error"]["param"]


@pytest.mark.parametrize("api, fields, param", CASES, ids=[str(i) for i in range(len(CASES))])
def test_llm_and_server_apply_the_same_rules(offline, http, api, fields, param):
    assert through_llm(offline, api, fields) == param
    assert through_server(http, api, fields) == param


def test_an_llm_driven_by_a_server_refuses_offline_calls(llm, server):
    with pytest.raises(RuntimeError, match="driven by a server"):
        llm.generate("hi", max_tokens=2)


@pytest.mark.parametrize("fields", [{"temperature": 1.0, "seed": 5}, {"temperature": 0.7, "seed": 11, "stop": True},
                                    {"temperature": 0.0}])
def test_llm_stream_and_the_server_stream_the_same_pieces(offline, http, fields):
    """One output processor (engine/output.py) for both: the same seed gives the same text in the same pieces, step
    by step, and the same finish (with a stop string from the middle of the unstopped text, held back and cut)."""
    import json
    if fields.get("stop"):
        full = offline.generate([5, 6, 7, 8], max_tokens=24, temperature=0.7, seed=11, ignore_eos=True).text
        fields = {**fields, "stop": [full[10:12]]}
    body = {"prompt": [5, 6, 7, 8], "max_tokens": 24, "ignore_eos": True, **fields}
    pieces = list(offline.stream(body["prompt"], max_tokens=24, ignore_eos=True, **fields))
    with http.stream("POST", "/v1/completions", json={"model": "tiny-llama", "stream": True, **body}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    served = [e["choices"][0]["text"] for e in events if e["choices"] and e["choices"][0]["text"]]
    assert served == pieces and pieces
    assert events[-1]["choices"][0]["finish_reason"] == offline.last_generation.finish_reason
