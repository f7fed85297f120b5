"""The NIXL handshake's side channel (vLLM's NixlConnector has one too, on VLLM_NIXL_SIDE_CHANNEL_PORT): a small
HTTP server on its own port that answers `GET /handshake` with the instance's NIXL agent metadata and its cache
layout (layout.py), and the client a peer uses to ask, with a bound on every wait.

>>> channel = SideChannel("127.0.0.1", 0, lambda: {"engine_id": "e1"})
>>> fetch_handshake("127.0.0.1", channel.port, timeout_s=5)["engine_id"]
'e1'
>>> channel.close()
"""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["SideChannel", "fetch_handshake", "HandshakeError"]


class HandshakeError(RuntimeError):
    pass


class SideChannel:
    """Serves `payload()` as JSON at /handshake on (host, port) from a daemon thread (port 0: any free port)."""

    def __init__(self, host: str, port: int, payload: Callable[[], dict[str, Any]]):
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
                if self.path != "/handshake":
                    self.send_error(404, "only /handshake is served here")
                    return
                body = json.dumps(payload()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # quiet: the server logs what matters itself
                pass

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            raise OSError(f"the NIXL side channel could not listen on {host}:{port}: {e.strerror or e} "
                          "(set another 'kv_port' in --kv-transfer-config)") from None
        self.server.daemon_threads = True
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="hyperdecode-side-channel",
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def fetch_handshake(host: str, port: int, timeout_s: float) -> dict[str, Any]:
    """A peer's handshake payload, or a HandshakeError naming the peer (unreachable, slow, or not a side channel)."""
    url = f"http://{host}:{port}/handshake"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise HandshakeError(f"the NIXL handshake with the peer at {host}:{port} failed: {reason}") from None
