"""service.security on the real app: create_app(config, generator=tiny) installs it (init_security)."""

from __future__ import annotations

import pytest

from service.security import init_security
from tests.security.conftest import bearer, make_config


@pytest.fixture()
def secured(keys, private_redis_url, tiny_generator):
    apps = []

    def factory(*overrides):
        from service import create_app

        cfg = make_config(keys["path"], private_redis_url, *overrides)
        app = create_app(cfg, generator=tiny_generator)
        assert init_security(app, cfg) is app.extensions["security"]  # create_app did it (idempotent)
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.extensions["headline"].close()


def test_generation_needs_a_generate_key(secured, keys):
    c = secured().test_client()
    resp = c.post("/prompt", json={"prompt": "oil price", "max_len": 5})
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(resp.get_json()) >= {"code", "status", "message"}
    resp = c.post("/prompt", json={"prompt": "oil price", "max_len": 5}, headers=bearer(keys["generate"]))
    assert resp.status_code == 200, resp.get_json()
    assert isinstance(resp.get_json()["response"], str)
    resp = c.post("/v1/headlines", json={"theme": "oil price", "max_new_tokens": 4},
                  headers=bearer(keys["generate"]))
    assert resp.status_code == 200
    assert c.get("/v1/models", headers=bearer(keys["generate"])).status_code == 200
    assert c.post("/prompt", json={"prompt": "x"}, headers=bearer(keys["admin"])).status_code == 403


def test_ops_routes(secured, keys):
    c = secured().test_client()
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    assert c.get("/metrics").status_code == 401
    assert c.get("/metrics", headers=bearer(keys["generate"])).status_code == 403
    resp = c.get("/metrics", headers=bearer(keys["admin"]))
    assert resp.status_code == 200 and b"headline_auth_rejected" in resp.data
    assert c.get("/swagger/openapi.json").status_code == 200
    assert c.get("/swagger/index.html").status_code == 200


def test_docs_protected_and_bearer_scheme_documented(secured, keys):
    c = secured("service.auth.protect_docs=true").test_client()
    assert c.get("/swagger/openapi.json").status_code == 401
    assert c.get("/swagger/index.html").status_code == 401
    doc = c.get("/swagger/openapi.json", headers=bearer(keys["generate"])).get_json()
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearerAuth": []}]


def test_validation_still_runs_after_auth(secured, keys):
    c = secured().test_client()
    resp = c.post("/prompt", json={"prompt": "x", "max_len": -1}, headers=bearer(keys["generate"]))
    assert resp.status_code == 422 and "max_len" in resp.get_json()["errors"]["json"]


def test_rate_limit_through_the_service(secured, keys):
    c = secured("service.rate_limit.requests_per_minute=2").test_client()
    body = {"prompt": "oil price", "max_len": 3}
    codes = [c.post("/prompt", json=body, headers=bearer(keys["generate"])).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    resp = c.post("/prompt", json=body, headers=bearer(keys["generate"]))
    assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
    assert resp.get_json()["code"] == 429 and resp.headers.get("X-Request-ID")


def test_tokens_charged_from_service_usage(secured, keys):
    # Every uncached /v1/headlines generates >= 1 token; the budget of 1 is spent by the first.
    c = secured("service.rate_limit.tokens_per_minute=1").test_client()
    body = {"theme": "oil price", "max_new_tokens": 3}
    first = c.post("/v1/headlines", json=body, headers={**bearer(keys["generate"]), "Cache-Control": "no-cache"})
    assert first.status_code == 200 and first.get_json()["usage"]["completion_tokens"] >= 1
    second = c.post("/v1/headlines", json=body, headers={**bearer(keys["generate"]), "Cache-Control": "no-cache"})
    assert second.status_code == 429 and "generated tokens" in second.get_json()["message"]


def test_refusals_are_documented_in_the_openapi_document(secured, keys):
    doc = secured().test_client().get("/swagger/openapi.json").get_json()
    for path in ("/prompt", "/v1/headlines"):
        responses = doc["paths"][path]["post"]["responses"]
        assert {"401", "403", "429", "503"} <= set(responses), path
    assert {"401", "403"} <= set(doc["paths"]["/metrics"]["get"]["responses"])
    assert {"401", "403", "429"} <= set(doc["paths"]["/v1/models"]["get"]["responses"])
