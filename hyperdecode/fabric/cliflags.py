"""Command-line messages that name flags: the library's parameter names mapped to the flags that set them.

>>> with_flags("parameter 'num_gpus' (6) must be a multiple of gpus_per_server (4)", BUILDER_FLAGS)
'--gpus (6) must be a multiple of --gpus-per-server (4)'
"""
from __future__ import annotations

import re
from typing import Any

from ..errors import ConfigError

__all__ = ["with_flags", "flagged", "BUILDER_FLAGS", "DERIVED_FLAGS", "SIM_FLAGS"]

# the builders' parameter names and the flags that set them (build, describe, draw)
BUILDER_FLAGS = {"num_gpus": "--gpus", "gpus_per_switch": "--gpus-per-switch", "gpus_per_server": "--gpus-per-server",
                 "switch_radix": "--switch-radix", "links_per_pair": "--links-per-pair", "port_gbps": "--port-gbps",
                 "nic_gbps": "--nic-gbps", "oversubscription": "--oversubscription", "tiers": "--tiers"}
# compare, simulate, study: the radix comes from --switch-tbps and servers hold 8 GPUs
DERIVED_FLAGS = {"num_gpus": "--gpus", "gpus_per_server": "the GPUs per server"}
# simulate, study: SimConfig's fields
SIM_FLAGS = {"gpus_per_instance": "--gpus-per-instance", "decode_gpus": "--decode-gpus", "failure": "--fail",
             "nic_slices": "--nic-slices", "prefix_cache": "--prefix-cache", "prefill_slots": "--prefill-slots"}


def with_flags(message: str, names: dict[str, str]) -> str:
    """A library message with its parameter names replaced by the flags the user set."""
    for name, shown in names.items():
        message = re.sub(rf"parameter '{name}'|\b{name}\b", shown, message)
    return message


def flagged(names: dict[str, str], fn: Any, *args: Any, prefix: str = "", **kwargs: Any) -> Any:
    """fn(*args, **kwargs), its ConfigError messages naming flags instead of parameters (`with_flags`), after
    `prefix` when given."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as e:
        message = with_flags(str(e), names)
        raise ConfigError(f"{prefix}: {message}" if prefix else message) from None
