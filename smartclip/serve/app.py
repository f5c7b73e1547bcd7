"""The search page's request handling, independent of the HTTP server.

Routes (everything else is a 404 JSON error)::

    GET  /                      the page            GET  /app.js        its script
    GET  /api/info              index size, model, upload limit
    GET  /api/search?q=&k=&masked=0|1               text query: hits and the query's mask
    POST /api/search/image?k=   body: an image file (at most ``max_upload_bytes``)
    GET  /image/<row>           the file of row <row> of the index, nothing else

Only files listed in the index are ever served, addressed by row number, never by a path
from the request. Errors are JSON ``{"error": message}`` with a fitting status; an
unexpected exception is logged and answered with a generic 500, never a traceback.
"""
from __future__ import annotations

import json
import logging
import mimetypes
import re
import threading
from dataclasses import dataclass, field
from typing import Dict, Optional
from urllib.parse import parse_qs, urlsplit

from .page import APP_JS, PAGE_HTML

__all__ = ["SearchApp", "Response", "DEFAULT_MAX_UPLOAD_BYTES"]

log = logging.getLogger(__name__)
DEFAULT_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
_IMAGE_ROUTE = re.compile(r"/image/(\d{1,12})")
_IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif",
                ".webp": "image/webp", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; style-src 'self' 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str
    headers: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj, status: int = 200) -> "Response":
        return cls(status, json.dumps(obj).encode(), "application/json")


class SearchApp:
    """Answers requests for one ``smartclip.search.Searcher``."""

    def __init__(self, searcher, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, default_k: int = 12,
                 max_k: int = 100):
        if max_upload_bytes < 1:
            raise ValueError(f"max_upload_bytes must be >= 1, got {max_upload_bytes}")
        self.searcher = searcher
        self.index = searcher.index
        self.max_upload_bytes = max_upload_bytes
        self.default_k, self.max_k = default_k, max_k
        self._lock = threading.Lock()  # one model call at a time: the CPU is the bottleneck anyway

    # --------------------------------------------------------------------- dispatch
    def handle(self, method: str, target: str, body: Optional[bytes] = None) -> Response:
        """``body`` is the request body already read (``None`` when there was none)."""
        try:
            parts = urlsplit(target)
            path, params = parts.path, parse_qs(parts.query, keep_blank_values=True)
            if path == "/api/search/image":
                self._method(method, "POST")
                return self._search_image(params, body)
            self._method(method, "GET")
            if path in ("/", "/index.html"):
                return Response(200, PAGE_HTML.encode(), "text/html; charset=utf-8", dict(_SECURITY_HEADERS))
            if path == "/app.js":
                return Response(200, APP_JS.encode(), "text/javascript; charset=utf-8", dict(_SECURITY_HEADERS))
            if path == "/api/info":
                return Response.json(self.info())
            if path == "/api/search":
                return self._search_text(params)
            match = _IMAGE_ROUTE.fullmatch(path)
            if match:
                return self._image(int(match.group(1)))
            if path.startswith("/image/"):
                raise HTTPError(404, "images are addressed by their row number in the index: /image/<row>")
            raise HTTPError(404, f"no such page or endpoint: {path[:200]}")
        except HTTPError as e:
            return Response.json({"error": e.message}, e.status)
        except Exception:  # never leak a traceback to the client
            log.exception("error while answering %s %s", method, target[:200])
            return Response.json({"error": "internal error; see the server log"}, 500)

    def info(self) -> dict:
        meta = self.index.data.meta
        return {"count": len(self.index), "model": meta.get("model"), "model_hash": self.index.model_hash,
                "embed_dim": self.index.embed_dim, "max_upload_bytes": self.max_upload_bytes,
                "mask_trained": self.searcher.model.mask_trained,
                "default_k": self.default_k, "max_k": self.max_k}

    # ------------------------------------------------------------------- endpoints
    @staticmethod
    def _method(method: str, allowed: str):
        if method != allowed:
            raise HTTPError(405, f"method {method} not allowed here; use {allowed}")

    def _k(self, params) -> int:
        raw = params.get("k", [str(self.default_k)])[-1]
        try:
            k = int(raw)
        except ValueError:
            raise HTTPError(400, f"k must be an integer, got {raw[:20]!r}") from None
        if not 1 <= k <= self.max_k:
            raise HTTPError(400, f"k must be between 1 and {self.max_k}, got {k}")
        return k

    def _with_urls(self, result) -> dict:
        out = result.to_dict()
        for hit in out["hits"]:
            hit["url"] = f"/image/{hit['row']}"
        return out

    def _search_text(self, params) -> Response:
        query = params.get("q", [""])[-1].strip()
        if not query:
            raise HTTPError(400, "missing query: /api/search?q=TEXT")
        if len(query) > 10_000:
            raise HTTPError(400, f"query is {len(query)} characters; at most 10000")
        masked = params.get("masked", ["0"])[-1].lower() in ("1", "true", "yes", "on")
        k = self._k(params)
        with self._lock:
            result = self.searcher.text(query, k=k, masked=masked)
        return Response.json(self._with_urls(result))

    def _search_image(self, params, body: Optional[bytes]) -> Response:
        from ..data.errors import BadImage

        k = self._k(params)
        if not body:
            raise HTTPError(400, "empty upload: POST the bytes of an image file")
        if len(body) > self.max_upload_bytes:
            raise HTTPError(413, f"upload of {len(body)} bytes is larger than the limit of {self.max_upload_bytes}")
        try:
            with self._lock:
                result = self.searcher.image(body, k=k, name="upload")
        except BadImage as e:
            raise HTTPError(415, f"the upload is not a usable image ({e.kind}: {e.detail})") from None
        return Response.json(self._with_urls(result))

    def _image(self, row: int) -> Response:
        if row >= len(self.index):
            raise HTTPError(404, f"no image {row}: the index has rows 0..{len(self.index) - 1}")
        path = self.index.image_path(row)
        suffix = path.suffix.lower()
        ctype = _IMAGE_TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            data = path.read_bytes()
        except OSError:
            raise HTTPError(404, f"image {row} is listed in the index but its file can no longer be read") from None
        return Response(200, data, ctype, {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})
