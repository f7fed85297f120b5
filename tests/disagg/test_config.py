"""Bad input for disaggregated serving: `--kv-transfer-config` (the CLI exits non-zero naming the flag and field)
and `kv_transfer_params` on a request (a 400 with the OpenAI error envelope naming the field, the server goes on)."""
import subprocess
import sys

import httpx
import pytest

import hyperdecode as hd
from hyperdecode.disagg.config import parse_kv_transfer_config
from hyperdecode.disagg.params import check_kv_params, check_prompt, prompt_digest
from hyperdecode.errors import ConfigError, RequestError
from tests.serve.conftest import LiveServer


@pytest.mark.parametrize("value, named", [
    ("{not json", "not valid JSON"),
    ('["kv_both"]', "must be a JSON object"),
    ('{"kv_role": "kv_sender"}', "'kv_role' must be one of kv_producer, kv_consumer, kv_both"),
    ('{"kv_connector": "LMCacheConnectorV1"}', "'kv_connector' must be one of NixlConnector"),
    ('{"kv_port": 70000}', "'kv_port' must be a port number"),
    ('{"kv_rol": "kv_both"}', "unknown field 'kv_rol'"),
    ('{"kv_connector_extra_config": {"abort_timeout_s": -1}}', "'abort_timeout_s' must be a positive number"),
    ('{"kv_connector_extra_config": {"kv_load_failure_policy": "retry"}}', "'kv_load_failure_policy' must be"),
    ('{"kv_connector_extra_config": {"backends": "UCX"}}', "'backends' must be a list"),
])
def test_bad_configs_name_the_flag_and_field(value, named):
    with pytest.raises(ConfigError, match="--kv-transfer-config") as e:
        parse_kv_transfer_config(value)
    assert named in str(e.value)


def test_a_config_with_vllm_fields():
    c = parse_kv_transfer_config('{"kv_connector": "NixlConnector", "kv_role": "kv_consumer", "kv_port": 0, '
                                 '"kv_buffer_device": "cuda", "kv_connector_extra_config": '
                                 '{"abort_timeout_s": 5, "kv_load_failure_policy": "recompute"}}')
    assert (c.consumer, c.producer, c.kv_port, c.abort_timeout_s, c.kv_load_failure_policy) == \
        (True, False, 0, 5.0, "recompute")


def test_the_cli_refuses_a_bad_config_before_loading_anything():
    r = subprocess.run([sys.executable, "-m", "hyperdecode", "serve", "--model", "tiny-llama", "--kv-transfer-config",
                        '{"kv_role": "prefill"}'], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--kv-transfer-config" in r.stderr and "'kv_role'" in r.stderr


def pulled(**change) -> dict:
    params = {"do_remote_prefill": True, "remote_engine_id": "e", "remote_host": "127.0.0.1", "remote_port": 5600,
              "remote_block_ids": [0], "remote_request_id": "0123456789abcdef0", "remote_num_tokens": 3,
              "remote_prompt_digest": prompt_digest([1, 2, 3])}
    return {**params, **change}


@pytest.mark.parametrize("params, named", [
    ("yes", "must be an object"),
    ({"do_remote_decode": True, "do_remote_prefill": True}, "one or the other"),
    ({"do_remote_decode": "true"}, "do_remote_decode' must be a boolean"),
    (pulled(remote_port=None), "needs 'remote_port'"),
    (pulled(remote_block_ids=[0, 1]), "must name one cache row"),
    (pulled(remote_request_id="not-ours"), "not one a hyperdecode prefill instance made"),
])
def test_bad_params_name_the_field(params, named):
    with pytest.raises(RequestError, match=named) as e:
        check_kv_params(params)
    assert e.value.param == "kv_transfer_params"


def test_params_of_another_prompt_are_refused():
    check_prompt(pulled(), [1, 2, 3])
    with pytest.raises(RequestError, match="another prompt"):
        check_prompt(pulled(), [1, 2, 4])


@pytest.fixture(scope="module")
def plain():
    server = LiveServer(hd.LLM("tiny-llama", device="cpu", backend="reference"), max_batch=2, max_model_len=256)
    yield server
    server.stop()


@pytest.mark.parametrize("params, named", [
    ({"do_remote_decode": True}, "started without --kv-transfer-config"),
    (pulled(), "started without --kv-transfer-config"),
    ({"do_remote_prefill": True}, "needs 'remote_engine_id'"),
])
def test_a_plain_instance_answers_400_naming_the_field(plain, params, named):
    r = httpx.post(plain.url + "/v1/chat/completions", timeout=30, json={
        "model": "tiny-llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "kv_transfer_params": params})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "kv_transfer_params" and named in error["message"]
    ok = httpx.post(plain.url + "/v1/completions", timeout=30,
                    json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2})
    assert ok.status_code == 200
