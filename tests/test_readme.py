"""Every command the README shows runs here, as a new user would run it: the set-up's generate command, the Python
quickstart, each command-line example, the server with its curl request (the same request sent from Python), the
docs build. A command added to the README without a runner here fails the first test."""
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_commands() -> list[str]:
    """The README's shell commands: indented code lines outside fenced blocks, backslash continuations joined."""
    lines, out = re.sub(r"```.*?```", "", README, flags=re.S).splitlines(), []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("    ") and line.strip() and not line.strip().startswith("#"):
            command = line.strip()
            while command.endswith("\\"):
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            out.append(command)
        i += 1
    return out


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


def run(command: str, timeout: int = 600) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    if args[0] == "hyperdecode":
        args = [sys.executable, "-m", "hyperdecode", *args[1:]]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


INSTALLS = {  # the set-up's commands: the install half is what .ci/run runs; the rest runs below
    'pip install torch==2.13.0 -e . && hyperdecode generate "The capital of France is"':
        'hyperdecode generate "The capital of France is"',
    'pip install torch==2.13.0 -e ".[test]" && pytest -q': None,  # .ci/run: this very suite
}
SERVER = "hyperdecode serve --port 8000"
DOCS = "pip install mkdocs && mkdocs build --strict"


def test_every_readme_command_has_a_runner():
    commands = shell_commands()
    assert commands, "no commands found in the README"
    known = set(INSTALLS) | {SERVER} | {c for c in commands if c.startswith("curl ")} | set(CLI)
    assert [c for c in commands if c not in known] == []
    assert DOCS in README and len(python_blocks()) == 1


CLI = {c: c for c in shell_commands() if c.startswith("hyperdecode ") and c != SERVER}


@pytest.mark.parametrize("command", sorted(set(CLI) | {v for v in INSTALLS.values() if v}))
def test_each_command_line_example_runs(command):
    done = run(command)
    assert done.returncode == 0, done.stderr[-2000:]
    if "The capital of France is" in command:
        assert "Paris" in done.stdout


def test_the_python_quickstart_runs(capfd):
    exec(compile(python_blocks()[0], "README.md", "exec"), {})
    out = capfd.readouterr().out
    assert "Paris" in out and "GenerationStats" in out


def test_the_server_and_its_curl_request(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = shlex.split(SERVER.replace("8000", str(port)))
    server = subprocess.Popen([sys.executable, "-m", "hyperdecode", *args[1:]], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.stderr.read()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        [curl] = [c for c in shell_commands() if c.startswith("curl ")]
        words = shlex.split(curl)
        url = words[1].replace("8000", str(port))
        body = json.loads(words[words.index("-d") + 1])
        r = httpx.post(url, json=body, timeout=120)  # curl's request, sent from Python
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_docs_build_strict():
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(ROOT / "build" / "site")], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "NO_COLOR": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
