"""The OpenAPI schema is the contract (serve/openapi.py): every POST route documents its request body and every
route the statuses and content types it really answers; then schemathesis fuzzes a live server against it, bounded
(a fixed example count per operation, derandomized), with bodies the schema admits (positive) and bodies it rejects
(negative): no 5xx, no status, content type or body the schema does not document, every negative body refused with a
4xx; afterwards /health is 200 and the request gauges are back at 0."""
import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, given, settings

import hyperdecode as hd
from tests.serve.conftest import LiveServer, metric_values

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

EXAMPLES = 40  # per operation and mode


@pytest.fixture(scope="module")
def fuzzed():
    s = LiveServer(hd.LLM("tiny-llama", device="cpu", seed=0), max_batch=8, max_queue=64, max_model_len=256)
    yield s
    s.stop()


def test_every_route_documents_its_body_statuses_and_content_types(fuzzed):
    spec = httpx.get(fuzzed.url + "/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            if method == "post":
                body = op["requestBody"]["content"]["application/json"]["schema"]
                assert body.get("type") == "object" or "anyOf" in body, path
            assert "422" not in op["responses"], (method, path)
            for status, answer in op["responses"].items():
                if status != "200":
                    assert answer["content"]["application/json"]["schema"]["required"] == ["error"], (path, status)
    assert "404" in spec["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    chat = spec["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    assert set(chat) == {"application/json", "text/event-stream"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_server_keeps_its_contract_under_fuzzing(fuzzed, mode):
    schema = schemathesis.openapi.from_url(fuzzed.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    if mode == GenerationMode.NEGATIVE:
        checks.append(negative_data_rejection)
    ran = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(operation.as_strategy(generation_mode=mode))
        def fuzz(case):
            response = case.call(base_url=fuzzed.url, timeout=60)
            case.validate_response(response, checks=checks)

        try:
            fuzz()
        except hypothesis.errors.Unsatisfiable:  # nothing in this operation can be made invalid (no body, no query)
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        ran += 1
    assert ran >= (11 if mode == GenerationMode.POSITIVE else 6)
    with httpx.Client(base_url=fuzzed.url, timeout=30) as http:
        assert http.get("/health").status_code == 200
        gauges = metric_values(http.get("/metrics").text)
    assert gauges["vllm:num_requests_running"] == 0 and gauges["vllm:num_requests_waiting"] == 0
