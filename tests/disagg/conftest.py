"""Processes for the disaggregation tests: `hyperdecode serve` instances and vllm-router, on free loopback ports,
each start and stop bounded, their logs kept for the failure message."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def need_pd() -> None:
    """Skips the calling module without NIXL (pip install -e '.[pd]'); CI sets HYPERDECODE_REQUIRE_PD, where it fails."""
    from hyperdecode.disagg.nixl import require_nixl
    from hyperdecode.errors import ConfigError
    try:
        require_nixl()
    except ConfigError as e:
        if os.environ.get("HYPERDECODE_REQUIRE_PD"):
            raise
        pytest.skip(str(e), allow_module_level=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process serving HTTP on `port`: started, waited for (`path` answers 200), stopped."""

    def __init__(self, args: list[str], port: int, log_dir, name: str, ready_path: str = "/health",
                 within_s: float = 120.0):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + within_s
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{name} was not ready within {within_s} s:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-lines:])

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=5).json()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def serve(log_dir, model: str, role: str | None = None, backend: str = "reference", name: str | None = None,
          **extra) -> Proc:
    """`hyperdecode serve` with a KV role (None: a plain instance) and a free side-channel port."""
    port = free_port()
    args = [sys.executable, "-m", "hyperdecode", "serve", "--model", model, "--port", str(port), "--backend",
            backend, "--device", "cpu", "--max-batch", "4", "--max-model-len", "1024"]
    if role is not None:
        config = {"kv_connector": "NixlConnector", "kv_role": role, "kv_port": 0}
        if extra:
            config["kv_connector_extra_config"] = extra
        args += ["--kv-transfer-config", json.dumps(config)]
    return Proc(args, port, log_dir, name or f"{model}-{role or 'plain'}-{port}")


def router(log_dir, prefills: list[Proc] = (), decodes: list[Proc] = (), workers: list[Proc] = (),
           policy: str | None = None) -> Proc:
    """vllm-router in PD mode (prefills and decodes) or its regular mode (workers)."""
    exe = shutil.which("vllm-router")
    if exe is None:
        missing = "vllm-router is not installed (pip install -e '.[pd]')"
        if os.environ.get("HYPERDECODE_REQUIRE_PD"):
            raise AssertionError(missing)
        pytest.skip(missing)
    port = free_port()
    args = [exe, "--host", "127.0.0.1", "--port", str(port), "--prometheus-port", str(free_port()),
            "--health-check-interval-secs", "1", "--request-timeout-secs", "60"]
    if prefills:
        args += ["--vllm-pd-disaggregation", "--kv-connector", "nixl"]
        for p in prefills:
            args += ["--prefill", p.url]
        for d in decodes:
            args += ["--decode", d.url]
    else:
        args += ["--worker-urls", *[w.url for w in workers]]
    if policy:
        args += ["--policy", policy]
    return Proc(args, port, log_dir, f"router-{port}", ready_path="/health")


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return tmp_path_factory.mktemp("disagg-logs")
