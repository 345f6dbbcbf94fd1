"""The Flask application factory (the Flask tutorial's ``create_app`` pattern).

Under Gunicorn (``deploy/gunicorn.conf.py``, ``preload_app = False``) each
worker calls ``create_app()`` after fork, so each loads its own model: torch
and fork do not mix. Tests pass a ``Config`` and a ready ``generator``.
"""

from __future__ import annotations

import atexit
import inspect
import logging
import os
import re
import time
import uuid
from pathlib import Path

from flask import Flask, Response, g, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from config import Config, load_config
from service import metrics
from service.cache import ResponseCache
from service.engine import Engine
from service.guards import required_scope
from service.hitlane import CacheHitLane
from service.model import ModelHost
from service.schemas import ErrorSchema
from service.security import init_security
from service.views import register_views

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

API_DESCRIPTION = """\
Headlines from a fine-tuned language model.

* `POST /prompt` is the original contract: `{"prompt": theme, "max_len": tokens}` → `{"response": headline}`.
* `POST /v1/headlines` takes a theme or an article and every generation setting.
* Every error has one shape: `{"code", "status", "message", "errors"}`; a 422 names each bad field.
* Deterministic requests are cached (see the `X-Cache` header); send `Cache-Control: no-cache` to skip it.
"""


def _config_from_env() -> Config:
    """config.yml from HEADLINE_CONFIG (default: the package's), HEADLINE_REDIS_URL on top."""
    overrides = []
    if os.environ.get("HEADLINE_REDIS_URL"):
        overrides.append(f"service.cache.redis_url={os.environ['HEADLINE_REDIS_URL']}")
    return load_config(os.environ.get("HEADLINE_CONFIG") or None, overrides)


def create_app(config: Config | None = None, *, generator=None) -> Flask:
    """Build the app. ``generator``: a ready Generator (tests), a zero-argument loader run in a
    background thread (the app answers 503 until it returns), or None to load ``service.model``
    (``HEADLINE_MODEL`` overrides it) now."""
    cfg = config or _config_from_env()
    svc = cfg.service

    app = _Flask(__name__, static_folder=None)
    app.config.update(
        MAX_CONTENT_LENGTH=svc.max_body_bytes,
        API_TITLE="Headline Studio",
        API_VERSION="1.0",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/swagger",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/index.html",
        # Relative to /swagger/index.html: the vendored assets, so the page works offline and
        # behind a path prefix (X-Forwarded-Prefix).
        OPENAPI_SWAGGER_UI_URL="static/",
        OPENAPI_SWAGGER_UI_CONFIG={"tryItOutEnabled": False, "displayRequestDuration": True},
        API_SPEC_OPTIONS={"info": {"description": API_DESCRIPTION,
                                   "license": {"name": "Apache-2.0"}}},
    )
    # One proxy (Nginx) in front sets X-Forwarded-For/Proto/Host/Port/Prefix.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1, x_prefix=1)
    app.add_url_rule("/swagger/static/<path:filename>", endpoint="swagger_static",
                     view_func=_swagger_static)
    app.add_url_rule("/favicon.ico", endpoint="favicon",
                     view_func=lambda: _swagger_static("favicon-32x32.png"))

    host = ModelHost(cfg)
    cache = None
    if svc.cache.enabled:
        cache = ResponseCache(svc.cache, on_event=metrics.cache_event)
    engine = Engine(cfg, host, cache)
    host.on_ready(engine.start_batcher)
    app.extensions["headline"] = engine

    api = _Api(app)
    lane_routes = register_views(api, engine)
    _register_hooks(app, api, engine)
    # API keys, per-key rate limits and the per-worker concurrency cap (issue 6); its hooks run
    # after _start (so refusals carry the request id) and refuse in the same error shape.
    security = init_security(app, cfg)
    # Cache hits of POST /prompt and /v1/headlines are answered before Flask's request machinery
    # (service.hitlane).
    app.wsgi_app = CacheHitLane(app.wsgi_app, engine, security, lane_routes, valid_request_id)

    background = generator is not None and not hasattr(generator, "generate") and callable(generator)
    host.start(generator, background=background)
    metrics.MODEL_READY.set(1 if host.ready else 0)
    atexit.register(engine.close)
    return app


def valid_request_id(value: str) -> str | None:
    """A client's (or Nginx's) X-Request-ID if it is safe to log and echo, else None."""
    return value if _REQUEST_ID.match(value) else None


class _Flask(Flask):
    """Flask whose ensure_sync remembers which view functions are coroutines.

    Flask and flask-smorest call ``ensure_sync`` about eight times per request, each an
    ``inspect.iscoroutinefunction``; on the cache-hit path that is measurable. Bound methods
    (a MethodView instance per request) are looked up by their function, so the memo stays
    as small as the set of view functions.
    """

    _MEMO_LIMIT = 4096

    def ensure_sync(self, func):
        memo = self.__dict__.setdefault("_is_coroutine", {})
        key = getattr(func, "__func__", func)
        try:
            is_coroutine = memo[key]
        except (KeyError, TypeError):
            is_coroutine = inspect.iscoroutinefunction(func)
            if len(memo) < self._MEMO_LIMIT:
                try:
                    memo[key] = is_coroutine
                except TypeError:  # unhashable callable: just not remembered
                    pass
        return self.async_to_sync(func) if is_coroutine else func


class _Api(Api):
    # Our documented error schema (with examples) is the one the spec names "Error".
    ERROR_SCHEMA = ErrorSchema


def _swagger_static(filename: str) -> Response:
    from flask import send_from_directory

    return send_from_directory(STATIC_DIR, filename, max_age=86400)


def _register_hooks(app: Flask, api: Api, engine: Engine) -> None:
    # The hooks run on every request, cache hits included: each resolves the context-local
    # proxies (request, g) once rather than on every attribute.
    @app.before_request
    def _start() -> None:
        ctx_g, req = g._get_current_object(), request._get_current_object()
        ctx_g.t0 = time.perf_counter()
        ctx_g.request_id = valid_request_id(req.headers.get("X-Request-ID", "")) or uuid.uuid4().hex
        metrics.INFLIGHT.inc()
        ctx_g.inflight = True
        if engine.guards and req.endpoint in app.view_functions:
            scope = required_scope(app.view_functions[req.endpoint])
            for guard in engine.guards:
                guard.before(req, scope)

    @app.after_request
    def _finish(response: Response) -> Response:
        ctx_g, req = g._get_current_object(), request._get_current_object()
        headers = response.headers
        headers["X-Request-ID"] = ctx_g.get("request_id") or uuid.uuid4().hex
        x_cache = ctx_g.get("x_cache")
        if x_cache:
            headers["X-Cache"] = x_cache
        for guard in engine.guards:
            guard.after(req, response)
        rule = req.url_rule
        t0 = ctx_g.get("t0")
        metrics.observe_request(rule.rule if rule is not None else "<unmatched>", req.method,
                                str(response.status_code),
                                time.perf_counter() - t0 if t0 is not None else None)
        return response

    @app.teardown_request
    def _teardown(exc) -> None:
        if g._get_current_object().pop("inflight", False):
            metrics.INFLIGHT.dec()

    def handle_http(error: HTTPException):
        payload, code, headers = api.handle_http_exception(error)
        headers = dict(headers or {})
        if code == 405 and getattr(error, "valid_methods", None):
            headers.setdefault("Allow", ", ".join(error.valid_methods))
        if code == 413 and "message" not in payload:
            payload["message"] = f"the request body is larger than {engine.cfg.service.max_body_bytes} bytes"
        if code == 404 and "message" not in payload:
            payload["message"] = f"no such endpoint: {request.path}; see /swagger/index.html"
        return payload, code, headers

    def handle_unexpected(error: Exception):
        rid = g.get("request_id", "-")
        log.exception("unhandled error (request %s, %s %s)", rid, request.method, request.path)
        return {"code": 500, "status": "Internal Server Error",
                "message": f"internal error; request id {rid}"}, 500

    app.register_error_handler(HTTPException, handle_http)
    app.register_error_handler(Exception, handle_unexpected)
