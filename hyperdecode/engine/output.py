"""What a request shows its caller: incremental text (stop strings held back while streaming and cut off when
they appear), the finish reason, and timing. One `OutputStream` per `Sequence`, updated after each step in which
the sequence sampled; it never touches the cache or the batch. `OutputProcessor` turns a step's sampled sequences
into `RequestOutput`s (the new text, tokens and logprobs, and at the end the whole `Generation`): the engine core
returns those from every step, so `hd.LLM` and the server read one kind of output.

>>> from hyperdecode.engine.sampling import SamplingParams
>>> seq = Sequence([1, 2], SamplingParams(max_tokens=2), frozenset())
>>> outputs = OutputProcessor()
>>> outputs.add(seq, OutputStream(seq, None))
>>> seq.token_ids.append(7)
>>> out = outputs.delta(seq, "")
>>> out.token_ids, out.finished
([7], False)
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..model.tokenizer import Tokenizer
from .sequence import Sequence
from .speculative import SpecStats

__all__ = ["OutputStream", "Generation", "GenerationStats", "RequestOutput", "OutputProcessor"]


@dataclass
class GenerationStats:
    prompt_tokens: int
    output_tokens: int
    ttft_s: float
    tpot_s: float
    tokens_per_s: float
    e2e_s: float
    speculative: SpecStats | None = None  # drafts verified, accepted, per position (None: speculation was off)
    cached_tokens: int = 0  # prompt tokens the prefix cache held (not computed)
    kv_transfer: dict | None = None  # a prompt a peer computed: its TTFT split and bytes (kv_split below)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str
    stats: GenerationStats
    logprobs: list | None = None  # with SamplingParams.logprobs: (token, logprob, top [(token, logprob)]) per token
    prompt_logprobs: list | None = None  # with prompt_logprobs: the same for each prompt token after the first
    kv_transfer_params: dict | None = None  # a producer's description of the row it holds for a peer (vLLM's)


class OutputStream:
    """Follows one sequence's output tokens: `update()` after each step it sampled in returns the text that became
    final (safe to show); when a stop string appears `stop_at` says how many output tokens to keep."""

    def __init__(self, seq: Sequence, tokenizer: Tokenizer | None):
        self.seq = seq
        self.tokenizer = tokenizer
        self.text = ""
        self.emitted = 0  # characters of `text` already returned
        self.seen = 0  # output tokens already detokenized
        self.stop_at: int | None = None
        self.start = time.perf_counter()
        self.first_token_at = 0.0
        self.end = 0.0
        self._prefix = 0  # incremental detokenisation: the window [prefix, read) was decoded last time
        self._read = 0

    def update(self) -> str:
        now = time.perf_counter()
        if not self.first_token_at:
            self.first_token_at = now
        ids = self.seq.output_ids
        while self.seen < len(ids) and self.stop_at is None:
            self.seen += 1
            if self.tokenizer is not None:
                self._detokenize(ids[:self.seen])
        if self.seq.done or self.stop_at is not None:
            self.end = now
            return self._take(len(self.text))
        return self._take(len(self.text) - self._held_back())

    def _detokenize(self, ids: list[int]) -> None:
        prefix_text = self.tokenizer.decode(ids[self._prefix:self._read], skip_special_tokens=True)
        new_text = self.tokenizer.decode(ids[self._prefix:], skip_special_tokens=True)
        if new_text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its next byte
            return
        old_len = len(self.text)
        self.text += new_text[len(prefix_text):]
        self._prefix, self._read = self._read, len(ids)
        for s in self.seq.params.stop or ():
            i = self.text.find(s, max(0, old_len - len(s) + 1))
            if i >= 0:
                self.text = self.text[:i]
                self.stop_at = len(ids)

    def _held_back(self) -> int:
        """Characters at the end that may still grow into a stop string."""
        hold = 0
        for s in self.seq.params.stop or ():
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return hold

    def _take(self, upto: int) -> str:
        piece = self.text[self.emitted:upto]
        self.emitted = max(self.emitted, upto)
        return piece

    def flush(self) -> str:
        """The rest of the text once the sequence ended for a reason of the caller's (abort, deadline)."""
        self.end = self.end or time.perf_counter()
        return self._take(len(self.text))

    def kv_split(self) -> dict | None:
        """For a prompt a peer computed: bytes pulled and TTFT in parts (the peer's prefill as it reported it,
        the wait for a row, the transfer, the first step here)."""
        kv = self.seq.kv
        if kv is None or not kv.consumer or "loaded_at" not in kv.stats:
            return None
        st = kv.stats
        first_step = (self.first_token_at - st["loaded_at"]) if self.first_token_at else None
        return {"bytes": int(st.get("bytes", 0)), "prefill_s": kv.remote.get("remote_prefill_s"),
                "queue_s": st["started_at"] - self.start, "transfer_s": st["loaded_at"] - st["started_at"],
                "first_step_s": first_step}

    def result(self) -> Generation:
        n = self.seq.num_output
        params = self.seq.params
        end = self.end or time.perf_counter()
        ttft = (self.first_token_at or end) - self.start
        e2e = end - self.start
        tpot = (e2e - ttft) / (n - 1) if n > 1 else 0.0
        tokens_per_s = 1.0 / tpot if tpot > 0 else (n / e2e if e2e > 0 else 0.0)
        return Generation(self.text, list(self.seq.output_ids), self.seq.finish_reason or "length",
                          GenerationStats(len(self.seq.prompt_ids), n, ttft, tpot, tokens_per_s, e2e,
                                          self.seq.spec, self.seq.num_cached, self.kv_split()),
                          self.seq.logprobs[:n] if params.logprobs is not None else None,
                          list(self.seq.prompt_logprobs) if params.prompt_logprobs is not None else None,
                          self.seq.kv.params_out if self.seq.kv is not None else None)


@dataclass
class RequestOutput:
    """What one step gave one request: its newly final text, new tokens and their logprobs; at the request's end
    also the finish reason (and the error, for "error") and the whole `Generation` (text, tokens, usage, timing,
    speculative counts)."""
    seq: Sequence
    text: str
    token_ids: list[int]
    logprobs: list
    finish_reason: str | None = None
    error: str | None = None
    generation: Generation | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class OutputProcessor:
    """The streams of the sequences in flight, and what each has already handed out."""

    def __init__(self):
        self.streams: dict[Sequence, OutputStream] = {}
        self.sent: dict[Sequence, tuple[int, int]] = {}  # (output tokens, logprob entries) already handed out

    def add(self, seq: Sequence, stream: OutputStream) -> None:
        self.streams[seq] = stream
        self.sent[seq] = (0, 0)

    def stream(self, seq: Sequence) -> OutputStream:
        return self.streams[seq]

    def __contains__(self, seq: Sequence) -> bool:
        return seq in self.streams

    def delta(self, seq: Sequence, text: str) -> RequestOutput:
        """The sequence's output since the last delta (`text`: what its stream just made final); at its end the
        whole generation, after which the sequence is forgotten."""
        tokens, entries = self.sent[seq]
        new_tokens = seq.output_ids[tokens:]
        new_entries = seq.logprobs[entries:seq.num_output]
        self.sent[seq] = (seq.num_output, entries + len(new_entries))
        out = RequestOutput(seq, text, list(new_tokens), list(new_entries))
        if seq.done:
            stream = self.streams.pop(seq)
            self.sent.pop(seq)
            out.text += stream.flush()
            out.finish_reason = seq.finish_reason
            out.error = seq.error
            out.generation = stream.result()
        return out
