"""`kv_transfer_params` as vLLM's NixlConnector reads and writes them on chat and completions requests and responses.

- A prefill request carries `{"do_remote_decode": true, ...}` (what vllm-router and vLLM's proxy send); its
  response returns the parameters the decode side needs: `do_remote_prefill`, `remote_engine_id`, `remote_host`,
  `remote_port`, `remote_block_ids`, `remote_request_id`, `tp_size`, and here also the prompt's token count and
  digest (so a decode instance refuses parameters made for another prompt) and the prefill's seconds.
- A decode request carries those parameters back (`do_remote_prefill: true`).

>>> check_kv_params({"do_remote_decode": True, "remote_engine_id": None})
('send', {'do_remote_decode': True, 'remote_engine_id': None})
>>> check_kv_params({"do_remote_prefill": True})[0]
Traceback (most recent call last):
...
hyperdecode.errors.RequestError: 'kv_transfer_params' with do_remote_prefill needs 'remote_engine_id' (a string)
"""
from __future__ import annotations

import hashlib
from typing import Any

from ..errors import RequestError

__all__ = ["check_kv_params", "prompt_digest", "check_prompt", "REQUIRED"]

FIELD = "kv_transfer_params"
REQUIRED = {"remote_engine_id": (str,), "remote_host": (str,), "remote_port": (int,), "remote_block_ids": (list,),
            "remote_request_id": (str,), "remote_num_tokens": (int,), "remote_prompt_digest": (str,)}


def bad(message: str) -> RequestError:
    return RequestError(message, param=FIELD)


def check_kv_params(value: Any) -> tuple[str | None, dict[str, Any] | None]:
    """("send", params) for a prefill request, ("pull", params) for a decode request, (None, None) for neither;
    a RequestError naming the field otherwise."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise bad(f"'{FIELD}' must be an object")
    send = value.get("do_remote_decode")
    pull = value.get("do_remote_prefill")
    for name, flag in (("do_remote_decode", send), ("do_remote_prefill", pull)):
        if flag is not None and not isinstance(flag, bool):
            raise bad(f"'{FIELD}.{name}' must be a boolean")
    if send and pull:
        raise bad(f"'{FIELD}' asks for both do_remote_decode and do_remote_prefill; a request is one or the other")
    if send:
        return "send", value
    if not pull:
        return None, None
    for name, types in REQUIRED.items():
        given = value.get(name)
        if not isinstance(given, types) or isinstance(given, bool):
            what = types[0].__name__.replace("str", "a string").replace("int", "an integer").replace("list", "a list")
            raise bad(f"'{FIELD}' with do_remote_prefill needs '{name}' ({what})")
    blocks = value["remote_block_ids"]
    if len(blocks) != 1 or not isinstance(blocks[0], int) or isinstance(blocks[0], bool) or blocks[0] < 0:
        raise bad(f"'{FIELD}.remote_block_ids' must name one cache row of the prefill instance, got {blocks!r}")
    if not 0 < value["remote_port"] < 65536:
        raise bad(f"'{FIELD}.remote_port' must be a port number, got {value['remote_port']}")
    if value["remote_num_tokens"] < 1:
        raise bad(f"'{FIELD}.remote_num_tokens' must be positive")
    try:
        int(value["remote_request_id"][:15], 16)
    except ValueError:
        raise bad(f"'{FIELD}.remote_request_id' is not one a hyperdecode prefill instance made") from None
    return "pull", value


def prompt_digest(token_ids: list[int]) -> str:
    """A short digest of a prompt's tokens: a decode instance checks the prefill was of the same prompt."""
    return hashlib.sha256(",".join(map(str, token_ids)).encode()).hexdigest()[:16]


def check_prompt(params: dict[str, Any], token_ids: list[int]) -> None:
    """A RequestError when the prefill these parameters describe was of another prompt than `token_ids`."""
    n = params["remote_num_tokens"]
    if n != len(token_ids) or params["remote_prompt_digest"] != prompt_digest(token_ids):
        raise bad(f"'{FIELD}' describes a prefill of another prompt ({n} tokens) than this request's "
                  f"({len(token_ids)} tokens): send the decode request the same messages or prompt as the prefill")
