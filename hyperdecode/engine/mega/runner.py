"""`backend="mega"`: S = 1 steps (decode rows, one-token prompt chunks) run in the megakernel over the compiled
program's arenas (one program for all cache slots; rows not in the step run at a spare position and are ignored);
with speculative decoding, steps of up to 1 + k tokens per row run in a second program compiled for 1 + k query
tokens per row (verification in one launch; it shares the weights and the cache arena); longer chunks run on the
reference model. The two caches are kept consistent lazily, per row: before a row runs
on one side, the positions the other side wrote since are copied over."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...model.registry import family_of
from ..runner import ReferenceRunner
from .kernel import Launch, interpreted
from .program import Program
from .vm import copy_cache_rows

__all__ = ["MegaRunner", "compile_model", "unsupported", "require_triton"]


def require_triton(name: str = "backend") -> None:
    """The megakernel is a Triton kernel: a ConfigError saying how to install Triton when it is missing (`name`: what
    the message calls the backend)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        raise ConfigError(f"{name} 'mega' needs Triton, which is not installed: pip install 'hyperdecode[mega]' "
                          f"(or pip install triton), or use {name} 'reference'") from None


def unsupported(model: nn.Module) -> str | None:
    """Why the megakernel cannot run `model`, or None."""
    return family_of(model.cfg).mega_compiler().unsupported(model)


def compile_model(model: nn.Module, batch: int, max_seq: int, tile: int | None = None, fp8: bool = False,
                  kv_split: int | None = None, queries: int = 1) -> Program:
    """The decode-step program of any family (wide tiles under the interpreter, 16 output rows on a GPU); `fp8`:
    block-FP8 projections and experts; `kv_split`: positions per attention instruction (Llama family); `queries`:
    tokens per row and step (1 + k verifies k draft tokens)."""
    why = unsupported(model)
    if why:
        raise ConfigError(f"backend 'mega' cannot compile this model: {why}; use backend='reference' or 'graph'")
    tile = tile or (256 if interpreted() else 16)
    return family_of(model.cfg).mega_compiler().compile_program(model, batch, max_seq, tile=tile, fp8=fp8,
                                                                kv_split=kv_split, queries=queries)


class MegaRunner(ReferenceRunner):
    FAST_SHAPES = "[B, 1] and [B, <= verify_width]"

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return unsupported(model) is None

    @classmethod
    def build(cls, model: nn.Module, **options: object) -> "MegaRunner":
        """An FP8 checkpoint's projections stay FP8 in the megakernel (re-quantized on its 128 x 128 grid)."""
        return cls(model, fp8=bool(options.get("fp8")))

    @staticmethod
    def check(flag: str = "backend") -> None:
        require_triton(flag)

    def __init__(self, model: nn.Module, tile: int | None = None, k_block: int | None = None,
                 workers: int | None = None, num_warps: int | None = None, prefetch: bool | None = None,
                 stages: int | None = None, fp8: bool = False, kv_split: int | None = None,
                 max_spin: int = 1_000_000):
        """tile: output rows per GEMV instruction; k_block: its k-chunk; workers: persistent programs (default one
        per SM); num_warps: per program; prefetch: L2 prefetch of each worker's next GEMV tile as it starts the current
        one (default on a GPU: the schedule model predicts ~25 % on Llama-1B shapes); stages: chunks
        in flight per GEMV; fp8: stream the projections and experts as block-FP8; kv_split: positions per attention
        instruction (default 512 on a GPU: long contexts spread over many SMs); max_spin: polls of a dependency
        counter before a step stops with MegakernelTimeout instead of hanging (small for a first run on a new GPU, so
        a wrong barrier fails fast). The GPU benchmark sweeps them."""
        require_triton()
        why = unsupported(model)
        if why:
            raise ConfigError(f"backend 'mega' cannot run this model: {why}; use backend='reference' or 'graph'")
        super().__init__(model)
        self.tile = tile
        self.fp8 = fp8
        self.kv_split = kv_split or (None if interpreted() else 512)
        prefetch = not interpreted() if prefetch is None else prefetch
        self.launch = dict(k_block=k_block, workers=workers, num_warps=num_warps, prefetch=prefetch, stages=stages,
                           max_spin=max_spin)
        if self.device.type != "cuda":
            warnings.warn("backend 'mega' without a GPU runs the megakernel in Triton's interpreter with one worker: "
                          "correct but slow, for checking only", stacklevel=3)
        self.prog: Program | None = None
        self.pending = False  # a launched step whose error word is not read yet

    def setup(self, max_batch: int, max_seq: int) -> None:
        if self.prog is not None:  # what only the arena holds goes to the reference caches, which keep it
            for row in range(self.prog.batch):
                self._sync(row, self.arena_valid[row], to_arena=False)
        super().setup(max_batch, max_seq)
        if self.prog is None or self.prog.batch < max_batch or self.prog.max_seq <= max_seq:
            # one spare position per row: rows that are not in a step write there, never over a live sequence
            self.prog = compile_model(self.model, max_batch, max_seq + 1, tile=self.tile, fp8=self.fp8,
                                      kv_split=self.kv_split)
            self.prog.W = self.prog.W.to(self.device)
            self.prog.W32 = self.prog.W32.to(self.device)
            self.prog.W8 = self.prog.W8.to(self.device)
            self.step = Launch(self.prog, self.device, **self.launch)
            self.A = torch.zeros(self.prog.a_size, device=self.device)
            self.C = torch.zeros(self.prog.c_size, device=self.device)
            pinned = self.device.type == "cuda"
            self.err_host = torch.zeros(1, dtype=torch.int32, pin_memory=pinned)
            self.verify_progs: dict[int, tuple[Program, Launch, Tensor]] = {}  # by query tokens per row
        # per row, how many leading positions each cache holds that the other may lack: after a setup the
        # reference caches hold everything, and the arena catches up row by row when a row next runs in it
        self.arena_valid = [0] * self.prog.batch
        self.reference_valid = [self.prog.max_seq] * self.prog.batch

    def kernel_resources(self) -> dict[str, int]:
        """Registers and spill bytes of the decode kernel set up now, compiled without running a step (GPU only)."""
        B = self.prog.batch
        tokens = torch.zeros(B, dtype=torch.long, device=self.device)
        pos = torch.full((B,), self.prog.max_seq - 1, dtype=torch.long, device=self.device)
        compiled = self.step.compile(self.A, self.C, tokens, pos)
        return dict(registers=compiled.n_regs, spill_bytes=compiled.n_spills)

    def verify_program(self, queries: int) -> tuple[Program, Launch, Tensor]:
        """The program for `queries` tokens per row (compiled on first use), its launch and activation arena. Its
        weights are the decode program's (the same layout) and its cache arena is `C`."""
        if queries not in self.verify_progs:
            prog = compile_model(self.model, self.prog.batch, self.prog.max_seq, tile=self.tile, fp8=self.fp8,
                                 kv_split=self.kv_split, queries=queries)
            if prog.cache != self.prog.cache or prog.W.numel() != self.prog.W.numel():
                raise RuntimeError("the verify program's cache or weight layout differs from the decode program's")
            prog.W, prog.W32, prog.W8 = self.prog.W, self.prog.W32, self.prog.W8
            launch = Launch(prog, self.device, **self.launch)
            self.verify_progs[queries] = (prog, launch, torch.zeros(prog.a_size, device=self.device))
        return self.verify_progs[queries]

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        rows = list(range(tokens.shape[0])) if slots is None else slots.tolist()
        starts = pos[:, 0].tolist()
        S = tokens.shape[1]
        if 1 < S <= self.verify_width:
            for row, start in zip(rows, starts):
                self._sync(row, start, to_arena=True)
            logits = self.verify(tokens, pos, rows)
            for row, start, n in zip(rows, starts, (pos >= 0).sum(1).tolist()):
                self.arena_valid[row] = start + n
                self.reference_valid[row] = min(self.reference_valid[row], start)
            return logits[want]
        if tokens.shape[1] != 1:
            for row, start in zip(rows, starts):
                self._sync(row, start, to_arena=False)
            logits = self.reference(tokens, pos, slots, want)
            for row, start in zip(rows, starts):
                self.reference_valid[row] = start + tokens.shape[1]
                self.arena_valid[row] = min(self.arena_valid[row], start)
            return logits
        for row, start in zip(rows, starts):
            self._sync(row, start, to_arena=True)
        logits = self.decode(tokens, pos, rows)
        for row, start in zip(rows, starts):
            self.arena_valid[row] = start + 1
            self.reference_valid[row] = min(self.reference_valid[row], start)
        return logits[want[:, 0]]

    def rollback(self, row: int, keep: int, end: int) -> None:
        super().rollback(row, keep, end)
        for view in self.prog.cache_views(self.C).values():
            view[row, keep:end] = 0
        self.arena_valid[row] = min(self.arena_valid[row], keep)
        self.reference_valid[row] = min(self.reference_valid[row], keep)

    def reuse(self, source: int, row: int, n: int) -> None:
        """The prefix is made current on the reference side of `source`, copied there, and reaches the arena when
        the row next runs a megakernel step (`_sync`)."""
        self._sync(source, n, to_arena=False)
        super().reuse(source, row, n)
        for view in self.prog.cache_views(self.C).values():
            view[row, n:] = 0
        self.reference_valid[row] = n
        self.arena_valid[row] = min(self.arena_valid[row], n) if source == row else 0

    def settle(self, row: int, upto: int) -> None:
        """What only the arena holds of the row's first positions goes to the reference caches a peer reads."""
        self._sync(row, upto, to_arena=False)

    def received(self, row: int, first: int, last: int) -> None:
        """The reference caches got positions first:last from a peer; the arena catches up when the row next runs."""
        self.reference_valid[row] = max(self.reference_valid[row], last)
        self.arena_valid[row] = min(self.arena_valid[row], first)

    def _sync(self, row: int, upto: int, to_arena: bool) -> None:
        """Makes positions < upto of `row` current on the side about to run."""
        have = self.arena_valid if to_arena else self.reference_valid
        if have[row] < upto:
            copy_cache_rows(self.prog, self.C, self.model, row, have[row], upto, to_arena=to_arena)
            have[row] = upto

    def decode(self, tokens: Tensor, pos: Tensor, rows: list[int]) -> Tensor:
        """One megakernel step for tokens, pos [B, 1] in cache rows `rows` -> logits [B, vocab]. The step's error
        word is copied to the host behind the logits, not waited for: `confirm` reads it."""
        B = self.prog.batch
        index = torch.tensor(rows, device=tokens.device)
        all_tokens = torch.zeros(B, dtype=torch.long, device=tokens.device)
        all_pos = torch.full((B,), self.prog.max_seq - 1, dtype=torch.long, device=tokens.device)
        all_tokens[index] = tokens[:, 0]
        all_pos[index] = pos[:, 0]
        self.step.run(self.A, self.C, all_tokens, all_pos)
        logits = self.prog.logits(self.A)[index].clone()
        if self.keep_hidden:
            self.hidden = self._hidden(self.prog, self.A)[index][:, None]
        self._after(self.step)
        return logits

    def verify(self, tokens: Tensor, pos: Tensor, rows: list[int]) -> Tensor:
        """One launch of the verify program for tokens, pos [B, S <= verify_width] (pos -1: padding) in cache rows
        `rows` -> logits [B, S, vocab]. Padding and rows not in the step run at the spare position."""
        prog, launch, A = self.verify_program(self.verify_width)
        Q, S = prog.queries, tokens.shape[1]
        spare = prog.max_seq - 1
        index = torch.tensor(rows, device=tokens.device)
        all_tokens = torch.zeros(prog.cache_rows, Q, dtype=torch.long, device=tokens.device)
        all_pos = torch.full((prog.cache_rows, Q), spare, dtype=torch.long, device=tokens.device)
        all_tokens[index, :S] = tokens
        all_pos[index, :S] = pos.masked_fill(pos < 0, spare)
        launch.run(A, self.C, all_tokens.view(-1), all_pos.view(-1))
        logits = prog.logits(A).view(prog.cache_rows, Q, -1)[index, :S].clone()
        if self.keep_hidden:
            self.hidden = self._hidden(prog, A).view(prog.cache_rows, Q, -1)[index, :S]
        self._after(launch)
        return logits

    def _hidden(self, prog: Program, A: Tensor) -> Tensor:
        """The final-norm hidden states of every activation row: the residual stream the LM head reads, normed."""
        start, width = prog.buf["x"], prog.dims.hidden
        x = A[start:start + prog.batch * width].view(prog.batch, width)
        return self.model.norm(x.to(self.model.norm.weight.dtype))

    def _after(self, launch: Launch) -> None:
        """The step's error word is copied to the host behind the logits, not waited for: `confirm` reads it."""
        self.err_host.copy_(launch.err, non_blocking=True)
        self.last_launch = launch
        self.pending = True

    def confirm(self) -> None:
        """Raises MegakernelTimeout if the last step's dependency waits ran out (read after the logits reached the
        host, so it costs no extra sync there)."""
        if not self.pending:
            return
        self.pending = False
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # done already once the logits are on the host
        error = self.last_launch.failure(int(self.err_host[0]))
        if error is not None:
            self.last_launch.err.zero_()
            raise error
