"""The KV connector over NIXL (`nixl-cu12`, UCX backend): the engine core's `KvConnector` for a prefill instance
(producer), a decode instance (consumer), or both.

One NIXL agent per instance registers every cache tensor of the model (CPU or GPU memory alike) and two small
tag arrays. A producer that holds a row for a peer writes the request's tag into `tags[row]`; the peer READs the
row's positions as one descriptor per cache tensor, then READs the tag (with a notification that tells the
producer it may free the row). The tag must still be the request's: a row the producer gave away meanwhile (its
abort timeout passed) is never mistaken for the prompt. Loads run in worker threads, each wait bounded by
`transfer_timeout_s`; the engine thread only polls (`poll`).
"""
from __future__ import annotations

import base64
import importlib
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..engine.kv_connector import KvConnector, Polled
from ..engine.sequence import Sequence
from ..errors import ConfigError
from .config import KVTransferConfig
from .layout import CacheLayout, mismatch, named_row_caches
from .params import prompt_digest
from .side_channel import SideChannel, fetch_handshake

__all__ = ["NixlConnector", "require_nixl", "request_tag"]

log = logging.getLogger("hyperdecode.disagg")
POLL_S = 0.0002  # between two looks at a transfer's state


def require_nixl() -> Any:
    """NIXL's Python API, or a ConfigError saying how to install it."""
    for module in ("nixl._api", "nixl_cu12._api", "nixl_cu13._api"):  # the meta package, or one CUDA build of it
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    raise ConfigError("--kv-transfer-config needs NIXL, which is not installed: pip install 'hyperdecode[pd]' "
                      "(or pip install nixl-cu12)")


def request_tag(request_id: str) -> int:
    """The 60-bit tag a held row carries for a request id (hex, as `hold` makes them); never 0 (a free row)."""
    return int(request_id[:15], 16) or 1


@dataclass
class Peer:
    engine_id: str
    agent_name: str
    layout: CacheLayout
    tags_addr: int
    where: str


class NixlConnector(KvConnector):
    def __init__(self, config: KVTransferConfig, model: nn.Module, name: str, observer: Any = None,
                 wake: Callable[[], None] | None = None, mtp: bool = False):
        api = require_nixl()
        self.config = config
        self.model = model
        self.name = name
        self.mtp = mtp  # MTP speculation is on: the MTP layer's cache rows travel too
        self.recompute = config.kv_load_failure_policy == "recompute"
        self.observer = observer
        self.wake = wake or (lambda: None)
        self.agent = api.nixl_agent(config.engine_id, api.nixl_agent_config(backends=config.backends))
        self.lock = threading.Lock()  # one caller of the agent at a time: the engine thread and the load workers
        self.layout: CacheLayout | None = None
        self.registered = None
        self.register()
        self.side = SideChannel(config.kv_ip, config.kv_port, self.handshake)
        self.peers: dict[str, Peer] = {}
        self.held: dict[str, tuple[Sequence, float]] = {}  # request id -> (sequence, monotonic deadline)
        self.loads: dict[Sequence, Future] = {}
        self.finished: queue.SimpleQueue = queue.SimpleQueue()
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="hyperdecode-kv")

    # -- memory and handshake ------------------------------------------------------------------------------------
    def register(self) -> None:
        """Registers the caches with the agent (again when they were reallocated since)."""
        layout = CacheLayout.of(self.model, self.name, self.mtp)
        if self.layout is not None and [t.addr for t in layout.tensors] == [t.addr for t in self.layout.tensors]:
            return
        device = self.model.device
        with self.lock:
            if self.registered is not None:
                self.agent.deregister_memory(self.registered)
            self.tags = torch.zeros(layout.rows, dtype=torch.int64, device=device)  # the request each row holds
            self.seen = torch.zeros(layout.rows, dtype=torch.int64, device=device)  # a peer's tag, read by a load
            self.registered = self.agent.register_memory(list(named_row_caches(self.model, self.mtp).values())
                                                         + [self.tags, self.seen])
        self.layout = layout

    def handshake(self) -> dict[str, Any]:
        """What the side channel tells a peer: who this is, its agent, its cache layout and its tags."""
        with self.lock:
            metadata = self.agent.get_agent_metadata()
        return {"engine_id": self.config.engine_id, "agent_metadata": base64.b64encode(metadata).decode(),
                "layout": self.layout.as_dict(), "tags_addr": self.tags.data_ptr()}

    def peer(self, params: dict[str, Any]) -> Peer:
        """The peer named by a request's parameters, handshaken once (a refused one raises naming both sides)."""
        engine_id = params["remote_engine_id"]
        if engine_id in self.peers:
            return self.peers[engine_id]
        host, port = params["remote_host"], params["remote_port"]
        where = f"{host}:{port}"
        payload = fetch_handshake(host, port, self.config.transfer_timeout_s)
        if payload.get("engine_id") != engine_id:
            raise RuntimeError(f"the side channel at {where} belongs to engine {payload.get('engine_id')!r}, not "
                               f"{engine_id!r} (did the prefill instance restart?)")
        theirs = CacheLayout.from_dict(payload["layout"])
        why = mismatch(self.layout, theirs)
        if why:
            raise RuntimeError(f"refusing the KV handshake: this instance serves {self.layout.identity()} and the "
                               f"peer at {where} serves {theirs.identity()}: {why}")
        with self.lock:
            agent_name = self.agent.add_remote_agent(base64.b64decode(payload["agent_metadata"]))
        peer = Peer(engine_id, agent_name.decode() if isinstance(agent_name, bytes) else agent_name, theirs,
                    payload["tags_addr"], where)
        self.peers[engine_id] = peer
        return peer

    def forget(self, engine_id: str) -> None:
        """A peer that failed is handshaken again next time (it may have restarted)."""
        peer = self.peers.pop(engine_id, None)
        if peer is not None:
            with self.lock:
                try:
                    self.agent.remove_remote_agent(peer.agent_name)
                except Exception:  # already gone
                    pass

    # -- producer --------------------------------------------------------------------------------------------------
    def hold(self, seq: Sequence) -> None:
        self.register()
        rid = uuid.uuid4().hex
        prompt = seq.prompt_ids
        self.tags[seq.slot] = request_tag(rid)
        if self.model.device.type == "cuda":  # the row and its tag are written before a peer is told of them
            torch.cuda.current_stream(self.model.device).synchronize()
        seq.kv.params_out = {
            "do_remote_prefill": True, "do_remote_decode": False, "remote_engine_id": self.config.engine_id,
            "remote_host": self.config.kv_ip, "remote_port": self.side.port, "remote_block_ids": [seq.slot],
            "remote_request_id": rid, "remote_num_tokens": len(prompt), "remote_prompt_digest": prompt_digest(prompt),
            "tp_size": 1}
        self.held[rid] = (seq, time.monotonic() + self.config.abort_timeout_s)

    # -- consumer --------------------------------------------------------------------------------------------------
    def load(self, seq: Sequence) -> None:
        self.register()
        kv = seq.kv
        kv.stats["started_at"] = time.perf_counter()
        self.loads[seq] = self.pool.submit(self._pull, seq, seq.slot, kv.first, kv.last, dict(kv.remote))

    def _pull(self, seq: Sequence, row: int, first: int, last: int, params: dict[str, Any]) -> None:
        """A worker thread: the positions first:last of the peer's row into `row`, then the tag (notifying the
        peer); the result goes to `finished`."""
        started = time.perf_counter()
        rid = params["remote_request_id"]
        peer = None
        try:
            peer = self.peer(params)
            remote_row = params["remote_block_ids"][0]
            if remote_row >= peer.layout.rows or last > peer.layout.max_seq:
                raise RuntimeError(f"the peer at {peer.where} has no row {remote_row} with {last} positions")
            local = self.layout.spans(row, first, last)
            remote = peer.layout.spans(remote_row, first, last)
            self._read(peer, local, remote, b"")
            tag_local = [(self.seen.data_ptr() + row * 8, 8, local[0][2])]
            tag_remote = [(peer.tags_addr + remote_row * 8, 8, remote[0][2])]
            self._read(peer, tag_local, tag_remote, rid.encode())
            if int(self.seen[row]) != request_tag(rid):
                raise RuntimeError(f"the prefill instance at {peer.where} gave row {remote_row} away before it was "
                                   "read (its abort timeout passed)")
            done = time.perf_counter()
            self.finished.put((seq, None, {"bytes": sum(n for _, n, _ in local), "descriptors": len(local),
                                           "transfer_s": done - started, "loaded_at": done}))
        except Exception as e:
            log.warning("pulling the prefill of request %s failed: %s", rid, e)
            if peer is not None:
                self.forget(peer.engine_id)
            self.finished.put((seq, f"the KV transfer from the prefill instance failed: {e}",
                               {"transfer_s": time.perf_counter() - started, "loaded_at": time.perf_counter()}))
        finally:
            self.wake()

    def _read(self, peer: Peer, local: list, remote: list, notify: bytes) -> None:
        """One NIXL READ of `remote` descriptors into `local` ones, waited for within transfer_timeout_s."""
        with self.lock:
            local_descs = self.agent.get_xfer_descs(local, self.layout.memory_type)
            remote_descs = self.agent.get_xfer_descs(remote, peer.layout.memory_type)
            handle = self.agent.initialize_xfer("READ", local_descs, remote_descs, peer.agent_name, notify)
            state = self.agent.transfer(handle)
        deadline = time.monotonic() + self.config.transfer_timeout_s
        try:
            while state not in ("DONE", "ERR"):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no answer from {peer.where} within {self.config.transfer_timeout_s:g} s")
                time.sleep(POLL_S)
                with self.lock:
                    state = self.agent.check_xfer_state(handle)
            if state == "ERR":
                raise RuntimeError(f"NIXL reported an error reading from {peer.where}")
        finally:
            with self.lock:
                try:
                    self.agent.release_xfer_handle(handle)
                except Exception:  # a transfer still in flight cannot be released: it is abandoned
                    pass

    # -- the engine thread's poll ----------------------------------------------------------------------------------
    def poll(self) -> Polled:
        polled = Polled()
        while True:
            try:
                seq, error, stats = self.finished.get_nowait()
            except queue.Empty:
                break
            self.loads.pop(seq, None)
            seq.kv.stats.update(stats)
            if error is None:
                polled.loaded.append(seq)
            else:
                polled.failed.append((seq, error))
            if self.observer is not None:
                self.observer.kv_transferred(stats, error)
        if self.held:
            self._released(polled)
        return polled

    def _released(self, polled: Polled) -> None:
        """Held rows whose peer read them (its notification) or whose time ran out."""
        with self.lock:
            notifs = self.agent.get_new_notifs()
        done = [message.decode(errors="replace") for messages in notifs.values() for message in messages]
        now = time.monotonic()
        expired = [rid for rid, (_, deadline) in self.held.items() if now > deadline]
        for rid in done + expired:
            entry = self.held.pop(rid, None)
            if entry is None:
                continue
            seq = entry[0]
            self.tags[seq.slot] = 0  # before the row can be taken again
            polled.released.append(seq)
            if rid in expired:
                log.warning("freed the row of request %s: no peer read it within %g s", rid,
                            self.config.abort_timeout_s)
                if self.observer is not None:
                    self.observer.kv_expired()

    @property
    def pending(self) -> bool:
        return bool(self.held or self.loads)

    def close(self) -> None:
        self.side.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
