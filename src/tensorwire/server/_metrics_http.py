"""GET /metrics for Prometheus: a small HTTP server on a daemon thread beside the core.

It binds 127.0.0.1 by default: the endpoint has no authentication, and shows
per-client counts (by hashed session id) and process ids to whoever can reach it.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from ._exposition import CONTENT_TYPE, render, server_state

if TYPE_CHECKING:
    from ._core import ServerCore

log = logging.getLogger("tensorwire.server")


class MetricsServer:
    """Serves `body()` at /metrics until `close()`."""

    def __init__(self, body: Callable[[], str], host: str = "127.0.0.1", port: int = 0) -> None:
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        self._httpd = server_class((host, port), _Handler)
        self._httpd.body = body
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="tensorwire-metrics",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._httpd.socket.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def serve_metrics(core: ServerCore, host: str = "127.0.0.1", port: int = 0) -> MetricsServer:
    """Expose a core's metrics and sessions; read from the HTTP thread (see _exposition)."""
    info = core.handler.info()
    return MetricsServer(
        lambda: render(server_state(core.metrics, core.sessions, info)), host, port
    )


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    body: Callable[[], str]


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.partition("?")[0]
        if path not in ("/metrics", "/metrics/"):
            self._send(404, "text/plain; charset=utf-8", "not found: try /metrics\n")
            return
        try:
            text = self.server.body()
        except Exception:  # a bug here must not kill the scrape thread, nor the server
            log.exception("rendering metrics failed")
            self._send(500, "text/plain; charset=utf-8", "metrics unavailable\n")
            return
        self._send(200, CONTENT_TYPE, text)

    def _send(self, status: int, content_type: str, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("metrics: " + format, *args)
