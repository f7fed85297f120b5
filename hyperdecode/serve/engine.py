"""The serving engine: one thread drives the `LLM`'s engine core; asyncio handlers submit requests and read their
events. This module adds only what serving needs around the core: a bounded admission queue, cancellation,
deadlines, events to the handlers and metrics.

Between two steps the thread drops cancelled requests (client gone) and requests past their deadline, then hands
waiting requests to the core while it has free slots. So a disconnect stops generation within one step.
"""
from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from ..engine.llm import LLM
from ..engine.output import OutputStream
from ..engine.request import InputProcessor
from ..engine.sequence import Sequence
from .metrics import Metrics
from .protocol import APIError

__all__ = ["Engine", "Request"]


@dataclass(eq=False)
class Request:
    """A submitted sequence and its output stream, plus how to reach its handler: events go to `queue` on the
    handler's `loop`."""
    seq: Sequence
    stream: OutputStream
    deadline: float | None
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    last_token_at: float = 0.0
    internal: bool = False  # health probes: served like any request, kept out of the metrics

    def emit(self, kind: str, payload: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, payload))
        except RuntimeError:  # the handler's loop is gone
            self.cancelled = True


class Engine:
    def __init__(self, llm: LLM, max_batch: int = 8, max_queue: int = 64, max_model_len: int | None = None,
                 metrics: Metrics | None = None):
        self.llm = llm
        self.core = llm.core
        if self.core.driver is not None:
            raise RuntimeError(f"this LLM's engine core is already driven by {self.core.driver}")
        self.core.driver = "a server (serve/engine.py)"
        self.max_queue = max_queue
        self.max_model_len = min(max_model_len or llm.max_context, llm.max_context)
        self.inputs: InputProcessor = llm.inputs.with_limit(self.max_model_len)
        self.core.reserve(max_batch, self.max_model_len)
        self.metrics = metrics or Metrics(llm.name)
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: dict[Sequence, Request] = {}  # sequences the core holds
        self.wake = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, name="hyperdecode-engine", daemon=True)
        self.thread.start()

    @property
    def steps(self) -> int:
        return self.core.steps

    def submit(self, seq: Sequence, stream: OutputStream, timeout_s: float | None, internal: bool = False) -> Request:
        req = Request(seq, stream, None if timeout_s is None else time.monotonic() + timeout_s,
                      asyncio.get_running_loop(), internal=internal)
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise APIError(429, f"the queue is full ({self.max_queue} waiting requests); retry later",
                               type="rate_limit_error", headers={"Retry-After": "1"})
            self.waiting.append(req)
            self.metrics.waiting.set(len(self.waiting))
            self.wake.notify()
        return req

    def cancel(self, req: Request) -> None:
        req.cancelled = True
        with self.wake:
            self.wake.notify()

    def shutdown(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.thread.join(timeout=10)
        if not self.thread.is_alive():
            self.core.driver = None  # the LLM may be used offline again

    def _loop(self) -> None:
        while True:
            with self.wake:
                while not (self.stopping or self.waiting or self.active):
                    self.wake.wait(timeout=1.0)
                if self.stopping:
                    break
            try:
                self._expire()
                self._admit()
                for seq in self.core.step():
                    self._deliver(self.active[seq])
            except Exception as e:  # a real server fault: fail the requests in flight, keep serving
                for req in list(self.active.values()):
                    self._finish(req, "error", APIError(500, f"engine error: {type(e).__name__}: {e}",
                                                        type="server_error"))
            self.metrics.running.set(len(self.active))
            self.metrics.waiting.set(len(self.waiting))

    def _expire(self) -> None:
        now = time.monotonic()
        with self.wake:
            queued = list(self.waiting)
        for req in queued + list(self.active.values()):
            if req.cancelled:
                self._finish(req, "abort", None)
            elif req.deadline is not None and now > req.deadline:
                self._finish(req, "abort", APIError(504, "the request exceeded its deadline "
                                                         f"after {req.seq.num_output} tokens",
                                                    type="timeout_error", code="deadline_exceeded"))

    def _admit(self) -> None:
        while self.core.scheduler.num_free > 0:
            with self.wake:
                if not self.waiting:
                    return
                req = self.waiting.popleft()
            self.active[req.seq] = req
            if not req.internal:
                self.metrics.prompt_tokens.inc(len(req.seq.prompt_ids))
            self.core.add(req.seq)

    def _deliver(self, req: Request) -> None:
        """After a step in which the request's sequence sampled: its new text, metrics, and its end."""
        now = time.perf_counter()
        seq = req.seq
        piece = req.stream.update()
        if req.stream.stop_at is not None:
            self.core.finish(seq, "stop", num_output=req.stream.stop_at)
        if not req.internal:
            if req.last_token_at == 0.0:
                self.metrics.ttft.observe(now - req.stream.start)
            else:
                self.metrics.itl.observe(now - req.last_token_at)
        req.last_token_at = now
        if piece:
            req.emit("text", piece)
        if seq.done:
            self._finish(req, seq.finish_reason, None)

    def _finish(self, req: Request, reason: str, error: APIError | None) -> None:
        seq = req.seq
        with self.wake:
            if req in self.waiting:
                self.waiting.remove(req)
        self.core.finish(seq, reason)
        self.active.pop(seq, None)
        req.stream.finish()
        result = req.stream.result()
        if not req.internal:
            self.metrics.finished(reason)
            self.metrics.generation_tokens.inc(seq.num_output)
            self.metrics.e2e.observe(result.stats.e2e_s)
            if result.stats.output_tokens > 1:
                self.metrics.tpot.observe(result.stats.tpot_s)
        if error:
            req.emit("error", error)
        else:
            req.emit("done", result)
