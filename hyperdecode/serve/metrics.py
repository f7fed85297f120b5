"""Prometheus metrics under vLLM's names, with buckets that resolve sub-millisecond inter-token latency."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..engine.speculative import SpecStats

__all__ = ["Metrics", "ITL_BUCKETS", "TTFT_BUCKETS"]

# At 400 tok/s a token is 2.5 ms: vLLM's default ITL buckets start at 10 ms, ours at 0.1 ms.
ITL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005, 0.0075,
               0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
TTFT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0)
TRANSFER_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0)
BYTE_BUCKETS = tuple(float(4 ** k) * 1024 for k in range(13))  # 1 KiB .. 16 GiB
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 60.0, 120.0,
               240.0, 480.0)


class Metrics:
    """One registry per server; every series carries the `model_name` label, as vLLM's do."""

    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        label = ["model_name"]

        def series(kind: type, name: str, doc: str, **kwargs):
            """One metric of `kind` in this registry, as this server's model's series."""
            return kind(name, doc, label, registry=r, **kwargs).labels(model_name)
        self.ttft = series(Histogram, "vllm:time_to_first_token_seconds", "Time to first token", buckets=TTFT_BUCKETS)
        self.itl = series(Histogram, "vllm:inter_token_latency_seconds", "Time between consecutive output tokens",
                          buckets=ITL_BUCKETS)
        self.tpot = series(Histogram, "vllm:request_time_per_output_token_seconds",
                           "(e2e - TTFT) / (output tokens - 1)", buckets=ITL_BUCKETS)
        self.e2e = series(Histogram, "vllm:e2e_request_latency_seconds", "End-to-end request latency",
                          buckets=E2E_BUCKETS)
        self.running = series(Gauge, "vllm:num_requests_running", "Requests in the decode batch")
        self.waiting = series(Gauge, "vllm:num_requests_waiting", "Requests queued for a batch slot")
        self.prompt_tokens = series(Counter, "vllm:prompt_tokens", "Prefilled prompt tokens")
        self.generation_tokens = series(Counter, "vllm:generation_tokens", "Generated tokens")
        # prefix caching (vLLM's names): prompt tokens looked up and found; cache rows in use
        self.prefix_queries = series(Counter, "vllm:prefix_cache_queries",
                                     "Prompt tokens looked up in the prefix cache")
        self.prefix_hits = series(Counter, "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache")
        self.kv_usage = series(Gauge, "vllm:kv_cache_usage_perc", "Share of cache rows held by running requests")
        self._prefix_seen = (0, 0)
        # speculative decoding (vLLM's names): verified drafts, their tokens, the accepted ones, and by position
        self.spec_drafts = series(Counter, "vllm:spec_decode_num_drafts", "Verified drafts (rows with draft tokens)")
        self.spec_draft_tokens = series(Counter, "vllm:spec_decode_num_draft_tokens", "Draft tokens verified")
        self.spec_accepted_tokens = series(Counter, "vllm:spec_decode_num_accepted_tokens", "Draft tokens accepted")
        self._spec_per_pos = Counter("vllm:spec_decode_num_accepted_tokens_per_pos",
                                     "Draft tokens accepted, by position in the draft", label + ["position"],
                                     registry=r)
        # disaggregation (vLLM's NIXL names where they exist): each pull's time, bytes and descriptors, failures;
        # rows a producer freed because no peer read them in time
        self.nixl_xfer_time = series(Histogram, "vllm:nixl_xfer_time_seconds", "KV transfer time per request",
                                     buckets=TRANSFER_BUCKETS)
        self.nixl_bytes = series(Histogram, "vllm:nixl_bytes_transferred", "KV bytes transferred per request",
                                 buckets=BYTE_BUCKETS)
        self.nixl_descriptors = series(Histogram, "vllm:nixl_num_descriptors", "NIXL descriptors per request",
                                       buckets=(1, 4, 16, 64, 256, 1024, 4096))
        self.nixl_failed = series(Counter, "vllm:nixl_num_failed_transfers", "KV transfers that failed")
        self.kv_expired_rows = series(Counter, "hyperdecode:kv_held_rows_expired",
                                      "Rows held for a peer and freed after the abort timeout")
        self.kv_held_rows = series(Gauge, "hyperdecode:kv_held_rows", "Cache rows held for a peer's transfer")
        self.pd_split = Histogram("hyperdecode:pd_ttft_split_seconds", "A decode request's TTFT by part (the "
                                  "peer's prefill, the wait for a row, the transfer, the first step)",
                                  label + ["part"], registry=r, buckets=TTFT_BUCKETS)
        self._success = Counter("vllm:request_success", "Finished requests by reason", label + ["finished_reason"],
                                registry=r)
        self.model_name = model_name

    def finished(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()

    def cached(self, stats: dict[str, float]) -> None:
        """After a step: the prefix cache's new lookups and hits, and the rows in use (EngineCore.cache_stats)."""
        self.prefix_queries.inc(stats["prefix_queries"] - self._prefix_seen[0])
        self.prefix_hits.inc(stats["prefix_hits"] - self._prefix_seen[1])
        self._prefix_seen = (stats["prefix_queries"], stats["prefix_hits"])
        self.kv_usage.set(stats["usage"])

    def kv_transferred(self, stats: dict[str, float], error: str | None) -> None:
        """A pull ended (the connector reports it)."""
        if error is not None:
            self.nixl_failed.inc()
            return
        self.nixl_xfer_time.observe(stats["transfer_s"])
        self.nixl_bytes.observe(stats["bytes"])
        self.nixl_descriptors.observe(stats["descriptors"])

    def kv_expired(self) -> None:
        self.kv_expired_rows.inc()

    def pd_ttft(self, split: dict[str, float | None]) -> None:
        """A finished decode request's TTFT split (GenerationStats.kv_transfer)."""
        for part in ("prefill_s", "queue_s", "transfer_s", "first_step_s"):
            if split.get(part) is not None:
                self.pd_split.labels(self.model_name, part.removesuffix("_s")).observe(split[part])

    def speculated(self, spec: SpecStats) -> None:
        """A finished request's draft counts."""
        self.spec_drafts.inc(spec.num_drafts)
        self.spec_draft_tokens.inc(spec.num_draft_tokens)
        self.spec_accepted_tokens.inc(spec.num_accepted_tokens)
        for position, n in enumerate(spec.accepted_per_pos):
            self._spec_per_pos.labels(self.model_name, str(position)).inc(n)
