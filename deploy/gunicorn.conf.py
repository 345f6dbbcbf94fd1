"""Gunicorn settings of one API instance (`gunicorn -c deploy/gunicorn.conf.py`).

Every value can be changed by environment (compose, `deploy/serve.sh`, tests) or on the
command line (which wins). The app is `service:create_app()`, built in each worker after
fork (preload_app = False) so that each worker loads its own model: torch and fork do not
mix. Requests run in threads (gthread) so that concurrent requests reach the same
worker's micro-batcher.
"""

import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from gunicorn.glogging import Logger
from gunicorn.http import wsgi

# The repository root (this file's folder's parent), for service.startup below: gunicorn reads
# this file before it applies --chdir.
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
from service import startup  # noqa: E402 - needs the path above

startup.wanted()  # a bad HEADLINE_STARTUP_GC stops gunicorn here, naming the variable


def _env_int(name, default):
    return int(os.environ.get(name, default))


wsgi_app = "service:create_app()"
bind = [os.environ.get("HEADLINE_BIND", "127.0.0.1:8001")]

# Memory, not cores, sizes the workers: each holds a model (~0.6 GB for the 135M model in
# fp32) and generation uses torch_threads cores. One worker per instance with several
# instances behind Nginx; raise HEADLINE_WORKERS on a bigger machine.
workers = _env_int("HEADLINE_WORKERS", 1)
worker_class = "gthread"
# Threads only wait on the batcher; keep them >= service.max_concurrency.
threads = _env_int("HEADLINE_THREADS", 16)
preload_app = False

# gthread workers heartbeat from their main thread, so a long generation does not trip
# `timeout`; it bounds model loading at start (a 135M model loads in seconds).
timeout = _env_int("HEADLINE_TIMEOUT", 120)
# On SIGTERM/SIGHUP, requests in flight (a batch takes up to a few seconds) finish first.
graceful_timeout = _env_int("HEADLINE_GRACEFUL_TIMEOUT", 30)
keepalive = 75  # longer than Nginx's upstream keepalive_timeout (60s), so Nginx closes first

# Recycle workers now and then (memory growth); jitter so they do not all restart together.
# Rarely: a new worker loads its model first (seconds), and meanwhile its instance answers 503
# and Nginx sends everything to the others. At the cache-hit rate (about 1000 requests/s per
# worker on 2 cores) 20000 recycled each worker every 20 s; a million is about every 17 min.
max_requests = _env_int("HEADLINE_MAX_REQUESTS", 1_000_000)
max_requests_jitter = _env_int("HEADLINE_MAX_REQUESTS_JITTER", 100_000)

pidfile = os.environ.get("HEADLINE_PIDFILE") or None
proc_name = "headline-api-" + bind[0].rsplit(":", 1)[-1]
forwarded_allow_ips = "127.0.0.1,::1"

# prometheus_client multiprocess mode: must be set before a worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="headline-prom-")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Logs: stdout, one JSON object per line, app logs and access log alike.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("HEADLINE_LOG_LEVEL", "info")


class JsonFormatter(logging.Formatter):
    def format(self, record):
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
               "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class JsonLogger(Logger):
    """Gunicorn's logger with JSON lines; the access line carries the request id."""

    def setup(self, cfg):
        super().setup(cfg)
        for handler in self.error_log.handlers:
            handler.setFormatter(JsonFormatter())
        for handler in self.access_log.handlers:  # access() writes the JSON line itself
            handler.setFormatter(logging.Formatter("%(message)s"))
        # The app's loggers (service.*, trainer.*) go to the same stream.
        root = logging.getLogger()
        if not any(getattr(h, "_headline", False) for h in root.handlers):
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(JsonFormatter())
            handler._headline = True
            root.addHandler(handler)
            root.setLevel(logging.INFO)

    def access(self, resp, req, environ, request_time):
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.syslog):
            return
        out = {k.lower(): v for k, v in getattr(resp, "headers", [])}
        request_id = out.get("x-request-id") or environ.get("HTTP_X_REQUEST_ID", "-")
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
            "type": "access",
            "request_id": request_id,
            "remote": environ.get("HTTP_X_FORWARDED_FOR", environ.get("REMOTE_ADDR", "-")),
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "query": environ.get("QUERY_STRING") or None,
            "status": getattr(resp, "status_code", None),
            "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 2),
            "x_cache": out.get("x-cache"),
            "user_agent": environ.get("HTTP_USER_AGENT"),
            "pid": os.getpid(),
        }
        try:
            self.access_log.info(json.dumps(doc, ensure_ascii=False))
        except Exception:  # noqa: BLE001 - never fail a request because of its log line
            self.exception("access log failed")


logger_class = JsonLogger


def on_starting(server):
    # Files of a previous run of this instance would be summed into /metrics.
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    server.log.info("prometheus multiprocess dir: %s", path)


def post_fork(server, worker):
    # The collector is off while the worker imports and loads its model; what that made is then
    # frozen out of later collections (service/startup.py): 1-2 s of a 9-10 s start on a Zen 3.
    worker.startup_gc = startup.begin()


def post_worker_init(worker):
    startup.end(getattr(worker, "startup_gc", False))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class _Collect:
    """Stands in for the socket while headers are rendered, keeping the bytes."""

    def __init__(self):
        self.data = b""

    def sendall(self, data):
        self.data += data


# SIGHUP re-reads this file: subclass gunicorn's own class, never our earlier one.
_GunicornResponse = wsgi.Response.__bases__[0] if getattr(wsgi.Response, "one_send", False) else wsgi.Response


class OneSendResponse(_GunicornResponse):
    """A response whose headers leave in the same send() as the first body bytes.

    Gunicorn sends headers and body with two calls. A worker killed between them
    (SIGKILL, OOM) leaves Nginx holding a header it has already passed to the
    client and no body, which it can neither finish nor retry. Sent together, a
    small response is either wholly out before the kill or not out at all, and
    Nginx retries it on the other instance (proxy_next_upstream error).
    """

    one_send = True
    held = b""
    direct = False  # sendfile bodies bypass _emit_body: their headers go out at once

    def send_headers(self):
        if self.headers_sent or self.direct:
            return super().send_headers()
        sock, self.sock = self.sock, _Collect()
        try:
            super().send_headers()
            self.held = self.sock.data
        finally:
            self.sock = sock

    def _emit_body(self, data):
        held, self.held = self.held, b""
        if held and not self.chunked:
            self.sock.sendall(held + data)
            return
        if held:
            self.sock.sendall(held)
        super()._emit_body(data)

    def sendfile(self, respiter):
        self.direct = True
        try:
            return super().sendfile(respiter)
        finally:
            self.direct = False

    def close(self):
        if not self.headers_sent:
            self.send_headers()
        if self.held:  # a response with no body bytes at all (HEAD, 204, empty body)
            held, self.held = self.held, b""
            self.sock.sendall(held)
        super().close()


# wsgi.create() builds each response from this module-level name; workers inherit it at fork.
wsgi.Response = OneSendResponse
