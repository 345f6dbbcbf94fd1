"""Redis response cache with single-flight and a circuit breaker.

Only deterministic requests are cached (greedy, or sampling with a seed). The
key is a sha256 of the model version, the normalized input and every
generation parameter, so a new model version never serves an old entry.

Concurrent identical misses generate once: the first takes a short lock
(``SET NX PX lock_timeout_ms``), the others poll for its result and generate
themselves only if it does not come within the lock timeout.

Redis is an optimisation, never a dependency: every call has a short socket
timeout, any failure counts as a cache error, opens the breaker for
``retry_after_s`` (requests go on uncached, ``/readyz`` says degraded), and
the first call after that tries Redis again, so the cache resumes by itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from config.schema import CacheConfig

log = logging.getLogger(__name__)

KEY_PREFIX = "headline:resp:"
LOCK_PREFIX = "headline:lock:"
_FORMAT = 2  # bump when the stored value's or the key's shape changes

# Delete the lock only if it is still ours (it may have expired and been taken by another).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"

HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"


def cache_key(version: str, fields: dict[str, Any]) -> str:
    """Key of one request: model version + normalized input + every generation parameter."""
    return KeyMaker(version, {}).key(fields)


class KeyMaker:
    """Cache keys of one model version: sha256 over the fixed part (version, prompt templates,
    names of the settings) once, then per request only over what varies (input, settings).

    Hashing the fixed part and serialising nested dataclasses on every request cost more than
    the Redis GET of a cache hit; ``hashlib``'s ``copy()`` keeps the digest of the prefix.
    """

    def __init__(self, version: str, fixed: dict[str, Any]):
        doc = json.dumps({"f": _FORMAT, "version": version, **fixed}, sort_keys=True, separators=(",", ":"))
        self._base = hashlib.sha256(doc.encode("utf-8"))

    def key(self, values: Any) -> str:
        """Key of the varying part ``values`` (JSON-serialisable, in a fixed order)."""
        digest = self._base.copy()
        digest.update(b"\n" + json.dumps(values, separators=(",", ":")).encode("utf-8"))
        return KEY_PREFIX + digest.hexdigest()


class ResponseCache:
    """Get-or-generate against Redis; never raises because of Redis."""

    def __init__(
        self,
        cfg: CacheConfig,
        *,
        redis_url: str | None = None,
        on_event: Callable[[str], None] | None = None,
        client: redis.Redis | None = None,
    ):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self._on_event = on_event or (lambda event: None)
        timeout = cfg.socket_timeout_ms / 1000.0
        self.url = redis_url or cfg.redis_url
        # No client-side retries: a slow or dead Redis must cost one socket timeout at most.
        self._client_kwargs = dict(socket_timeout=timeout, socket_connect_timeout=timeout,
                                   retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.client = client or redis.Redis.from_url(self.url, **self._client_kwargs)
        # The cache-hit GET goes over a connection of the request thread's own (Gunicorn's
        # gthread threads live as long as the worker): a pooled call checks a connection out,
        # polls it for stray data and puts it back, a tenth of a cache hit. Dropped with the thread.
        self._own_client = client is None
        self._local = threading.local()
        self._release = self.client.register_script(_RELEASE)
        self._down_until = 0.0
        self._down = False
        self._lock = threading.Lock()

    # -- circuit breaker --------------------------------------------------------
    def available(self) -> bool:
        """False while the breaker is open (Redis failed less than retry_after_s ago)."""
        return self.enabled and time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        self._on_event("error")
        with self._lock:
            self._down_until = time.monotonic() + self.cfg.retry_after_s
            if not self._down:
                log.warning("redis unavailable (%s: %s); serving uncached, retrying in %.1fs",
                            type(exc).__name__, exc, self.cfg.retry_after_s)
            self._down = True

    def _succeeded(self) -> None:
        if self._down:
            with self._lock:
                if self._down:
                    log.info("redis is back; cache resumed")
                self._down = False

    def status(self) -> str:
        """"ok", "unavailable" or "disabled", checked with a PING unless the breaker is open."""
        if not self.enabled:
            return "disabled"
        if not self.available():
            return "unavailable"
        try:
            self.client.ping()
        except redis.RedisError as exc:
            self._failed(exc)
            return "unavailable"
        self._succeeded()
        return "ok"

    def _thread_client(self) -> redis.Redis:
        if not self._own_client:
            return self.client
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = redis.Redis.from_url(
                self.url, single_connection_client=True, **self._client_kwargs)
        return client

    def _get(self, key: str) -> bytes | None:
        """GET over this thread's connection. A connection error is retried once on a new
        connection before it counts: after a Redis restart every thread's idle connection is
        closed, and a pool would have noticed that on checkout. Without the retry each thread
        would find its own dead connection in turn and hold the breaker open for a minute."""
        client = self._thread_client()
        try:
            return client.get(key)
        except redis.ConnectionError:
            if client is self.client:
                raise
            return client.get(key)  # redis-py dropped the broken connection: this one is new

    # -- get or generate ----------------------------------------------------------
    def get_or_generate(
        self, key: str | None, produce: Callable[[], dict], *, read: bool = True
    ) -> tuple[dict, str]:
        """(value, X-Cache outcome). key None = not cacheable; read False = refresh (no-cache)."""
        if key is None or not self.available():
            self._on_event("bypass")
            return produce(), BYPASS
        if not read:
            self._on_event("bypass")
            value = produce()
            self._store(key, value)
            return value, BYPASS
        try:
            cached = self._get(key)
            if cached is None:
                token = secrets.token_hex(8)
                owner = self.client.set(LOCK_PREFIX + key, token, nx=True, px=self.cfg.lock_timeout_ms)
        except redis.RedisError as exc:
            self._failed(exc)
            return produce(), BYPASS
        self._succeeded()
        if cached is not None:
            self._on_event("hit")
            return json.loads(cached), HIT
        if owner:
            return self._generate_and_store(key, token, produce), MISS
        return self._wait_for_owner(key, produce)

    def peek(self, key: str | None) -> dict | None:
        """The cached value of ``key`` (counted as a hit), or None: not cacheable, not cached, or
        Redis unavailable (a failure counts as an error and opens the breaker, as everywhere)."""
        if key is None or not self.available():
            return None
        try:
            cached = self._get(key)
        except redis.RedisError as exc:
            self._failed(exc)
            return None
        self._succeeded()
        if cached is None:
            return None
        self._on_event("hit")
        return json.loads(cached)

    def _generate_and_store(self, key: str, token: str, produce: Callable[[], dict]) -> dict:
        try:
            value = produce()
            self._on_event("miss")
            self._store(key, value)
            return value
        finally:
            try:
                self._release(keys=[LOCK_PREFIX + key], args=[token])
            except redis.RedisError as exc:
                self._failed(exc)

    def _wait_for_owner(self, key: str, produce: Callable[[], dict]) -> tuple[dict, str]:
        """Another request is generating this key: poll for its result, up to the lock timeout."""
        deadline = time.monotonic() + self.cfg.lock_timeout_ms / 1000.0
        delay = 0.005
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
            try:
                pipe = self.client.pipeline(transaction=False)
                pipe.get(key)
                pipe.exists(LOCK_PREFIX + key)
                cached, locked = pipe.execute()
                if cached is None and not locked:
                    # The owner gave up (error) or its lock expired: take over.
                    token = secrets.token_hex(8)
                    if self.client.set(LOCK_PREFIX + key, token, nx=True, px=self.cfg.lock_timeout_ms):
                        return self._generate_and_store(key, token, produce), MISS
            except redis.RedisError as exc:
                self._failed(exc)
                return produce(), BYPASS
            if cached is not None:
                self._on_event("hit")
                return json.loads(cached), HIT
        log.warning("single-flight wait for %s timed out; generating", key[-12:])
        self._on_event("miss")
        value = produce()
        self._store(key, value)
        return value, MISS

    def _store(self, key: str, value: dict) -> None:
        if not self.available():
            return
        try:
            self.client.set(key, json.dumps(value, separators=(",", ":")), ex=self.cfg.ttl_seconds)
        except redis.RedisError as exc:
            self._failed(exc)

    def close(self) -> None:
        for client in (self.client, getattr(self._local, "client", None)):
            try:
                if client is not None:
                    client.close()
            except redis.RedisError:
                pass
