"""Redis cache against a real Redis: HIT/MISS/BYPASS, versions, single-flight, outages."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import REGISTRY

from tests.service.conftest import CountingGenerator

BODY = {"theme": "oil price", "max_new_tokens": 6}


def _cache_errors() -> float:
    return REGISTRY.get_sample_value("headline_cache_events_total", {"event": "error"}) or 0.0


def test_hit_on_repeat(make_app, tiny_generator):
    gen = CountingGenerator(tiny_generator)
    c = make_app(gen).test_client()
    first = c.post("/v1/headlines", json=BODY)
    second = c.post("/v1/headlines", json=BODY)
    assert first.headers["X-Cache"] == "MISS" and first.get_json()["cached"] is False
    assert second.headers["X-Cache"] == "HIT" and second.get_json()["cached"] is True
    assert second.get_json()["headlines"] == first.get_json()["headlines"]
    assert gen.prompts == 1 + 1  # warm-up + one generation
    # Normalized input: the same theme with other whitespace is the same entry.
    assert c.post("/v1/headlines", json={**BODY, "theme": "  oil   price "}).headers["X-Cache"] == "HIT"
    # Every generation parameter is in the key.
    assert c.post("/v1/headlines", json={**BODY, "max_new_tokens": 7}).headers["X-Cache"] == "MISS"
    # /prompt shares entries with equivalent /v1/headlines requests (same settings).
    assert c.post("/prompt", json={"prompt": "oil price", "max_len": 6}).headers["X-Cache"] == "HIT"


def test_bypass_rules(make_app, tiny_generator):
    gen = CountingGenerator(tiny_generator)
    c = make_app(gen).test_client()
    sampled = {**BODY, "do_sample": True}
    assert c.post("/v1/headlines", json=sampled).headers["X-Cache"] == "BYPASS"
    assert c.post("/v1/headlines", json=sampled).headers["X-Cache"] == "BYPASS"
    seeded = {**sampled, "seed": 3}
    assert c.post("/v1/headlines", json=seeded).headers["X-Cache"] == "MISS"
    assert c.post("/v1/headlines", json=seeded).headers["X-Cache"] == "HIT"
    r = c.post("/v1/headlines", json=seeded, headers={"Cache-Control": "no-cache"})
    assert r.headers["X-Cache"] == "BYPASS" and r.get_json()["cached"] is False
    # n > 1 samples with seed 0 when no seed is given: repeatable, hence cached.
    assert c.post("/v1/headlines", json={**BODY, "n": 2}).headers["X-Cache"] == "MISS"
    assert c.post("/v1/headlines", json={**BODY, "n": 2}).headers["X-Cache"] == "HIT"


def test_cache_disabled(make_app):
    c = make_app(**{"cache.enabled": "false"}).test_client()
    assert c.post("/v1/headlines", json=BODY).headers["X-Cache"] == "BYPASS"
    assert c.get("/readyz").get_json()["redis"] == "disabled"


def test_new_model_version_never_serves_old_entries(make_app, tiny_generator):
    old = make_app(CountingGenerator(tiny_generator, version="aaaa")).test_client()
    assert old.post("/v1/headlines", json=BODY).headers["X-Cache"] == "MISS"
    assert old.post("/v1/headlines", json=BODY).headers["X-Cache"] == "HIT"
    new_gen = CountingGenerator(tiny_generator, version="bbbb")
    new = make_app(new_gen).test_client()
    r = new.post("/v1/headlines", json=BODY)
    assert r.headers["X-Cache"] == "MISS" and r.get_json()["model"]["version"] == "bbbb"
    assert new_gen.prompts == 2


def test_float16_weights_never_serve_float32_entries(make_app, tiny_generator):
    """The same weights served in another precision can answer differently: other cache keys."""
    exact = make_app(CountingGenerator(tiny_generator, version="cccc")).test_client()
    assert exact.post("/v1/headlines", json=BODY).headers["X-Cache"] == "MISS"
    assert exact.post("/v1/headlines", json=BODY).headers["X-Cache"] == "HIT"
    half_gen = CountingGenerator(tiny_generator, version="cccc")
    half_gen.weights = "float16"
    r = make_app(half_gen).test_client().post("/v1/headlines", json=BODY)
    assert r.headers["X-Cache"] == "MISS" and r.get_json()["model"]["version"] == "cccc"


def test_the_served_prompt_templates_are_in_the_key(make_app, tiny_generator):
    """A run is served with the templates it was trained with (Generator.load), whatever the
    service's config.yml says: the same weights under other templates answer otherwise."""
    from config import load_config
    from trainer.generation import Generator

    def served_with(template: str) -> Generator:
        cfg = load_config(None, [f'prompt.theme_template="{template}"'])
        return Generator(tiny_generator.model, tiny_generator.tokenizer, cfg, name="tiny", version="dddd")

    first = make_app(served_with("Theme: {theme}\\nHeadline:")).test_client()
    assert first.post("/v1/headlines", json=BODY).headers["X-Cache"] == "MISS"
    assert first.post("/v1/headlines", json=BODY).headers["X-Cache"] == "HIT"
    other = make_app(served_with("News headline about {theme}:")).test_client()
    assert other.post("/v1/headlines", json=BODY).headers["X-Cache"] == "MISS"
    assert other.post("/v1/headlines", json=BODY).headers["X-Cache"] == "HIT"


def test_single_flight(make_app, tiny_generator):
    gen = CountingGenerator(tiny_generator, delay=0.4)  # the first miss holds the lock a while
    app = make_app(gen, **{"batching.max_batch_size": 1})
    before = gen.prompts
    n = 6
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        r = app.test_client().post("/v1/headlines", json={**BODY, "theme": "single flight"})
        return r.status_code, r.headers["X-Cache"], tuple(r.get_json()["headlines"])

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    assert gen.prompts - before == 1, results
    assert {r[0] for r in results} == {200}
    assert sorted(r[1] for r in results) == ["HIT"] * (n - 1) + ["MISS"]
    assert len({r[2] for r in results}) == 1


def test_redis_stopped_mid_test_then_recovers(make_app, private_redis):
    app = make_app(**{"cache.redis_url": private_redis.url, "cache.retry_after_s": 0.5})
    c = app.test_client()
    assert c.post("/v1/headlines", json=BODY).headers["X-Cache"] == "MISS"
    assert c.post("/v1/headlines", json=BODY).headers["X-Cache"] == "HIT"
    errors = _cache_errors()

    private_redis.stop()
    for _ in range(3):
        t0 = time.perf_counter()
        r = c.post("/v1/headlines", json=BODY)
        assert r.status_code == 200 and r.headers["X-Cache"] == "BYPASS"
        assert time.perf_counter() - t0 < 2.0
    ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "degraded"
    assert ready.get_json()["redis"] == "unavailable"
    assert _cache_errors() > errors

    private_redis.start()
    time.sleep(0.6)  # retry_after_s
    assert c.post("/v1/headlines", json=BODY).headers["X-Cache"] == "MISS"  # a fresh, empty Redis
    assert c.post("/v1/headlines", json=BODY).headers["X-Cache"] == "HIT"
    assert c.get("/readyz").get_json()["status"] == "ready"


def test_quick_redis_restart_costs_no_cache_error(make_app, private_redis):
    """Every request thread holds its own Redis connection; after a restart those are dead. The
    next request must reconnect, not count an error and open the breaker (thread by thread)."""
    app = make_app(**{"cache.redis_url": private_redis.url, "cache.retry_after_s": 30})
    c = app.test_client()
    with ThreadPoolExecutor(4) as pool:  # the same threads before and after, as in Gunicorn

        def post_in_threads():
            barrier = threading.Barrier(4)

            def one(_):
                barrier.wait()  # every thread of the pool takes a request (and has a connection)
                return c.post("/v1/headlines", json=BODY).headers["X-Cache"]

            return list(pool.map(one, range(4)))

        assert "MISS" in post_in_threads()
        private_redis.stop()
        private_redis.start()  # empty again, and every thread's connection is closed
        errors = _cache_errors()
        outcomes = post_in_threads()
    assert set(outcomes) <= {"MISS", "HIT"}, outcomes
    assert _cache_errors() == errors
    assert c.get("/readyz").get_json()["status"] == "ready"


def test_slow_redis_costs_one_socket_timeout(make_app):
    # A server that accepts connections and never answers: Redis hung, not down.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    port = silent.getsockname()[1]
    try:
        app = make_app(**{"cache.redis_url": f"redis://127.0.0.1:{port}/0", "cache.socket_timeout_ms": 100,
                          "cache.retry_after_s": 30})
        c = app.test_client()
        t0 = time.perf_counter()
        r = c.post("/v1/headlines", json=BODY)
        first = time.perf_counter() - t0
        assert r.status_code == 200 and r.headers["X-Cache"] == "BYPASS"
        t0 = time.perf_counter()
        assert c.post("/v1/headlines", json=BODY).headers["X-Cache"] == "BYPASS"
        second = time.perf_counter() - t0
        assert first < 1.5 and second < first  # breaker open: no second timeout
        assert c.get("/readyz").get_json()["status"] == "degraded"
    finally:
        silent.close()
