"""Rank 0 leads, the other ranks follow: rank 0 owns tokenisation, sampling, the API and the scheduler; its runner
(`LeaderRunner`) sends every call — cache setup, each step's [B, S] tokens / positions / rows / wanted logits, each
rollback and prefix reuse — to the other ranks before running it, and they replay it on their shards (`follow`), so
that the collectives inside the forward line up. While rank 0 is idle (a server without requests) it sends a heartbeat
every `HEARTBEAT_S`, so a follower's wait is always bounded (launch.TIMEOUT_S): a rank 0 that dies or hangs ends
the followers with an error instead of leaving them waiting.
"""
from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..engine.runner import ReferenceRunner

__all__ = ["LeaderRunner", "follow", "leave", "end_rank", "interrupted", "HEARTBEAT_S"]

STOP, FORWARD, ROLLBACK, SETUP, NOOP, REUSE = 0, 1, 2, 3, 4, 5
HEADER = 6  # command, then up to 5 integers
HEARTBEAT_S = 10.0
INTERRUPTED = threading.Event()
LEADERS: list["LeaderRunner"] = []  # this process's leaders (end_rank stops them)


class LeaderRunner(ReferenceRunner):
    """Rank 0's runner: each call goes to the followers first (under one lock: the heartbeat shares the channel)."""

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.beat = threading.Thread(target=self._heartbeat, name="hyperdecode-heartbeat", daemon=True)
        self.beat.start()
        atexit.register(self.stop)  # however rank 0 ends, the followers are told
        LEADERS.append(self)

    def _send(self, command: int, *ints: int, tensors: tuple[Tensor, ...] = ()) -> None:
        header = torch.tensor([command, *ints] + [0] * (HEADER - 1 - len(ints)), dtype=torch.long,
                              device=self.device)
        dist.broadcast(header, src=0)
        for t in tensors:
            dist.broadcast(t.contiguous(), src=0)

    def _heartbeat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            with self.lock:
                if self.stopped.is_set():
                    return
                try:
                    self._send(NOOP)
                except RuntimeError:  # a follower is gone: the next step reports it; the heartbeat just ends
                    return

    def setup(self, max_batch: int, max_seq: int) -> None:
        with self.lock:
            self._send(SETUP, max_batch, max_seq)
            super().setup(max_batch, max_seq)

    def forward(self, tokens: Tensor, pos: Tensor, slots: Tensor | None, want: Tensor) -> Tensor:
        with self.lock:
            B, S = tokens.shape
            sent = (tokens, pos, want.long()) + ((slots,) if slots is not None else ())
            self._send(FORWARD, B, S, int(slots is not None), tensors=sent)
            return super().forward(tokens, pos, slots, want)

    def rollback(self, row: int, keep: int, end: int) -> None:
        with self.lock:
            self._send(ROLLBACK, row, keep, end)
            super().rollback(row, keep, end)

    def reuse(self, source: int, row: int, n: int) -> None:
        with self.lock:
            self._send(REUSE, source, row, n)
            super().reuse(source, row, n)

    def stop(self) -> None:
        """Ends the followers' loops (once), and the process group with them. After an interrupt every rank is
        ending on its own (Ctrl-C reaches them all, torchrun signals them too): nothing is sent."""
        with self.lock:
            if self.stopped.is_set():
                return
            self.stopped.set()
            if INTERRUPTED.is_set():
                return
            try:
                self._send(STOP)
                leave()
            except RuntimeError:  # a follower had already ended (its own error says why)
                pass


def interrupted() -> None:
    """This rank was interrupted (Ctrl-C): its exit tells no peer anything, and waits for none."""
    INTERRUPTED.set()


def leave() -> None:
    """Every rank together: wait for the others, then tear the process group down (a group torn down while a peer
    still talks to it aborts the process)."""
    dist.barrier()
    dist.destroy_process_group()


def end_rank(code: int = 0) -> NoReturn:
    """Ends this rank's process: rank 0's leaders tell their followers and leave the group with them (a no-op if
    already done), output is flushed, then `os._exit`, without the interpreter's teardown, in which a gloo thread
    still joinable aborts the process now and then ("terminate called without an active exception", on rank 0 or
    a follower, in about 1 of 20 runs of a 3-rank job on this project's 2-core machines)."""
    for leader in list(LEADERS):
        leader.stop()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def follow(runner: ReferenceRunner) -> None:
    """A follower rank: replays rank 0's runner calls until it sends STOP."""
    device = runner.device
    while True:
        header = torch.zeros(HEADER, dtype=torch.long, device=device)
        dist.broadcast(header, src=0)
        command, *ints = header.tolist()
        if command == STOP:
            leave()
            return
        if command == SETUP:
            runner.setup(ints[0], ints[1])
        elif command == ROLLBACK:
            runner.rollback(ints[0], ints[1], ints[2])
        elif command == REUSE:
            runner.reuse(ints[0], ints[1], ints[2])
        elif command == FORWARD:
            B, S, has_slots = ints[:3]
            received = [torch.zeros(B, S, dtype=torch.long, device=device) for _ in range(3)]
            if has_slots:
                received.append(torch.zeros(B, dtype=torch.long, device=device))
            for t in received:
                dist.broadcast(t, src=0)
            with torch.inference_mode():
                runner.forward(received[0], received[1], received[3] if has_slots else None, received[2].bool())
