"""API tests with the Flask test client on the tiny model: endpoints, errors, OpenAPI."""

from __future__ import annotations

import threading

import pytest

from tests.service.conftest import CountingGenerator


def test_prompt_original_example(client):
    r = client.post("/prompt", json={"prompt": "oil price", "max_len": 50})
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == {"response"}
    assert isinstance(body["response"], str) and body["response"]
    assert r.headers["X-Cache"] in {"MISS", "HIT"}
    assert r.headers["X-Request-ID"]


def test_prompt_max_len_is_optional_and_bounds_tokens(client, tiny_generator):
    r = client.post("/prompt", json={"prompt": "oil price", "max_len": 3})
    assert r.status_code == 200
    same = client.post("/v1/headlines", json={"theme": "oil price", "max_new_tokens": 3}).get_json()
    assert same["usage"]["completion_tokens"] <= 3
    assert same["headlines"] == [r.get_json()["response"]]
    assert client.post("/prompt", json={"prompt": "oil price"}).status_code == 200


def test_headlines_full_answer(client):
    r = client.post("/v1/headlines", json={"theme": "oil price", "category": "business", "n": 3, "seed": 5,
                                           "max_new_tokens": 8, "temperature": 0.9, "top_p": 0.95,
                                           "top_k": 40, "repetition_penalty": 1.1})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert len(body["headlines"]) == 3
    assert body["model"] == {"name": "tiny", "run": None, "version": "tiny0001"}
    assert body["cached"] is False
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0


def test_headlines_article(client):
    r = client.post("/v1/headlines", json={"article": "The company said profits doubled. " * 40,
                                           "max_new_tokens": 6})
    assert r.status_code == 200, r.get_json()
    assert len(r.get_json()["headlines"]) == 1


def test_models_health_ready(client):
    models = client.get("/v1/models").get_json()
    assert models["model"]["version"] == "tiny0001" and models["state"] == "ready"
    assert "eval" in models
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready" and ready.get_json()["redis"] == "ok"


def test_models_reads_eval_scores_of_the_run(make_app, tiny_generator, tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"run_id": "r1"}')
    (run / "eval.json").write_text('{"rougeL": 0.31}')
    gen = CountingGenerator(tiny_generator)
    gen.eval_scores = {}
    monkeypatch.setenv("HEADLINE_MODEL", str(run))
    body = make_app(gen).test_client().get("/v1/models").get_json()
    assert body["eval"] == {"rougeL": 0.31} and body["run_dir"] == str(run)


def _is_error(r, code):
    body = r.get_json()
    assert r.status_code == code, body
    assert body["code"] == code and isinstance(body["status"], str)
    assert set(body) <= {"code", "status", "message", "errors"}
    assert "Traceback" not in r.get_data(as_text=True)
    return body


@pytest.mark.parametrize("payload,field", [
    ({"prompt": "oil", "max_len": 0}, "max_len"),
    ({"prompt": "oil", "max_len": 10_000}, "max_len"),
    ({"prompt": "", "max_len": 5}, "prompt"),
    ({"prompt": "   ", "max_len": 5}, "prompt"),
    ({"prompt": "x" * 501, "max_len": 5}, "prompt"),
    ({"prompt": 12, "max_len": 5}, "prompt"),
    ({"max_len": 5}, "prompt"),
    ({"prompt": "oil", "max_len": 5, "extra": 1}, "extra"),
])
def test_prompt_422_names_the_field(client, payload, field):
    body = _is_error(client.post("/prompt", json=payload), 422)
    assert field in body["errors"]["json"]


@pytest.mark.parametrize("payload,field", [
    ({}, "theme"),
    ({"theme": "oil", "article": "text"}, "article"),
    ({"theme": "oil", "n": 11}, "n"),
    ({"theme": "oil", "temperature": 0}, "temperature"),
    ({"theme": "oil", "top_p": 1.5}, "top_p"),
    ({"theme": "oil", "top_k": -1}, "top_k"),
    ({"theme": "oil", "repetition_penalty": 0.5}, "repetition_penalty"),
    ({"theme": "oil", "seed": -3}, "seed"),
    ({"theme": "oil", "category": "c" * 65}, "category"),
    ({"article": "a" * 20001}, "article"),
])
def test_headlines_422_names_the_field(client, payload, field):
    body = _is_error(client.post("/v1/headlines", json=payload), 422)
    assert field in body["errors"]["json"]


def test_token_limit_names_the_field(make_app):
    client = make_app(max_input_tokens=8).test_client()
    body = _is_error(client.post("/v1/headlines", json={"theme": "oil price rise as supply fears grow"}), 422)
    assert "theme" in body["errors"]["json"] and "tokens" in body["message"]


def test_malformed_json_400(client):
    body = _is_error(client.post("/prompt", data="{not json", content_type="application/json"), 400)
    assert "json" in body["errors"]


def test_413_for_oversized_body(client):
    _is_error(client.post("/prompt", data="x" * 70_000, content_type="application/json"), 413)


def test_404_405_json(client):
    _is_error(client.get("/nowhere"), 404)
    r = client.get("/prompt")
    _is_error(r, 405)
    assert "POST" in r.headers["Allow"]


def test_503_while_loading_then_ready(make_app, tiny_generator):
    release = threading.Event()

    def loader():
        release.wait(30)
        return tiny_generator

    app = make_app(loader)
    c = app.test_client()
    r = c.get("/readyz")
    assert _is_error(r, 503)["errors"]["model"] == ["loading"]
    r = c.post("/prompt", json={"prompt": "oil price", "max_len": 5})
    _is_error(r, 503)
    assert r.headers["Retry-After"]
    assert c.get("/healthz").status_code == 200
    release.set()
    assert app.extensions["headline"].host.wait(30)
    assert c.get("/readyz").status_code == 200
    assert c.post("/prompt", json={"prompt": "oil price", "max_len": 5}).status_code == 200


def test_503_when_model_failed(make_app):
    def loader():
        raise FileNotFoundError("runs/latest: no finished run")

    app = make_app(loader)
    app.extensions["headline"].host.wait(10)
    c = app.test_client()
    assert "failed to load" in _is_error(c.get("/readyz"), 503)["message"]
    _is_error(c.post("/prompt", json={"prompt": "oil", "max_len": 5}), 503)


def test_500_is_generic_with_request_id(make_app, tiny_generator, caplog):
    class Broken(CountingGenerator):
        def generate(self, prompts, settings):
            raise RuntimeError("secret internals")

        def open_batch(self):
            raise RuntimeError("secret internals")

    c = make_app(Broken(tiny_generator), warmup=False).test_client()
    r = c.post("/prompt", json={"prompt": "oil", "max_len": 5}, headers={"X-Request-ID": "req-42"})
    body = _is_error(r, 500)
    assert "req-42" in body["message"] and "secret" not in r.get_data(as_text=True)
    assert r.headers["X-Request-ID"] == "req-42"
    assert any("req-42" in rec.getMessage() for rec in caplog.records)


def test_request_id_generated_when_absent_or_bad(client):
    assert len(client.get("/healthz").headers["X-Request-ID"]) == 32
    r = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"})
    assert len(r.headers["X-Request-ID"]) == 32 and "<" not in r.headers["X-Request-ID"]


def test_metrics(client):
    client.post("/prompt", json={"prompt": "metrics theme", "max_len": 4})
    client.post("/prompt", json={"prompt": "metrics theme", "max_len": 4})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'headline_requests_total{method="POST",route="/prompt",status="200"}' in text
    for name in ("headline_request_latency_seconds_bucket{le=", "headline_cache_events_total{event=\"hit\"}",
                 "headline_cache_events_total{event=\"miss\"}", "headline_generated_tokens_total",
                 "headline_batch_size_bucket", "headline_queue_wait_seconds_bucket"):
        assert name.split("{")[0] in text, name


def test_openapi_document(client):
    spec = client.get("/swagger/openapi.json").get_json()
    assert spec["openapi"].startswith("3.0")
    try:
        import jsonschema
        from schemathesis.specs.openapi.definitions import OPENAPI_30
    except ImportError:  # structural checks below still run
        pass
    else:
        jsonschema.Draft4Validator(OPENAPI_30).validate(spec)
    paths = spec["paths"]
    assert set(paths) == {"/prompt", "/v1/headlines", "/v1/models", "/healthz", "/readyz", "/metrics"}
    for method in ("/prompt", "/v1/headlines"):
        op = paths[method]["post"]
        assert {"200", "400", "413", "422", "500", "503"} <= set(op["responses"])
        assert op["requestBody"]["content"]["application/json"]["example"]
        assert "X-Cache" in op["responses"]["200"]["headers"]
    assert paths["/prompt"]["post"]["requestBody"]["content"]["application/json"]["example"] == {
        "prompt": "oil price", "max_len": 50}
    schemas = spec["components"]["schemas"]
    req = schemas["HeadlinesRequest"]["properties"]
    assert req["n"]["maximum"] == 10 and req["max_new_tokens"]["maximum"] == 64
    for name, schema in schemas.items():
        for field, prop in schema.get("properties", {}).items():
            assert prop.get("description") or prop.get("$ref") or prop.get("allOf") or name in {
                "Error", "Health"} or field in {"headlines"}, f"{name}.{field} undocumented"


def test_swagger_page_and_assets_served_locally(client):
    page = client.get("/swagger/index.html").get_data(as_text=True)
    assert "http" not in page.split("<body>")[0].replace("http-equiv", "")  # no CDN in <head>
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        assert asset in page
        r = client.get(f"/swagger/static/{asset}")
        assert r.status_code == 200 and len(r.data) > 10_000
        r.close()
