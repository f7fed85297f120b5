"""Structured output (engine/structured.py, llguidance): sampled outputs of a random tiny model at temperature 1
follow a JSON schema, a regex and a choice; a grammar llguidance refuses is a RequestError naming the field."""
import json
import re

import jsonschema
import pytest

import hyperdecode as hd
from hyperdecode.errors import RequestError

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 99},
                                           "ok": {"type": "boolean"}},
          "required": ["name", "n", "ok"], "additionalProperties": False}


@pytest.fixture(scope="module")
def llm():
    return hd.LLM("tiny-llama", device="cpu", seed=0)


def test_sampled_json_follows_the_schema(llm):
    outs = llm.generate_batch(["{", "a", "b", "c"], max_tokens=60, temperature=1.0, seed=7,
                              structured={"json_schema": SCHEMA})
    for r in outs:
        assert r.finish_reason == "stop", r.text
        jsonschema.validate(json.loads(r.text), SCHEMA)
    assert len({r.text for r in outs}) > 1


def test_regex_and_choice(llm):
    r = llm.generate_batch(["x"], max_tokens=20, temperature=1.0, seed=1, structured={"regex": r"[a-c]{3}-\d\d"})[0]
    assert re.fullmatch(r"[a-c]{3}-\d\d", r.text) and r.finish_reason == "stop"
    picks = llm.generate_batch(["y"] * 3, max_tokens=10, temperature=1.0, seed=2,
                               structured={"choice": ["alpha", "beta"]})
    assert {p.text for p in picks} <= {"alpha", "beta"}


def test_a_grammar_llguidance_refuses_names_the_field(llm):
    with pytest.raises(RequestError, match="grammar is invalid") as e:
        llm.generate_batch(["x"], max_tokens=4, structured={"regex": "(unclosed"})
    assert e.value.param == "structured_outputs"
    with pytest.raises(RequestError, match="one of json_schema"):
        llm.generate_batch(["x"], max_tokens=4, structured={"xml": "<a/>"})
