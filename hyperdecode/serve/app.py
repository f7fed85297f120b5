"""The OpenAI-compatible HTTP API (FastAPI): routes, SSE streaming, auth, and the one place mapping errors."""
from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import __version__
from ..engine.llm import LLM
from ..engine.output import OutputStream
from ..engine.sampling import SamplingParams
from ..engine.sequence import Sequence
from ..errors import RequestError
from .engine import Engine, Request
from .metrics import Metrics
from .protocol import APIError, GenerateRequest, chunk, completion_body, error_body, new_id, parse_chat, \
    parse_completion, usage

__all__ = ["ServerConfig", "create_app"]

DISCONNECT_POLL_S = 0.05
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


@dataclass
class ServerConfig:
    model: str = "smollm2"
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    backend: str = "reference"
    api_key: str | None = None
    max_batch: int = 8
    max_queue: int = 64
    max_model_len: int | None = 4096
    request_timeout: float | None = 600.0
    health_timeout: float = 10.0
    max_num_batched_tokens: int | None = None  # chunked prefill: tokens per step (None: whole prompts)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model


class State:
    """Loads the model in the background: /health answers 503 until it is ready."""

    def __init__(self, config: ServerConfig, llm: LLM | None):
        self.config, self.engine, self.error = config, None, None
        if llm is not None:
            self._start(llm)
        else:
            threading.Thread(target=self._load, daemon=True).start()

    def _load(self) -> None:
        try:
            c = self.config
            self._start(LLM(c.model, device=c.device, dtype=c.dtype, backend=c.backend,
                            max_num_batched_tokens=c.max_num_batched_tokens))
        except Exception as e:  # reported by /health and every request
            self.error = f"{type(e).__name__}: {e}"

    def _start(self, llm: LLM) -> None:
        c = self.config
        self.engine = Engine(llm, c.max_batch, c.max_queue, c.max_model_len, Metrics(c.name))

    def ready_engine(self) -> Engine:
        if self.engine is None:
            raise APIError(503, f"the model failed to load: {self.error}" if self.error else "the model is loading",
                           type="server_error" if self.error else "service_unavailable")
        return self.engine


def create_app(config: ServerConfig, llm: LLM | None = None) -> FastAPI:
    """The app; pass `llm` to serve an already loaded model (tests), else it loads `config.model` in the background."""
    app = FastAPI(title="hyperdecode", version=__version__)
    state = State(config, llm)
    app.state.hd = state

    @app.exception_handler(APIError)
    async def api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return JSONResponse(error_body(e), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestError)
    async def request_error(_: HTTPRequest, e: RequestError) -> JSONResponse:
        return JSONResponse(error_body(APIError(400, str(e), param=e.param)), status_code=400)

    @app.exception_handler(Exception)
    async def server_fault(_: HTTPRequest, e: Exception) -> JSONResponse:
        return JSONResponse(error_body(APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                type="server_error")), status_code=500)

    @app.middleware("http")
    async def auth(request: HTTPRequest, call_next):
        if config.api_key and request.url.path.startswith("/v1"):
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                e = APIError(401, "invalid or missing API key", type="authentication_error", code="invalid_api_key")
                return JSONResponse(error_body(e), status_code=401)
        return await call_next(request)

    async def body_of(request: HTTPRequest) -> Any:
        try:
            return json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None

    @app.get("/health")
    async def health() -> Response:
        engine = state.ready_engine()
        seq, stream = engine.inputs.process([0], SamplingParams(max_tokens=1, ignore_eos=True))
        req = engine.submit(seq, stream, config.health_timeout, internal=True)
        deadline = time.monotonic() + config.health_timeout + 1
        kind = "text"
        while kind == "text":  # its one token's text, then done
            kind, _ = await _next_event(req, max(deadline - time.monotonic(), 0.001))
        engine.cancel(req)
        if kind != "done":
            raise APIError(503, "the engine did not complete a one-token generation in time", type="server_error")
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict:
        engine = state.ready_engine()
        return {"object": "list", "data": [{"id": config.name, "object": "model", "created": int(time.time()),
                                            "owned_by": "hyperdecode", "max_model_len": engine.max_model_len}]}

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        engine = state.ready_engine()
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: HTTPRequest) -> dict:
        engine, body = state.ready_engine(), await body_of(request)
        if isinstance(body, dict) and isinstance(body.get("prompt"), str):
            ids = engine.inputs.require_tokenizer().encode(body["prompt"])
        elif isinstance(body, dict) and "messages" in body:
            ids = engine.inputs.chat_prompt(parse_chat({"model": config.name, **body}).prompt)
        else:
            raise APIError(400, "'prompt' (a string) or 'messages' is required", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: HTTPRequest) -> dict:
        engine, body = state.ready_engine(), await body_of(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        vocab = engine.llm.config.vocab_size
        if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise APIError(400, f"'tokens' must be a list of token ids in [0, {vocab})", param="tokens")
        return {"prompt": engine.llm.tokenizer.decode(ids)}

    @app.post("/v1/chat/completions")
    async def chat(request: HTTPRequest) -> Response:
        return await generate(request, parse_chat(await body_of(request)))

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest) -> Response:
        return await generate(request, parse_completion(await body_of(request)))

    async def generate(request: HTTPRequest, g: GenerateRequest) -> Response:
        engine = state.ready_engine()
        if g.model != config.name:
            raise APIError(404, f"the model '{g.model}' does not exist (serving '{config.name}')", param="model",
                           type="not_found_error", code="model_not_found")
        seq, stream = make_sequence(engine, g)
        rid = new_id(g.kind, request.headers.get("x-request-id"))
        req = engine.submit(seq, stream, g.timeout_s or config.request_timeout)
        headers = {"x-request-id": rid}
        if g.stream:
            return StreamingResponse(sse(engine, req, g, rid), media_type="text/event-stream", headers=headers)
        try:
            while True:
                kind, payload = await _next_event(req, DISCONNECT_POLL_S, request)
                if kind == "disconnected":
                    return Response(status_code=499)
                if kind == "error":
                    raise payload
                if kind == "done":
                    return JSONResponse(completion_body(g.kind, rid, config.name, payload.text, payload.finish_reason,
                                                        payload.stats.prompt_tokens, payload.stats.output_tokens),
                                        headers=headers)
        finally:
            engine.cancel(req)  # a no-op once finished; stops generation if the client went away

    async def sse(engine: Engine, req: Request, g: GenerateRequest, rid: str) -> AsyncIterator[str]:
        created, first, n = int(time.time()), True, len(req.seq.prompt_ids)
        try:
            while True:
                kind, payload = await req.queue.get()
                if kind == "text":
                    extra = usage(n, len(req.seq.output_ids)) if g.continuous_usage else None
                    yield event(chunk(g.kind, rid, config.name, created, payload, None, first, extra))
                    first = False
                elif kind == "done":
                    yield event(chunk(g.kind, rid, config.name, created, "", payload.finish_reason, first))
                    if g.include_usage:
                        u = usage(payload.stats.prompt_tokens, payload.stats.output_tokens)
                        yield event(chunk(g.kind, rid, config.name, created, None, None, False, u))
                    yield "data: [DONE]\n\n"
                    return
                else:
                    yield event(error_body(payload))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            engine.cancel(req)  # runs when the client disconnects mid-stream (the response task is cancelled)

    return app


def make_sequence(engine: Engine, g: GenerateRequest) -> tuple[Sequence, OutputStream]:
    """The request path `hd.LLM` uses too; OpenAI's default length: chat to the end of the context, completions 16."""
    if g.kind == "chat":
        return engine.inputs.process(params=g.params, messages=g.prompt)
    return engine.inputs.process(g.prompt, g.params, default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS)


def event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _next_event(req: Request, timeout: float, http: HTTPRequest | None = None) -> tuple[str, Any]:
    """The request's next event; for a non-streaming call, checks every `timeout` s that the client is still there."""
    while True:
        try:
            return await asyncio.wait_for(req.queue.get(), timeout)
        except asyncio.TimeoutError:
            if http is None:
                return "timeout", None
            if await http.is_disconnected():
                return "disconnected", None
