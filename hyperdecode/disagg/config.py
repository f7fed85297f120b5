"""`--kv-transfer-config`: vLLM's flag and field names for a disaggregated instance's role and its NIXL side channel.

>>> c = parse_kv_transfer_config('{"kv_connector": "NixlConnector", "kv_role": "kv_producer"}')
>>> c.kv_role, c.producer, c.consumer, c.side_channel_port
('kv_producer', True, False, 5600)
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["KVTransferConfig", "parse_kv_transfer_config", "ROLES"]

ROLES = ("kv_producer", "kv_consumer", "kv_both")
CONNECTORS = ("NixlConnector",)
SIDE_CHANNEL_PORT = 5600  # vLLM's VLLM_NIXL_SIDE_CHANNEL_PORT default
ABORT_TIMEOUT_S = 480.0  # vLLM's VLLM_NIXL_ABORT_REQUEST_TIMEOUT: a held prefill is freed after this
# vLLM fields with no effect here (one NIXL agent per instance, no KV buffer of its own): accepted and ignored
IGNORED = {"kv_buffer_device", "kv_buffer_size", "kv_rank", "kv_parallel_size", "kv_connector_module_path"}
EXTRA = {  # kv_connector_extra_config: field -> (default, what it is)
    "abort_timeout_s": (ABORT_TIMEOUT_S, "seconds a producer holds a prefill's row for a peer that never reads it"),
    "transfer_timeout_s": (30.0, "seconds a consumer waits for a handshake or a transfer before it gives up"),
    "kv_load_failure_policy": ("fail", "'fail' (the request ends with an error) or 'recompute' (prefill locally)"),
    "backends": (["UCX"], "NIXL backends"),
}


@dataclass
class KVTransferConfig:
    kv_connector: str = "NixlConnector"
    kv_role: str = "kv_both"
    engine_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    kv_ip: str = "127.0.0.1"  # the side channel's address (a peer on another machine needs a routable one)
    kv_port: int = SIDE_CHANNEL_PORT  # the side channel's port (0: any free port, reported in kv_transfer_params)
    abort_timeout_s: float = ABORT_TIMEOUT_S
    transfer_timeout_s: float = 30.0
    kv_load_failure_policy: str = "fail"
    backends: list[str] = field(default_factory=lambda: ["UCX"])

    @property
    def producer(self) -> bool:
        return self.kv_role in ("kv_producer", "kv_both")

    @property
    def consumer(self) -> bool:
        return self.kv_role in ("kv_consumer", "kv_both")

    @property
    def side_channel_port(self) -> int:
        return self.kv_port


def parse_kv_transfer_config(value: str | dict | None, flag: str = "--kv-transfer-config") -> KVTransferConfig | None:
    """A JSON object (or a dict) with vLLM's fields: kv_connector ("NixlConnector"), kv_role, engine_id, kv_ip,
    kv_port and kv_connector_extra_config (`EXTRA`); a ConfigError naming `flag` and the field otherwise."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{flag}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: must be a JSON object such as "
                          '{"kv_connector": "NixlConnector", "kv_role": "kv_both"}')
    known = {"kv_connector", "kv_role", "engine_id", "kv_ip", "kv_port", "kv_connector_extra_config"} | IGNORED
    for name in value:
        if name not in known:
            raise ConfigError(f"{flag}: unknown field '{name}' (known: {', '.join(sorted(known))})")
    c = KVTransferConfig()
    c.kv_connector = choose(value, "kv_connector", CONNECTORS, flag)
    c.kv_role = choose(value, "kv_role", ROLES, flag)
    for name in ("engine_id", "kv_ip"):
        if name in value:
            if not isinstance(value[name], str) or not value[name]:
                raise ConfigError(f"{flag}: '{name}' must be a non-empty string")
            setattr(c, name, value[name])
    if "kv_port" in value:
        port = value["kv_port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port < 65536:
            raise ConfigError(f"{flag}: 'kv_port' must be a port number in [0, 65535], got {port!r}")
        c.kv_port = port
    parse_extra(value.get("kv_connector_extra_config") or {}, c, flag)
    return c


def choose(value: dict, name: str, allowed: tuple[str, ...], flag: str) -> str:
    given = value.get(name, allowed[-1] if name == "kv_role" else allowed[0])
    if given not in allowed:
        raise ConfigError(f"{flag}: '{name}' must be one of {', '.join(allowed)}, got {given!r}")
    return given


def parse_extra(extra: Any, c: KVTransferConfig, flag: str) -> None:
    where = f"{flag}: 'kv_connector_extra_config'"
    if not isinstance(extra, dict):
        raise ConfigError(f"{where} must be an object")
    for name, raw in extra.items():
        if name not in EXTRA:
            raise ConfigError(f"{where}: unknown field '{name}' (known: {', '.join(EXTRA)})")
        if name.endswith("_s"):
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not (math.isfinite(raw) and raw > 0):
                raise ConfigError(f"{where}: '{name}' must be a positive number of seconds, got {raw!r}")
            setattr(c, name, float(raw))
        elif name == "kv_load_failure_policy":
            if raw not in ("fail", "recompute"):
                raise ConfigError(f"{where}: 'kv_load_failure_policy' must be 'fail' or 'recompute', got {raw!r}")
            c.kv_load_failure_policy = raw
        else:
            if not isinstance(raw, list) or not raw or not all(isinstance(b, str) for b in raw):
                raise ConfigError(f"{where}: 'backends' must be a list of NIXL backend names, e.g. [\"UCX\"]")
            c.backends = list(raw)
