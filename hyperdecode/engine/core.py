"""The engine core: a runner and a scheduler, long-lived (caches allocated once, grown when a call needs more).
Each `step()` asks the scheduler for a plan, runs it on the runner as one [B, S] forward (decode rows and prompt
chunks together, shorter rows padded), samples where a row's fed tokens reach its newest token, and returns a
`RequestOutput` per sequence that sampled (output.py: its new text, tokens and logprobs; at its end the finish
reason and the whole generation; stop strings end a sequence here). `hd.LLM` and the server both drive one, one
owner at a time (`acquire`).

A fault is the fault of one sequence: when a forward fails, each row of the plan is run again alone (rows write
the same cache positions, so a retry is exact) and only the rows that still fail end, with finish_reason "error"
and `seq.error` naming the exception; a failure while seeding or sampling ends that sequence alone. The others
go on as if nothing happened.

With speculative decoding on (`speculate`), a decoding row feeds its newest token and its draft, gets a logit row
for each, and keeps the accepted prefix plus one token (speculative.py); the runner clears the rejected positions
(`rollback`), and the drafter then proposes the next draft from what the step computed.

With a KV connector (`connector`, kv_connector.py) each step first takes what the connector finished (rows filled
from a peer, rows a peer has read), starts the loads the scheduler admitted, and after the step describes the rows
of producers that ended."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .drafts import make_drafter
from .kv_connector import KvConnector
from .output import OutputProcessor, OutputStream, RequestOutput
from .runner import ReferenceRunner
from .sampling import greedy_tokens, process_logits, sample, token_logprobs
from .scheduler import Scheduler, StepPlan
from .sequence import Sequence
from .speculative import SpeculativeConfig, SpecStats, accept, accept_greedy, parse_speculative

__all__ = ["EngineCore"]


class EngineCore:
    def __init__(self, runner: ReferenceRunner, max_num_batched_tokens: int | None = None,
                 prefix_caching: bool = True):
        self.runner = runner
        self.device = runner.device
        self.enable_prefix_caching = prefix_caching  # as asked; `prefix_caching` says whether it is on now
        self.scheduler = Scheduler(0, 0, max_num_batched_tokens, prefix_caching)
        self.steps = 0
        self.owner: str | None = None  # who steps it now (a generate call, a server's engine thread), if anyone
        self.outputs = OutputProcessor()
        self.speculative: SpeculativeConfig | None = None
        # a failed forward is retried row by row, and only the failing rows end; not across ranks, whose steps
        # must stay in lockstep: there a fault ends the step (and the job)
        self.isolate_faults = True
        self.drafter = None
        self.connector: KvConnector | None = None  # moves caches to and from peer instances (disaggregation)

    @property
    def max_batch(self) -> int:
        return self.scheduler.max_batch

    @property
    def max_seq(self) -> int:
        return self.scheduler.max_seq

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished

    @property
    def transfers_pending(self) -> bool:
        """Rows held for a peer or being filled from one: the owner keeps stepping (polling) while true."""
        return bool(self.scheduler.held) or (self.connector is not None and self.connector.pending)

    @property
    def num_held(self) -> int:
        """Rows held for a transfer (no sequence runs in them, none may take them yet)."""
        return len(self.scheduler.held)

    @property
    def num_free(self) -> int:
        """Slots a new sequence could take now."""
        return self.scheduler.num_free

    @property
    def max_num_batched_tokens(self) -> int | None:
        return self.scheduler.max_num_batched_tokens

    @property
    def prefix_caching(self) -> bool:
        return self.scheduler.prefix_caching

    def cache_stats(self) -> dict[str, float]:
        """The prefix cache's lookups and hits so far, and the share of cache rows running sequences hold."""
        s = self.scheduler
        return {"prefix_queries": s.prefix.queried, "prefix_hits": s.prefix.hits,
                "usage": len(s.running) / max(s.max_batch, 1)}

    def reserve(self, max_batch: int, max_seq: int) -> None:
        """Grows the slots and cache rows to at least `max_batch` x `max_seq` (only while idle); never shrinks."""
        if max_batch <= self.max_batch and max_seq <= self.max_seq:
            return
        if self.has_unfinished:
            raise RuntimeError("the engine core can only grow while no request is in flight")
        max_batch = max(max_batch, self.max_batch)
        max_seq = max(max_seq, self.max_seq)
        self.runner.setup(max_batch, max_seq)
        self.scheduler.resize(max_batch, max_seq)

    def speculate(self, spec: str | dict | SpeculativeConfig | None) -> None:
        """Turns speculative decoding on ("mtp:3", "ngram:4", "suffix:8", vLLM's config dict) or off (None); only
        while idle. Every later step verifies each decoding row's draft."""
        config = parse_speculative(spec)
        if config == self.speculative:
            return
        if self.has_unfinished:
            raise RuntimeError("speculative decoding can only change while no request is in flight")
        self.speculative = config
        self.drafter = None if config is None else make_drafter(config, self.runner.model)
        self.runner.keep_hidden = bool(self.drafter and self.drafter.needs_hidden)
        # an MTP drafter's cache follows the hidden states of every position it saw: no prefix reuse under it
        self.scheduler.prefix_caching = self.enable_prefix_caching and not self.runner.keep_hidden
        self.runner.verify_width = 1 if config is None else 1 + config.num_speculative_tokens

    def acquire(self, owner: str) -> None:
        """Takes the core for `owner` (a server's engine thread, an `hd.LLM` call): a second owner is refused,
        naming the first."""
        if self.owner is not None:
            raise RuntimeError(f"this LLM's engine core is driven by {self.owner}; send it requests there")
        self.owner = owner

    def release(self) -> None:
        self.owner = None

    def add(self, seq: Sequence, stream: OutputStream | None = None) -> None:
        """Queues a sequence and its output stream (both built by `InputProcessor`; no stream: token ids only); it
        is admitted when a slot is free. A seed the generator refuses raises here, before the sequence holds
        anything."""
        generator = torch.Generator(device=self.device)
        if seq.params.seed is not None:
            generator.manual_seed(seq.params.seed)
        else:
            generator.seed()
        seq.generator = generator
        seq.spec = SpecStats() if self.drafter is not None else None
        self.scheduler.add(seq)
        self.outputs.add(seq, stream or OutputStream(seq, None))

    def abort(self, seq: Sequence, reason: str = "abort") -> RequestOutput | None:
        """Ends a sequence for a reason of the caller's (a client gone, a deadline) and frees its slot; returns its
        last output (None for a sequence the core never got)."""
        self._end(seq, reason)
        return self.outputs.delta(seq, "") if seq in self.outputs else None

    def fail(self, seq: Sequence, error: BaseException) -> None:
        """Ends one sequence for a fault of its own (finish_reason "error"); frees its slot."""
        seq.error = f"{type(error).__name__}: {error}"
        self._end(seq, "error")

    def _end(self, seq: Sequence, reason: str) -> None:
        self.scheduler.end(seq, reason)
        if self.drafter is not None:
            self.drafter.retire(seq)

    def step(self) -> list[RequestOutput]:
        """One step (`step_sequences`), then each sequence that sampled a token, finished or failed as its
        output: the text its stream made final (a stop string ends the sequence here), new tokens, logprobs."""
        return [self._output(seq) for seq in self.step_sequences()]

    def _output(self, seq: Sequence) -> RequestOutput:
        stream = self.outputs.stream(seq)
        try:
            text = stream.update()
        except Exception as e:  # a detokenizer fault: this request alone
            self.fail(seq, e)
            text = ""
        if stream.stop_at is not None and not seq.done:  # keep the tokens before the stop string
            del seq.token_ids[len(seq.prompt_ids) + stream.stop_at:]
            del seq.logprobs[stream.stop_at:]
            self._end(seq, "stop")
        return self.outputs.delta(seq, text)

    @torch.inference_mode()
    def step_sequences(self) -> list[Sequence]:
        """One step of the plan as one [B, S] forward: each row feeds its next tokens (rows shorter than the
        longest are padded with pos = -1); rows whose tokens reach their newest token get a logit row and
        sample. Returns the sequences that sampled a token, finished, or failed (finish_reason "error")."""
        ended = self._transfers_done() if self.connector is not None else []
        plan = self.scheduler.schedule()
        ended += self._start_loads()
        if plan:
            self.steps += 1
            ended += self._run_isolated(plan)
        self._hold_ended()
        return ended

    def _run_isolated(self, plan: StepPlan) -> list[Sequence]:
        try:
            return self._run(plan)
        except Exception as e:
            if not self.isolate_faults:
                raise
            if len(plan) == 1:
                self.fail(plan[0][0], e)
                return [plan[0][0]]
        out = []
        for row in plan:  # isolate the failing row(s): each row alone
            try:
                out += self._run([row])
            except Exception as e:
                self.fail(row[0], e)
                out.append(row[0])
        return out

    def _transfers_done(self) -> list[Sequence]:
        """Takes the connector's news: a filled row's sequence feeds its prompt's last token next step; a failed
        load fails its sequence (or, with `recompute`, prefills the rest here); rows a peer read are freed.
        Returns the sequences that failed."""
        polled = self.connector.poll()
        failed = []
        for seq in polled.loaded:
            kv = seq.kv
            kv.loading = False
            if seq.done:  # aborted while its row was filled
                self.scheduler.release(seq)
                continue
            self.runner.received(seq.slot, kv.first, kv.last)
            seq.num_computed = kv.last - 1
        for seq, why in polled.failed:
            kv = seq.kv
            kv.loading = False
            self.runner.rollback(seq.slot, kv.first, kv.last)
            if seq.done:
                self.scheduler.release(seq)
            elif self.connector.recompute:
                seq.num_computed = kv.first
            else:
                kv.failed = why
                self.fail(seq, RuntimeError(why))
                failed.append(seq)
        for seq in polled.released:
            self.scheduler.release(seq)
        return failed

    def _start_loads(self) -> list[Sequence]:
        """Starts filling the rows of the sequences just admitted from their peers (a local prefix first, when
        one was found); returns those whose load could not start (failed)."""
        failed = []
        for seq in self.scheduler.take_loads():
            try:
                if seq.reuse is not None:
                    self.runner.reuse(*seq.reuse)
                    seq.reuse = None
                if self.connector is None:
                    raise RuntimeError("this engine has no KV connector to pull a remote prefill with")
                self.connector.load(seq)
            except Exception as e:
                seq.kv.loading = False
                seq.kv.failed = f"the KV transfer could not start: {type(e).__name__}: {e}"
                self.fail(seq, e)
                failed.append(seq)
        return failed

    def _hold_ended(self) -> None:
        """Describes the rows producers' sequences left for their peers (the sequences are already in the step's
        output); a row that cannot be described is freed and its sequence fails."""
        for seq in self.scheduler.take_holds():
            try:
                self.runner.settle(seq.slot, seq.num_computed)
                if self.connector is None:
                    raise RuntimeError("this engine has no KV connector to hand a prefill to a peer with")
                self.connector.hold(seq)
            except Exception as e:
                seq.finish_reason, seq.error = "error", f"{type(e).__name__}: {e}"
                self.scheduler.release(seq)

    def _run(self, plan: StepPlan) -> list[Sequence]:
        seqs = [seq for seq, _ in plan]
        for seq in seqs:  # admitted with a cached prefix: it reaches the row before the step reads it
            if seq.reuse is not None:
                self.runner.reuse(*seq.reuse)
                seq.reuse = None
        width = max(n for _, n in plan)
        tokens, pos, want = [], [], []
        for seq, n in plan:
            start = seq.num_computed
            pad = width - n
            tokens.append(seq.feed(n) + [0] * pad)
            pos.append(list(range(start, start + n)) + [-1] * pad)
            if seq.prefilling and seq.params.prompt_logprobs is not None:  # every position scores the next token
                row_want = [True] * n
            elif seq.prefilling:  # a prompt chunk samples after its last token once it reaches the newest one
                row_want = [False] * (n - 1) + [start + n == seq.num_tokens]
            else:  # a decoding row: its newest token and each draft token get a logit row (verification)
                row_want = [True] * n
            want.append(row_want + [False] * pad)
        logits = self.runner.forward(torch.tensor(tokens, device=self.device), torch.tensor(pos, device=self.device),
                                     self._slots(seqs), torch.tensor(want, device=self.device))
        greedy = logits.argmax(-1).tolist() if logits.shape[0] else []  # a device fault surfaces here, first
        self.runner.confirm()
        chosen, observed, row = [], [], 0
        for i, ((seq, n), row_want) in enumerate(zip(plan, want)):
            start = seq.num_computed
            count = sum(row_want)
            rows, row_greedy = logits[row:row + count], greedy[row:row + count]
            row += count
            if seq.prefilling and seq.params.prompt_logprobs is not None:
                rows, row_greedy = self._score_prompt(seq, start, n, rows, row_greedy)
            if not row_greedy:  # a prompt chunk that does not reach the end
                seq.num_computed += n
                observed.append((i, seq, start, n))
                continue
            chosen.append(seq)
            try:
                new = self._verify(seq, n, rows, row_greedy)
            except Exception as e:
                self.fail(seq, e)
                new = []
            kept = n if seq.prefilling else len(new)  # fed positions now in the cache: the newest + accepted drafts
            seq.num_computed += kept
            if kept < n and not seq.done:
                self.runner.rollback(seq.slot, start + kept, start + n)
            for token in new:
                if seq.done:
                    break
                self.scheduler.append(seq, token)
            del seq.logprobs[seq.num_output:]  # an end-of-sequence token is not output
            if seq.constraint is not None and seq.constraint.done and not seq.done:
                self._end(seq, "stop")  # the grammar is complete: nothing may follow
            observed.append((i, seq, start, kept))
        if self.drafter is not None:
            self._draft(observed)
        return chosen

    def _verify(self, seq: Sequence, n: int, logits: Tensor, greedy: list[int]) -> list[int]:
        """The tokens a row's logits yield: one sampled token (a prompt's end, or a row without a draft), or the
        draft's accepted prefix and the model's next token. A grammar masks the row first (constrained rows get no
        drafts) and follows the token; with logprobs on, each new token's are kept."""
        raw = logits
        draft = seq.draft[:n - 1] if not seq.prefilling else []
        probs = seq.draft_probs[:n - 1] if seq.draft_probs is not None and draft else None
        seq.draft, seq.draft_probs = [], None
        if seq.params.processes_logits:  # penalties, bias, min_tokens: position j comes after j draft tokens
            outputs = [seq.output_ids + draft[:j] for j in range(logits.shape[0])]
            logits = process_logits(logits, seq.params, seq.prompt_ids, outputs, seq.eos_ids)
            greedy = greedy_tokens(logits).tolist()
        if seq.constraint is not None:
            masked = seq.constraint.mask(logits[:1])
            if not bool(torch.isfinite(masked).any()):  # min_tokens forbade all the grammar allows (its end): it ends
                masked = seq.constraint.mask(raw[:1])
            logits = masked
            greedy = greedy_tokens(logits).tolist()
        if seq.params.greedy:
            new = accept_greedy(draft, greedy)
        elif not draft:
            new = [int(sample(logits, seq.params, [seq.generator])[0])]
        else:
            new = accept(logits, draft, probs, seq.params, seq.generator)
        if seq.constraint is not None:
            seq.constraint.accept(new[0])
        if seq.params.logprobs is not None:
            seq.logprobs += token_logprobs(raw, new, seq.params.logprobs)
        if seq.spec is not None:
            seq.spec.record(len(draft), len(new) - 1)
        return new

    def _score_prompt(self, seq: Sequence, start: int, n: int, rows: Tensor, greedy: list[int]
                      ) -> tuple[Tensor, list[int]]:
        """Keeps the prompt logprobs of a chunk fed with every position wanted (position p scores token p + 1);
        returns the row that samples, if the chunk reaches the prompt's end (else none)."""
        prompt = seq.prompt_ids
        ends = start + n == len(prompt)
        scored = n - 1 if ends else n
        seq.prompt_logprobs += token_logprobs(rows[:scored], prompt[start + 1:start + 1 + scored],
                                              seq.params.prompt_logprobs)
        if ends:
            return rows[-1:], greedy[-1:]
        return rows[:0], []

    def _draft(self, observed: list[tuple[int, Sequence, int, int]]) -> None:
        """Drafts for the next step: the drafter sees what this step computed (an MTP drafter: the hidden states of
        (plan row, sequence, first position, positions kept)), then proposes for each sequence that goes on
        decoding, within what it may still emit."""
        live = [entry for entry in observed if not entry[1].done and entry[3] > 0]
        for _, seq, _, _ in observed:
            if seq.done:
                self.drafter.retire(seq)
        decoding = [seq for _, seq, _, _ in live if not seq.prefilling]
        limits = [self._draft_limit(seq) for seq in decoding]
        try:
            if self.drafter.needs_hidden:
                self.drafter.observe(live, self.runner.hidden)
            self.drafter.propose(decoding, limits)
        except Exception as e:
            for _, seq, _, _ in live:
                self.fail(seq, e)

    def _draft_limit(self, seq: Sequence) -> int:
        """Draft tokens a sequence may verify next step: k, and no more than it may still emit (a verify step
        yields up to 1 + draft tokens) or its cache row holds."""
        if seq.constraint is not None:  # a grammar masks one position at a time
            return 0
        limit = min(self.drafter.k, self.max_seq - 1 - seq.num_tokens)
        if seq.params.max_tokens is not None:
            limit = min(limit, seq.params.max_tokens - seq.num_output - 1)
        return max(limit, 0)

    def _slots(self, seqs: list[Sequence]) -> torch.Tensor | None:
        """Cache rows of a batch; None when they are rows 0..B-1 in order (then the cache is sliced, not gathered)."""
        slots = [s.slot for s in seqs]
        if slots == list(range(len(slots))):
            return None
        return torch.tensor(slots, device=self.device)

