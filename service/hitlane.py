"""The cache-hit lane: hits of ``POST /prompt`` and ``POST /v1/headlines`` answered from Redis
before Flask's request machinery.

A cache hit is one Redis GET, yet through Flask it also pays for what Flask does around every
view: a request context, URL routing, werkzeug's request and response objects, the before- and
after-request hooks, flask-smorest's argument parsing, response schema and wrappers. Under
Gunicorn that was more than the GET itself. ``CacheHitLane`` wraps the app's WSGI callable and
answers the common case itself: a valid body (the route's schema's ``fast_load``, which also
fills in the defaults) whose answer is in the cache. It sends what the Flask path sends
(status, body bytes, and the headers Content-Type, Content-Length, X-Request-ID and X-Cache:
HIT), counts the same metrics (requests and latency by route, cache hits, requests in flight)
and holds a slot of the worker's concurrency cap while it works, as ``service.security`` does.
The views define what each route's body means and what its answer is (``LaneRoute``,
service.views), so both ways share them.

Everything else goes to the app as it came, the body it read put back: other routes and
methods, ``Cache-Control: no-cache``, a body that the schema's fast check does not accept (the
app then answers it, 400 and 422 included), a cache miss, Redis unavailable, the model not
ready, a full concurrency cap, a request whose API key the route does not admit (missing,
invalid, revoked, or without the route's scope) or whose key is over its rate limit, and any
failure of the lane itself (unless it has already started its answer). With API keys on
(``service.auth``), the lane checks the key as the app does (``Security.identify``, one piece of
code for both) before it reads the body, and counts a valid body against the key's requests per
minute (``RateLimiter.check``) before the concurrency slot and the cache, in the app's order; a
request it counted and then leaves to the app is marked (``RATE_COUNTED``), so that every request
is counted once.
tests/service/test_hitlane.py checks that both ways answer a hit alike.

What it costs: a miss pays one more Redis GET (the lane's) before Flask's. When that GET finds
Redis failing, it counts the cache error and opens the breaker, as Flask's would have; the app
then serves the request uncached and counts it as a bypass (Redis marked down), so that one
request counts both an error and a bypass. With API keys on, a request over its key's limit
runs the limiter's script twice (the lane's refused check counts nothing, then the app's).
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service import metrics
from service.security import RATE_COUNTED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LaneRoute:
    """What the lane needs of a POST route (built by service.views.register_views)."""

    fast_load: Callable[[Any], dict | None]  # the request schema's: the body's fields, or None
    request: Callable[[dict], dict]  # the fields -> Engine.cached's keyword arguments
    body: Callable[[dict], bytes]  # the cached value ({"headlines", "usage"}) -> the answer's body
    scope: str  # what an API key needs for the route (its view's required_scope)


class CacheHitLane:
    """WSGI middleware: ``CacheHitLane(app.wsgi_app, engine, security, {path: LaneRoute}, request_id)``."""

    def __init__(self, app: Callable, engine, security, routes: dict[str, LaneRoute], request_id: Callable):
        self.app = app
        self.engine = engine
        self.security = security
        self.routes = routes
        self.request_id = request_id  # an X-Request-ID value -> itself if valid, else None
        self.max_body = engine.cfg.service.max_body_bytes

    def __call__(self, environ: dict, start_response: Callable):
        path = environ.get("PATH_INFO")
        route = self.routes.get(path)
        if route is not None and environ.get("REQUEST_METHOD") == "POST" and not self.engine.guards:
            started = []

            def start(status, headers, exc_info=None):
                started.append(status)
                return start_response(status, headers, exc_info)

            try:
                answer = self._hit(path, route, environ, start)
            except Exception as exc:
                if started:  # answered already: the app must not answer again
                    raise
                if not isinstance(exc, OSError):  # OSError: the body could not be read (client gone)
                    log.exception("the cache-hit lane failed; the app answers the request")
                answer = None  # the app answers instead, in its own way
            if answer is not None:
                return answer
        return self.app(environ, start_response)

    def _hit(self, path: str, route: LaneRoute, environ: dict, start_response: Callable) -> list[bytes] | None:
        """The answer when the request is a valid cache hit, else None (and the body put back)."""
        if (not self.engine.serves_hits()
                or "no-cache" in environ.get("HTTP_CACHE_CONTROL", "").lower()
                or environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower() != "application/json"):
            return None
        length = environ.get("CONTENT_LENGTH", "")
        if not length.isdigit() or not 0 < int(length) <= self.max_body:
            return None
        t0 = time.perf_counter()
        security, key = self.security, None
        if security.auth_enabled:  # only a key the route admits goes on; the app refuses the others
            key, refused = security.identify(environ.get("HTTP_AUTHORIZATION", ""), route.scope)
            if refused is not None:
                return None
        body = environ["wsgi.input"].read(int(length))
        environ["wsgi.input"] = io.BytesIO(body)  # for the app, if the lane does not answer
        try:  # strictly UTF-8, as webargs decodes it (json.loads of bytes would take UTF-16 or a BOM)
            fields = route.fast_load(json.loads(body.decode("utf-8")))
        except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError included): the app's 400
            return None
        if fields is None:
            return None  # the app validates it (422)
        # The key's rate limit, counted here as in the app's hook: before the slot and the cache
        # (a refused request is not a cache hit). A refused check counts nothing, so the app checks
        # again and answers the 429; once counted, the request is marked so that the app, if the
        # lane leaves it to it (a miss, a full cap), does not count it again.
        if key is not None and security.limiter is not None:
            if not security.limiter.check(key.id).allowed:
                return None
            environ[RATE_COUNTED] = key.id
        if not security.slots.acquire(blocking=False):
            return None  # the app sheds it (503)
        metrics.INFLIGHT.inc()
        try:
            value = self.engine.cached(**route.request(fields))
            if value is None:
                return None
            payload = route.body(value)
            request_id = self.request_id(environ.get("HTTP_X_REQUEST_ID", "")) or uuid.uuid4().hex
            if key is not None:  # (a hit costs the key no generated tokens)
                environ["headline.api_key_id"] = key.id  # as the app's key check leaves it
            metrics.observe_request(path, "POST", "200", time.perf_counter() - t0)
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(payload))),
                                      ("X-Request-ID", request_id), ("X-Cache", "HIT")])
            return [payload]
        finally:
            metrics.INFLIGHT.dec()
            self.security.slots.release()
