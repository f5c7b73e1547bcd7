"""The search page under load on loopback: many clients at once, every request answered.

48 clients start together (a barrier) and each sends a mix of requests on fresh connections:
the page, text searches, thumbnails, image uploads, a bad upload and an oversized one. Any
connection reset, refused or dropped connection, or 5xx answer fails the test; it counts
outcomes only and asserts nothing about timing."""
import http.client
import io
import threading
from collections import Counter

import pytest

from smartclip.serve import SearchApp
from smartclip.serve.server import REQUEST_QUEUE_SIZE, make_server
from conftest import real_images, served_photos

CLIENTS = 48
LIMIT = 50_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_load")
    with served_photos(root, max_upload_bytes=LIMIT, default_k=4) as (url, index, _):
        yield {"host": url.split("//")[1], "root": root, "count": len(index)}


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _requests(client: int, upload: bytes, count: int):
    """The client's mix: (method, path, body, expected status)."""
    row = client % count
    return [
        ("GET", "/", None, 200),
        ("GET", f"/api/search?q=photo%20number%20{client}&k=3", None, 200),
        ("GET", f"/image/{row}", None, 200),
        ("POST", "/api/search/image?k=2", upload, 200),
        ("GET", "/api/search?q=a%20cup%20of%20coffee&masked=1", None, 200),
        ("POST", "/api/search/image", b"this is not an image", 415),
        ("POST", "/api/search/image", b"x" * (LIMIT + 1), 413),
        ("GET", "/api/info", None, 200),
    ]


def _run_clients(host: str, upload: bytes, count: int):
    outcomes, failures = Counter(), []
    lock = threading.Lock()
    start = threading.Barrier(CLIENTS)

    def client(i):
        start.wait()
        for method, path, body, expected in _requests(i, upload, count):
            try:
                conn = http.client.HTTPConnection(host, timeout=120)
                conn.request(method, path, body=body,
                             headers={"Content-Type": "application/octet-stream"} if body else {})
                response = conn.getresponse()
                response.read()
                conn.close()
                status = response.status
            except Exception as e:  # a reset, refused or dropped connection is the failure looked for
                with lock:
                    failures.append(f"client {i} {method} {path[:40]}: {type(e).__name__}: {e}")
                continue
            with lock:
                outcomes[status] += 1
                if status >= 500 or status != expected:
                    failures.append(f"client {i} {method} {path[:40]}: status {status}, expected {expected}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a client never finished"
    return outcomes, failures


def test_every_request_of_many_concurrent_clients_is_answered(served):
    upload = _png(real_images(1, 40)[0])
    outcomes, failures = _run_clients(served["host"], upload, served["count"])
    assert not failures, f"{len(failures)} failed requests, e.g.:\n" + "\n".join(failures[:10])
    per_client = len(_requests(0, upload, served["count"]))
    assert sum(outcomes.values()) == CLIENTS * per_client
    assert outcomes == {200: CLIENTS * 6, 415: CLIENTS, 413: CLIENTS}


def test_the_listen_backlog_is_raised():
    app = SearchApp.__new__(SearchApp)  # make_server only needs an object to hand the handler
    server = make_server(app, "127.0.0.1", 0)
    try:
        assert server.request_queue_size == REQUEST_QUEUE_SIZE >= 128  # the stdlib's default is 5
        assert server.daemon_threads
    finally:
        server.server_close()
