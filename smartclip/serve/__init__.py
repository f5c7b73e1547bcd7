"""A small local search page over an image index (``smartclip serve --index DIR``)."""
from .app import SearchApp, Response, DEFAULT_MAX_UPLOAD_BYTES
from .server import make_server, serve, start_in_thread, is_loopback

__all__ = ["SearchApp", "Response", "DEFAULT_MAX_UPLOAD_BYTES", "make_server", "serve", "start_in_thread",
           "is_loopback"]
