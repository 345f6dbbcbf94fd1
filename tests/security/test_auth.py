"""API keys, scopes, rate limits and the concurrency cap on a minimal Flask app (service.security)."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading

import pytest
from flask import Flask, g

from service.auth import KeyStore, KeyStoreError
from service.security import RATELIMIT_ERRORS, init_security, retry_after
from tests.security.conftest import bearer, free_port, make_config


def minimal_app(cfg, *, tokens: int = 0, x_cache: str = "MISS", gate: threading.Event | None = None):
    """Routes shaped like the service's: open ops routes, docs, API routes, an unclassified one."""
    app = Flask(__name__)
    app.config["OPENAPI_URL_PREFIX"] = "/swagger"

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    @app.get("/metrics")
    def metrics():
        return "m 1\n"

    @app.get("/swagger/openapi.json")
    def openapi():
        return {"openapi": "3.0.3"}

    @app.post("/prompt")
    def prompt():
        if gate is not None:
            gate.wait(5)
        g.generated_tokens = tokens
        g.x_cache = x_cache
        return {"response": "Oil prices climb"}

    @app.post("/v1/boom")
    def boom():
        raise RuntimeError("view failed")

    @app.get("/internal")
    def internal():
        return {"ok": True}

    init_security(app, cfg)
    return app


@pytest.fixture()
def auth_app(keys, private_redis_url):
    def factory(*overrides, **kw):
        return minimal_app(make_config(keys["path"], private_redis_url, *overrides), **kw)
    return factory


def assert_error_shape(resp, code):
    assert resp.status_code == code
    body = resp.get_json()
    assert body["code"] == code and body["status"] and body["message"], body
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


# -- auth off --------------------------------------------------------------------------------

def test_auth_disabled_lets_everything_through(tmp_path, private_redis_url):
    app = minimal_app(make_config(tmp_path / "none.json", private_redis_url, auth=False))
    c = app.test_client()
    for method, path in (("get", "/metrics"), ("post", "/prompt"), ("get", "/internal"), ("get", "/healthz")):
        assert getattr(c, method)(path).status_code == 200, path


# -- 401 / 403 ---------------------------------------------------------------------------------

def test_missing_key_is_401_with_bearer_challenge(auth_app):
    resp = auth_app().test_client().post("/prompt", json={})
    body = assert_error_shape(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in body["message"]


@pytest.mark.parametrize("header", [
    "Bearer hs_00000000_" + "A" * 43,          # well-formed, unknown id
    "Bearer not-a-key",
    "Basic dXNlcjpwYXNz",
    "Bearer " + "x" * 5000,                     # oversized
    "Bearer",
])
def test_invalid_key_is_401(auth_app, header):
    resp = auth_app().test_client().post("/prompt", headers={"Authorization": header})
    assert_error_shape(resp, 401)
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"] or header == "Bearer"


def test_tampered_secret_of_a_real_id_is_401(auth_app, keys):
    real = keys["generate"]
    tampered = real[:-1] + ("A" if real[-1] != "A" else "B")
    resp = auth_app().test_client().post("/prompt", headers=bearer(tampered))
    assert_error_shape(resp, 401)


def test_scopes(auth_app, keys):
    c = auth_app().test_client()
    assert c.post("/prompt", headers=bearer(keys["generate"])).status_code == 200
    assert c.get("/metrics", headers=bearer(keys["admin"])).status_code == 200
    assert c.get("/metrics", headers=bearer(keys["both"])).status_code == 200
    assert c.post("/prompt", headers=bearer(keys["both"])).status_code == 200
    resp = c.get("/metrics", headers=bearer(keys["generate"]))
    body = assert_error_shape(resp, 403)
    assert "admin" in body["message"] and 'insufficient_scope' in resp.headers["WWW-Authenticate"]
    assert_error_shape(c.post("/prompt", headers=bearer(keys["admin"])), 403)
    # A route nobody classified is closed by default (admin).
    assert c.get("/internal", headers=bearer(keys["generate"])).status_code == 403
    assert c.get("/internal", headers=bearer(keys["admin"])).status_code == 200


def test_health_always_open_metrics_and_docs_configurable(auth_app, keys):
    c = auth_app().test_client()
    assert c.get("/healthz").status_code == 200
    assert c.get("/readyz").status_code == 200
    assert c.get("/swagger/openapi.json").status_code == 200       # protect_docs false by default
    assert c.get("/metrics").status_code == 401                     # protect_metrics true by default
    c2 = auth_app("service.auth.protect_metrics=false", "service.auth.protect_docs=true").test_client()
    assert c2.get("/metrics").status_code == 200
    assert c2.get("/healthz").status_code == 200
    assert c2.get("/swagger/openapi.json").status_code == 401
    assert c2.get("/swagger/openapi.json", headers=bearer(keys["generate"])).status_code == 200


def test_unknown_route_is_not_masked(auth_app):
    # 404 stays 404 (nothing to protect), not a 401 hinting at what exists.
    assert auth_app().test_client().get("/nope").status_code == 404


def test_revoke_takes_effect_without_restart(auth_app, keys):
    c = auth_app().test_client()
    assert c.post("/prompt", headers=bearer(keys["generate"])).status_code == 200
    keys["store"].revoke(keys["generate_id"])
    # A different KeyStore object (the CLI's) wrote the file; the app re-reads it on change.
    assert_error_shape(c.post("/prompt", headers=bearer(keys["generate"])), 401)
    assert c.post("/prompt", headers=bearer(keys["both"])).status_code == 200


def test_keys_never_in_logs_or_bodies(auth_app, keys, caplog):
    caplog.set_level(logging.DEBUG)
    c = auth_app().test_client()
    bodies = []
    for key in (keys["generate"], keys["admin"], keys["generate"] + "x"):
        for method, path in (("post", "/prompt"), ("get", "/metrics"), ("get", "/internal")):
            bodies.append(getattr(c, method)(path, headers=bearer(key)).get_data(as_text=True))
    text = caplog.text + "".join(bodies)
    for key in (keys["generate"], keys["admin"]):
        assert key not in text
        # hs_<id>_<secret>; the secret (token_urlsafe) may itself hold "_", so split from the left:
        # splitting from the right made a short fragment that could occur in the text by chance.
        assert key.split("_", 2)[2][:12] not in text


def test_init_is_idempotent(keys, private_redis_url):
    cfg = make_config(keys["path"], private_redis_url)
    app = minimal_app(cfg)
    first = app.extensions["security"]
    n_before = len(app.before_request_funcs[None])
    assert init_security(app, cfg) is first
    assert len(app.before_request_funcs[None]) == n_before


# -- the keys file ---------------------------------------------------------------------------

def test_keys_file_is_private_hashed_and_atomic(keys):
    path = keys["path"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    doc = json.loads(text)
    assert {"id", "name", "scopes", "created", "revoked", "hash"} <= set(doc["keys"][0])
    for name in ("generate", "admin", "both"):
        assert keys[name] not in text
        assert keys[name].split("_", 2)[2] not in text  # the secret (it may hold "_" itself)
    leftovers = [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    assert {r.id for r in KeyStore(path).records()} == {keys["generate_id"], keys["admin_id"], keys["both_id"]}


def test_keystore_refuses_bad_input(tmp_path):
    store = KeyStore(tmp_path / "k.json")
    with pytest.raises(KeyStoreError, match="scopes"):
        store.create("x", ["root"])
    with pytest.raises(KeyStoreError, match="name"):
        store.create("bad\nname", ["generate"])
    with pytest.raises(KeyStoreError, match="id"):
        store.revoke("../../etc")
    with pytest.raises(KeyStoreError, match="no key"):
        store.revoke("0badc0de")


def test_corrupt_keys_file_keeps_previous_keys(keys, caplog):
    store = KeyStore(keys["path"])
    assert store.verify(keys["generate"]) is not None
    keys["path"].write_text("{ half written")
    assert store.verify(keys["generate"]) is not None   # kept, with an error logged
    assert "not a valid keys file" in caplog.text


def test_keys_cli_create_list_revoke(tmp_path, capsys):
    from service.keys_cli import main

    path = tmp_path / "keys.json"
    assert main(["create", "--keys-file", str(path), "--name", "ci", "--scope", "admin", "--scope", "generate"]) == 0
    out, err = capsys.readouterr()
    key = out.strip()
    assert key.startswith("hs_") and "\n" not in key and key not in err
    record = KeyStore(path).verify(key)
    assert record is not None and record.scopes == ["admin", "generate"]
    assert main(["list", "--keys-file", str(path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["id"] == record.id and "hash" not in listed[0] and key not in json.dumps(listed)
    assert main(["revoke", "--keys-file", str(path), record.id]) == 0
    assert KeyStore(path).verify(key) is None
    assert main(["revoke", "--keys-file", str(path), "ffffffff"]) == 2
    assert "no key" in capsys.readouterr().err
    assert main(["create", "--keys-file", str(path), "--name", "x", "--json"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert created["scopes"] == ["generate"] and created["key"].startswith("hs_")


def test_keys_cli_uses_config_keys_file(tmp_path, capsys):
    from service.keys_cli import main

    path = tmp_path / "from-config.json"
    assert main(["create", "--set", f"service.auth.keys_file={path}", "--name", "a"]) == 0
    assert path.exists()
    assert main(["list", "--set", "service.auth.nope=1"]) == 2
    assert "config error" in capsys.readouterr().err


# -- rate limits -----------------------------------------------------------------------------

def test_requests_per_minute(auth_app, keys):
    c = auth_app("service.rate_limit.requests_per_minute=3").test_client()
    codes = [c.post("/prompt", headers=bearer(keys["generate"])).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    resp = c.post("/prompt", headers=bearer(keys["generate"]))
    body = assert_error_shape(resp, 429)
    assert 1 <= int(resp.headers["Retry-After"]) <= 120
    assert "3 requests per minute" in body["message"]
    # Per key: another key still gets through.
    assert c.post("/prompt", headers=bearer(keys["both"])).status_code == 200
    # Open routes are not counted or limited.
    assert c.get("/healthz").status_code == 200


def test_tokens_per_minute_charged_after_generation(auth_app, keys):
    c = auth_app("service.rate_limit.tokens_per_minute=10", tokens=8).test_client()
    assert c.post("/prompt", headers=bearer(keys["generate"])).status_code == 200   # 0 spent -> 8
    assert c.post("/prompt", headers=bearer(keys["generate"])).status_code == 200   # 8 < 10 -> 16
    resp = c.post("/prompt", headers=bearer(keys["generate"]))
    body = assert_error_shape(resp, 429)
    assert "generated tokens" in body["message"] and int(resp.headers["Retry-After"]) >= 1


def test_cache_hits_cost_no_tokens(auth_app, keys):
    c = auth_app("service.rate_limit.tokens_per_minute=10", tokens=8, x_cache="HIT").test_client()
    assert [c.post("/prompt", headers=bearer(keys["generate"])).status_code for _ in range(5)] == [200] * 5


def test_rate_limit_off(auth_app, keys):
    c = auth_app("service.rate_limit.enabled=false", "service.rate_limit.requests_per_minute=1").test_client()
    assert [c.post("/prompt", headers=bearer(keys["generate"])).status_code for _ in range(3)] == [200] * 3


def test_redis_down_fails_open_with_warning_and_metric(keys, caplog):
    dead = f"redis://127.0.0.1:{free_port()}/0"   # nothing listens there
    app = minimal_app(make_config(keys["path"], dead, "service.rate_limit.requests_per_minute=1"))
    c = app.test_client()
    before = RATELIMIT_ERRORS._value.get()
    caplog.set_level(logging.WARNING)
    codes = [c.post("/prompt", headers=bearer(keys["generate"])).status_code for _ in range(3)]
    assert codes == [200, 200, 200]
    assert RATELIMIT_ERRORS._value.get() >= before + 3
    warnings = [r for r in caplog.records if "rate limits off" in r.getMessage()]
    assert len(warnings) == 1   # once per outage, not per request


@pytest.mark.parametrize("budget,current,previous,elapsed,expected", [
    (2, 0, 10, 0.0, 48),     # the last window weighs 10*(1-t/60) <= 2 once t >= 48
    (2, 3, 0, 30.0, 50),     # this window alone is over: 30 s to its end, then 3*(1-t/60) <= 2 at t=20
    (5, 1, 0, 10.0, 1),
])
def test_retry_after_math(budget, current, previous, elapsed, expected):
    assert retry_after(budget, current, previous, elapsed) == expected


# -- concurrency cap -------------------------------------------------------------------------

def test_concurrency_cap_sheds_with_503_and_releases(tmp_path, private_redis_url):
    gate = threading.Event()
    cfg = make_config(tmp_path / "none.json", private_redis_url, "service.max_concurrency=2", auth=False)
    app = minimal_app(cfg, gate=gate)
    results: list[int] = []

    def call():
        results.append(app.test_client().post("/prompt").status_code)

    threads = [threading.Thread(target=call) for _ in range(2)]
    for t in threads:
        t.start()
    sec = app.extensions["security"]
    for _ in range(200):          # both in flight, holding the two slots
        if sec.slots._value == 0:
            break
        threading.Event().wait(0.01)
    resp = app.test_client().post("/prompt")
    body = assert_error_shape(resp, 503)
    assert resp.headers["Retry-After"] == "1" and "busy" in body["message"]
    assert app.test_client().get("/healthz").status_code == 200   # ops routes are never shed
    gate.set()
    for t in threads:
        t.join(10)
    assert results == [200, 200]
    assert sec.slots._value == 2
    # A view that raises still gives its slot back (released in teardown).
    app.config["PROPAGATE_EXCEPTIONS"] = False
    for _ in range(3):
        assert app.test_client().post("/v1/boom").status_code == 500
    assert sec.slots._value == 2


def test_keys_file_mode_warning(keys, caplog):
    os.chmod(keys["path"], 0o644)
    caplog.set_level(logging.WARNING)
    KeyStore(keys["path"]).refresh()
    assert "readable by others" in caplog.text
