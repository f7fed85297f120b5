"""Chat and completion requests from admission to the last byte: their sequences (each prompt of a batch times `n`
samples, a sample's siblings reusing its cached prompt), one JSON body or SSE chunks merged over the choices, and
what a choice carries in OpenAI's shapes: text, tool calls (toolcalls.py's parsers, or JSON forced by a grammar),
logprobs and the usage."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from ..engine.chat import template_tool_support
from ..engine.output import Generation, OutputStream
from ..engine.sequence import Sequence
from ..errors import RequestError
from .engine_thread import EngineThread, Submitted
from .kv_transfer import attach, response_fields
from .protocol import APIError, GenerateRequest, error_body, usage
from .toolcalls import ToolStream, new_call_id, parse_tool_calls, parser_for_template

__all__ = ["Choice", "sequences", "submit", "results", "completion_body", "message_of", "respond_sse", "next_event",
           "final_event", "event", "request_deadline", "tool_parser_name"]

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
ENGINE_SLACK_S = 5.0  # a handler waits this much past its request's deadline for the engine's answer
# Characters JSON leaves raw that str.splitlines() (and so many SSE clients, httpx's aiter_lines among them) take
# for line breaks: escaped, so that one event is one line for every client.
LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


class ForcedCalls:
    """Tool calls whose output a grammar forced into JSON (tool_choice "required" or a named function): the
    calls come out whole when the output ends; text that does not parse (cut by max_tokens) comes out as content."""

    def __init__(self, choice: Any):
        self.choice = choice
        self.text = ""
        self.called = False

    def parse(self, text: str) -> tuple[str | None, list[dict]]:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return text or None, []
        if isinstance(self.choice, dict):
            pairs = [(self.choice["name"], value)]
        else:
            pairs = [(c["name"], c["parameters"]) for c in value]
        calls = []
        for name, args in pairs:
            arguments = json.dumps(args, ensure_ascii=False)
            calls.append({"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}})
        return None, calls

    def feed(self, delta: str) -> list[dict]:
        self.text += delta
        return []

    def close(self) -> list[dict]:
        content, calls = self.parse(self.text)
        self.called = bool(calls)
        if calls:
            return [{"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}]
        return [{"content": content}] if content else []


@dataclass(eq=False)
class Choice:
    """One sampled output of a request: its engine request, the prompt it continues, and its tool-call reader."""
    index: int
    req: Submitted
    prompt_text: str = ""  # completions with echo: the prompt, returned before the completion
    tools: ToolStream | ForcedCalls | None = None
    sent_role: bool = False
    offset: int = 0  # completions' text_offset of the next token


def tool_parser_name(engine: EngineThread, configured: str | None) -> str:
    """The parser for the model's tool-call text: --tool-call-parser, else the one the chat template's markers
    name, else Hermes's (the form chat.py writes tools in for templates that know none)."""
    if configured:
        return configured
    template = engine.inputs.tokenizer.chat_template if engine.inputs.tokenizer is not None else None
    found = parser_for_template(template) if any(template_tool_support(template)) else None
    return found or "hermes"


def tool_reader(g: GenerateRequest, parser: str) -> ToolStream | ForcedCalls | None:
    if not g.tools or g.tool_choice == "none":
        return None
    if g.tool_choice == "auto":
        return ToolStream(parser, g.tools, None if g.parallel_tool_calls else 1)
    return ForcedCalls(g.tool_choice)


def sequences(engine: EngineThread, g: GenerateRequest) -> list[tuple[Sequence, OutputStream, str]]:
    """Each prompt's n samples (InputProcessor.samples: the first tokenized and templated, its siblings copies).
    A grammar llguidance refuses is a 400 naming the field that gave it."""
    try:
        return _sequences(engine, g)
    except RequestError as e:
        if e.param == "structured_outputs" and g.structured_field:
            raise RequestError(str(e), param=g.structured_field) from None
        raise


def _sequences(engine: EngineThread, g: GenerateRequest) -> list[tuple[Sequence, OutputStream, str]]:
    out = []
    for prompt in g.prompts:
        if g.kind == "chat":
            first, stream = engine.inputs.process(params=g.params, messages=prompt)
        else:
            first, stream = engine.inputs.process(prompt, g.params, default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS)
        echo = ""
        if g.echo:
            echo = prompt if isinstance(prompt, str) else engine.llm.tokenizer.decode(first.prompt_ids)
        out += [(seq, sample_stream, echo) for seq, sample_stream in engine.inputs.samples(first, stream, g.n)]
    attach(g.kv_transfer, engine.kv_role, out, g.kv_transfer_params, g.echo and g.logprobs is not None)
    return out


def submit(engine: EngineThread, g: GenerateRequest, made: list[tuple[Sequence, OutputStream, str]],
           timeout: float | None, rid: str, parser: str) -> list[Choice]:
    return [Choice(i, engine.submit(seq, stream, timeout, rid if len(made) == 1 else f"{rid}-{i}"), echo,
                   tool_reader(g, parser)) for i, (seq, stream, echo) in enumerate(made)]


async def results(choices: list[Choice], within_s: float | None) -> list[Generation]:
    """Every choice's Generation; the first choice's error (an APIError) is raised."""
    finals = await asyncio.gather(*(final_event(c.req, within_s) for c in choices))
    for kind, payload in finals:
        if kind != "done":
            raise payload
    return [payload for _, payload in finals]


def spec_usage(result: Generation) -> dict | None:
    """The request's speculative-decoding counts for its usage object (None when speculation is off)."""
    spec = result.stats.speculative
    return None if spec is None else spec.as_dict()


def total_usage(choices: list[Choice], outputs: list[Generation]) -> dict[str, Any]:
    """Each prompt counted once (its first sample's cache hits), every sample's output tokens."""
    firsts = [(c, r) for c, r in zip(choices, outputs) if c.req.seq.after is None]
    spec = spec_usage(outputs[0]) if len(outputs) == 1 else None
    return usage(sum(r.stats.prompt_tokens for _, r in firsts), sum(r.stats.output_tokens for r in outputs), spec,
                 sum(r.stats.cached_tokens for _, r in firsts))


def finish_reason(reason: str, calls: list[dict]) -> str:
    return "tool_calls" if calls and reason == "stop" else reason


def message_of(choice: Choice, result: Generation) -> tuple[dict[str, Any], str]:
    """A finished chat choice's assistant message (content and tool calls) and finish reason."""
    content, calls = result.text, []
    if isinstance(choice.tools, ToolStream):
        content, calls = parse_tool_calls(result.text, choice.tools.parser, choice.tools.tools, choice.tools.limit)
    elif isinstance(choice.tools, ForcedCalls):
        content, calls = choice.tools.parse(result.text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message, finish_reason(result.finish_reason, calls)


def chat_logprobs(entries: list, tokenizer: Any) -> dict[str, Any]:
    def item(token: int, logprob: float) -> dict[str, Any]:
        return {"token": tokenizer.decode([token]), "logprob": logprob, "bytes": list(tokenizer.token_bytes(token))}
    return {"content": [{**item(token, lp), "top_logprobs": [item(t, v) for t, v in top]}
                        for token, lp, top in entries]}


def completion_logprobs(entries: list, tokenizer: Any, choice: Choice, with_top: bool) -> dict[str, Any]:
    """OpenAI's legacy shape; an entry None is the prompt's first token (nothing scores it)."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for entry in entries:
        token, lp, top = entry
        text = tokenizer.decode([token])
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({tokenizer.decode([t]): v for t, v in top} if with_top and lp is not None else None)
        out["text_offset"].append(choice.offset)
        choice.offset += len(text)
    return out


def prompt_entries(seq: Sequence) -> list:
    """Echo's prompt logprobs: the first token unscored, then each prompt token's."""
    return [(seq.prompt_ids[0], None, [])] + list(seq.prompt_logprobs)


def completion_body(g: GenerateRequest, rid: str, model: str, choices: list[Choice], outputs: list[Generation],
            tokenizer: Any) -> dict[str, Any]:
    """The whole (non-streamed) response."""
    items = []
    for c, r in zip(choices, outputs):
        entries = c.req.seq.logprobs[:r.stats.output_tokens] if g.logprobs is not None else None
        if g.kind == "chat":
            message, finish = message_of(c, r)
            logprobs = None if entries is None else chat_logprobs(entries, tokenizer)
            items.append({"index": c.index, "message": message, "logprobs": logprobs, "finish_reason": finish})
            continue
        if entries is not None and g.echo:
            entries = prompt_entries(c.req.seq) + entries
        logprobs = None if entries is None else completion_logprobs(entries, tokenizer, c, g.logprobs > 0)
        items.append({"index": c.index, "text": c.prompt_text + r.text, "logprobs": logprobs,
                      "finish_reason": r.finish_reason})
    return {"id": rid, "object": "chat.completion" if g.kind == "chat" else "text_completion",
            "created": int(time.time()), "model": model, "choices": items, "usage": total_usage(choices, outputs),
            **response_fields(outputs)}


def pieces(g: GenerateRequest, choice: Choice, text: str, entries: list, tokenizer: Any) -> list[dict[str, Any]]:
    """A choice's streamed pieces for new text: chat deltas (content, tool-call deltas) or completion text."""
    if g.kind != "chat":
        logprobs = None
        if g.logprobs is not None and entries:
            logprobs = completion_logprobs(entries, tokenizer, choice, g.logprobs > 0)
        return [{"index": choice.index, "text": text, "logprobs": logprobs, "finish_reason": None}]
    deltas = choice.tools.feed(text) if choice.tools is not None else ([{"content": text}] if text else [])
    logprobs = chat_logprobs(entries, tokenizer) if g.logprobs is not None and entries else None
    if logprobs is not None and not deltas:
        deltas = [{}]
    out = []
    for delta in deltas:
        if not choice.sent_role:
            delta = {"role": "assistant", **delta}
            choice.sent_role = True
        out.append({"index": choice.index, "delta": delta, "logprobs": logprobs, "finish_reason": None})
        logprobs = None
    return out


def last_pieces(g: GenerateRequest, choice: Choice, result: Generation) -> list[list[dict[str, Any]]]:
    """A choice's closing chunks, one choice entry each (a chunk never holds one index twice): what a tool reader
    still held (the role rides on the first delta if no text went before), then the finish reason."""
    if g.kind != "chat":
        return [[{"index": choice.index, "text": "", "logprobs": None, "finish_reason": result.finish_reason}]]
    held = choice.tools.close() if choice.tools is not None else []
    called = choice.tools is not None and choice.tools.called
    reason = finish_reason(result.finish_reason, [{}] if called else [])
    out = []
    for delta in [*held, {}]:
        if not choice.sent_role:
            delta = {"role": "assistant", **delta}
            choice.sent_role = True
        out.append([{"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": None}])
    out[-1][0]["finish_reason"] = reason
    return out


async def respond_sse(engine: EngineThread, g: GenerateRequest, rid: str, model: str, choices: list[Choice],
                      tokenizer: Any) -> AsyncIterator[str]:
    """The SSE stream: each choice's chunks as its events arrive, a usage chunk when asked, then [DONE]."""
    created = int(time.time())
    kind = "chat.completion.chunk" if g.kind == "chat" else "text_completion"

    def chunk(items: list[dict], usage_: dict | None = None, extra: dict | None = None) -> str:
        body = {"id": rid, "object": kind, "created": created, "model": model, "choices": items, **(extra or {})}
        if usage_ is not None:
            body["usage"] = usage_
        return event(body)

    merged: asyncio.Queue = asyncio.Queue()
    bound = None if choices[0].req.deadline is None else choices[0].req.deadline + ENGINE_SLACK_S

    async def follow(choice: Choice) -> None:
        while True:
            kind_, payload = await next_event(choice.req, bound)
            await merged.put((choice, kind_, payload))
            if kind_ != "text":
                return

    tasks = [asyncio.create_task(follow(c)) for c in choices]
    outputs: dict[int, Generation] = {}
    try:
        for c in choices:
            if g.echo and c.prompt_text:
                entries = prompt_entries(c.req.seq) if g.logprobs is not None else []
                yield chunk(pieces(g, c, c.prompt_text, entries, tokenizer))
        while len(outputs) < len(choices):
            choice, kind_, payload = await merged.get()
            if kind_ == "text":
                text, entries = payload
                items = pieces(g, choice, text, entries, tokenizer)
                extra = None
                if g.continuous_usage:
                    seq = choice.req.seq
                    extra = usage(len(seq.prompt_ids), seq.num_output, None, seq.num_cached)
                for j, item in enumerate(items):  # one entry a chunk: clients merge a chunk's entries by index
                    yield chunk([item], extra if j == len(items) - 1 else None)
            elif kind_ == "done":
                outputs[choice.index] = payload
                closing = last_pieces(g, choice, payload)
                for j, items in enumerate(closing):  # the finish reason's chunk also carries kv_transfer_* fields
                    yield chunk(items, None, response_fields([payload]) if j == len(closing) - 1 else None)
            else:
                yield event(error_body(payload))
                yield "data: [DONE]\n\n"
                return
        if g.include_usage:
            yield chunk([], total_usage(choices, [outputs[c.index] for c in choices]))
        yield "data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        for c in choices:
            engine.cancel(c.req)  # runs when the client disconnects mid-stream (the response task is cancelled)


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


async def next_event(req: Submitted, until: float | None) -> tuple[str, Any]:
    """The request's next event ("text", "done" or "error"); an "error" when the engine says nothing by `until`
    (a monotonic time; None: no bound)."""
    if until is None:
        return await req.queue.get()
    try:
        return await asyncio.wait_for(req.queue.get(), max(until - time.monotonic(), 0.001))
    except asyncio.TimeoutError:
        return "error", engine_silent()


async def final_event(req: Submitted, within_s: float | None) -> tuple[str, Any]:
    """The request's last event, "done" (with its Generation) or "error" (with its APIError), within `within_s`."""
    until = None if within_s is None else time.monotonic() + within_s
    while True:
        kind, payload = await next_event(req, until)
        if kind != "text":
            return kind, payload
