"""The `hyperdecode` command: generate, chat, models."""
from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

__all__ = ["main"]


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2", help="preset name, HF checkpoint directory or .gguf file "
                                                      "(default: smollm2, the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same text)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="0 = off")
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")


def sampling(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                seed=args.seed, stop=args.stop)


def build_parser() -> Parser:
    parser = Parser(prog="hyperdecode", description="Low-latency LLM inference.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    g = sub.add_parser("generate", help="complete a prompt, streaming the text to stdout")
    g.add_argument("prompt")
    add_model_args(g)
    c = sub.add_parser("chat", help="interactive multi-turn chat using the model's chat template")
    add_model_args(c)
    c.add_argument("--system", default=None, help="system message")
    sub.add_parser("models", help="list presets and cached models")
    return parser


def print_stats(g: Any) -> None:
    s = g.stats
    print(f"[hyperdecode] prompt {s.prompt_tokens} tok, output {s.output_tokens} tok ({g.finish_reason}), "
          f"TTFT {s.ttft_s * 1e3:.1f} ms, TPOT {s.tpot_s * 1e3:.1f} ms, {s.tokens_per_s:.1f} tok/s",
          file=sys.stderr)


def stream_to_stdout(llm: Any, prompt: Any, params: dict[str, Any]) -> Any:
    for piece in llm.stream(prompt, **params):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return llm.last_generation


def cmd_generate(args: argparse.Namespace) -> None:
    from .engine.llm import LLM
    llm = LLM(args.model, device=args.device, dtype=args.dtype)
    print_stats(stream_to_stdout(llm, args.prompt, sampling(args)))


def cmd_chat(args: argparse.Namespace) -> None:
    from .engine.llm import LLM
    llm = LLM(args.model, device=args.device, dtype=args.dtype)
    system = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {llm.name}; /reset clears the conversation, /exit or Ctrl-D quits", file=sys.stderr)
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
        g = stream_to_stdout(llm, llm.chat_prompt(messages), sampling(args))
        messages.append({"role": "assistant", "content": g.text})
        print_stats(g)


def cmd_models(args: argparse.Namespace) -> None:
    from .model.config import PRESETS
    from .model.embedded import cache_dir, cached_models
    print("presets:")
    for name, spec in PRESETS.items():
        print(f"  {name:<12} {spec['doc']}")
    print(f"cached models ({cache_dir()}):")
    for path in cached_models():
        print(f"  {path.name}  {path.stat().st_size / 2**20:.1f} MiB")
    if not cached_models():
        print("  (none yet)")


def main(argv: list[str] | None = None) -> int:
    from .errors import HyperdecodeError
    args = build_parser().parse_args(argv)
    try:
        {"generate": cmd_generate, "chat": cmd_chat, "models": cmd_models}[args.command](args)
    except (HyperdecodeError, ValueError, FileNotFoundError) as e:
        print(f"hyperdecode: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
