"""`kv_transfer_params` on the server: a prefill request's sequence keeps its row for the peer that decodes it, a
decode request's sequence pulls its prompt's cache from the prefill instance (engine/kv_connector.py,
disagg/nixl.py); the responses carry what vLLM's NixlConnector puts there.

- `attach` checks a request's parameters against this instance's role and the request, and marks its sequence.
- `response_fields`: a prefill response's `kv_transfer_params` (with the prefill's seconds), and a decode
  response's `kv_transfer_stats`: its TTFT split into the peer's prefill, the wait for a row, the transfer and the
  first step here, and the bytes pulled.
"""
from __future__ import annotations

from typing import Any

from ..disagg.params import check_prompt
from ..engine.kv_connector import KvTransfer
from ..engine.output import Generation, OutputStream
from ..engine.sequence import Sequence
from ..errors import RequestError

__all__ = ["attach", "response_fields"]

FIELD = "kv_transfer_params"


def attach(role: str | None, kv_role: str | None, made: list[tuple[Sequence, OutputStream, str]],
           params: dict[str, Any] | None, prompt_logprobs: bool) -> None:
    """Marks the request's one sequence as a producer ("send") or consumer ("pull") of its cache; a RequestError
    naming the field when this instance does not take that role or the request cannot cross instances."""
    if role is None:
        return
    wanted = "kv_producer" if role == "send" else "kv_consumer"
    if kv_role not in (wanted, "kv_both"):
        side = "prefill (do_remote_decode)" if role == "send" else "decode (do_remote_prefill)"
        now = f"its role is {kv_role}" if kv_role else "it was started without --kv-transfer-config"
        raise RequestError(f"'{FIELD}' asks this instance to {side}, but {now}; start it with --kv-transfer-config "
                           f"'{{\"kv_connector\": \"NixlConnector\", \"kv_role\": \"{wanted}\"}}'", param=FIELD)
    if len(made) != 1:
        raise RequestError(f"'{FIELD}' needs one prompt and n = 1 (one cache row crosses instances)", param=FIELD)
    seq = made[0][0]
    if role == "send":
        seq.kv = KvTransfer(send=True)
        return
    if prompt_logprobs:
        raise RequestError(f"'{FIELD}' with do_remote_prefill cannot echo prompt logprobs: the prompt was computed "
                           "by the prefill instance", param=FIELD)
    check_prompt(params, seq.prompt_ids)
    seq.kv = KvTransfer(remote=params)


def response_fields(outputs: list[Generation]) -> dict[str, Any]:
    """What the response carries beside OpenAI's fields: `kv_transfer_params` (a prefill) or
    `kv_transfer_stats` (a decode); nothing for a request that did not cross instances."""
    if len(outputs) != 1:
        return {}
    out = outputs[0]
    if out.kv_transfer_params is not None:
        return {FIELD: {**out.kv_transfer_params, "remote_prefill_s": round(out.stats.ttft_s, 6)}}
    split = out.stats.kv_transfer
    if split is not None:
        return {"kv_transfer_stats": split}
    return {}
