"""The cache-hit lane (service/hitlane.py): a hit answered before Flask, exactly as Flask would.

Each test drives the real app (tiny model, real Redis) through raw WSGI calls, so that the lane
(``app.wsgi_app``) and the Flask path behind it (``app.wsgi_app.app``) can be called alike.
"""

from __future__ import annotations

import io
import json
import re

import pytest

from service.hitlane import CacheHitLane

BODY = {"prompt": "lane theme", "max_len": 4}
V1 = "/v1/headlines"


def call(wsgi, body=BODY, *, raw: bytes | None = None, content_type="application/json", path="/prompt",
         **headers):
    """(status, headers dict, body bytes) of one POST ``path`` through ``wsgi``."""
    data = raw if raw is not None else json.dumps(body).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "8001", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(data)), "wsgi.input": io.BytesIO(data),
               "wsgi.errors": io.StringIO(), "wsgi.multithread": True, "wsgi.multiprocess": False,
               "wsgi.run_once": False, "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8080"}
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()})
    seen = {}

    def start_response(status, response_headers, exc_info=None):
        seen["status"], seen["headers"] = status, dict(response_headers)

    result = wsgi(environ, start_response)
    try:
        payload = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    return seen["status"], seen["headers"], payload


def sample(name: str, **labels) -> float:
    """A metric's current value in this process (0 when it has no sample yet)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


class Spy:
    """Counts the requests that reach the Flask path behind the lane."""

    def __init__(self, app):
        self.app, self.calls = app, 0

    def __call__(self, environ, start_response):
        self.calls += 1
        return self.app(environ, start_response)


@pytest.fixture()
def lane_app(make_app):
    app = make_app()
    assert isinstance(app.wsgi_app, CacheHitLane)
    spy = app.wsgi_app.app = Spy(app.wsgi_app.app)
    return app, spy


def test_a_hit_is_answered_by_the_lane_exactly_as_by_flask(lane_app):
    app, spy = lane_app
    status, headers, body = call(app.wsgi_app, **{"X-Request-ID": "req-1"})
    assert (status, headers["X-Cache"], spy.calls) == ("200 OK", "MISS", 1)  # a miss goes to Flask

    lane = call(app.wsgi_app, **{"X-Request-ID": "req-2"})
    assert spy.calls == 1  # the hit never reached Flask
    flask = call(spy.app, **{"X-Request-ID": "req-2"})  # the same request through Flask itself
    assert lane == flask
    assert lane[0] == "200 OK" and lane[1]["X-Cache"] == "HIT" and lane[1]["X-Request-ID"] == "req-2"
    assert json.loads(lane[2]) == json.loads(body)  # the hit is the answer that was generated


def test_a_hit_counts_the_same_metrics_as_through_flask(lane_app):
    app, spy = lane_app
    call(app.wsgi_app)  # the miss fills the cache
    labels = {"route": "/prompt", "method": "POST", "status": "200"}
    before = (sample("headline_requests_total", **labels), sample("headline_cache_events_total", event="hit"),
              sample("headline_request_latency_seconds_count", route="/prompt", status="200"),
              sample("headline_inflight_requests"))
    call(app.wsgi_app)
    call(app.wsgi_app)
    after = (sample("headline_requests_total", **labels), sample("headline_cache_events_total", event="hit"),
             sample("headline_request_latency_seconds_count", route="/prompt", status="200"),
             sample("headline_inflight_requests"))
    assert spy.calls == 1
    assert after == (before[0] + 2, before[1] + 2, before[2] + 2, before[3])


def test_a_request_without_a_valid_id_gets_a_new_one(lane_app):
    app, _ = lane_app
    call(app.wsgi_app)
    _, headers, _ = call(app.wsgi_app, **{"X-Request-ID": "bad id with spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["X-Request-ID"])


@pytest.mark.parametrize(("kwargs", "status", "x_cache"), [
    ({"Cache-Control": "no-cache"}, "200 OK", "BYPASS"),
    ({"body": {"prompt": "lane theme", "max_len": 0}}, "422 UNPROCESSABLE ENTITY", None),
    ({"body": {"prompt": "lane theme"}}, "200 OK", "MISS"),  # max_len's default: another key
    ({"raw": b'{"prompt": "lane theme", '}, "400 BAD REQUEST", None),
    ({"content_type": "text/plain"}, "422 UNPROCESSABLE ENTITY", None),
    # webargs decodes bodies as UTF-8 only: a BOM or UTF-16 is a 400, cached or not
    ({"raw": b"\xef\xbb\xbf" + json.dumps(BODY).encode()}, "400 BAD REQUEST", None),
    ({"raw": json.dumps(BODY).encode("utf-16")}, "400 BAD REQUEST", None),
])
def test_what_is_not_a_valid_cached_request_goes_to_flask(lane_app, kwargs, status, x_cache):
    app, spy = lane_app
    call(app.wsgi_app)  # BODY is cached from here on
    calls = spy.calls
    got_status, headers, body = call(app.wsgi_app, **kwargs)
    assert spy.calls == calls + 1
    assert got_status == status and headers.get("X-Cache") == x_cache
    if status.startswith("4"):  # the app's error shape, the bad field named for a 422
        error = json.loads(body)
        assert error["code"] == int(status[:3])
        if error["code"] == 422:
            assert "json" in error["errors"]


def test_the_body_the_lane_read_reaches_flask_intact(lane_app):
    # A miss: the lane read the body, found nothing cached, and Flask generated from the same body.
    app, spy = lane_app
    status, headers, body = call(app.wsgi_app, {"prompt": "another lane theme", "max_len": 3})
    assert (status, headers["X-Cache"], spy.calls) == ("200 OK", "MISS", 1)
    assert "response" in json.loads(body)


def test_a_full_worker_sheds_a_hit_as_flask_does(lane_app):
    app, spy = lane_app
    call(app.wsgi_app)
    slots = app.extensions["security"].slots
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        status, headers, body = call(app.wsgi_app)
    finally:
        for _ in range(taken):
            slots.release()
    assert status.startswith("503") and headers["Retry-After"] == "1" and spy.calls == 2
    assert "in progress" in json.loads(body)["message"]
    assert call(app.wsgi_app)[1]["X-Cache"] == "HIT"  # every slot was given back


# -- API keys on ------------------------------------------------------------------------------

@pytest.fixture()
def keyed_app(make_app, tmp_path):
    """(app, spy, keys): API keys and rate limits on, one key per scope set."""
    from service.auth import KeyStore

    path = tmp_path / "api_keys.json"
    store = KeyStore(path)
    keys = {}
    for name, scopes in (("generate", ["generate"]), ("admin", ["admin"]), ("other", ["generate"])):
        record, plain = store.create(name, scopes)
        keys[name], keys[name + "_id"] = plain, record.id

    def factory(**overrides):
        app = make_app(**{"auth.enabled": "true", "auth.keys_file": str(path), **overrides})
        spy = app.wsgi_app.app = Spy(app.wsgi_app.app)
        return app, spy, keys

    return factory


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("path", ["/prompt", V1])
def test_with_api_keys_on_a_hit_with_an_admitted_key_is_answered_by_the_lane(keyed_app, path):
    app, spy, keys = keyed_app()
    body = BODY if path == "/prompt" else {"theme": "lane theme", "max_new_tokens": 4}
    assert call(app.wsgi_app, body, path=path, **auth(keys["generate"]))[1]["X-Cache"] == "MISS"
    lane = call(app.wsgi_app, body, path=path, **auth(keys["generate"]), **{"X-Request-ID": "k-1"})
    assert spy.calls == 1 and lane[0] == "200 OK" and lane[1]["X-Cache"] == "HIT"
    assert lane == call(spy.app, body, path=path, **auth(keys["generate"]), **{"X-Request-ID": "k-1"})


@pytest.mark.parametrize(("header", "status", "reason"), [
    (None, "401 UNAUTHORIZED", "missing"),
    ("Bearer hs_nosuchkey_0000", "401 UNAUTHORIZED", "invalid"),
    ("Basic dXNlcjpwYXNz", "401 UNAUTHORIZED", "invalid"),
    ("admin", "403 FORBIDDEN", "scope"),  # a valid key without the generate scope
])
def test_with_api_keys_on_a_cached_request_without_an_admitted_key_is_refused_by_flask(
        keyed_app, header, status, reason):
    app, spy, keys = keyed_app()
    call(app.wsgi_app, **auth(keys["generate"]))  # BODY is cached from here on
    headers = {} if header is None else {"Authorization": auth(keys[header])["Authorization"]
                                         if header in keys else header}
    rejected = sample("headline_auth_rejected_total", reason=reason)
    got, response_headers, answer = call(app.wsgi_app, **headers)
    assert got == status and spy.calls == 2 and "X-Cache" not in response_headers
    assert "WWW-Authenticate" in response_headers and json.loads(answer)["code"] == int(status[:3])
    assert sample("headline_auth_rejected_total", reason=reason) == rejected + 1  # counted once, by Flask


def test_with_api_keys_on_a_revoked_key_is_refused_at_once(keyed_app):
    from service.auth import KeyStore

    app, spy, keys = keyed_app()
    call(app.wsgi_app, **auth(keys["generate"]))
    assert call(app.wsgi_app, **auth(keys["generate"]))[1]["X-Cache"] == "HIT"
    KeyStore(app.extensions["security"].keys.path).revoke(keys["generate_id"])
    status, _, _ = call(app.wsgi_app, **auth(keys["generate"]))
    assert status == "401 UNAUTHORIZED" and spy.calls == 2


def test_with_api_keys_on_every_request_counts_once_against_its_key(keyed_app):
    app, spy, keys = keyed_app(**{"rate_limit.requests_per_minute": "3"})
    statuses = [call(app.wsgi_app, **auth(keys["generate"]))[1].get("X-Cache") for _ in range(3)]
    assert statuses == ["MISS", "HIT", "HIT"] and spy.calls == 1  # 1 request through Flask, 2 through the lane
    status, headers, answer = call(app.wsgi_app, **auth(keys["generate"]))
    assert status == "429 TOO MANY REQUESTS" and spy.calls == 2 and int(headers["Retry-After"]) >= 1
    assert "3 requests per minute" in json.loads(answer)["message"]
    # Another key has its own budget, and its hits go through the lane.
    assert call(app.wsgi_app, **auth(keys["other"]))[1]["X-Cache"] == "HIT" and spy.calls == 2


def test_with_api_keys_on_a_hit_left_to_flask_is_counted_once(keyed_app):
    # Each request is counted once: the MISS by the lane (which then leaves it to Flask, marked),
    # the no-cache BYPASS by Flask alone. With a budget of 2 they use it up, and the third is refused.
    app, spy, keys = keyed_app(**{"rate_limit.requests_per_minute": "2"})
    assert call(app.wsgi_app, **auth(keys["generate"]))[1]["X-Cache"] == "MISS"
    assert call(app.wsgi_app, **auth(keys["generate"]), **{"Cache-Control": "no-cache"})[1]["X-Cache"] == "BYPASS"
    assert call(app.wsgi_app, **auth(keys["generate"]))[0] == "429 TOO MANY REQUESTS"
    assert spy.calls == 3


def test_a_failing_lane_leaves_the_request_to_flask(make_app, monkeypatch):
    app = make_app(max_concurrency=1)  # one slot: a slot the lane kept would shed the next request
    spy = app.wsgi_app.app = Spy(app.wsgi_app.app)
    call(app.wsgi_app)

    def broken(**kwargs):
        raise RuntimeError("lane bug")

    monkeypatch.setattr(app.extensions["headline"], "cached", broken)
    inflight = sample("headline_inflight_requests")
    status, headers, _ = call(app.wsgi_app)
    assert (status, headers["X-Cache"], spy.calls) == ("200 OK", "HIT", 2)
    assert sample("headline_inflight_requests") == inflight
    assert call(app.wsgi_app)[0] == "200 OK" and spy.calls == 3


def test_with_redis_down_the_lane_steps_aside(make_app, private_redis):
    app = make_app(**{"cache.redis_url": private_redis.url, "cache.retry_after_s": 30})
    call(app.wsgi_app)
    assert call(app.wsgi_app)[1]["X-Cache"] == "HIT"
    private_redis.stop()
    errors = sample("headline_cache_events_total", event="error")
    bypasses = sample("headline_cache_events_total", event="bypass")
    status, headers, _ = call(app.wsgi_app)
    assert (status, headers["X-Cache"]) == ("200 OK", "BYPASS")  # served uncached, at once
    # The lane's GET failed (one error, the breaker opens); Flask then served it uncached (a bypass).
    assert sample("headline_cache_events_total", event="error") == errors + 1
    assert sample("headline_cache_events_total", event="bypass") == bypasses + 1
    status, headers, _ = call(app.wsgi_app)  # while the breaker is open: no GET, a bypass only
    assert (status, headers["X-Cache"]) == ("200 OK", "BYPASS")
    assert sample("headline_cache_events_total", event="error") == errors + 1


# -- POST /v1/headlines -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"theme": "lane theme", "max_new_tokens": 4},
    {"article": "Oil rose for a third day as supply fell.", "category": "business", "max_new_tokens": 3},
    {"theme": "lane theme", "n": 2, "seed": 3, "max_new_tokens": 3},  # n > 1 samples; the seed caches it
    {"theme": "  lane   theme ", "do_sample": True, "seed": 5, "temperature": 1, "top_k": 0, "top_p": 0.5,
     "repetition_penalty": 1, "max_new_tokens": 3},
])
def test_a_v1_hit_is_answered_by_the_lane_exactly_as_by_flask(lane_app, body):
    app, spy = lane_app
    status, headers, generated = call(app.wsgi_app, body, path=V1)
    assert (status, headers["X-Cache"], spy.calls) == ("200 OK", "MISS", 1)

    lane = call(app.wsgi_app, body, path=V1, **{"X-Request-ID": "req-v1"})
    assert spy.calls == 1  # the hit never reached Flask
    flask = call(spy.app, body, path=V1, **{"X-Request-ID": "req-v1"})
    assert lane == flask
    assert lane[0] == "200 OK" and lane[1]["X-Cache"] == "HIT"
    answer, first = json.loads(lane[2]), json.loads(generated)
    assert answer["cached"] is True and first["cached"] is False
    assert (answer["headlines"], answer["usage"], answer["model"]) == (first["headlines"], first["usage"], first["model"])
    assert len(answer["headlines"]) == body.get("n", 1)


def test_a_v1_hit_counts_under_its_own_route(lane_app):
    app, _ = lane_app
    body = {"theme": "lane theme", "max_new_tokens": 4}
    call(app.wsgi_app, body, path=V1)
    before = sample("headline_requests_total", route=V1, method="POST", status="200")
    prompt_before = sample("headline_requests_total", route="/prompt", method="POST", status="200")
    call(app.wsgi_app, body, path=V1)
    assert sample("headline_requests_total", route=V1, method="POST", status="200") == before + 1
    assert sample("headline_requests_total", route="/prompt", method="POST", status="200") == prompt_before


def test_a_prompt_and_a_v1_request_with_the_same_settings_share_their_cache_entry(lane_app):
    app, spy = lane_app
    call(app.wsgi_app)  # POST /prompt generates "lane theme" with max_len 4 and the config's defaults
    status, headers, body = call(app.wsgi_app, {"theme": "lane theme", "max_new_tokens": 4}, path=V1)
    assert (status, headers["X-Cache"], spy.calls) == ("200 OK", "HIT", 1)
    assert json.loads(body)["headlines"] == [json.loads(call(app.wsgi_app)[2])["response"]]


@pytest.mark.parametrize(("body", "status", "x_cache"), [
    ({"theme": "lane theme", "max_new_tokens": 4, "n": 0}, "422 UNPROCESSABLE ENTITY", None),
    ({"theme": "lane theme", "article": "both", "max_new_tokens": 4}, "422 UNPROCESSABLE ENTITY", None),
    ({"theme": "lane theme", "max_new_tokens": 4, "colour": "red"}, "422 UNPROCESSABLE ENTITY", None),
    # Valid, in types the fast check leaves to marshmallow: Flask answers, from the same entry.
    ({"theme": "lane theme", "max_new_tokens": 4, "temperature": "0.7"}, "200 OK", "HIT"),
    # Sampling without a seed is never cached.
    ({"theme": "lane theme", "max_new_tokens": 4, "do_sample": True}, "200 OK", "BYPASS"),
    # An integer too large for a float: the full load's 422, not a failure of the fast check.
    ({"theme": "lane theme", "max_new_tokens": 4, "temperature": 10**400}, "422 UNPROCESSABLE ENTITY", None),
])
def test_what_is_not_a_valid_cached_v1_request_goes_to_flask(lane_app, body, status, x_cache):
    app, spy = lane_app
    call(app.wsgi_app, {"theme": "lane theme", "max_new_tokens": 4}, path=V1)  # cached from here on
    calls = spy.calls
    got_status, headers, answer = call(app.wsgi_app, body, path=V1)
    assert spy.calls == calls + 1
    assert got_status == status and headers.get("X-Cache") == x_cache
    if status.startswith("422"):
        assert "json" in json.loads(answer)["errors"]


def test_a_v1_hit_is_dumped_by_the_response_schema_both_ways(lane_app):
    """An entry of another shape (an older code's, say) is answered alike both ways: the lane dumps
    its answer through the response schema, as flask-smorest does for the view."""
    from service.views import headlines_request

    app, spy = lane_app
    body = {"theme": "odd entry theme", "max_new_tokens": 4}
    engine = app.extensions["headline"]
    fields = app.wsgi_app.routes[V1].fast_load(body)
    args = headlines_request(fields)
    key = engine._prepare(engine.host.generator, args.pop("theme"), args.pop("article"), args.pop("category"),
                          args)[-1]
    engine.cache.client.set(key, json.dumps({"headlines": ["A", 5], "usage": {
        "prompt_tokens": 3, "completion_tokens": 8.0, "cached_tokens": 1}}))
    lane = call(app.wsgi_app, body, path=V1, **{"X-Request-ID": "odd"})
    assert spy.calls == 0 and lane[1]["X-Cache"] == "HIT"
    assert lane == call(spy.app, body, path=V1, **{"X-Request-ID": "odd"})
    answer = json.loads(lane[2])
    assert answer["headlines"] == ["A", "5"] and answer["usage"] == {"prompt_tokens": 3, "completion_tokens": 8}


@pytest.mark.parametrize("info", [{"name": "tiny", "run": None, "version": "abc"},
                                  {"name": "tiny", "run": "20260101-000000-x", "version": "abc"}])
def test_what_the_lane_sends_undumped_is_what_the_schema_dumps(info):
    from service.schemas import HeadlinesResponseSchema
    from service.views import _dumped, headlines_payload

    payload = headlines_payload(["Oil climbs", "Ölpreis steigt"], {"prompt_tokens": 9, "completion_tokens": 7},
                                True, info)
    assert _dumped(payload) and HeadlinesResponseSchema().dump(payload) == payload
    for odd in ({**info, "extra": 1}, {k: v for k, v in info.items() if k != "run"}):
        assert not _dumped(headlines_payload(["x"], {"prompt_tokens": 1, "completion_tokens": 1}, True, odd))
    assert not _dumped(headlines_payload(["x"], {"prompt_tokens": 1, "completion_tokens": True}, True, info))


def test_with_api_keys_on_a_lane_failure_after_the_count_is_not_counted_again(keyed_app, monkeypatch):
    from service import metrics

    app, spy, keys = keyed_app(**{"rate_limit.requests_per_minute": "2"})
    assert call(app.wsgi_app, **auth(keys["generate"]))[1]["X-Cache"] == "MISS"  # 1 of 2
    real, failures = metrics.observe_request, []

    def fails_once(*args, **kwargs):
        if not failures:
            failures.append(args)
            raise RuntimeError("metrics bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(metrics, "observe_request", fails_once)
    status, headers, _ = call(app.wsgi_app, **auth(keys["generate"]))  # the lane counted it, then failed
    assert (status, headers["X-Cache"], spy.calls, len(failures)) == ("200 OK", "HIT", 2, 1)  # 2 of 2
    assert call(app.wsgi_app, **auth(keys["generate"]))[0] == "429 TOO MANY REQUESTS"


def test_with_api_keys_on_a_request_over_its_limit_is_not_a_cache_hit(keyed_app):
    app, spy, keys = keyed_app(**{"rate_limit.requests_per_minute": "2"})
    call(app.wsgi_app, **auth(keys["generate"]))
    call(app.wsgi_app, **auth(keys["generate"]))
    hits = sample("headline_cache_events_total", event="hit")
    assert call(app.wsgi_app, **auth(keys["generate"]))[0] == "429 TOO MANY REQUESTS"
    assert sample("headline_cache_events_total", event="hit") == hits  # as through Flask: refused first


def test_with_api_keys_on_a_hit_shed_by_a_full_worker_is_counted_once(keyed_app):
    app, spy, keys = keyed_app(**{"rate_limit.requests_per_minute": "3"})
    call(app.wsgi_app, **auth(keys["generate"]))  # 1 of 3
    slots = app.extensions["security"].slots
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        assert call(app.wsgi_app, **auth(keys["generate"]))[0].startswith("503")  # 2 of 3 (counted by the lane)
    finally:
        for _ in range(taken):
            slots.release()
    assert call(app.wsgi_app, **auth(keys["generate"]))[1]["X-Cache"] == "HIT"  # 3 of 3
    assert call(app.wsgi_app, **auth(keys["generate"]))[0] == "429 TOO MANY REQUESTS"


def test_a_failure_once_the_lane_has_answered_is_raised_not_answered_again(make_app):
    app = make_app(max_concurrency=1)  # one slot: a slot the lane kept would shed the next request
    spy = app.wsgi_app.app = Spy(app.wsgi_app.app)
    call(app.wsgi_app)
    inflight = sample("headline_inflight_requests")

    def broken_start_response(status, headers, exc_info=None):
        raise OSError("server refused the headers")

    environ_body = json.dumps(BODY).encode()
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/prompt", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(environ_body)), "wsgi.input": io.BytesIO(environ_body)}
    with pytest.raises(OSError, match="refused the headers"):
        app.wsgi_app(environ, broken_start_response)
    assert spy.calls == 1  # Flask did not answer it a second time
    assert sample("headline_inflight_requests") == inflight
    assert call(app.wsgi_app)[1]["X-Cache"] == "HIT" and spy.calls == 1  # the slot was given back
