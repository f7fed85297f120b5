"""Bad engine command lines (generate, chat, inspect, export, bench): one line `hyperdecode: error: ...` naming the
flag or file at fault and a non-zero exit, before any slow work. The table runs the CLI in this process to stay
fast (test_cli.py runs it as a subprocess); Ctrl-C in chat needs a real process."""
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import run_main

NOPE = ("generate", "x", "--model", "nope")  # the model is never looked up when a flag is bad


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tmp(tmp_path):
    """A directory holding a file, an empty directory and a directory that already holds a checkpoint."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    return tmp_path


ERRORS = [  # (command line, exit code, text of the one-line message); {tmp}: the `tmp` fixture, {port}: no server
    (NOPE + ("--temperature", "5"), 1, "--temperature must be a number in [0, 2], got 5.0"),
    (NOPE + ("--top-p", "2"), 1, "--top-p must be a number in (0, 1]"),
    (NOPE + ("--max-tokens", "0"), 1, "--max-tokens must be an integer, at least 1"),
    (NOPE + ("--threads", "0"), 1, "--threads must be at least 1, got 0"),
    (NOPE + ("--quantize", "int3"), 2, "--quantize: invalid choice"),
    (("generate", "x", "--quantize", "int8", "--device", "cpu"), 1, "quantize 'int8': 'smollm2' is a GGUF"),
    (NOPE + ("--top-k", "-5"), 1, "--top-k must be an integer"),
    (NOPE + ("--seed", str(2 ** 64)), 1, "--seed must be an integer in [-2**63, 2**64)"),
    (NOPE + ("--stop", ""), 1, "--stop must be a non-empty string"),
    (("chat", "--model", "nope", "--top-p", "0"), 1, "--top-p must be a number in (0, 1]"),
    (NOPE + ("--device", "mps"), 1, "--device 'mps' is not supported (use auto, cpu, cuda or cuda:N)"),
    (NOPE + ("--device", "meta"), 1, "--device 'meta' is not supported"),
    (NOPE + ("--device", "cuda:x"), 1, "--device 'cuda:x' is not supported"),
    pytest.param(NOPE + ("--device", "cuda:0"), 1, "--device 'cuda:0' requested but torch sees no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
    pytest.param(NOPE + ("--backend", "graph"), 1, "--backend 'graph' captures CUDA graphs and needs a CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")),
    (NOPE + ("--backend", "graph", "--device", "cpu"), 1, "--backend 'graph' captures CUDA graphs"),
    (("generate", "x", "--model", "{tmp}/adir"), 1, "{tmp}/adir/config.json: config file not found"),
    (("generate", "x", "--model", "{tmp}/afile"), 1, "model '{tmp}/afile': expected a checkpoint directory"),
    (("inspect", "tiny-llama", "--context", "0"), 1, "--context must be at least 1, got 0"),
    (("inspect", "tiny-llama", "--hbm-tbps", "-1"), 1, "--hbm-tbps must be a positive number"),
    (("inspect", "{tmp}/adir"), 1, "{tmp}/adir/config.json: config file not found"),
    (("export", "tiny-llama", "{tmp}/afile"), 1, "{tmp}/afile: exists and is not a directory"),
    (("export", "tiny-llama", "{tmp}/ckpt"), 1, "{tmp}/ckpt: already holds a checkpoint"),
    (("export", "tiny-llama", "{tmp}/afile/sub"), 1, "{tmp}/afile/sub: Not a directory"),  # any OSError names it
    (("export", "tiny-llama", "{tmp}/new", "--seed", str(2 ** 64)), 1, "--seed must be in [-2**63, 2**64)"),
    (("export", "smollm2", "{tmp}/new"), 1, "export takes a random-weight preset or a checkpoint directory"),
    (("bench", "serve", "--concurrency", "0"), 1, "--concurrency must be at least 1, got 0"),
    (("bench", "serve", "--num-requests", "0"), 1, "--num-requests must be at least 1"),
    (("bench", "serve", "--input-len", "0"), 1, "--input-len must be at least 1"),
    (("bench", "serve", "--output-len", "-3"), 1, "--output-len must be at least 1"),
    (("bench", "serve", "--multi-turn", "-1"), 1, "--multi-turn must be at least 0"),
    (("bench", "serve", "--request-rate", "-1"), 1, "--request-rate must be a finite number"),
    (("bench", "serve", "--range-ratio", "1"), 1, "--range-ratio must be in [0, 1)"),
    (("bench", "serve", "--url", "localhost-8000"), 1, "--url 'localhost-8000' must look like http://HOST:PORT"),
    (("bench", "serve", "--url", "http://127.0.0.1:{port}"), 1,
     "request to http://127.0.0.1:{port}/v1/models failed (ConnectError"),
    (("bench", "serve", "--json", "{tmp}/adir"), 1, "--json {tmp}/adir: is a directory"),
    (("bench", "serve", "--json", "{tmp}/nodir/b.json"), 1, "--json {tmp}/nodir/b.json: directory"),
    (NOPE + ("--max-tokens", "ten"), 2, "--max-tokens: invalid int value"),
    (("serve", "--max-request-bytes", "0"), 1, "--max-request-bytes must be at least 1, got 0"),
    (("serve", "--max-queue", "0"), 1, "--max-queue must be at least 1, got 0"),
    (("serve", "--request-timeout", "-1"), 1, "--request-timeout must be a positive number"),
    (NOPE + ("--speculative", "eagle:3"), 1, "--speculative: speculative method 'eagle' is not available"),
    (NOPE + ("--speculative", "ngram"), 1, "--speculative: speculative 'ngram' must be METHOD:K"),
    (NOPE + ("--speculative", "ngram:99"), 1, "'num_speculative_tokens' must be an integer in [1, 16], got 99"),
    (("generate", "x", "--model", "tiny-llama", "--device", "cpu", "--speculative", "mtp:2"), 1,
     "--speculative mtp:2: model 'tiny-llama' has no MTP layer"),
    (("serve", "--speculative-config", '{"method": "ngram"'), 1, "--speculative-config: speculative config is not "
                                                                  "valid JSON"),
    (("serve", "--speculative-config", '{"method": "ngram", "k": 2}'), 1, "unknown field(s) k"),
]


@pytest.mark.parametrize("args, code, message", ERRORS)
def test_bad_command_lines_name_the_flag_or_file(args, code, message, tmp, capsys):
    port = str(free_port())
    fill = lambda s: s.replace("{tmp}", str(tmp)).replace("{port}", port)  # noqa: E731
    got, _, err = run_main([fill(a) for a in args], capsys)
    assert got == code, err
    assert fill(message) in err and err.startswith("hyperdecode")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_mega_without_triton_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "triton", None)  # what `import triton` meets on the base install
    code, _, err = run_main(["generate", "hi", "--model", "tiny-llama", "--device", "cpu", "--backend", "mega"],
                            capsys)
    assert code == 1 and "--backend 'mega' needs Triton" in err and "pip install 'hyperdecode[mega]'" in err
    assert len(err.strip().splitlines()) == 1


def test_exported_preset_generates_what_the_preset_does(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert run_main(["export", "tiny-llama", str(out), "--dtype", "float32"], capsys)[0] == 0
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    sampled = ("--temperature", "1", "--seed", "7", "--max-tokens", "24", "--device", "cpu")
    code, text, err = run_main(["generate", "Hello there", "--model", "tiny-llama", *sampled], capsys)
    assert code == 0, err
    code, exported, err = run_main(["generate", "Hello there", "--model", str(out), *sampled], capsys)
    assert code == 0, err
    assert exported == text and len(text) > 1
    (out / "tokenizer.json").unlink()  # an export from before tokenizers were written
    code, _, err = run_main(["generate", "Hello there", "--model", str(out), "--device", "cpu"], capsys)
    assert code == 1 and f"--model {out}: the model has no tokenizer" in err


def read_until(stream, needle: bytes, timeout: float = 120) -> bytes:
    """Reads a child's pipe until `needle` shows (b"": until anything does)."""
    buf, deadline = b"", time.monotonic() + timeout
    while not buf or needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {needle!r}; got {buf[-300:]!r}"
        if select.select([stream], [], [], left)[0]:
            chunk = os.read(stream.fileno(), 65536)
            assert chunk, f"the process closed the pipe waiting for {needle!r}; got {buf[-300:]!r}"
            buf += chunk
    return buf


def test_ctrl_c_in_chat_stops_the_answer_not_the_chat(tmp_path, capsys):
    model = tmp_path / "no-eos"  # no end token: every answer runs to --max-tokens, so Ctrl-C lands mid-answer
    assert run_main(["export", "tiny-llama", str(model), "--dtype", "float32"], capsys)[0] == 0
    config = json.loads((model / "config.json").read_text())
    config["eos_token_id"] = None
    (model / "config.json").write_text(json.dumps(config))
    # SIGINT back to its default in the child: a shell's background job (a CI runner's, say) starts with it
    # ignored, and Python installs its Ctrl-C handler only when SIGINT is not ignored.
    p = subprocess.Popen([sys.executable, "-m", "hyperdecode.cli", "chat", "--model", str(model), "--device", "cpu",
                          "--max-tokens", "900"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        p.stdin.write(b"hello\n")
        p.stdin.flush()
        read_until(p.stdout, b"")  # the answer is streaming
        p.send_signal(signal.SIGINT)
        err = read_until(p.stderr, b"[stopped]")
        assert p.poll() is None and b"[hyperdecode] prompt" not in err
        p.stdin.write(b"again\n")
        p.stdin.flush()
        err += read_until(p.stderr, b" tok/s")
        stats = [line for line in err.decode().splitlines() if line.startswith("[hyperdecode] prompt")]
        assert len(stats) == 1 and "output 900 tok" in stats[0]
        p.send_signal(signal.SIGINT)  # at the prompt: quit
        assert p.wait(timeout=60) == 130
    finally:
        p.kill()
        p.wait()
    from hyperdecode.model.tokenizer import Tokenizer
    tok = Tokenizer.byte_level()
    alone = len(tok.encode(tok.apply_chat_template([{"role": "user", "content": "again"}]), add_special_tokens=False))
    assert f"prompt {alone} tok" in stats[0]  # the stopped turn is not in the conversation
