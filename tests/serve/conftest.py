import socket
import threading
import time

import httpx
import pytest

import hyperdecode as hd
from hyperdecode.serve.app import ServerConfig, create_app


class LiveServer:
    """A real uvicorn server on a free loopback port, in a thread."""

    def __init__(self, llm, **config):
        import uvicorn
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.config = ServerConfig(model=llm.name, **config)
        self.app = create_app(self.config, llm=llm)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def engine(self):
        return self.app.state.hd.engine

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.shutdown()


@pytest.fixture(scope="module")
def llm():
    return hd.LLM("tiny-llama", device="cpu", seed=0)


@pytest.fixture(scope="module")
def offline():
    """The server's model and seed in an LLM of its own: the server's LLM is driven by the server's thread."""
    return hd.LLM("tiny-llama", device="cpu", seed=0)


@pytest.fixture(scope="module")
def glm_server():
    """tiny-glm5 (the GLM family, random weights): its 4,096 positions hold the tools and a forced call."""
    s = LiveServer(hd.LLM("tiny-glm5", device="cpu", seed=0), max_batch=4, max_model_len=4096)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def server(llm):
    s = LiveServer(llm, max_batch=8, max_queue=64, max_model_len=1024)
    yield s
    s.stop()


@pytest.fixture
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def metric_values(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"|{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
            out[key] = s.value
    return out
