"""A loopback-only HTTP server (stdlib ``ThreadingHTTPServer``) for ``SearchApp``.

One thread per connection; a listen backlog of ``REQUEST_QUEUE_SIZE`` (the stdlib's default of
5 reset connections when dozens of clients connected at once); a client that goes away
mid-request is logged in one line, not with a traceback."""
from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional, Tuple

from .app import Response, SearchApp

__all__ = ["make_server", "serve", "is_loopback", "start_in_thread"]

log = logging.getLogger(__name__)
_DRAIN_LIMIT = 64 * 1024 * 1024  # oversized bodies up to this are read and dropped so the client sees the 413
# pending connections the kernel queues before accept(); capped by the kernel's somaxconn
REQUEST_QUEUE_SIZE = max(128, getattr(socket, "SOMAXCONN", 128))


class _Server(ThreadingHTTPServer):
    request_queue_size = REQUEST_QUEUE_SIZE
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request, client_address):
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):  # the client left; nothing to answer
            log.info("%s: connection closed by the client (%s)", client_address[0], type(error).__name__)
            return
        log.exception("error while serving %s", client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _host_name(header: str) -> str:
    """``127.0.0.1:8000`` -> ``127.0.0.1``; ``[::1]:8000`` -> ``[::1]``."""
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0]


class _Handler(BaseHTTPRequestHandler):
    """One HTTP exchange with the search app (``app``, set by :func:`_handler_for`)."""
    app: SearchApp
    server_version = "smartclip-serve"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # through logging, not stderr prints
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, response: Response, close: bool = False):
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _host_ok(self) -> bool:
        # a page on another site cannot reach us through a DNS name that points at 127.0.0.1
        host = _host_name(self.headers.get("Host") or "")
        if is_loopback(host):
            return True
        self._send(Response.json({"error": f"Host {host!r} refused: the server answers loopback names only"},
                                 403), close=True)
        return False

    def _read_body(self) -> Tuple[Optional[bytes], bool]:
        """(body or None, whether it was too large)."""
        raw = self.headers.get("Content-Length")
        if raw is None:
            if self.headers.get("Transfer-Encoding"):
                self._send(Response.json({"error": "send the upload with a Content-Length"}, 411), close=True)
                raise ConnectionAbortedError
            return None, False
        try:
            length = int(raw)
            if length < 0:
                raise ValueError
        except ValueError:
            self._send(Response.json({"error": f"bad Content-Length {raw[:20]!r}"}, 400), close=True)
            raise ConnectionAbortedError from None
        if length > self.app.max_upload_bytes:
            if length <= _DRAIN_LIMIT:
                remaining = length
                while remaining > 0:
                    chunk = self.rfile.read(min(remaining, 1 << 16))
                    if not chunk:
                        break
                    remaining -= len(chunk)
            return None, True
        return self.rfile.read(length), False

    def _answer(self):
        if not self._host_ok():
            return
        try:
            body, too_large = self._read_body()
        except ConnectionAbortedError:
            return
        if too_large:
            self._send(Response.json({"error": f"upload is larger than the limit of {self.app.max_upload_bytes} "
                                               f"bytes ({_human(self.app.max_upload_bytes)})"}, 413),
                       close=int(self.headers.get("Content-Length", 0)) > _DRAIN_LIMIT)
            return
        self._send(self.app.handle("GET" if self.command == "HEAD" else self.command, self.path, body))

    do_GET = do_POST = do_HEAD = _answer

    def _not_allowed(self):
        self._read_body_quietly()
        self._send(Response.json({"error": f"method {self.command} not allowed"}, 405), close=True)

    def _read_body_quietly(self):
        try:
            self._read_body()
        except ConnectionAbortedError:
            pass

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed


def _handler_for(app: SearchApp):
    return type("Handler", (_Handler,), {"app": app})


def make_server(app: SearchApp, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """A server bound to a loopback address; any other address is refused."""
    if not is_loopback(host):
        raise ValueError(f"refusing to listen on {host!r}: the search page serves local files and listens on "
                         "loopback only (127.0.0.1, ::1, localhost)")
    server_cls = _Server6 if ":" in host else _Server
    return server_cls((host.strip("[]"), port), _handler_for(app))


def start_in_thread(app: SearchApp, host: str = "127.0.0.1", port: int = 0):
    """``(server, base_url)`` with the server running in a daemon thread (tests, notebooks).
    Stop it with ``server.shutdown(); server.server_close()``."""
    server = make_server(app, host, port)
    threading.Thread(target=server.serve_forever, daemon=True, name="smartclip-serve").start()
    h, p = server.server_address[:2]
    return server, f"http://{'[' + h + ']' if ':' in h else h}:{p}"


def serve(app: SearchApp, host: str = "127.0.0.1", port: int = 8000):  # pragma: no cover - blocks
    server = make_server(app, host, port)
    h, p = server.server_address[:2]
    print(f"serving {len(app.index)} images on http://{h}:{p}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
