"""The server's engine thread: one thread drives the `LLM`'s engine core; asyncio handlers submit requests and read
their events. This module adds only what serving needs around the core: a bounded admission queue, cancellation,
deadlines, fault isolation, a liveness heartbeat, events to the handlers and metrics.

Between two steps the thread drops cancelled requests (client gone) and requests past their deadline, then hands
waiting requests to the core while it has free slots. So a disconnect stops generation within one step.

One request's fault never reaches another: the core ends a sequence whose row, seed or sampler failed alone (see
engine/core.py), a detokeniser fault ends its own request, and each fault is logged with the request id. The
core keeps one cache row more than `max_batch` for readiness probes, so a probe never waits behind user requests.

With a KV connector (`connect`, disaggregated serving) rows held for a peer count as taken, and the thread keeps
polling while transfers are pending (a load's worker wakes it at once; held rows are looked at every
TRANSFER_POLL_S).
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from ..engine.kv_connector import KvConnector
from ..engine.llm import LLM
from ..engine.output import OutputStream, RequestOutput
from ..engine.inputs import InputProcessor
from ..engine.sequence import Sequence
from ..errors import ConfigError
from .metrics import Metrics
from .protocol import APIError

__all__ = ["EngineThread", "Submitted"]

log = logging.getLogger("hyperdecode.serve")
IDLE_WAKE_S = 1.0  # the idle thread still beats this often
TRANSFER_POLL_S = 0.01  # with transfers pending and nothing to step: how often the connector is polled


@dataclass(eq=False)
class Submitted:
    """A submitted sequence and its output stream, plus how to reach its handler: events go to `queue` on the
    handler's `loop`."""
    seq: Sequence
    stream: OutputStream
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    rid: str = ""
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    last_token_at: float = 0.0
    probe: bool = False  # readiness probes: the spare slot, kept out of the metrics

    def emit(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the handler's loop is gone
            self.cancelled = True


def server_error(message: str) -> APIError:
    return APIError(500, message, type="server_error")


class EngineThread:
    def __init__(self, llm: LLM, max_batch: int = 8, max_queue: int = 64, max_model_len: int | None = None,
                 metrics: Metrics | None = None):
        self.llm = llm
        self.core = llm.core
        budget = self.core.max_num_batched_tokens
        if budget is not None and budget < max_batch + 1:
            raise ConfigError(f"max_num_batched_tokens ({budget}) must be at least max_batch + 1 ({max_batch + 1}): "
                              "every decoding request feeds one token per step, and one row is kept for probes")
        self.core.acquire("a server (serve/engine_thread.py)")
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_model_len = min(max_model_len or llm.max_context, llm.max_context)
        self.inputs: InputProcessor = llm.inputs.with_limit(self.max_model_len)
        self.core.reserve(max_batch + 1, self.max_model_len)  # + the probes' row
        self.metrics = metrics or Metrics(llm.name)
        self.waiting: collections.deque[Submitted] = collections.deque()
        self.probes: collections.deque[Submitted] = collections.deque()
        self.pending = 0  # requests holding a queue place while they are tokenized
        self.active: dict[Sequence, Submitted] = {}  # sequences the core holds
        self.running_users = 0  # of them, user requests (not probes)
        self.wake = threading.Condition()
        self.stopping = False
        self.heartbeat = time.monotonic()  # the engine thread was alive then
        self.kv_role: str | None = None  # with a KV connector: kv_producer, kv_consumer or kv_both
        self.last_step_at: float | None = None
        self.thread = threading.Thread(target=self._loop, name="hyperdecode-engine", daemon=True)
        self.thread.start()

    @property
    def steps(self) -> int:
        return self.core.steps

    @property
    def num_running(self) -> int:
        """User requests the core holds (a count the engine thread keeps: handlers read it while it changes)."""
        return self.running_users

    @property
    def free_slots(self) -> int:
        """User slots not taken (probes have their own), nor held for a peer's transfer."""
        return self.max_batch - self.num_running - self.core.num_held

    def connect(self, connector: KvConnector, role: str) -> None:
        """Moves caches to and from peers through `connector` (before the first request); `role` is the
        instance's kv_role."""
        self.core.connector = connector
        self.kv_role = role

    def poke(self) -> None:
        """Wakes the thread (a transfer ended)."""
        with self.wake:
            self.wake.notify()

    @contextlib.contextmanager
    def admission(self) -> Iterator[None]:
        """A place in the queue, taken before any work is spent on a request: 429 when the queue is full. Inside
        it, tokenize and `submit`; the place is given back on leaving (the request is then waiting or done)."""
        with self.wake:
            if len(self.waiting) + self.pending >= self.max_queue:
                raise APIError(429, f"the queue is full ({self.max_queue} waiting requests); retry later",
                               type="rate_limit_error", headers={"Retry-After": "1"})
            self.pending += 1
        try:
            yield
        finally:
            with self.wake:
                self.pending -= 1

    def submit(self, seq: Sequence, stream: OutputStream, timeout_s: float | None, rid: str = "",
               probe: bool = False) -> Submitted:
        """Queues a request (a user request inside `admission()`; a probe goes to its own lane)."""
        req = Submitted(seq, stream, None if timeout_s is None else time.monotonic() + timeout_s,
                      asyncio.get_running_loop(), rid=rid, probe=probe)
        with self.wake:
            (self.probes if probe else self.waiting).append(req)
            self.metrics.waiting.set(len(self.waiting))
            self.wake.notify()
        return req

    def cancel(self, req: Submitted) -> None:
        req.cancelled = True
        with self.wake:
            self.wake.notify()

    def liveness(self) -> dict[str, Any]:
        """What /health reports: is the engine thread alive, how long since it last beat and last stepped."""
        now = time.monotonic()
        return {"engine_alive": self.thread.is_alive() and not self.stopping,
                "heartbeat_age_s": round(now - self.heartbeat, 4),
                "last_step_age_s": None if self.last_step_at is None else round(now - self.last_step_at, 4),
                "running": self.num_running, "waiting": len(self.waiting), "free_slots": self.free_slots,
                "max_batch": self.max_batch, "steps": self.steps, "held_rows": self.core.num_held}

    def shutdown(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=10)
        connector, self.core.connector = self.core.connector, None
        if connector is not None:
            connector.close()
        if not self.thread.is_alive():
            self.core.release()  # the LLM may be used offline again

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not (self.stopping or self.waiting or self.probes or self.active or self.core.transfers_pending):
                    self.wake.wait(timeout=IDLE_WAKE_S)
                    self.heartbeat = time.monotonic()
                if self.stopping:
                    break
            self.heartbeat = time.monotonic()
            try:
                self._expire()
                self._admit()
                steps = self.core.steps
                for out in self.core.step():
                    self._deliver(self.active[out.seq], out)
                self.last_step_at = time.monotonic()
                if self.core.steps == steps and self.core.transfers_pending:  # only transfers to wait for
                    with self.wake:
                        self.wake.wait(timeout=TRANSFER_POLL_S)
            except Exception as e:  # a fault outside any one sequence: fail the requests in flight, keep serving
                log.exception("engine step failed; failing the %d requests in flight", len(self.active))
                for req in list(self.active.values()):
                    self._complete(req, "error", server_error(f"engine error: {type(e).__name__}: {e}"))
            self.metrics.running.set(self.num_running)
            self.metrics.waiting.set(len(self.waiting))
            self.metrics.cached(self.core.cache_stats())
            self.metrics.kv_held_rows.set(self.core.num_held)

    def _expire(self) -> None:
        now = time.monotonic()
        with self.wake:
            queued = list(self.probes) + list(self.waiting)
        for req in queued + list(self.active.values()):
            if req.cancelled:
                self._complete(req, "abort", None)
            elif req.deadline is not None and now > req.deadline:
                self._complete(req, "abort", APIError(504, "the request exceeded its deadline "
                                                         f"after {req.seq.num_output} tokens",
                                                    type="timeout_error", code="deadline_exceeded"))

    def _next_waiting(self) -> Submitted | None:
        with self.wake:
            if self.probes:
                return self.probes.popleft()
            if self.waiting and self.free_slots > 0:
                return self.waiting.popleft()
        return None

    def _admit(self) -> None:
        while self.core.num_free > 0:
            req = self._next_waiting()
            if req is None:
                return
            try:
                self.core.add(req.seq, req.stream)
            except Exception as e:  # e.g. a seed the generator refuses: this request alone
                log.exception("request %s could not be admitted", req.rid)
                self._complete(req, "error", server_error(f"the request could not be admitted: "
                                                          f"{type(e).__name__}: {e}"))
                continue
            self.active[req.seq] = req
            if not req.probe:
                self.running_users += 1
                self.metrics.prompt_tokens.inc(len(req.seq.prompt_ids))

    def _deliver(self, req: Submitted, out: RequestOutput) -> None:
        """A step's output for the request: its new text and logprobs to the handler, the metrics, and its end."""
        if out.finish_reason == "error":
            log.error("request %s failed in the engine: %s", req.rid, out.error)
            kv = req.seq.kv
            if kv is not None and kv.failed:  # the peer's fault, not this server's: a gateway error
                error = APIError(502, kv.failed, type="server_error", code="kv_transfer_failed")
            else:
                error = server_error(f"the request failed in the engine: {out.error}")
            self._complete(req, "error", error, out)
            return
        now = time.perf_counter()
        new_tokens = max(len(out.token_ids), 1)  # a verify step may yield several
        if not req.probe:
            if req.last_token_at == 0.0:
                self.metrics.ttft.observe(now - req.stream.start)
            else:  # a step's tokens share its interval evenly (vLLM counts speculative tokens the same way)
                for _ in range(new_tokens):
                    self.metrics.itl.observe((now - req.last_token_at) / new_tokens)
        req.last_token_at = now
        if out.text or out.logprobs:
            req.emit("text", (out.text, out.logprobs))
        if out.finished:
            self._complete(req, out.finish_reason, None, out)

    def _complete(self, req: Submitted, reason: str, error: APIError | None,
                  out: RequestOutput | None = None) -> None:
        """The request's end: out of the lanes and the core, into the metrics, and its last event to the handler."""
        seq = req.seq
        with self.wake:
            for lane in (self.waiting, self.probes):
                if req in lane:
                    lane.remove(req)
        if out is None or not out.finished:
            out = self.core.abort(seq, reason)
        if self.active.pop(seq, None) is not None and not req.probe:
            self.running_users -= 1
        if out is not None and out.generation is not None:
            result = out.generation
        else:  # it never reached the core
            seq.finish_reason = seq.finish_reason or reason
            req.stream.flush()
            result = req.stream.result()
        if not req.probe:
            self.metrics.finished(reason)
            self.metrics.generation_tokens.inc(seq.num_output)
            self.metrics.e2e.observe(result.stats.e2e_s)
            if result.stats.speculative is not None:
                self.metrics.speculated(result.stats.speculative)
            if result.stats.kv_transfer is not None:
                self.metrics.pd_ttft(result.stats.kv_transfer)
            if result.stats.output_tokens > 1:
                self.metrics.tpot.observe(result.stats.tpot_s)
        if error:
            req.emit("error", error)
        else:
            req.emit("done", result)
