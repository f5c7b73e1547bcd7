"""The search page's server: answers, refusals and limits over real loopback HTTP."""
import http.client
import json
import urllib.error
import urllib.request

import pytest

from smartclip.serve import is_loopback, make_server
from conftest import served_photos

LIMIT = 50_000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    (root / "secret.txt").write_text("must never be served")
    with served_photos(root, max_upload_bytes=LIMIT, default_k=4) as (url, index, app):
        yield {"url": url, "root": root, "index": index, "app": app}


def request(url, path, data=None, method=None, headers=None):
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw_get(url, path, host=None):
    """Send ``path`` exactly as written (urllib and browsers would normalise ``..``)."""
    hostport = url.split("//")[1]
    conn = http.client.HTTPConnection(hostport, timeout=30)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    r = conn.getresponse()
    out = r.status, r.getheader("Content-Type"), r.read()
    conn.close()
    return out


def test_page_and_info(served):
    status, headers, body = request(served["url"], "/")
    assert status == 200 and b"smartclip search" in body and "nosniff" == headers["X-Content-Type-Options"]
    status, _, body = request(served["url"], "/app.js")
    assert status == 200 and b"/api/search" in body
    info = json.loads(request(served["url"], "/api/info")[2])
    assert info["count"] == 6 and info["embed_dim"] == 32 and info["max_upload_bytes"] == LIMIT


def test_text_query(served):
    status, _, body = request(served["url"], "/api/search?q=a%20grey%20cat&k=3&masked=1")
    result = json.loads(body)
    assert status == 200 and len(result["hits"]) == 3 and result["masked"]
    assert result["mask"]["embed_dim"] == 32 and result["mask"]["count"] == len(result["mask"]["dims"])
    direct = served["index"].searcher(served["app"].searcher.model, served["app"].searcher.preprocess,
                                      served["app"].searcher.tokenizer).text("a grey cat", k=3, masked=True)
    assert [h["row"] for h in result["hits"]] == [h.row for h in direct.hits]
    hit = result["hits"][0]
    status, headers, data = request(served["url"], hit["url"])
    assert status == 200 and headers["Content-Type"] == "image/png"
    assert data == served["index"].image_path(hit["row"]).read_bytes()


def test_image_upload_query(served):
    data = (served["root"] / "images" / "photo2.png").read_bytes()
    status, _, body = request(served["url"], "/api/search/image?k=2", data=data)
    result = json.loads(body)
    assert status == 200 and result["hits"][0]["id"] == "photo2.png"


@pytest.mark.parametrize("path", ["/image/../secret.txt", "/image/..%2F..%2Fsecret.txt", "/image/%2e%2e/secret.txt",
                                  "/../secret.txt", "/image/0/../../secret.txt", "/image//etc/passwd",
                                  "/image/-1", "/image/6", "/image/99999999999999999999", "/secret.txt"])
def test_nothing_outside_the_index_is_served(served, path):
    status, ctype, body = raw_get(served["url"], path)
    assert status in (400, 404)
    assert ctype == "application/json" and "error" in json.loads(body)
    assert b"must never be served" not in body


@pytest.mark.parametrize("path, data, status, message", [
    ("/api/search?q=", None, 400, "missing query"),
    ("/api/search?q=cat&k=0", None, 400, "k must be between 1 and 100"),
    ("/api/search?q=cat&k=x", None, 400, "k must be an integer"),
    ("/api/search/image", b"not an image at all", 415, "not a usable image"),
    ("/api/search/image", b"", 400, "empty upload"),
    ("/api/search/image", b"\0" * (LIMIT + 1), 413, f"limit of {LIMIT} bytes"),
    ("/api/search", b"x", 405, "use GET"),
    ("/nope", None, 404, "no such page"),
])
def test_bad_requests_get_clear_json_errors(served, path, data, status, message):
    got, headers, body = request(served["url"], path, data=data)
    assert got == status and headers["Content-Type"] == "application/json"
    assert message in json.loads(body)["error"]
    assert b"Traceback" not in body


def test_internal_errors_are_not_leaked(served, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("secret detail /home/user/file")
    monkeypatch.setattr(served["app"].searcher, "text", boom)
    status, _, body = request(served["url"], "/api/search?q=cat")
    assert status == 500 and b"secret detail" not in body and json.loads(body)["error"].startswith("internal error")


def test_foreign_host_header_is_refused(served):
    status, _, body = raw_get(served["url"], "/api/info", host="evil.example.com")
    assert status == 403 and "loopback" in json.loads(body)["error"]


def test_loopback_only(served):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.com")
    with pytest.raises(ValueError, match="loopback only"):
        make_server(served["app"], host="0.0.0.0", port=0)


def test_cli_serve_refuses_bad_setup(served, tmp_path, capsys):
    from smartclip.cli import main as cli
    assert cli(["serve", "--index", str(served["root"] / "index"), "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err
    assert cli(["serve", "--index", str(tmp_path), "--port", "0"]) == 2
    assert "not an index" in capsys.readouterr().err
    # the index records the model spec None here (built from Python without one): a clear message
    assert cli(["serve", "--index", str(served["root"] / "index"), "--port", "0"]) == 2
    assert "pass --model" in capsys.readouterr().err
