"""The OpenAI-compatible HTTP API (FastAPI): routes, SSE streaming, auth, health, and the one place mapping errors.

A request's path: the body limit (limits.py) -> JSON and field checks (protocol.py) -> a place in the queue (429
when full, before any tokenizing) -> the chat template and tokenizer (off the event loop for large bodies) ->
the engine. Auth is a route dependency and the body limit pure ASGI, so client disconnects stay visible.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

from fastapi import APIRouter, Depends, FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..engine.llm import LLM
from ..engine.output import Generation, OutputStream
from ..engine.request import lone_surrogate
from ..engine.sampling import SamplingParams
from ..engine.sequence import Sequence
from ..errors import RequestError
from .engine import Engine, Request
from .limits import BodyLimit, default_max_request_bytes
from .metrics import Metrics
from .protocol import APIError, GenerateRequest, chunk, completion_body, error_body, new_id, parse_chat, \
    parse_completion, usage

__all__ = ["ServerConfig", "create_app"]

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
TOKENIZE_INLINE_BYTES = 16384  # bodies above this are templated and tokenized in a worker thread
ENGINE_SLACK_S = 5.0  # a handler waits this much past its request's deadline for the engine's answer
log = logging.getLogger("hyperdecode.serve")


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
    health_timeout: float = 10.0  # the readiness probe's one-token generation
    stall_timeout: float = 120.0  # /health fails when the engine thread has not beaten for this long
    max_num_batched_tokens: int | None = None  # chunked prefill: tokens per step (None: whole prompts)
    max_request_bytes: int | None = None  # None: 1 MiB + 64 B per token of max_model_len
    speculative_config: str | dict | None = None  # vLLM's --speculative-config (e.g. {"method": "ngram", ...})
    parallel: str | None = None  # "tp": this process is rank 0 of a torchrun job (parallel/follow.py)
    enable_prefix_caching: bool = True  # vLLM's --enable-prefix-caching / --no-enable-prefix-caching

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    @property
    def body_limit(self) -> int:
        return self.max_request_bytes or default_max_request_bytes(self.max_model_len or 4096)


class State:
    """Loads the model in the background: /health answers 503 until it is ready. A load that fails is logged and
    reported to `on_fatal` (the CLI stops the server and exits non-zero)."""

    def __init__(self, config: ServerConfig, llm: LLM | None, on_fatal: Callable[[str], None] | None = None):
        self.config, self.engine, self.error = config, None, None
        self.on_fatal = on_fatal
        if llm is not None:
            self._start(llm)
        else:
            threading.Thread(target=self._load, name="hyperdecode-load", daemon=True).start()

    def _load(self) -> None:
        try:
            c = self.config
            self._start(LLM(c.model, device=c.device, dtype=c.dtype, backend=c.backend,
                            max_num_batched_tokens=c.max_num_batched_tokens, parallel=c.parallel,
                            enable_prefix_caching=c.enable_prefix_caching))
        except Exception as e:  # reported by /health and every request
            self.error = f"{type(e).__name__}: {e}"
            log.error("the model '%s' failed to load: %s", self.config.model, self.error)
            if self.on_fatal is not None:
                self.on_fatal(self.error)

    def _start(self, llm: LLM) -> None:
        c = self.config
        llm.core.speculate(c.speculative_config)
        self.engine = Engine(llm, c.max_batch, c.max_queue, c.max_model_len, Metrics(c.name))

    def ready_engine(self) -> Engine:
        if self.engine is None:
            raise APIError(503, f"the model failed to load: {self.error}" if self.error else "the model is loading",
                           type="server_error" if self.error else "service_unavailable")
        return self.engine


def create_app(config: ServerConfig, llm: LLM | None = None,
               on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The app; pass `llm` to serve an already loaded model (tests), else it loads `config.model` in the background
    (`on_fatal(message)` is called if that fails)."""
    app = FastAPI(title="hyperdecode", version=__version__)
    state = State(config, llm, on_fatal)
    app.state.hd = state
    app.add_middleware(BodyLimit, max_bytes=config.body_limit)

    @app.exception_handler(APIError)
    async def api_error(_: HTTPRequest, e: APIError) -> JSONResponse:
        return JSONResponse(error_body(e), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestError)
    async def request_error(_: HTTPRequest, e: RequestError) -> JSONResponse:
        return JSONResponse(error_body(APIError(400, str(e), param=e.param)), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: HTTPRequest, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(APIError(e.status_code, str(e.detail), type=kind)), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def query_error(_: HTTPRequest, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(APIError(400, f"{param}: {first.get('msg')}", param=param)), status_code=400)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(_: HTTPRequest, e: ClientDisconnect) -> Response:
        return Response(status_code=499)  # it left while sending its body: nothing to answer, nothing to log

    @app.exception_handler(Exception)
    async def server_fault(request: HTTPRequest, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                type="server_error")), status_code=500)

    async def require_key(request: HTTPRequest) -> None:
        if config.api_key:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {config.api_key}".encode()):
                raise APIError(401, "invalid or missing API key", type="authentication_error", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_key)])

    async def body_of(request: HTTPRequest) -> tuple[Any, int]:
        """The JSON body and its size in bytes."""
        raw = await request.body()
        try:
            body = json.loads(raw)
            found = lone_surrogate(body, "")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the request body is not valid JSON ({e})") from None
        except RecursionError:
            raise APIError(400, "the request body is nested too deeply") from None
        if found:
            raise APIError(400, f"'{found}' is not valid Unicode (it has a lone surrogate)", param=found)
        return body, len(raw)

    @app.get("/health")
    async def health(ready: bool = False) -> Any:
        """Liveness: the engine thread beats (no generation queued). `?ready=1`: readiness, as /ready."""
        engine = state.ready_engine()
        if ready:
            return await readiness(engine)
        live = engine.liveness()
        if not live["engine_alive"]:
            raise APIError(503, "the engine thread is not running", type="server_error")
        if live["heartbeat_age_s"] > config.stall_timeout:
            raise APIError(503, f"the engine thread has not stepped for {live['heartbeat_age_s']:.0f} s",
                           type="server_error")
        return {"status": "ok", **live}

    @app.get("/ready")
    async def ready() -> dict:
        return await readiness(state.ready_engine())

    probe_lock = asyncio.Lock()  # one probe in the engine at a time: the probes' row is one row

    async def readiness(engine: Engine) -> dict:
        """A one-token generation in the probes' own slot (never behind user requests), within health_timeout."""
        start = time.monotonic()
        try:
            await asyncio.wait_for(probe_lock.acquire(), config.health_timeout)
        except asyncio.TimeoutError:
            raise APIError(503, "readiness probes are queued beyond the health timeout", type="server_error") from None
        try:
            seq, stream = engine.inputs.process([0], SamplingParams(max_tokens=1, ignore_eos=True))
            req = engine.submit(seq, stream, config.health_timeout, rid="readiness-probe", probe=True)
            try:
                kind, _ = await final_event(req, config.health_timeout + 1)
            finally:
                engine.cancel(req)
        finally:
            probe_lock.release()
        if kind != "done":
            raise APIError(503, "the engine did not complete a one-token generation in time", type="server_error")
        return {"status": "ready", "generation_s": round(time.monotonic() - start, 4)}

    def model_card() -> dict:
        engine = state.ready_engine()
        return {"id": config.name, "object": "model", "created": int(time.time()), "owned_by": "hyperdecode",
                "max_model_len": engine.max_model_len}

    def check_served(model_id: str) -> None:
        if model_id != config.name:
            raise APIError(404, f"the model '{model_id}' does not exist (serving '{config.name}')", param="model",
                           type="not_found_error", code="model_not_found")

    @v1.get("/models")
    async def models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @v1.get("/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        card = model_card()
        check_served(model_id)
        return card

    @app.get("/version")
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/metrics")
    async def metrics() -> Response:
        engine = state.ready_engine()
        return Response(generate_latest(engine.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/tokenize")
    async def tokenize(request: HTTPRequest) -> dict:
        engine = state.ready_engine()
        body, _ = await body_of(request)
        if isinstance(body, dict) and isinstance(body.get("prompt"), str):
            ids = engine.inputs.prompt_ids(body["prompt"])
        elif isinstance(body, dict) and "messages" in body:
            g = parse_chat({"model": config.name, **body})
            ids = engine.inputs.chat_prompt(g.prompt, g.template_kwargs)
        else:
            raise APIError(400, "'prompt' (a string) or 'messages' is required", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: HTTPRequest) -> dict:
        engine = state.ready_engine()
        body, _ = await body_of(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        vocab = engine.llm.config.vocab_size
        if not isinstance(ids, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in ids):
            raise APIError(400, f"'tokens' must be a list of token ids in [0, {vocab})", param="tokens")
        return {"prompt": engine.llm.tokenizer.decode(ids)}

    @v1.post("/chat/completions")
    async def chat(request: HTTPRequest) -> Response:
        body, size = await body_of(request)
        return await generate(request, parse_chat(body), size)

    @v1.post("/completions")
    async def completions(request: HTTPRequest) -> Response:
        body, size = await body_of(request)
        return await generate(request, parse_completion(body), size)

    async def generate(request: HTTPRequest, g: GenerateRequest, size: int) -> Response:
        engine = state.ready_engine()
        check_served(g.model)
        if g.kind == "completion":
            engine.inputs.check_prompt(g.prompt)  # what needs no tokenizer is a 400 even under full load
        rid = new_id(g.kind, request.headers.get("x-request-id"))
        timeout = request_deadline(g.timeout_s, config.request_timeout)
        with engine.admission():  # 429 here, before the template and tokenizer run
            if size > TOKENIZE_INLINE_BYTES:
                seq, stream = await asyncio.to_thread(make_sequence, engine, g)
            else:
                seq, stream = make_sequence(engine, g)
            req = engine.submit(seq, stream, timeout, rid)
        headers = {"x-request-id": rid}
        if g.stream:
            return StreamingResponse(sse(engine, req, g, rid), media_type="text/event-stream", headers=headers)
        watcher = asyncio.create_task(cancel_on_disconnect(request, engine, req))
        try:
            kind, payload = await final_event(req, None if timeout is None else timeout + ENGINE_SLACK_S)
        finally:
            gone = watcher.done()
            watcher.cancel()
            engine.cancel(req)  # a no-op once finished
        if gone:
            return Response(status_code=499)  # the client went away
        if kind != "done":
            raise payload
        return JSONResponse(completion_body(g.kind, rid, config.name, payload.text, payload.finish_reason,
                                            payload.stats.prompt_tokens, payload.stats.output_tokens,
                                            spec_usage(payload), payload.stats.cached_tokens), headers=headers)

    async def sse(engine: Engine, req: Request, g: GenerateRequest, rid: str) -> AsyncIterator[str]:
        created, first, n = int(time.time()), True, len(req.seq.prompt_ids)
        bound = None if req.deadline is None else req.deadline + ENGINE_SLACK_S
        try:
            while True:
                kind, payload = await next_event(req, bound)
                if kind == "text":
                    extra = usage(n, len(req.seq.output_ids), None, req.seq.num_cached) if g.continuous_usage else None
                    yield event(chunk(g.kind, rid, config.name, created, payload, None, first, extra))
                    first = False
                elif kind == "done":
                    yield event(chunk(g.kind, rid, config.name, created, "", payload.finish_reason, first))
                    if g.include_usage:
                        u = usage(payload.stats.prompt_tokens, payload.stats.output_tokens, spec_usage(payload),
                                  payload.stats.cached_tokens)
                        yield event(chunk(g.kind, rid, config.name, created, None, None, False, u))
                    yield "data: [DONE]\n\n"
                    return
                else:
                    yield event(error_body(payload))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            engine.cancel(req)  # runs when the client disconnects mid-stream (the response task is cancelled)

    app.include_router(v1)
    return app


def spec_usage(result: Generation) -> dict | None:
    """The request's speculative-decoding counts for its usage object (None when speculation is off)."""
    spec = result.stats.speculative
    return None if spec is None else spec.as_dict()


def make_sequence(engine: Engine, g: GenerateRequest) -> tuple[Sequence, OutputStream]:
    """The request path `hd.LLM` uses too; OpenAI's default length: chat to the end of the context, completions 16."""
    if g.kind == "chat":
        return engine.inputs.process(params=g.params, messages=g.prompt, template_kwargs=g.template_kwargs)
    return engine.inputs.process(g.prompt, g.params, default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS)


# Characters JSON leaves raw that str.splitlines() (and so many SSE clients, httpx's aiter_lines among them) take
# for line breaks: escaped, so that one event is one line for every client.
LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False).translate(LINE_BREAKS)}\n\n"


def request_deadline(asked: float | None, server: float | None) -> float | None:
    """A request's deadline in seconds: its own request_timeout may shorten the server's, never lengthen it.

    >>> request_deadline(5.0, 600.0), request_deadline(1e9, 600.0), request_deadline(None, None)
    (5.0, 600.0, None)
    """
    given = [t for t in (asked, server) if t is not None]
    return min(given) if given else None


def engine_silent() -> APIError:
    return APIError(503, "the engine did not answer within the request's deadline", type="server_error")


async def next_event(req: Request, until: float | None) -> tuple[str, Any]:
    """The request's next event ("text", "done" or "error"); an "error" when the engine says nothing by `until`
    (a monotonic time; None: no bound)."""
    if until is None:
        return await req.queue.get()
    try:
        return await asyncio.wait_for(req.queue.get(), max(until - time.monotonic(), 0.001))
    except asyncio.TimeoutError:
        return "error", engine_silent()


async def final_event(req: Request, within_s: float | None) -> tuple[str, Any]:
    """The request's last event, "done" (with its Generation) or "error" (with its APIError), within `within_s`."""
    until = None if within_s is None else time.monotonic() + within_s
    while True:
        kind, payload = await next_event(req, until)
        if kind != "text":
            return kind, payload


async def cancel_on_disconnect(request: HTTPRequest, engine: Engine, req: Request) -> None:
    """Waits for the client to go away (the body is already read, so the next ASGI message is the disconnect) and
    cancels its request at once: the engine drops it before its next step."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            engine.cancel(req)
            return
