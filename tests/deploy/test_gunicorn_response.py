"""deploy/gunicorn.conf.py: a response's headers and body leave in one send().

Two sends leave a window in which a killed worker has passed Nginx a header and
no body; Nginx cannot retry such a response (tests/security/test_faults.py).
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config as GunicornConfig
from gunicorn.http import wsgi

CONF = Path(__file__).resolve().parents[2] / "deploy" / "gunicorn.conf.py"


@pytest.fixture(scope="module")
def response_class():
    original, environ = wsgi.Response, dict(os.environ)
    try:
        conf = runpy.run_path(str(CONF))
        yield conf["OneSendResponse"]
    finally:
        # The config swaps the class in and sets up env vars for the server: undo both here.
        wsgi.Response = original
        os.environ.clear()
        os.environ.update(environ)


class Recorder:
    def __init__(self):
        self.sends: list[bytes] = []

    def sendall(self, data):
        self.sends.append(bytes(data))


def make(response_class, method="POST"):
    req = SimpleNamespace(version=(1, 1), method=method, should_close=lambda: False)
    sock = Recorder()
    return response_class(req, sock, GunicornConfig()), sock


def test_headers_and_body_in_one_send(response_class):
    resp, sock = make(response_class)
    resp.start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "17")])
    resp.write(b'{"response": "x"}')
    resp.close()
    assert len(sock.sends) == 1
    head, _, body = sock.sends[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 17" in head
    assert body == b'{"response": "x"}'


def test_empty_and_chunked_bodies_keep_their_order(response_class):
    resp, sock = make(response_class, method="HEAD")
    resp.start_response("200 OK", [("Content-Length", "5")])
    resp.close()
    assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\n")

    resp, sock = make(response_class)
    resp.start_response("200 OK", [("Content-Type", "text/plain")])  # no length: chunked
    resp.write(b"hello")
    resp.write(b"world")
    resp.close()
    wire = b"".join(sock.sends)
    head, _, body = wire.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n"


def test_reloading_the_config_does_not_stack_the_class(response_class):
    """SIGHUP makes Gunicorn execute its config file again in the same process."""
    original = wsgi.Response
    environ = dict(os.environ)
    try:
        wsgi.Response = response_class  # as after the first read of the file
        again = runpy.run_path(str(CONF))["OneSendResponse"]
        assert again.__bases__ == response_class.__bases__ == (wsgi.Response.__bases__[0],)
        assert again.__bases__[0].__module__ == "gunicorn.http.wsgi"
        resp, sock = make(again)
        resp.start_response("200 OK", [("Content-Length", "2")])
        resp.write(b"ok")
        resp.close()
        assert len(sock.sends) == 1 and sock.sends[0].endswith(b"\r\n\r\nok")
    finally:
        wsgi.Response = original
        os.environ.clear()
        os.environ.update(environ)
