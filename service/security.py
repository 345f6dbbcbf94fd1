"""Request admission for the API: API keys, per-key rate limits, a concurrency cap (issue 6).

``init_security(app, cfg)`` registers a ``before_request`` hook that, in order:

1. **authenticates** (``service.auth.enabled``): ``Authorization: Bearer <key>``
   checked against the hashed keys file (``service.auth``); 401 with
   ``WWW-Authenticate: Bearer`` when the key is missing, unknown or revoked, 403
   when it lacks the route's scope. ``/healthz`` and ``/readyz`` are always open;
   ``/metrics`` needs ``admin`` when ``protect_metrics``; the Swagger UI and the
   OpenAPI document need any valid key when ``protect_docs``; the API routes need
   ``generate``; any other route needs ``admin`` (closed by default).
2. **rate-limits** per key (``service.rate_limit``, only when auth is on: the
   limits are per key). Sliding-window counters in Redis, one atomic Lua call per
   request: requests per minute are counted when admitted; generated tokens per
   minute are *charged after* the response from the tokens actually generated
   (cache hits cost nothing), and a request is refused while the key's budget is
   already spent. So one request may overshoot the budget by at most its own
   ``max_new_tokens x n``, but no client pays for tokens it did not get.
   429 with ``Retry-After`` (seconds until the window lets the request in).
   Redis down or slow: requests are admitted (fail open) with one logged warning
   per outage, ``headline_ratelimit_errors`` counts it, and Redis is tried again
   after ``service.cache.retry_after_s``.
3. **sheds load**: at most ``service.max_concurrency`` API requests in flight per
   worker process (a semaphore taken without blocking, released in
   ``teardown_request``); beyond that, 503 with ``Retry-After: 1`` at once, instead
   of a queue that grows until every client times out.

Refusals are answered here in flask-smorest's error shape ``{code, status,
message}``; keys never appear in logs or messages (only the key's id).
Idempotent: a second call on the same app does nothing.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus

from flask import Flask, Response, current_app, g, jsonify, request
from prometheus_client import Counter

from config import Config, resolve_path
from service.auth import KeyRecord, KeyStore

log = logging.getLogger(__name__)

EXTENSION = "security"
OPEN_ROUTES = frozenset({"/healthz", "/readyz"})
METRICS_ROUTE = "/metrics"
API_PREFIXES = ("/prompt", "/v1/")
ANY_KEY = "*"  # scope marker: any valid key
WINDOW_S = 60
SHED_RETRY_AFTER_S = "1"
MAX_AUTH_HEADER = 512

AUTH_REJECTED = Counter("headline_auth_rejected", "Requests refused by API-key checks, by reason.", ["reason"])
RATE_LIMITED = Counter("headline_rate_limited", "Requests refused with 429, by limit.", ["limit"])
RATELIMIT_ERRORS = Counter(
    "headline_ratelimit_errors", "Rate-limit checks that could not reach Redis (request admitted: fail open).")
SHED = Counter("headline_shed_requests", "API requests refused with 503 because the worker was at "
               "service.max_concurrency.")

# WSGI environ key: the id of the API key whose rate limit service.hitlane counted this request
# against (see Security.before).
RATE_COUNTED = "headline.rate_counted"

# Sliding-window counter for requests and tokens of one key. KEYS: requests this window,
# requests last window, tokens this window, tokens last window. ARGV: requests limit, tokens
# limit, weight of the last window (1 - elapsed/window), TTL. Admit = count the request.
_CHECK = """
local rl, tl, w, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rc = tonumber(redis.call('GET', KEYS[1]) or '0')
local rp = tonumber(redis.call('GET', KEYS[2]) or '0')
local tc = tonumber(redis.call('GET', KEYS[3]) or '0')
local tp = tonumber(redis.call('GET', KEYS[4]) or '0')
local verdict = 0
if rp * w + rc + 1 > rl then
  verdict = 1
elseif tp * w + tc >= tl then
  verdict = 2
else
  rc = redis.call('INCR', KEYS[1])
  redis.call('EXPIRE', KEYS[1], ttl)
end
return {verdict, rc, rp, tc, tp}
"""


def error_response(code: int, message: str, headers: dict | None = None, errors: dict | None = None) -> Response:
    """An error in flask-smorest's shape, built here so it does not depend on the app's handlers."""
    body = {"code": code, "status": HTTPStatus(code).phrase, "message": message}
    if errors:
        body["errors"] = errors
    response = jsonify(body)
    response.status_code = code
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def retry_after(budget: float, current: int, previous: int, elapsed: float, window: float = WINDOW_S) -> int:
    """Whole seconds until ``previous * (1 - t/window) + current <= budget`` (sliding window)."""
    if current <= budget:
        if previous <= 0:
            return 1
        t = window * (1 - (budget - current) / previous)
        return max(1, math.ceil(t - elapsed))
    # This window alone is over: wait for the next one, where it counts as the previous.
    t_next = window * (1 - budget / current) if current > 0 else 0.0
    return max(1, math.ceil(window - elapsed + max(0.0, t_next)))


@dataclass
class Verdict:
    allowed: bool
    limit: str = ""  # "requests" | "tokens"
    retry_after: int = 0


class RateLimiter:
    """Per-key sliding windows in Redis; never raises because of Redis (fails open)."""

    def __init__(self, cfg: Config, client=None):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.requests_per_minute = cfg.service.rate_limit.requests_per_minute
        self.tokens_per_minute = cfg.service.rate_limit.tokens_per_minute
        self.retry_s = cfg.service.cache.retry_after_s
        timeout = cfg.service.cache.socket_timeout_ms / 1000.0
        self._errors = (redis.RedisError, OSError)
        self.client = client or redis.Redis.from_url(
            cfg.service.cache.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._check = self.client.register_script(_CHECK)
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    @staticmethod
    def _keys(key_id: str, index: int) -> list[str]:
        base = f"headline:rl:{key_id}:"
        return [f"{base}r:{index}", f"{base}r:{index - 1}", f"{base}t:{index}", f"{base}t:{index - 1}"]

    def _failed(self, exc: Exception) -> None:
        RATELIMIT_ERRORS.inc()
        with self._lock:
            self._down_until = time.monotonic() + self.retry_s
            if not self._down:
                log.warning("rate limits off: redis unavailable (%s); admitting requests, retrying in %.1fs",
                            type(exc).__name__, self.retry_s)
            self._down = True

    def _ok(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    log.info("redis is back; rate limits on again")
                self._down = False

    def check(self, key_id: str, now: float | None = None) -> Verdict:
        """Admit (and count) one request of ``key_id``, or say which limit refuses it."""
        if time.monotonic() < self._down_until:
            RATELIMIT_ERRORS.inc()
            return Verdict(True)
        now = time.time() if now is None else now
        index, elapsed = divmod(now, WINDOW_S)
        weight = 1.0 - elapsed / WINDOW_S
        try:
            verdict, rc, rp, tc, tp = self._check(
                keys=self._keys(key_id, int(index)),
                args=[self.requests_per_minute, self.tokens_per_minute, repr(weight), 2 * WINDOW_S + 5])
        except self._errors as exc:
            self._failed(exc)
            return Verdict(True)
        self._ok()
        if verdict == 1:
            return Verdict(False, "requests", retry_after(self.requests_per_minute - 1, rc, rp, elapsed))
        if verdict == 2:
            return Verdict(False, "tokens", retry_after(self.tokens_per_minute - 1, tc, tp, elapsed))
        return Verdict(True)

    def charge(self, key_id: str, tokens: int, now: float | None = None) -> None:
        """Add generated tokens to this window of ``key_id``."""
        if tokens <= 0 or time.monotonic() < self._down_until:
            return
        now = time.time() if now is None else now
        key = self._keys(key_id, int(now // WINDOW_S))[2]
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.incrby(key, int(tokens))
            pipe.expire(key, 2 * WINDOW_S + 5)
            pipe.execute()
        except self._errors as exc:
            self._failed(exc)
            return
        self._ok()


class Security:
    """The per-app state kept in ``app.extensions["security"]``."""

    def __init__(self, app: Flask, cfg: Config, *, redis_client=None):
        svc = cfg.service
        self.cfg = cfg
        self.auth_enabled = svc.auth.enabled
        self.protect_metrics = svc.auth.protect_metrics
        self.protect_docs = svc.auth.protect_docs
        self.docs_prefix = (app.config.get("OPENAPI_URL_PREFIX") or "/swagger").rstrip("/") or "/swagger"
        self.keys = KeyStore(resolve_path(svc.auth.keys_file)) if self.auth_enabled else None
        self.limiter = (RateLimiter(cfg, redis_client)
                        if self.auth_enabled and svc.rate_limit.enabled else None)
        self.max_concurrency = svc.max_concurrency
        self.slots = threading.BoundedSemaphore(svc.max_concurrency)
        self._scopes: dict[str, str | None] = {}
        if self.keys is not None:
            if not self.keys.path.exists():
                log.error("service.auth is enabled but %s does not exist: every API request will get 401; "
                          "create a key with `headline keys create`", self.keys.path)
            else:
                self.keys.refresh()

    # -- route classification ---------------------------------------------------
    def route_scope(self, rule: str, endpoint: str | None, app: Flask) -> str | None:
        """The scope ``rule`` needs (None = open, ANY_KEY = any valid key). Cached per rule."""
        if rule in self._scopes:
            return self._scopes[rule]
        if rule in OPEN_ROUTES:
            scope = None
        elif rule == METRICS_ROUTE:
            scope = "admin" if self.protect_metrics else None
        elif rule == self.docs_prefix or rule.startswith(self.docs_prefix + "/"):
            scope = ANY_KEY if self.protect_docs else None
        else:
            view = app.view_functions.get(endpoint or "")
            declared = getattr(getattr(view, "view_class", view), "required_scope", _MISSING)
            if declared is not _MISSING:
                scope = declared  # the view says (service.guards.required_scope)
            elif rule.startswith(API_PREFIXES):
                scope = "generate"
            else:
                scope = "admin"  # closed by default: a new route must say what it needs
        self._scopes[rule] = scope
        return scope

    @staticmethod
    def is_api(rule: str) -> bool:
        return rule.startswith(API_PREFIXES)

    # -- the hooks ------------------------------------------------------------
    # The hooks run on every request, cache hits included: each resolves the context-local
    # proxies (request, g) at most once, as service.app's hooks do.
    def before(self) -> Response | None:
        req = request._get_current_object()
        rule = req.url_rule
        if rule is None:  # 404/405: nothing to protect; the app answers in its error shape
            return None

        scope = self.route_scope(rule.rule, req.endpoint, current_app)
        record = None
        if self.auth_enabled and scope is not None:
            record, refusal = self._authenticate(scope)
            if refusal is not None:
                return refusal
        if not self.is_api(rule.rule):
            return None
        # A request that service.hitlane counted already (and left to the app: a miss, say) is
        # not counted twice. Only the lane sets this WSGI environ key; clients cannot (their
        # headers arrive as HTTP_* keys).
        if record is not None and self.limiter is not None and req.environ.get(RATE_COUNTED) != record.id:
            verdict = self.limiter.check(record.id)
            if not verdict.allowed:
                RATE_LIMITED.labels(verdict.limit).inc()
                per_minute = (self.limiter.requests_per_minute if verdict.limit == "requests"
                              else self.limiter.tokens_per_minute)
                what = "requests" if verdict.limit == "requests" else "generated tokens"
                return error_response(
                    429, f"rate limit: more than {per_minute} {what} per minute for this API key; "
                    f"retry in {verdict.retry_after} s",
                    {"Retry-After": str(verdict.retry_after)})
        if not self.slots.acquire(blocking=False):
            SHED.inc()
            return error_response(
                503, f"server busy: {self.max_concurrency} requests in progress in this worker; retry shortly",
                {"Retry-After": SHED_RETRY_AFTER_S})
        g._get_current_object()._security_slot = True
        return None

    def identify(self, header: str, scope: str) -> tuple[KeyRecord | None, str | None]:
        """The key an Authorization header carries and why it is refused for ``scope``: (record,
        None) when admitted, else (None, "missing" | "invalid") or (record, "scope"). No side
        effects: the hook below and service.hitlane (which only goes on when admitted) share it."""
        if not header:
            return None, "missing"
        scheme, _, token = header.partition(" ")
        token = token.strip()
        record = None
        if scheme.lower() == "bearer" and 0 < len(token) <= MAX_AUTH_HEADER:
            record = self.keys.verify(token)
        if record is None:
            return None, "invalid"
        if scope != ANY_KEY and scope not in record.scopes:
            return record, "scope"
        return record, None

    def _authenticate(self, scope: str) -> tuple[KeyRecord | None, Response | None]:
        realm = 'Bearer realm="headline-studio"'
        record, refused = self.identify(request.headers.get("Authorization", ""), scope)
        if refused == "missing":
            AUTH_REJECTED.labels("missing").inc()
            return None, error_response(401, "missing API key: send the header Authorization: Bearer <key>",
                                        {"WWW-Authenticate": realm})
        if refused == "invalid":
            AUTH_REJECTED.labels("invalid").inc()
            return None, error_response(401, "invalid or revoked API key",
                                        {"WWW-Authenticate": f'{realm}, error="invalid_token"'})
        g.api_key_id = record.id
        request.environ["headline.api_key_id"] = record.id  # for access logs: the id, never the key
        if refused == "scope":
            AUTH_REJECTED.labels("scope").inc()
            log.info("key %s (%s) lacks scope %s for %s", record.id, record.name, scope, request.path)
            return record, error_response(
                403, f"this API key lacks the '{scope}' scope needed for {request.path}",
                {"WWW-Authenticate": f'{realm}, error="insufficient_scope", scope="{scope}"'})
        return record, None

    def after(self, response: Response) -> Response:
        if self.limiter is None or response.status_code >= 400:
            return response
        ctx_g = g._get_current_object()
        key_id = ctx_g.get("api_key_id")
        if key_id:
            tokens = ctx_g.get("generated_tokens") or 0
            if tokens and ctx_g.get("x_cache") != "HIT":  # a cache hit generated nothing
                self.limiter.charge(key_id, int(tokens))
        return response

    def teardown(self, exc: BaseException | None = None) -> None:
        if g._get_current_object().pop("_security_slot", False):
            self.slots.release()


_MISSING = object()


def init_security(app: Flask, cfg: Config, *, redis_client=None) -> Security:
    """Install key checks, rate limits and the concurrency cap on ``app``; idempotent."""
    existing = app.extensions.get(EXTENSION)
    if existing is not None:
        return existing
    sec = Security(app, cfg, redis_client=redis_client)
    app.extensions[EXTENSION] = sec
    app.before_request(sec.before)
    app.after_request(sec.after)
    app.teardown_request(sec.teardown)
    _document(app, sec)
    return sec


def _document(app: Flask, sec: Security) -> None:
    """Add the bearer scheme to the OpenAPI document (when flask-smorest is there and auth is on)."""
    if not sec.auth_enabled:
        return
    smorest = app.extensions.get("flask-smorest") or {}
    for entry in (smorest.get("apis") or {}).values():
        api = entry.get("ext_obj") if isinstance(entry, dict) else None
        spec = getattr(api, "spec", None)
        if spec is None:
            continue
        try:
            spec.components.security_scheme(
                "bearerAuth", {"type": "http", "scheme": "bearer",
                               "description": "An API key from `headline keys create`"})
            spec.options["security"] = [{"bearerAuth": []}]
        except Exception as exc:  # documentation only: never stop the app for it
            log.warning("could not add the bearer scheme to the OpenAPI document: %s", exc)
