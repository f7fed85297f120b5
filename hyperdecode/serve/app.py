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
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..disagg.config import parse_kv_transfer_config
from ..engine.llm import LLM
from ..engine.output import Generation
from ..engine.chat import lone_surrogate
from ..engine.sampling import SamplingParams
from ..errors import RequestError
from .engine_thread import EngineThread, Submitted
from .limits import BodyLimit, default_max_request_bytes
from .metrics import Metrics
from .openapi import document
from .playground import router as playground_router
from .generation import ENGINE_SLACK_S, Choice, completion_body, final_event, next_event, request_deadline, \
    respond_sse, results, sequences, submit, tool_parser_name
from .responses import new_item_id, output_items, parse_response_request, renamed, response_body, response_events, \
    status_of
from .protocol import APIError, GenerateRequest, error_body, new_id, parse_chat, parse_completion

__all__ = ["ServerConfig", "create_app"]

TOKENIZE_INLINE_BYTES = 16384  # bodies above this are templated and tokenized in a worker thread
log = logging.getLogger("hyperdecode.serve")


@dataclass
class ServerConfig:
    model: str = "smollm2"
    served_model_name: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    backend: str = "auto"
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
    tool_call_parser: str | None = None  # vLLM's --tool-call-parser (None: from the chat template)
    quantize: str = "auto"  # a GGUF's quantized blocks kept as they are on the CPU (model/quant.py), or "none"
    activations: str = "auto"  # how decode rows meet those blocks: "fp32" (exact), "int8" (model/quant.py) or "auto"
    kv_transfer_config: str | dict | None = None  # vLLM's --kv-transfer-config: a disaggregated instance's role

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
                            enable_prefix_caching=c.enable_prefix_caching, quantize=c.quantize,
                            activations=c.activations))
        except Exception as e:  # reported by /health and every request
            self.error = f"{type(e).__name__}: {e}"
            log.error("the model '%s' failed to load: %s", self.config.model, self.error)
            if self.on_fatal is not None:
                self.on_fatal(self.error)

    def _start(self, llm: LLM) -> None:
        c = self.config
        llm.speculate(c.speculative_config)
        engine = EngineThread(llm, c.max_batch, c.max_queue, c.max_model_len, Metrics(c.name))
        kv = parse_kv_transfer_config(c.kv_transfer_config)
        if kv is not None:
            from ..disagg.nixl import NixlConnector
            mtp = llm.core.speculative is not None and llm.core.speculative.method == "mtp"
            try:
                engine.connect(NixlConnector(kv, llm.core.runner.model, c.name, engine.metrics, engine.poke, mtp),
                               kv.kv_role)
            except Exception:
                engine.shutdown()
                raise
            log.info("KV transfer: %s, engine %s, NIXL side channel on %s:%d", kv.kv_role, kv.engine_id, kv.kv_ip,
                     engine.core.connector.side.port)
        self.engine = engine

    def ready_engine(self) -> EngineThread:
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

    app.add_middleware(Faults)  # inside Starlette's outermost layer, which would log a fault a second time

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

    async def readiness(engine: EngineThread) -> dict:
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
                "max_model_len": engine.max_model_len, "backend": engine.llm.backend, "device": str(engine.llm.device),
                "kernels": engine.llm.backend_label, "speculative": engine.llm.speculative,
                "prefix_caching": engine.llm.prefix_caching}

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
        if isinstance(body, dict) and body.get("prompt") == "":
            ids = []  # nothing to count (vLLM answers the same)
        elif isinstance(body, dict) and isinstance(body.get("prompt"), str):
            ids = engine.inputs.prompt_ids(body["prompt"])
        elif isinstance(body, dict) and "messages" in body:
            g = parse_chat({"model": config.name, **body})
            ids = engine.inputs.chat_prompt(g.prompt)  # its tools count, as in the chat
        else:
            raise APIError(400, "'prompt' (a string) or 'messages' is required", param="prompt")
        return {"tokens": ids, "count": len(ids), "max_model_len": engine.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: HTTPRequest) -> dict:
        engine = state.ready_engine()
        body, _ = await body_of(request)
        ids = body.get("tokens") if isinstance(body, dict) else None
        vocab = engine.llm.config.vocab_size
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab
                                                for t in ids):
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

    async def admit(request: HTTPRequest, g: GenerateRequest, size: int, rid: str
                    ) -> tuple[EngineThread, list[Choice], float | None]:
        """The request's choices submitted to the engine, and its deadline."""
        engine = state.ready_engine()
        check_served(g.model)
        if g.kind == "completion":
            for prompt in g.prompts:  # what needs no tokenizer is a 400 even under full load
                engine.inputs.check_prompt(prompt)
        timeout = request_deadline(g.timeout_s, config.request_timeout)
        parser = tool_parser_name(engine, config.tool_call_parser)
        with engine.admission():  # 429 here, before the template and tokenizer run
            if size > TOKENIZE_INLINE_BYTES:
                made = await asyncio.to_thread(sequences, engine, g)
            else:
                made = sequences(engine, g)
            return engine, submit(engine, g, made, timeout, rid, parser), timeout

    async def answer(request: HTTPRequest, engine: EngineThread, choices: list[Choice], timeout: float | None,
                     respond: Callable[[list[Generation]], dict], headers: dict[str, str]) -> Response:
        """A non-streamed answer: the choices' results (cancelled when the client leaves) as `respond` shapes them."""
        reqs = [c.req for c in choices]
        watcher = asyncio.create_task(cancel_on_disconnect(request, engine, reqs))
        try:
            outputs = await results(choices, None if timeout is None else timeout + ENGINE_SLACK_S)
        finally:
            gone = watcher.done()
            watcher.cancel()
            for req in reqs:
                engine.cancel(req)  # a no-op once finished
        if gone:
            return Response(status_code=499)  # the client went away
        return JSONResponse(respond(outputs), headers=headers)

    async def generate(request: HTTPRequest, g: GenerateRequest, size: int) -> Response:
        rid = new_id(g.kind, request.headers.get("x-request-id"))
        engine, choices, timeout = await admit(request, g, size, rid)
        headers = {"x-request-id": rid}
        tokenizer = engine.inputs.tokenizer
        if g.stream:
            return StreamingResponse(respond_sse(engine, g, rid, config.name, choices, tokenizer),
                                     media_type="text/event-stream", headers=headers)
        return await answer(request, engine, choices, timeout,
                            lambda outputs: completion_body(g, rid, config.name, choices, outputs, tokenizer), headers)

    @v1.post("/responses")
    async def responses(request: HTTPRequest) -> Response:
        body, size = await body_of(request)
        g, raw = parse_response_request(body)
        rid = request.headers.get("x-request-id") or new_item_id("resp")
        try:
            engine, choices, timeout = await admit(request, g, size, rid)
        except (APIError, RequestError) as e:
            raise renamed(e) from None
        headers = {"x-request-id": rid}
        choice = choices[0]
        if g.stream:
            bound = None if choice.req.deadline is None else choice.req.deadline + ENGINE_SLACK_S
            events = response_events(rid, config.name, raw, choice, lambda req: next_event(req, bound))
            return StreamingResponse(cancel_after(events, engine, [choice.req]), media_type="text/event-stream",
                                     headers=headers)
        created = time.time()
        return await answer(request, engine, choices, timeout, lambda outputs: response_body(
            rid, config.name, raw, created, status_of(outputs[0]), output_items(choice, outputs[0]), outputs[0]),
            headers)

    app.include_router(v1)
    app.include_router(playground_router)

    def contract() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(get_openapi(title=app.title, version=app.version, routes=app.routes))
        return app.openapi_schema

    app.openapi = contract
    return app


class Faults:
    """A fault in a route (a bug: no valid request should reach one) becomes a 500 with the OpenAI envelope, logged
    once with its traceback; after a response has started, the connection is closed instead."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as e:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                return
            response = JSONResponse(error_body(APIError(500, f"internal error: {type(e).__name__}: {e}",
                                                        type="server_error")), status_code=500)
            await response(scope, receive, send)


async def cancel_after(events: AsyncIterator[str], engine: EngineThread, reqs: list[Submitted]) -> AsyncIterator[str]:
    """A stream that cancels its requests when it ends (also when the client leaves mid-stream)."""
    try:
        async for line in events:
            yield line
    finally:
        for req in reqs:
            engine.cancel(req)


async def cancel_on_disconnect(request: HTTPRequest, engine: EngineThread, reqs: list[Submitted]) -> None:
    """Waits for the client to go away (the body is already read, so the next ASGI message is the disconnect) and
    cancels its requests at once: the engine drops them before its next step."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            for req in reqs:
                engine.cancel(req)
            return
