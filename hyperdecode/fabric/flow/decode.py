"""Decode: admission (a batch slot and KV memory on the least loaded decode instance, then the KV transfer) and the
decode instances' steps.

Every running request gets a token per step; a step takes the model's step time at the batch (per replica of the
plan when the step comes from the latency model), divided by the speed the instance's all-to-all allows when it
spans servers. A run of steps between batch changes is one stretch (a few events per request however long the
output); a request that arrives mid-stretch joins at the next step boundary.

>>> split_batch(130, replicas=4)  # the busiest replica's share sets the step
33
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np

from ..events import Timer
from .transfers import AllToAll, Transfer

__all__ = ["Admission", "DecodeInstance", "split_batch"]


def split_batch(batch: int, replicas: int) -> int:
    """Sequences per replica when `batch` running sequences are spread over `replicas`."""
    return -(-batch // max(replicas, 1))


class Admission:
    """Prefilled requests wait here, in order, for a decode instance with room."""

    def __init__(self, cluster: Any, instances: list["DecodeInstance"]):
        self.cluster = cluster
        self.instances = instances
        self.waiting: deque[int] = deque()

    def add(self, request: int) -> None:
        self.waiting.append(request)
        self.admit()

    def admit(self) -> None:
        c = self.cluster
        while self.waiting:
            request = self.waiting[0]
            room = [d for d in self.instances if d.has_room(request)]
            if not room:
                return
            self.waiting.popleft()
            instance = min(room, key=lambda d: d.reserved)
            instance.reserve(request)
            c.run.admitted_s[request] = c.queue.now
            prefill = c.prefills[c.run.prefill_of[request]]
            pairs = c.kv_pairs(request, prefill.gpus, instance.gpus)
            transfer = Transfer(c, "kv", request, pairs, float(c.kv_bytes[request]),
                                lambda r=request, d=instance: self._arrived(r, d),
                                lambda r=request, d=instance: self._cut(r, d))
            if not transfer.start():
                instance.release(request)
                prefill.kv_left(request)
                c.fail(request)

    def _cut(self, request: int, instance: "DecodeInstance") -> None:
        """A failure left the KV transfer without a path: the request fails, its memory at both ends is freed."""
        self.cluster.fail(request)
        self._arrived(request, instance)

    def _arrived(self, request: int, instance: "DecodeInstance") -> None:
        c = self.cluster
        c.prefills[c.run.prefill_of[request]].kv_left(request)
        if c.run.failed[request]:  # a failure cut part of its transfer off
            instance.release(request)
            self.admit()
            return
        c.run.kv_done_s[request] = c.queue.now
        instance.join(request)


class DecodeInstance:
    """A decode instance: its GPUs (replicas of the plan's size), running batch, KV memory and steps."""
    def __init__(self, cluster: Any, index: int, gpus: np.ndarray):
        self.cluster = cluster
        self.index = index
        self.gpus = [int(g) for g in gpus]
        per_server = cluster.topo.gpus_per_server
        self.servers = max(len(self.gpus) // per_server, 1)
        plan_gpus = cluster.model.plan_gpus
        self.replicas = max(len(self.gpus) // plan_gpus, 1) if plan_gpus else 1
        self.reserved = 0
        self.memory = 0.0
        self.running: dict[int, int] = {}  # request -> tokens left
        self.joining: list[int] = []
        self.busy = False
        self.all_to_all = None
        if cluster.ep and self.servers > 1:
            self.all_to_all = AllToAll(cluster, self.gpus, per_server, self._speed_changed, ident=2 * index + 1)
            self.ep_per_token = cluster.model.ep_bytes_per_token(self.servers, prefill=False)
        self.speed = 1.0
        self.start = 0.0
        self.step = 0.0  # compute seconds per step
        self.steps = 0
        self.progress = 0.0  # compute seconds done in this stretch
        self.since = 0.0
        self.timer = Timer(cluster.queue, self._end_stretch)

    # --- admission ------------------------------------------------------------------------------------------------
    def has_room(self, request: int) -> bool:
        c = self.cluster
        need = c.decode_need[request]
        return self.reserved < c.cfg.decode_batch and (self.memory == 0 or self.memory + need <= c.decode_capacity)

    def reserve(self, request: int) -> None:
        self.reserved += 1
        self.memory += self.cluster.decode_need[request]
        self.cluster.run.decode_of[request] = self.index

    def release(self, request: int) -> None:
        self.reserved -= 1
        self.memory -= self.cluster.decode_need[request]

    # --- steps ------------------------------------------------------------------------------------------------------
    def join(self, request: int) -> None:
        self.joining.append(request)
        if not self.busy:
            return self._next_stretch()
        self._advance()
        if self.steps > 1:  # cut the stretch at the next step boundary, so that the request joins there
            k = max(1, math.ceil(self.progress / self.step - 1e-12))
            if k < self.steps:
                self.steps = k
                self._reschedule()

    def _advance(self) -> None:
        now = self.cluster.queue.now
        self.progress += (now - self.since) * self.speed
        self.since = now

    def _reschedule(self) -> None:
        if self.speed <= 0:
            self.timer.cancel()
            return
        left = max(self.steps * self.step - self.progress, 0.0)
        self.timer.set(self.cluster.queue.now + left / self.speed)

    def _speed_changed(self) -> None:
        if self.busy:
            self._advance()
        self.speed = self.all_to_all.speed if self.all_to_all is not None else 1.0
        if self.busy:
            self._reschedule()

    def _next_stretch(self) -> None:
        c = self.cluster
        for request in self.joining:
            self.running[request] = int(c.output_tokens[request])
        self.joining = []
        if not self.running:
            self.busy = False
            if self.all_to_all is not None:
                self.all_to_all.stop()
            return
        batch = len(self.running)
        self.busy = True
        self.start = self.since = c.queue.now
        self.step = c.model.step_s(split_batch(batch, self.replicas))
        self.steps = min(self.running.values())
        self.progress = 0.0
        if self.all_to_all is not None:
            self.all_to_all.run(batch * self.ep_per_token / self.step / self.all_to_all.qps)
            self.speed = self.all_to_all.speed
        self._reschedule()

    def _end_stretch(self) -> None:
        c = self.cluster
        k, span = self.steps, c.queue.now - self.start
        batch = len(self.running)
        c.run.log_steps(span / k, k, batch, self.start)
        if self.all_to_all is not None:
            c.run.ep_bytes += k * batch * self.ep_per_token
        for request in list(self.running):
            if np.isnan(c.run.first_token_s[request]):
                c.run.first_token_s[request] = self.start + span / k
            self.running[request] -= k
            if self.running[request] <= 0:
                del self.running[request]
                c.run.finish_s[request] = c.queue.now
                self.release(request)
                c.request_done(request)
        c.admission.admit()
        self._next_stretch()
