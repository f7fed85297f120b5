"""The `hyperdecode` command: generate, chat, models, inspect, plan, export, serve, bench serve, fabric."""
from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from .engine.llm import BACKENDS
from .engine.speculative import parse_speculative
from .flags import check_at_least, check_positive, flag
from .serve.toolcalls import parser_names

__all__ = ["main"]


WEIGHT_BYTES = {"bf16": 2.0, "fp8": 1.0, "fp32": 4.0}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="preset name, HF checkpoint directory or .gguf file "
                                                      "(default: smollm2, the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    add_backend_arg(p)
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same text)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--parallel", default=None, choices=["tp", "hetero"],
                   help="split the model over the ranks torchrun starts: torchrun --nproc-per-node W -m hyperdecode "
                        "generate ... --parallel tp (tensor parallel) | hetero (GLM-5 / DeepSeek-V3.2: rank 0 runs "
                        "the DSA indexer, the others attend; the MoE on all); rank 0 prints; NCCL on GPUs, gloo on "
                        "the CPU")
    p.add_argument("--speculative", default=None, metavar="METHOD:K",
                   help="speculative decoding, K draft tokens verified per step: mtp:K (GLM-5 / DeepSeek checkpoints "
                        "with an MTP layer), ngram:K (prompt lookup), suffix:K (suffix decoding); or vLLM's JSON "
                        "config. Greedy output is unchanged; sampled output keeps the model's distribution")


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="auto (default: the fastest here, measured once and cached), reference (PyTorch), graph "
                        "(CUDA graphs), mega (the megakernel; without a GPU it runs in Triton's interpreter, for "
                        "checking only), native (the CPU's decode step compiled to C, Llama family)")
    p.add_argument("--quantize", default="auto", choices=["auto", "none", "int8", "int4"],
                   help="auto: a GGUF's Q4_0 / Q4_1 / Q8_0 weights stay quantized on the CPU (the reference "
                        "and native backends multiply the blocks as stored); none: every weight dequantized to "
                        "--dtype; int8 / int4: a checkpoint's projections quantized into 32-value blocks (CPU, "
                        "Llama family)")
    p.add_argument("--activations", default="auto", choices=["auto", "fp32", "int8"],
                   help="how decode rows meet quantized weights on the CPU: fp32 (exact: the dequantized weights' "
                        "results up to the order of the sums), int8 (each 32-value block of activations rounded to "
                        "int8 as llama.cpp does: faster, within a stated bound), auto (default: fp32 on x86, int8 on "
                        "ARM64)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the matmuls and the quantized kernel (default: torch's, one per physical "
                        "core)")


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                seed=args.seed, stop=args.stop)


def check_engine_args(args: argparse.Namespace) -> None:
    """generate / chat: the sampling, --device and --backend flags, checked before the model loads (seconds)."""
    from .engine.llm import check_activations, check_backend
    from .engine.sampling import SamplingParams
    from .errors import RequestError
    from .model.loader import resolve_device
    try:
        SamplingParams(**sampling(args))
    except RequestError as e:
        raise RequestError(flag_message(str(e), e.param), param=e.param) from None
    check_backend(args.backend, resolve_device(args.device, name="--device"), name="--backend")
    check_activations(args.activations, args.quantize, name="--activations")
    speculative_flag(args.speculative, "--speculative")
    set_threads(args)


def set_threads(args: argparse.Namespace) -> None:
    """--threads: torch's intra-op threads, which the quantized kernel follows too."""
    check_at_least(args, {"threads": 1})
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)


def speculative_flag(value: str | None, flag_name: str) -> Any:
    """A speculative-decoding flag's config (None: off), or a ConfigError naming the flag."""
    from .errors import ConfigError
    try:
        return parse_speculative(value)
    except ConfigError as e:
        raise ConfigError(f"{flag_name}: {e}") from None


def load_llm(args: argparse.Namespace) -> Any:
    """The LLM of generate / chat, which take text, so the model needs a tokenizer."""
    from .engine.llm import LLM
    from .errors import ConfigError
    llm = LLM(args.model, device=args.device, dtype=args.dtype, backend=args.backend, parallel=args.parallel,
              quantize=args.quantize, activations=args.activations)
    if args.parallel and llm.rank != 0:
        follow_and_exit(llm)
    try:
        llm.tokenizer  # noqa: B018 (the property raises when the model has none)
    except ConfigError:
        raise ConfigError(f"--model {args.model}: the model has no tokenizer (no tokenizer.json), so it cannot "
                          "encode text") from None
    spec = parse_speculative(args.speculative)
    if spec is not None and spec.method == "mtp" and getattr(llm.model, "mtp", None) is None:
        raise ConfigError(f"--speculative {args.speculative}: model '{args.model}' has no MTP layer; use ngram:K or "
                          "suffix:K")
    return llm


def flag_message(message: str, param: str | None) -> str:
    """A message about the parameter `param` naming its flag instead.

    >>> flag_message("'top_p' must be a number in (0, 1], got 2.0", "top_p")
    '--top-p must be a number in (0, 1], got 2.0'
    """
    if param is None:
        return message
    named = message.replace(f"'{param}'", flag(param), 1)
    return named if flag(param) in named else f"{flag(param)}: {message}"


def build_parser() -> Parser:
    parser = Parser(prog="hyperdecode", description="Low-latency LLM inference.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    g = sub.add_parser("generate", help="complete a prompt, streaming the text to stdout")
    g.add_argument("prompt")
    add_model_args(g)
    c = sub.add_parser("chat", help="interactive multi-turn chat using the model's chat template (Ctrl-C stops an "
                                    "answer and leaves that turn out of the conversation)")
    add_model_args(c)
    c.add_argument("--system", default=None, help="system message")
    sub.add_parser("models", help="list presets and cached models")
    i = sub.add_parser("inspect", help="parameters, KV bytes, bytes per decoded token and HBM roofline of a model")
    i.add_argument("model", help="preset name, HF checkpoint directory or .gguf file")
    i.add_argument("--context", type=int, default=4096, help="tokens already in the cache (default 4096)")
    i.add_argument("--hw", default="h200", choices=["h100", "h200", "b200", "cpu"],
                   help="the hardware table's machine (hyperdecode/hardware.py) whose measured copy bandwidth is the "
                        "roofline's (default h200)")
    i.add_argument("--hbm-tbps", type=float, default=None, help="memory bandwidth in TB/s instead of the table's")
    i.add_argument("--weight-dtype", choices=list(WEIGHT_BYTES), default="bf16")
    i.add_argument("--kv-dtype", choices=list(WEIGHT_BYTES), default="bf16")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    pl = sub.add_parser("plan", help="multi-GPU batch-1 decode latency model: TP vs hetero (indexer rank), MTP")
    from .parallel.report import add_plan_args
    add_plan_args(pl)
    v = sub.add_parser("serve", help="OpenAI-compatible HTTP server (streaming, metrics, continuous batching)")
    v.add_argument("--model", default="smollm2", help="preset, HF checkpoint directory or .gguf (default smollm2)")
    v.add_argument("--served-model-name", default=None, help="the name clients pass as 'model' (default --model)")
    v.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    v.add_argument("--max-batch", type=int, default=8, help="sequences decoded together")
    v.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    v.add_argument("--max-model-len", type=int, default=4096, help="context per sequence (cache rows)")
    v.add_argument("--request-timeout", type=float, default=600.0,
                   help="per-request deadline, seconds (a request's own request_timeout may only shorten it)")
    v.add_argument("--max-request-bytes", type=int, default=None,
                   help="largest request body; bigger ones get a 413 before they are read (default 1 MiB + 64 B "
                        "per token of --max-model-len)")
    v.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens one step may feed (decode rows + prompt chunks): longer prompts are prefilled in "
                        "chunks next to the decoding requests (chunked prefill; default: whole prompts)")
    v.add_argument("--parallel", default=None, choices=["tp", "hetero"],
                   help="tp or hetero under torchrun, as for generate (rank 0 serves, the others follow its steps)")
    v.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the cache of prompt prefixes earlier requests computed (default on; "
                        "--no-enable-prefix-caching turns it off)")
    v.add_argument("--tool-call-parser", default=None, choices=parser_names(),
                   help="how the model writes tool calls (default: from the chat template's markers; hermes for a "
                        "template that knows no tools)")
    v.add_argument("--speculative-config", default=None,
                   help='speculative decoding as vLLM takes it: a JSON object, e.g. \'{"method": "ngram", '
                        '"num_speculative_tokens": 4}\' (methods: mtp, ngram, suffix; suffix also takes '
                        '"suffix_decoding_max_cached_requests"), or METHOD:K')
    v.add_argument("--kv-transfer-config", default=None,
                   help='prefill-decode disaggregation as vLLM takes it: \'{"kv_connector": "NixlConnector", '
                        '"kv_role": "kv_producer"}\' (or kv_consumer, kv_both; kv_ip and kv_port place the NIXL '
                        'side channel, default 127.0.0.1:5600; docs/disaggregation.md)')
    add_backend_arg(v)
    v.add_argument("--device", default="auto")
    v.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    b = sub.add_parser("bench", help="benchmarks against a running server")
    bs = b.add_subparsers(dest="bench_command", required=True, parser_class=Parser)
    s = bs.add_parser("serve", help="TTFT / TPOT / ITL / E2E percentiles of a server (vllm bench serve definitions)")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--model", default=None, help="model name to send (default: the server's first model)")
    s.add_argument("--concurrency", type=int, default=1)
    s.add_argument("--num-requests", type=int, default=8)
    s.add_argument("--input-len", type=int, default=32, help="prompt tokens (random words)")
    s.add_argument("--output-len", type=int, default=32, help="generated tokens (ignore_eos)")
    s.add_argument("--multi-turn", type=int, default=0, help="agent loops: --num-requests conversations of N calls "
                                                               "each, whose context grows each call")
    s.add_argument("--system-len", type=int, default=0, help="with --multi-turn: a system prompt of this many random "
                                                              "words opens every conversation (an agent's)")
    s.add_argument("--request-rate", type=float, default=0.0,
                   help="requests per second, Poisson arrivals, at most --concurrency in flight (0: a closed loop)")
    s.add_argument("--range-ratio", type=float, default=0.0,
                   help="lengths drawn uniformly in [len*(1-r), len*(1+r)] (vLLM's --random-range-ratio)")
    s.add_argument("--api-key", default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", default=None, help="also write the results to this file")
    from .fabric.cli import add_parser as add_fabric_parser
    add_fabric_parser(sub, Parser)
    e = sub.add_parser("export", help="write a HF-format checkpoint: a preset's random weights or a converted one")
    e.add_argument("model", help="random-weight preset (e.g. tiny-glm5) or checkpoint directory")
    e.add_argument("out", help="output directory")
    e.add_argument("--fp8", action="store_true", help="block-FP8 (e4m3, 128x128 weight_scale_inv) weights")
    e.add_argument("--seed", type=int, default=0, help="seed of a preset's random weights")
    e.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16", help="dtype of unquantized tensors")
    return parser


def print_stats(g: Any, backend: str) -> None:
    s = g.stats
    print(f"[hyperdecode] prompt {s.prompt_tokens} tok, output {s.output_tokens} tok ({g.finish_reason}), "
          f"TTFT {s.ttft_s * 1e3:.1f} ms, TPOT {s.tpot_s * 1e3:.1f} ms, {s.tokens_per_s:.1f} tok/s, "
          f"backend {backend}", file=sys.stderr)
    if s.speculative is not None:
        spec = s.speculative
        rates = ", ".join(f"{n / spec.num_drafts:.2f}" for n in spec.accepted_per_pos) if spec.num_drafts else "-"
        print(f"[hyperdecode] speculative: mean accepted length {spec.mean_accepted_length:.2f} over "
              f"{spec.num_drafts} drafts, acceptance by position {rates}", file=sys.stderr)


def stream_to_stdout(llm: Any, prompt: Any, params: dict[str, Any], speculative: str | None = None) -> Any:
    pieces = llm.stream(prompt, speculative=speculative, **params)
    try:
        for piece in pieces:
            sys.stdout.write(piece)
            sys.stdout.flush()
    finally:
        pieces.close()  # an interrupted answer frees its engine slots now, not when collected
    sys.stdout.write("\n")
    return llm.last_generation


def cmd_generate(args: argparse.Namespace) -> None:
    check_engine_args(args)
    llm = load_llm(args)
    print_stats(stream_to_stdout(llm, args.prompt, sampling(args), args.speculative), llm.backend_label)


def chat_turn(llm: Any, messages: list[dict[str, str]], args: argparse.Namespace) -> Any | None:
    """Streams the answer to `messages`; None when Ctrl-C stopped it or the engine refused the turn (e.g. the
    conversation outgrew the context)."""
    from .errors import RequestError
    try:
        return stream_to_stdout(llm, llm.chat_prompt(messages), sampling(args), args.speculative)
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        sys.stdout.flush()
        print("[stopped]", file=sys.stderr, flush=True)
    except RequestError as e:
        print(f"hyperdecode: error: {e} (/reset clears the conversation)", file=sys.stderr, flush=True)
    return None


def cmd_chat(args: argparse.Namespace) -> None:
    """Ctrl-C during an answer stops it and returns to the prompt; that turn (question and partial answer) is left
    out of the conversation, as is a turn the engine refuses. Ctrl-C at the prompt quits."""
    check_engine_args(args)
    llm = load_llm(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {llm.name}; Ctrl-C stops an answer, /reset clears the conversation, /exit or Ctrl-D quits",
              file=sys.stderr)
    while True:
        if interactive:
            print(">>> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return
        if line.strip() == "/reset":
            messages = list(system)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        g = chat_turn(llm, messages, args)
        if g is None:
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": g.text})
        print_stats(g, llm.backend_label)


def cmd_models(args: argparse.Namespace) -> None:
    from .model.embedded import cache_dir, cached_models
    from .model.presets import PRESETS
    print("presets:")
    for name, preset in PRESETS.items():
        print(f"  {name:<12} {preset.doc}")
    print(f"cached models ({cache_dir()}):")
    for path in cached_models():
        print(f"  {path.name}  {path.stat().st_size / 2**20:.1f} MiB")
    if not cached_models():
        print("  (none yet)")


def cmd_inspect(args: argparse.Namespace) -> None:
    import json
    from .model.loader import read_config
    from .hardware import machine
    from .model.sizing import size_model
    check_at_least(args, {"context": 1})
    check_positive(args, ("hbm_tbps",))
    cfg = read_config(args.model)
    row = machine(args.hw)
    tbps = args.hbm_tbps or row.copy_tbps
    s = size_model(cfg, args.context, WEIGHT_BYTES[args.weight_dtype], tbps, int(WEIGHT_BYTES[args.kv_dtype]))
    if args.json:
        print(json.dumps({"model": args.model, "model_type": cfg.model_type, **s.as_dict()}, indent=2))
        return
    print(f"model            {args.model} ({cfg.model_type})")
    print(f"parameters       {s.total_params:,} total = {s.main_params:,} main + {s.mtp_params:,} MTP")
    print(f"active           {s.active_params:,} per decoded token (no input embedding, top-k experts, no MTP)")
    print(f"KV per token     {s.kv_bytes_per_token:,} B ({args.kv_dtype} cache)"
          + (f" + {s.index_key_bytes_per_token:,} B indexer keys (FP8)" if s.index_key_bytes_per_token else ""))
    print(f"cache per token  {s.token_cache_bytes:,} B: what a prefill instance sends a decode instance per prompt "
          "token (docs/disaggregation.md)")
    print(f"read per token   {s.bytes_per_token / 1e9:.3f} GB at batch 1, context {s.context:,}: "
          f"{s.weight_bytes_per_token / 1e9:.3f} GB {args.weight_dtype} weights + "
          f"{s.cache_bytes_per_token / 1e6:.2f} MB cache")
    source = "given" if args.hbm_tbps else f"{row.name} measured copy; datasheet {row.hbm_tbps} TB/s"
    print(f"HBM roofline     {s.roofline_tok_s:,.1f} tok/s at {s.hbm_tbps} TB/s ({source})")


def cmd_plan(args: argparse.Namespace) -> None:
    from .parallel.report import run_plan
    run_plan(args)


def kv_transfer_flag(args: argparse.Namespace) -> Any:
    """--kv-transfer-config checked before anything loads: its fields, NIXL's presence, no --parallel beside it."""
    from .disagg.config import parse_kv_transfer_config
    from .errors import ConfigError
    config = parse_kv_transfer_config(args.kv_transfer_config)
    if config is None:
        return None
    if args.parallel:
        raise ConfigError("--kv-transfer-config with --parallel is not supported yet: disaggregate single-process "
                          "instances")
    from .disagg.nixl import require_nixl
    require_nixl()
    return args.kv_transfer_config


def cmd_serve(args: argparse.Namespace) -> None:
    import logging
    import uvicorn
    from .errors import HyperdecodeError
    from .serve.app import ServerConfig, create_app
    check_at_least(args, {"max_batch": 1, "max_queue": 1, "max_model_len": 1, "max_request_bytes": 1})
    set_threads(args)
    check_positive(args, ("request_timeout",))
    from .engine.llm import check_activations
    check_activations(args.activations, args.quantize, name="--activations")
    if args.max_num_batched_tokens is not None and args.max_num_batched_tokens < args.max_batch + 1:
        raise ValueError("--max-num-batched-tokens must be at least --max-batch + 1 (each decoding request feeds one "
                         "token per step, and one cache row is kept for readiness probes)")
    kv_transfer = kv_transfer_flag(args)
    if args.parallel:  # rank 0 serves; the other ranks load their shards and replay its steps
        from .parallel.launch import join_ranks
        from .model.loader import resolve_device
        if join_ranks(resolve_device(args.device))[0] != 0:
            from .engine.llm import LLM
            follow_and_exit(LLM(args.model, device=args.device, dtype=args.dtype, parallel=args.parallel))
    config = ServerConfig(model=args.model, served_model_name=args.served_model_name, device=args.device,
                          dtype=args.dtype, backend=args.backend, api_key=args.api_key, max_batch=args.max_batch,
                          max_queue=args.max_queue, max_model_len=args.max_model_len,
                          request_timeout=args.request_timeout, max_num_batched_tokens=args.max_num_batched_tokens,
                          max_request_bytes=args.max_request_bytes,
                          speculative_config=speculative_flag(args.speculative_config, "--speculative-config"),
                          parallel=args.parallel, enable_prefix_caching=args.enable_prefix_caching,
                          tool_call_parser=args.tool_call_parser, quantize=args.quantize,
                          activations=args.activations, kv_transfer_config=kv_transfer)
    logging.basicConfig(level=logging.INFO, format="hyperdecode: %(levelname)s %(name)s: %(message)s")
    failures: list[str] = []
    servers: list[uvicorn.Server] = []

    def fatal(message: str) -> None:  # from the loading thread
        failures.append(message)
        for server in servers:
            server.should_exit = True
    app = create_app(config, on_fatal=fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_keep_alive=30))
    servers.append(server)
    print(f"hyperdecode: serving {config.name} on http://{args.host}:{args.port} (/health is 503 while loading)",
          file=sys.stderr)
    if not failures:
        server.run()
    if failures:
        raise HyperdecodeError(f"the model '{args.model}' failed to load: {failures[0]}")
    if not server.started:
        raise HyperdecodeError(f"could not serve on {args.host}:{args.port} (is the port in use?)")


def cmd_bench(args: argparse.Namespace) -> None:
    from .serve.bench import run_bench
    run_bench(args)


def cmd_fabric(args: argparse.Namespace) -> None:
    from .fabric.cli import run
    run(args)


def cmd_export(args: argparse.Namespace) -> None:
    import torch
    from .engine.sampling import SEED_RANGE
    from .model.loader import export_model
    if not SEED_RANGE[0] <= args.seed < SEED_RANGE[1]:
        raise ValueError(f"--seed must be in [-2**63, 2**64), got {args.seed}")
    out = export_model(args.model, args.out, fp8=args.fp8, seed=args.seed, dtype=getattr(torch, args.dtype))
    print(f"wrote {out}", file=sys.stderr)


def os_error_message(e: OSError) -> str:
    """An OSError as 'PATH: reason'."""
    if e.filename is None:
        return str(e)
    where = e.filename if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{where}: {e.strerror or e}"


def http_error_message(e: Any) -> str:
    """An httpx error (the server did not answer) naming the URL."""
    try:
        url = e.request.url
    except RuntimeError:  # raised before a request was made
        url = "the server"
    return f"request to {url} failed ({type(e).__name__}: {e}); is the server running?"


def follow_and_exit(llm: Any) -> NoReturn:
    """A rank other than 0: replay rank 0's steps until it ends the job."""
    from .parallel.follow import end_rank, follow
    follow(llm.runner)
    end_rank(0)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code = run_command(args)
    if getattr(args, "parallel", None):  # a torchrun rank: the job ends together, without interpreter teardown
        from .parallel.follow import end_rank
        end_rank(code)
    return code


def run_command(args: argparse.Namespace) -> int:
    """The command's exit status; every error a user can cause is a message naming it and status 1."""
    import httpx
    from .errors import HyperdecodeError
    try:
        commands = {"generate": cmd_generate, "chat": cmd_chat, "models": cmd_models, "inspect": cmd_inspect,
                    "plan": cmd_plan, "export": cmd_export, "serve": cmd_serve, "bench": cmd_bench,
                    "fabric": cmd_fabric}
        commands[args.command](args)
    except (HyperdecodeError, ValueError) as e:
        print(f"hyperdecode: error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:
        if not getattr(args, "parallel", None):
            raise
        import torch.distributed as dist
        rank = dist.get_rank() if dist.is_initialized() else "?"
        print(f"hyperdecode: error: rank {rank}: {type(e).__name__}: {e} (did another rank end?)", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"hyperdecode: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except httpx.HTTPError as e:
        print(f"hyperdecode: error: {http_error_message(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if getattr(args, "parallel", None):  # every rank got it: none waits for another on its way out
            from .parallel.follow import interrupted
            interrupted()
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
