"""The engine's seam for a request whose cache crosses instances (prefill-decode disaggregation, vLLM's KV
connector): what a sequence carries (`KvTransfer`) and what the core asks a connector (`KvConnector`;
hyperdecode/disagg/ implements it over NIXL).

- A producer (a prefill instance) runs a prompt; when the sequence ends its cache row is held, not freed, and
  `hold` describes the row for the response (`params_out`, vLLM's kv_transfer_params). `poll` later says when the
  peer has read it, or when the peer's time ran out, and the core frees the row.
- A consumer (a decode instance) admits a sequence whose prompt a peer computed: the scheduler gives it a row (the
  local prefix cache may already hold the start), the core asks `load` to pull the rest of the prompt's positions
  [first, last) into the row, and the sequence waits, out of every step, until `poll` reports the load done. It
  then feeds the prompt's last token again (its logits give the first token, as in vLLM) and decodes. A load that
  fails ends the sequence with an error, or with `recompute` set, prefills the rest locally instead.

>>> seq = Sequence([1, 2, 3], SamplingParams())
>>> seq.kv = KvTransfer(remote={"remote_engine_id": "e1"})
>>> seq.kv.consumer, seq.kv.producer
(True, False)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .sampling import SamplingParams
from .sequence import Sequence

__all__ = ["KvTransfer", "Polled", "KvConnector"]


@dataclass(eq=False)
class KvTransfer:
    """A sequence's part in a transfer: `send` (a producer keeps its row for a peer) or `remote` (a consumer pulls
    its prompt's cache from the peer these kv_transfer_params name), and what happened."""
    send: bool = False
    remote: dict[str, Any] | None = None
    params_out: dict[str, Any] | None = None  # the producer's description of its row, for the response
    loading: bool = False  # a consumer's row is being filled: the sequence sits out the steps
    first: int = 0  # the positions [first, last) come from the peer
    last: int = 0
    stats: dict[str, float] = field(default_factory=dict)  # bytes, seconds: what the response and metrics report
    failed: str | None = None  # why a consumer's load failed (the request ends with this error)

    @property
    def producer(self) -> bool:
        return self.send

    @property
    def consumer(self) -> bool:
        return self.remote is not None


@dataclass
class Polled:
    """What changed since the last poll: loads done, loads failed (with why), and held rows the peer released
    (read, or its time ran out)."""
    loaded: list[Sequence] = field(default_factory=list)
    failed: list[tuple[Sequence, str]] = field(default_factory=list)
    released: list[Sequence] = field(default_factory=list)


class KvConnector:
    """What the engine core calls; this base moves nothing (a subclass does). Every call is made from the thread
    that steps the core; a subclass may work in threads of its own between calls."""

    recompute: bool = False  # a failed load: prefill the rest locally (True) or fail the request (False)

    def load(self, seq: Sequence) -> None:
        """Starts pulling `seq.kv.remote`'s positions [seq.kv.first, seq.kv.last) into cache row `seq.slot`;
        `poll` reports the end. Raises for a load that cannot start (the sequence then fails alone)."""
        raise NotImplementedError

    def hold(self, seq: Sequence) -> None:
        """A producer's sequence ended with its prompt in row `seq.slot`: describe the row in `seq.kv.params_out`
        and keep it until the peer reads it (or its time runs out)."""
        raise NotImplementedError

    def poll(self) -> Polled:
        return Polled()

    @property
    def pending(self) -> bool:
        """Rows held or loads in flight: the core's owner keeps polling while this is true."""
        return False
